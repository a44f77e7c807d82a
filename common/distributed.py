"""Running under ``torchrun``: the process group, this process's device, its share of the work, gathering results.

``torchrun --nproc_per_node=N`` starts N processes with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in their
environment. Batch inference uses the helpers here to split the input files across the processes and merge what
they return on rank 0, so ``scores.csv`` and ``failed.csv`` list every file in the same order as a one-process run.
Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every helper is a no-op: one process does everything.

Training (each bundle's ``configs/multi_gpu_train.json``, merged over ``train.json`` as in MONAI's model zoo) wraps
the trainable network in ``DistributedDataParallel`` (:func:`wrap_for_training`), lets each process draw its share
of the slices (:func:`common.resume.shuffling_sampler`), and keeps on processes other than rank 0 only the handlers
that change the training itself (:func:`handlers_of_this_process`): rank 0 alone logs, calibrates the thresholds on
the whole calibration split and writes checkpoints.

The process group uses NCCL on CUDA and gloo on the CPU, as MONAI's multi-GPU bundle configs do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from common.parallel import TrainingForward

__all__ = [
    "average_gradients",
    "gather_to_first",
    "handlers_of_this_process",
    "init_process_group",
    "is_distributed",
    "is_first_process",
    "leave_process_group",
    "local_device",
    "rank",
    "shard",
    "world_size",
    "wrap_for_training",
]

# Handlers that only rank 0 runs: logging, progress, the final BatchNorm re-estimation, calibration and checkpoint
# writing (by class name, so MONAI's and this project's handlers are matched without importing them here). Rank 0
# re-estimates BatchNorm statistics over the whole training set for the model it saves.
FIRST_PROCESS_HANDLERS = (
    "StatsHandler",
    "TensorBoardStatsHandler",
    "EpochProgress",
    "BatchNormStatisticsHandler",
    "CalibrationHandler",
    "CheckpointSaver",
    "PseudoAUCHandler",
)

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


def wrap_for_training(network: nn.Module, device: torch.device | str) -> nn.Module:
    """``network`` for a trainer: wrapped in ``DistributedDataParallel`` under ``torchrun``, else unchanged.

    The wrapped module is :class:`common.parallel.TrainingForward`, so DDP's forward is the training forward pass and
    gradients are averaged across processes. The process group must be joined (:func:`init_process_group`).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return network
    target = torch.device(device)
    ids = [target] if target.type == "cuda" else None
    return DistributedDataParallel(TrainingForward(network.to(target)), device_ids=ids)


def handlers_of_this_process(handlers: Sequence[Any]) -> list[Any]:
    """The training handlers this process attaches: all on rank 0; elsewhere those that change the training.

    On other ranks the logging, progress, calibration and checkpoint handlers (:data:`FIRST_PROCESS_HANDLERS`) are
    dropped, and a resumable-training handler loads a checkpoint when resuming but does not write any.
    """
    if is_first_process():
        return list(handlers)
    kept = [h for h in handlers if type(h).__name__ not in FIRST_PROCESS_HANDLERS]
    for handler in kept:
        if hasattr(handler, "save") and type(handler).__name__ == "ResumableTraining":
            handler.save = False
    return kept


def average_gradients(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Average the optimizer's gradients across processes before every step (data parallelism without DDP).

    For networks that ``DistributedDataParallel`` cannot wrap: AnomalyPro's WGAN-GP penalty takes the critic's
    gradient with ``torch.autograd.grad(create_graph=True)``, which DDP does not support (its gradient hooks only
    serve ``backward()`` into ``.grad``), and its generator loss runs the frozen critic. The parameters are broadcast
    from rank 0 once, then an optimizer step pre-hook all-reduces every gradient and divides it by the world size, the
    same update DDP makes. Returns ``optimizer`` (unchanged when not distributed), for use in configs.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return optimizer
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with torch.no_grad():
        for param in params:
            dist.broadcast(param, src=0)
    size = float(dist.get_world_size())

    def _average(*_: Any) -> None:
        for param in params:
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad.div_(size)

    optimizer.register_step_pre_hook(_average)
    return optimizer
