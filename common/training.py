"""Pieces that plug the detectors into MONAI's ignite training engines.

Training uses MONAI's ``SupervisedTrainer`` unchanged: :class:`ForwardTrainInferer` makes it call the network's
``forward_train`` (the training-only outputs, STYLE.md rule 2) and the loss ignores the absent labels. Two event
handlers do the rest of the bundle contract:

* :class:`FeatureStatisticsHandler` fits the frozen backbone's statistics on training images before the first
  iteration (see :mod:`common.backbones`).
* :class:`CalibrationHandler` computes thresholds on held-out normal images when training completes, before the
  final checkpoint is written, so ``model.pt`` carries them.

:class:`ForegroundStatisticsHandler` fits statistics that count only the foreground (a network's
``fit_foreground_statistics``) before the first iteration. :class:`BatchNormStatisticsHandler` (optional, attached
before calibration) re-estimates the trainable BatchNorm statistics with the final weights when training completes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer
from torch import nn

from common.batchnorm import reestimate_batch_norm, training_batch_norms
from common.checkpoint import check_arguments
from common.checks import check_bool
from common.parallel import TrainingForward, unwrap_network, unwrap_parallel
from common.scoring import MapScorer, calibrate_thresholds

__all__ = [
    "BatchNormStatisticsHandler",
    "CalibrationHandler",
    "FeatureStatisticsHandler",
    "ForegroundStatisticsHandler",
    "ForwardTrainInferer",
    "PrepareImageAndForeground",
    "TrainingForward",
    "clip_gradients",
    "learning_rate_schedule",
    "load_checkpoint",
    "load_thresholds",
    "predict_maps",
    "read_state_dict",
]

logger = logging.getLogger(__name__)


class ForwardTrainInferer(Inferer):
    """Inferer for training: returns ``network.forward_train(inputs)`` (a NamedTuple of training outputs).

    A ``DistributedDataParallel`` network (:func:`common.distributed.wrap_for_training`, whose module is a
    :class:`TrainingForward`) is called directly, so DDP's forward runs and gradients are synchronised.
    """

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """Run the network's training forward pass."""
        model = unwrap_parallel(network)
        if isinstance(model, TrainingForward):
            return network(inputs, *args, **kwargs)
        if not hasattr(model, "forward_train"):
            msg = f"{type(model).__name__} has no forward_train method; training needs one (STYLE.md rule 2)"
            raise TypeError(msg)
        return model.forward_train(inputs, *args, **kwargs)


class PrepareImageAndForeground(PrepareBatch):
    """Batch preparation for MONAI trainers that passes the foreground mask as the loss target.

    MONAI's default preparation pairs ``image`` with ``label`` (the image-level label here); a loss that weighs
    positions by the foreground (e.g. to leave flat image background out of a flow's likelihood) needs the
    ``foreground`` mask instead. Batches without a ``foreground`` key get an all-ones mask.

    Example:
        >>> prepare = PrepareImageAndForeground()
        >>> image, foreground = prepare({"image": torch.zeros(2, 1, 4, 4)})
        >>> foreground.shape
        torch.Size([2, 1, 4, 4])
    """

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(image, foreground)`` on ``device``."""
        image = torch.as_tensor(batchdata["image"])
        foreground = batchdata.get("foreground")
        foreground = torch.ones_like(image[:, :1]) if foreground is None else torch.as_tensor(foreground)
        return (
            image.to(device=device, non_blocking=non_blocking, **kwargs),
            foreground.to(device=device, non_blocking=non_blocking, **kwargs),
        )


def _engine_event(name: str) -> Any:
    from ignite.engine import Events

    return getattr(Events, name)


@torch.inference_mode()
def predict_maps(
    network: nn.Module, loader: Iterable[Mapping[str, Any]], device: torch.device | str, scorer: MapScorer
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Run a network in eval mode over a loader of slice dictionaries.

    Returns:
        ``(maps, foregrounds, image_scores)``: per-slice ``(H, W)`` foreground-restricted maps, their boolean
        foregrounds, and the image scores.
    """
    was_training = network.training
    network.eval()
    maps: list[np.ndarray] = []
    foregrounds: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    try:
        for batch in loader:
            images = batch["image"].to(device)
            foreground = batch["foreground"].to(device) if "foreground" in batch else None
            batch_maps = scorer.maps(network(images), foreground)
            scores.append(scorer.image_scores(batch_maps, foreground).cpu().numpy())
            fg = foreground if foreground is not None else torch.ones_like(batch_maps)
            maps.extend(m[0] for m in batch_maps.cpu().numpy())
            foregrounds.extend(f[0] > 0 for f in fg.cpu().numpy())
    finally:
        network.train(was_training)
    return maps, foregrounds, np.concatenate(scores) if scores else np.zeros(0)


