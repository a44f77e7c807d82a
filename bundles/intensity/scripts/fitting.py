"""Fitting the intensity model with MONAI's ``SupervisedTrainer``: one pass that counts, no optimiser.

:class:`CountingIteration` is the trainer's ``iteration_update``: each iteration counts a batch of normal training
slices into the model's histogram (:meth:`scripts.network.IntensityModel.accumulate`) instead of a gradient step.
:class:`FitEachEpoch` starts a fresh count when an epoch starts and, when it completes, sums the counts of every
``torchrun`` process and stores the quantiles, so every process holds the same model before rank 0 calibrates the
thresholds (:class:`common.training.CalibrationHandler`) and writes ``model.pt``. Each epoch refits from scratch on
the same slices (the training slices are not augmented), so one epoch is enough and more change nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Events
from torch import nn

from common.parallel import unwrap_network

__all__ = ["CountingIteration", "FitEachEpoch"]

logger = logging.getLogger(__name__)


class CountingIteration:
    """``iteration_update`` of a ``SupervisedTrainer`` that counts a batch into the model (module docstring).

    Args:
        network: the intensity model (or a wrapper of it).
        device: where to compute the standardised values.

    Returns (when called):
        ``{"brain_pixels": n}``, the number of brain values counted (the engine's output).
    """

    def __init__(self, network: nn.Module, device: torch.device | str) -> None:
        self.network = network
        self.device = device

    def __call__(self, engine: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Count one batch of ``{"image", "foreground"}`` slices."""
        model = unwrap_network(self.network)
        image = torch.as_tensor(batch["image"]).to(self.device)
        foreground = batch.get("foreground")
        foreground = None if foreground is None else torch.as_tensor(foreground).to(self.device)
        return {"brain_pixels": model.accumulate(image, foreground)}


class FitEachEpoch:
    """Start counting when an epoch starts; store the quantiles of all processes' counts when it completes.

    Args:
        network: the intensity model (or a wrapper of it).
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def attach(self, engine: Any) -> None:
        """Run at ``EPOCH_STARTED`` and ``EPOCH_COMPLETED`` of ``engine``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.completed)

    def started(self, engine: Any = None) -> None:
        """A fresh count."""
        unwrap_network(self.network).start_fit()

    def completed(self, engine: Any = None) -> None:
        """Sum the counts over the processes and fit the quantiles."""
        model = unwrap_network(self.network)
        histogram = model.histogram
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = model.levels.device  # NCCL reduces CUDA tensors only
            counts = histogram.counts.to(device)
            dist.all_reduce(counts)
            extremes = torch.stack([-histogram.extremes[0], histogram.extremes[1]]).to(device)
            dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
            histogram.counts = counts.cpu()
            histogram.extremes = torch.stack([-extremes[0], extremes[1]]).cpu()
        model.finish_fit()
        logger.info(
            "fitted the intensity model on %d brain pixels: median %.4g, 1e-3 and 1 - 1e-3 quantiles %.4g and %.4g",
            int(histogram.total),
            float(_quantile(model, 0.5)),
            float(_quantile(model, 1e-3)),
            float(_quantile(model, 1 - 1e-3)),
        )


def _quantile(model: nn.Module, level: float) -> float:
    """The stored quantile at the level nearest ``level``."""
    index = int(torch.argmin((model.levels - level).abs()))
    return float(model.quantiles[index])
