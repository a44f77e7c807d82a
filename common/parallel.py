"""The wrappers data-parallel training puts around a detector, and the way back to the detector.

Under ``torchrun`` a detector trains inside ``DistributedDataParallel(TrainingForward(detector))``
(:func:`common.distributed.wrap_for_training`); handlers, inferers and writers that need the detector itself (its
``forward_train``, ``forward_outputs``, ``calibration`` or ``state_dict``) call :func:`unwrap_network`. This module
imports only PyTorch, so both :mod:`common.training` and :mod:`common.distributed` can depend on it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["TrainingForward", "unwrap_network", "unwrap_parallel"]


class TrainingForward(nn.Module):
    """A module whose ``forward`` is ``network.forward_train``: what ``DistributedDataParallel`` wraps in training.

    DDP synchronises gradients only for what runs through its own ``forward``; calling ``ddp.module.forward_train``
    would skip that. Wrapping this module instead makes DDP's forward the training forward pass.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped network's ``forward_train``."""
        return self.network.forward_train(*args, **kwargs)


def unwrap_parallel(network: nn.Module) -> nn.Module:
    """The module inside a data-parallel wrapper (anything exposing ``.module``, as DDP and ``DataParallel`` do)."""
    return network.module if hasattr(network, "module") else network


def unwrap_network(network: nn.Module) -> nn.Module:
    """The detector inside a data-parallel wrapper and/or a :class:`TrainingForward`; ``network`` itself otherwise."""
    module = unwrap_parallel(network)
    return module.network if isinstance(module, TrainingForward) else module
