"""Re-estimating BatchNorm running statistics for a fixed set of weights ("precise BatchNorm").

A BatchNorm layer normalises with the statistics of the current batch in training and with its running statistics
in evaluation. The running statistics are an exponential average (momentum 0.1) taken while the weights were still
moving, and after ``n`` updates they still hold ``0.9 ** n`` of their initial values (mean 0, variance 1). Re-estimating
them as a plain average over training batches with the weights held fixed makes evaluation see the statistics of the
model that is saved (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576, 2021, Sec. 3, "precise BN";
``torch.optim.swa_utils.update_bn`` does the same for averaged weights).

``torch.optim.swa_utils.update_bn`` is not used directly: it resets every BatchNorm of the model, including those of a
frozen backbone kept in eval mode, whose statistics it would then never re-estimate; and it expects tensor or
``(input, ...)`` batches, not the project's slice dictionaries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["reestimate_batch_norm", "training_batch_norms"]


def training_batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``module`` that are in training mode (a frozen sub-module kept in eval mode is left out).

    Call it after ``module.train()``; modules whose ``train`` keeps a frozen part in eval mode (e.g.
    :class:`common.backbones.FeatureExtractor`) then leave that part's layers out.
    """
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]


@torch.no_grad()
def reestimate_batch_norm(norms: Sequence[nn.modules.batchnorm._BatchNorm], run_batches: Callable[[], int]) -> int:
    """Replace the running statistics of ``norms`` by their plain average over the batches ``run_batches`` forwards.

    Args:
        norms: BatchNorm layers in training mode.
        run_batches: forwards the batches through a module containing ``norms`` (in training mode, without
            gradients) and returns how many batches it ran.

    Returns:
        The number of batches averaged.

    Raises:
        ValueError: when ``run_batches`` ran no batch (the statistics would be left reset).
    """
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    try:
        n_batches = run_batches()
    except BaseException:
        _restore(norms, saved)
        raise
    if n_batches == 0:
        _restore(norms, saved)
        msg = "re-estimating BatchNorm statistics needs at least one batch, got none"
        raise ValueError(msg)
    for m, (momentum, *_) in zip(norms, saved, strict=True):
        m.momentum = momentum
    return n_batches


def _restore(norms: Sequence[nn.modules.batchnorm._BatchNorm], saved: Sequence[tuple]) -> None:
    for m, (momentum, mean, var, count) in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count)
