"""What a benchmark ran on: the device, its CPUs and threads, and the versions of the software that matter."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from tools.benchmark.memory import MIB

__all__ = ["environment_info"]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_info(device: torch.device) -> dict[str, Any]:
    """The device (name, CPUs, torch threads; on CUDA the CUDA and cuDNN versions, GPU memory) and software versions.

    Args:
        device: the device the benchmark ran on.

    Returns:
        A JSON-serialisable dict: ``device``, ``device_name``, ``cpu``, ``cpu_count``, ``torch_threads``, ``python``,
        ``platform``, the versions of torch, MONAI, NumPy, FrEIA, timm and nibabel (``None`` when not installed) and,
        on CUDA, ``cuda``, ``cudnn`` and ``gpu_memory_mib``.
    """
    env: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "monai": _version("monai"),
        "numpy": np.__version__,
        "FrEIA": _version("FrEIA"),
        "timm": _version("timm"),
        "nibabel": nib.__version__,
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu_memory_mib"] = torch.cuda.get_device_properties(device).total_memory / MIB
    return env
