"""Running under ``torchrun``: the process group, this process's device, its share of the files, gathering results.

``torchrun --nproc_per_node=N`` starts N processes with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in their
environment. Batch inference uses the helpers here to split the input files across the processes and merge what
they return on rank 0, so ``scores.csv`` and ``failed.csv`` list every file in the same order as a one-process run.
Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every helper is a no-op: one process does everything.

The process group uses NCCL on CUDA and gloo on the CPU, as MONAI's multi-GPU bundle configs do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "gather_to_first",
    "init_process_group",
    "is_distributed",
    "is_first_process",
    "leave_process_group",
    "local_device",
    "rank",
    "shard",
    "world_size",
]

T = TypeVar("T")


def world_size() -> int:
    """How many processes run this job (1 without ``torchrun``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without ``torchrun``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    """Whether this process is one of several (``WORLD_SIZE`` > 1)."""
    return world_size() > 1


def is_first_process() -> bool:
    """Whether this process is rank 0 (the one that writes shared outputs)."""
    return rank() == 0


def local_device(cuda: bool | None = None) -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` when CUDA is used, else the CPU.

    Args:
        cuda: use CUDA; ``None`` means "when available".
    """
    use_cuda = torch.cuda.is_available() if cuda is None else bool(cuda)
    if not use_cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(device: torch.device | str | None = None) -> bool:
    """Join the ``torchrun`` process group if there is one and it is not joined yet; returns whether distributed.

    Args:
        device: this process's device; NCCL for CUDA devices, gloo otherwise (``None``: :func:`local_device`).
    """
    if not is_distributed() or not dist.is_available():
        return False
    if not dist.is_initialized():
        target = torch.device(device) if device is not None else local_device()
        if target.type == "cuda":
            torch.cuda.set_device(target)
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return True


def leave_process_group(joined: bool) -> None:
    """Leave the process group if :func:`init_process_group` joined it (``joined``)."""
    if joined and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T]) -> list[int]:
    """Indices of ``items`` this process handles: every ``world_size``-th one, starting at its rank."""
    return list(range(rank(), len(items), world_size()))


def gather_to_first(value: Any) -> list[Any] | None:
    """Every process's ``value`` on rank 0 (in rank order), ``None`` on the others; ``[value]`` when not distributed.

    Uses ``torch.distributed.gather_object`` (picklable values; over NCCL it needs the CUDA device that
    :func:`init_process_group` set).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered
