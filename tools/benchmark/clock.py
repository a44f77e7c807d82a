"""Wall-clock timing on a device: CUDA runs asynchronously, so its queued work is waited for before each reading."""

from __future__ import annotations

import torch

__all__ = ["synchronize"]


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA); nothing to wait for on the CPU.

    Args:
        device: the device the timed work runs on.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