class _TrainingImagesHandler:
    """Base of the handlers that run a network over batches of training images: the network, loader and batch limit.

    Args:
        network: the detector (or a wrapper of it).
        loader: batches of training slice dictionaries with an ``image`` key (no augmentation needed).
        device: where to run.
        max_batches: use at most this many batches (``None``: all).
    """

    def __init__(
        self,
        network: nn.Module,
        loader: Iterable[Mapping[str, Any]],
        device: torch.device | str,
        max_batches: int | None = None,
    ) -> None:
        if max_batches is not None and max_batches < 1:
            msg = f"max_batches must be >= 1 or None, got {max_batches}"
            raise ValueError(msg)
        self.network = network
        self.loader = loader
        self.device = device
        self.max_batches = max_batches

    def _batches(self) -> Iterator[Mapping[str, Any]]:
        """The first ``max_batches`` batches of the loader."""
        for i, batch in enumerate(self.loader):
            if self.max_batches is not None and i >= self.max_batches:
                break
            yield batch

    def _images(self) -> Iterator[torch.Tensor]:
        """The ``image`` tensors of the first ``max_batches`` batches."""
        for batch in self._batches():
            yield batch["image"]

    def _images_and_foregrounds(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(image, foreground)`` of the first ``max_batches`` batches (an all-ones foreground when absent)."""
        prepare = PrepareImageAndForeground()
        for batch in self._batches():
            yield prepare(batch)


class FeatureStatisticsHandler(_TrainingImagesHandler):
    """Fit the frozen backbone's statistics (``network.extractor.fit_statistics``) when training starts.

    Args:
        network: a detector with an ``extractor`` attribute (:class:`common.backbones.FeatureExtractor`).
        loader: batches of training slice dictionaries with an ``image`` key (no augmentation needed).
        device: where to run.
        max_batches: use at most this many batches.
        refit: refit even if the extractor already holds fitted statistics (e.g. after resuming).
    """

    def __init__(
        self,
        network: nn.Module,
        loader: Iterable[Mapping[str, Any]],
        device: torch.device | str,
        max_batches: int | None = None,
        refit: bool = False,
    ) -> None:
        super().__init__(network, loader, device, max_batches)
        self.refit = refit

    def attach(self, engine: Any) -> None:
        """Run at ``Events.STARTED`` of ``engine``."""
        engine.add_event_handler(_engine_event("STARTED"), self)

    def __call__(self, engine: Any = None) -> None:
        """Fit the statistics unless they are already fitted."""
        extractor = getattr(unwrap_network(self.network), "extractor", None)
        if extractor is None:
            msg = f"{type(unwrap_network(self.network)).__name__} has no 'extractor' attribute to fit statistics on"
            raise AttributeError(msg)
        if bool(extractor.fitted) and not self.refit:
            logger.info("feature statistics already fitted; keeping them")
            return
        images = list(self._images())
        extractor.fit_statistics(images, self.device)
        logger.info("fitted feature statistics on %d training images", sum(len(b) for b in images))


class ForegroundStatisticsHandler(_TrainingImagesHandler):
    """Fit statistics that need the foreground (``network.fit_foreground_statistics``) when training starts.

    For statistics of frozen parts that count only the anatomy, e.g. Skip-TS's median teacher feature norm inside
    the brain. The network's method receives ``(image, foreground)`` batches and the device.

    Args:
        network: a detector with a ``fit_foreground_statistics(batches, device)`` method (or a wrapper of it).
        loader: batches of training slice dictionaries with ``image`` and ``foreground`` keys (no augmentation).
        device: where to run.
        max_batches: use at most this many batches.
    """

    def attach(self, engine: Any) -> None:
        """Run at ``Events.STARTED`` of ``engine``."""
        engine.add_event_handler(_engine_event("STARTED"), self)

    def __call__(self, engine: Any = None) -> None:
        """Fit the network's foreground statistics."""
        network = unwrap_network(self.network)
        fit = getattr(network, "fit_foreground_statistics", None)
        if fit is None:
            msg = f"{type(network).__name__} has no 'fit_foreground_statistics' method"
            raise AttributeError(msg)
        fit(list(self._images_and_foregrounds()), self.device)


class BatchNormStatisticsHandler(_TrainingImagesHandler):
    """Re-estimate the trainable BatchNorm running statistics with the final weights when training completes.

    The network's ``forward_train`` runs in training mode without gradients over ``loader`` (training images, no
    augmentation) and every BatchNorm layer in training mode gets the plain average of those batches' statistics
    (:func:`common.batchnorm.reestimate_batch_norm`, "precise BN"); a frozen backbone kept in eval mode is left
    untouched. Attach it BEFORE the calibration handler and the checkpoint saver, so thresholds are computed and
    saved with the re-estimated statistics. Measured on Skip-TS (``bundles/skip_ts/docs/README.md``, "BatchNorm
    statistics and the inverted short runs"): it removes the inverted maps of 2-epoch runs but localises worse from
    4 epochs on, so that bundle ships it switched off.

    Args:
        network: the detector (or its ``DistributedDataParallel`` / :class:`TrainingForward` wrapper), with a
            ``forward_train`` method.
        loader: batches of training slice dictionaries with an ``image`` key.
        device: where to run.
        max_batches: use at most this many batches (``None``: all).
        enabled: ``False`` attaches nothing (PyTorch's running averages are kept), for configs that switch it.
    """

    def __init__(
        self,
        network: nn.Module,
        loader: Iterable[Mapping[str, Any]],
        device: torch.device | str,
        max_batches: int | None = None,
        enabled: bool = True,
    ) -> None:
        super().__init__(network, loader, device, max_batches)
        self.enabled = check_bool("enabled", enabled)

    def attach(self, engine: Any) -> None:
        """Run at ``Events.COMPLETED`` of ``engine`` (nothing when not enabled)."""
        if self.enabled:
            engine.add_event_handler(_engine_event("COMPLETED"), self)

    def __call__(self, engine: Any = None) -> None:
        """Re-estimate the statistics."""
        network = unwrap_network(self.network)
        was_training = network.training
        network.train()
        try:
            norms = training_batch_norms(network)
            if not norms:
                logger.info("%s has no trainable BatchNorm layer; nothing to re-estimate", type(network).__name__)
                return
            n_batches = reestimate_batch_norm(norms, lambda: self._run(network))
        finally:
            network.train(was_training)
        logger.info("re-estimated %d BatchNorm layers' statistics on %d training batches", len(norms), n_batches)

    def _run(self, network: nn.Module) -> int:
        n_batches = 0
        for images in self._images():
            network.forward_train(images.to(self.device))
            n_batches += 1
        return n_batches


class CalibrationHandler:
    """Calibrate pixel and image thresholds on held-out normal images when training completes.

    Thresholds (docs/design.md): pixel threshold = ``pixel_quantile`` of normal foreground pixel scores, or with
    ``pixel_rule="slice_max"`` the ``1 - pixel_slice_fpr`` quantile of the normal slices' largest foreground pixel
    scores (:func:`common.scoring.pixel_threshold`); image threshold = the ``1 - image_fpr`` quantile of normal image
    scores. They are stored in ``network.calibration`` with the
    preprocessing and scoring settings, so the final checkpoint carries them. Attach it BEFORE the checkpoint saver.

    Args:
        network: a detector with a ``calibration`` attribute (:class:`common.scoring.Calibration`).
        loader: batches of held-out normal slice dictionaries (``image``, ``foreground``).
        device: where to run.
        scorer: how maps become image scores.
        pixel_quantile: quantile for the pixel threshold (rule ``"pixel_quantile"``).
        image_fpr: target image-level false-positive rate.
        pixel_rule: ``"pixel_quantile"`` or ``"slice_max"``.
        pixel_slice_fpr: share of normal slices allowed a non-empty mask (rule ``"slice_max"``).
        settings: preprocessing settings to store with the model.
    """

    def __init__(
        self,
        network: nn.Module,
        loader: Iterable[Mapping[str, Any]],
        device: torch.device | str,
        scorer: MapScorer,
        pixel_quantile: float = 0.999,
        image_fpr: float = 0.05,
        settings: Mapping[str, Any] | None = None,
        pixel_rule: str = "pixel_quantile",
        pixel_slice_fpr: float = 0.05,
    ) -> None:
        self.network = network
        self.loader = loader
        self.device = device
        self.scorer = scorer
        self.pixel_quantile = pixel_quantile
        self.image_fpr = image_fpr
        self.settings = dict(settings or {})
        self.pixel_rule = pixel_rule
        self.pixel_slice_fpr = pixel_slice_fpr

    def attach(self, engine: Any) -> None:
        """Run at ``Events.COMPLETED`` of ``engine``."""
        engine.add_event_handler(_engine_event("COMPLETED"), self)

    def __call__(self, engine: Any = None) -> None:
        """Compute and store the thresholds."""
        network = unwrap_network(self.network)
        maps, foregrounds, image_scores = predict_maps(network, self.loader, self.device, self.scorer)
        pixels = [m[f] for m, f in zip(maps, foregrounds, strict=True)]
        pixel_threshold, image_threshold = calibrate_thresholds(
            pixels, image_scores, self.pixel_quantile, self.image_fpr, self.pixel_rule, self.pixel_slice_fpr
        )
        network.calibration.set_thresholds(
            pixel_threshold,
            image_threshold,
            preprocessing=self.settings,
            scoring=self.scorer.as_dict(),
            pixel_quantile=self.pixel_quantile,
            image_fpr=self.image_fpr,
            pixel_rule=self.pixel_rule,
            pixel_slice_fpr=self.pixel_slice_fpr,
            n_calibration_slices=len(maps),
            normal_score_mean=float(np.mean(image_scores)),
            normal_score_std=float(np.std(image_scores)),
        )
        logger.info(
            "calibrated on %d normal slices: pixel threshold %.4g, image threshold %.4g",
            len(maps),
            pixel_threshold,
            image_threshold,
        )


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float | None) -> torch.optim.Optimizer:
    """Clip the global gradient norm of the optimizer's parameters before every step.

    Deep coupling flows are prone to early loss spikes (an unbounded translation term can throw a batch's latents
    far out); clipping keeps one such batch from wrecking the Adam moments. Implemented as an optimizer step
    pre-hook so MONAI's ``SupervisedTrainer`` needs no custom iteration (with AMP, ``GradScaler.step`` unscales the
    gradients before the hook runs).

    Args:
        optimizer: the optimizer to wrap (returned, for use in configs).
        max_norm: maximal global L2 norm; ``None`` or ``<= 0`` disables clipping.
    """
    if max_norm is None or max_norm <= 0:
        return optimizer
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def _clip(*_: Any) -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    optimizer.register_step_pre_hook(_clip)
    return optimizer


LR_DECAYS = ("constant", "cosine")


def learning_rate_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_iterations: int = 0,
    decay: str = "constant",
    total_iterations: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning-rate schedule: a linear warm-up to the base rate, then constant or a cosine decay to zero.

    Step it once per iteration (MONAI ``LrScheduleHandler(epoch_level=False)``). Warm-up is the usual remedy for the
    instability of deep flows in their first Adam steps (Kingma & Dhariwal, Glow, 2018): Adam moves every weight of
    the zero-initialised output layers by about the learning rate at once, and dozens of stacked couplings compound
    that into exploding latents. The cosine decay (Loshchilov & Hutter, SGDR, 2017, without restarts) lets a short
    run end on a settled network instead of wherever the last full-rate steps left it.

    Args:
        optimizer: the optimizer.
        warmup_iterations: iterations to reach the base rate (0 = no warm-up).
        decay: ``"constant"`` (the base rate after warm-up) or ``"cosine"`` (from the base rate after warm-up to zero
            at ``total_iterations``).
        total_iterations: iterations of the whole run; needed by ``"cosine"``.

    Raises:
        ValueError: for a negative warm-up, an unknown decay, or a cosine decay without ``total_iterations`` above the
            warm-up.
    """
    if warmup_iterations < 0:
        msg = f"warmup_iterations must be >= 0, got {warmup_iterations}"
        raise ValueError(msg)
    if decay not in LR_DECAYS:
        msg = f"learning-rate decay must be one of {LR_DECAYS}, got {decay!r}"
        raise ValueError(msg)
    if decay == "cosine" and total_iterations <= warmup_iterations:
        msg = f"a cosine decay needs total_iterations above warmup_iterations ({warmup_iterations}), got "
        msg += str(total_iterations)
        raise ValueError(msg)

    def factor(step: int) -> float:
        if step < warmup_iterations:
            return (step + 1) / warmup_iterations
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_iterations) / (total_iterations - warmup_iterations))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def load_checkpoint(network: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load ``model.pt`` (a ``state_dict`` or ``{"model": state_dict}``, as MONAI's ``CheckpointSaver`` writes it).

    Loaded with ``weights_only=True``; the calibration thresholds and settings travel inside the ``state_dict``. A
    checkpoint that describes its network (:mod:`common.checkpoint`) is first checked against the network's
    constructor arguments.

    Raises:
        FileNotFoundError: when the file does not exist (with the command that writes it).
        common.checkpoint.ArchitectureMismatchError: when the network was built with other architecture arguments
            than the checkpoint's.
    """
    state = read_state_dict(path)
    check_arguments(unwrap_network(network), path)
    unwrap_network(network).load_state_dict(state, strict=strict)
    return network


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The network ``state_dict`` of ``model.pt`` (read with ``weights_only=True``; unwraps ``{"model": ...}``).

    Raises:
        FileNotFoundError: when the file does not exist (with the command that writes it).
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: model checkpoint not found; train first (python -m monai.bundle run training ...)"
        raise FileNotFoundError(msg)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def load_thresholds(path: str | Path) -> tuple[float, float]:
    """``(pixel_threshold, image_threshold)`` calibrated during training, read from ``model.pt``.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the checkpoint holds no calibrated thresholds.
    """
    state = read_state_dict(path)
    values = []
    for name in ("pixel_threshold", "image_threshold"):
        found = [value for key, value in state.items() if key.split(".")[-2:] == ["calibration", name]]
        if len(found) != 1 or not torch.isfinite(torch.as_tensor(found[0])).all():
            msg = f"{path}: no calibrated {name} in the checkpoint (train with calibration, calibration_fraction > 0)"
            raise ValueError(msg)
        values.append(float(found[0]))
    return values[0], values[1]
