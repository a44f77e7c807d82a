"""Frozen feature extractors for the anomaly detectors.

This is the only module that builds timm models. A backbone returns a list of feature maps, one per requested
stage, and reports their channels and strides the way timm's ``feature_info`` does.

Random initialisation needs care (the MS-NF paper trains its flows on a ResNet18 with no pretrained weights):

* timm zero-initialises the last BatchNorm of every residual block (``zero_init_last``), which silences the
  residual branches of an untrained network: each stage is then its first block's strided shortcut (a random
  linear filter bank and a ReLU), so the features are local (a receptive field of about 11 pixels at stride 4).
  :func:`random_init_options` names the two initialisations the detectors offer: ``"timm"`` (that one, as
  anomalib's random backbones are built) and ``"recalibrated"`` (``zero_init_last=False``, residual branches
  active, statistics re-estimated as below).
* With untrained BatchNorm running statistics (mean 0, variance 1) activations drift in scale from layer to layer
  and a sizeable fraction of channels are constant zero after ReLU. Constant channels let a normalizing flow reach
  arbitrarily high likelihood. :meth:`FeatureExtractor.fit_statistics` therefore re-estimates the BatchNorm running
  statistics on training images (random init only) and measures the per-channel mean and standard deviation of each
  output stage, which :meth:`FeatureExtractor.forward` uses to standardise the features. All of it is stored in
  buffers, so it travels with the model's ``state_dict``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from common.batchnorm import reestimate_batch_norm, training_batch_norms

__all__ = ["RANDOM_INITS", "FeatureExtractor", "build_backbone", "load_local_weights", "random_init_options"]

RANDOM_INITS = ("recalibrated", "timm")
"""How a backbone without a weight file is initialised (:func:`random_init_options`)."""


def random_init_options(
    random_init: str, weights: str | Path | None = None, key: str = "random_init"
) -> dict[str, bool]:
    """The :class:`FeatureExtractor` arguments of a random initialisation.

    Args:
        random_init: ``"recalibrated"`` (residual branches active, BatchNorm running statistics re-estimated on the
            training images in :meth:`FeatureExtractor.fit_statistics`) or ``"timm"`` (timm's default: the last
            BatchNorm of every residual block zero, running statistics untouched; local features, see the module
            docstring).
        weights: the backbone's weight file; with one, ``random_init`` is irrelevant (checked all the same).
        key: the setting's name in the error message (a bundle's config key).

    Returns:
        ``recalibrate_batchnorm`` and ``zero_init_last`` for :class:`FeatureExtractor`.

    Raises:
        ValueError: for a value outside :data:`RANDOM_INITS`.
    """
    if random_init not in RANDOM_INITS:
        msg = f"{key} must be one of {RANDOM_INITS}, got {random_init!r}"
        raise ValueError(msg)
    timm_init = weights is None and random_init == "timm"
    return {"recalibrate_batchnorm": weights is None and not timm_init, "zero_init_last": timm_init}


logger = logging.getLogger(__name__)


def load_local_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a state dict from a local file into ``model`` (no download ever happens).

    The file may hold a plain state dict, ``{"state_dict": ...}`` or ``{"model": ...}``. A 3-channel first
    convolution is summed over its input channels when the model expects one channel (as timm adapts pretrained
    weights for ``in_chans=1``).

    Args:
        model: the network to fill.
        weights: path of a ``.pt``/``.pth`` file.

    Raises:
        FileNotFoundError: when ``weights`` does not exist.
        ValueError: when the file holds no state dict.
    """
    path = Path(weights)
    if not path.is_file():
        msg = f"{path}: backbone weights file not found (give a local file path, or null for random initialisation)"
        raise FileNotFoundError(msg)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        msg = f"{path}: expected a state dict, got {type(state).__name__}"
        raise ValueError(msg)
    own = model.state_dict()
    for name, value in list(state.items()):
        if name in own and value.ndim == 4 and own[name].ndim == 4 and value.shape[1] != own[name].shape[1]:
            if own[name].shape[1] == 1:
                state[name] = value.sum(dim=1, keepdim=True)
                logger.info("%s: summed the %d input channels of %s for a 1-channel input", path, value.shape[1], name)
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = len(set(state) & set(own))  # load_state_dict never reports BatchNorm's num_batches_tracked as missing
    if loaded == 0:
        msg = f"{path}: no parameter names match the backbone (unexpected keys such as {unexpected[:3]})"
        raise ValueError(msg)
    if missing:
        logger.warning("%s: %d backbone tensors were not in the file and keep their initial values", path, len(missing))


def build_backbone(
    name: str = "resnet18",
    in_channels: int = 1,
    out_indices: Sequence[int] = (1, 2, 3),
    weights: str | Path | None = None,
    zero_init_last: bool | None = None,
) -> nn.Module:
    """Build a timm feature backbone (``features_only``) that returns the requested stages.

    Args:
        name: a timm model name, e.g. ``"resnet18"`` or ``"wide_resnet50_2"``.
        in_channels: image channels (1 for grayscale; the first convolution is built for it).
        out_indices: stages to return (timm numbering, 1..3 = the first three residual stages of a ResNet).
        weights: local weight file, or ``None`` for random initialisation.
        zero_init_last: for random ResNet-type initialisation, zero the last BatchNorm of every residual block
            (timm's default); ``None`` means ``False`` (residual branches active, see the module docstring).

    Returns:
        The timm feature model; ``model.feature_info.channels()`` and ``.reduction()`` describe its outputs.

    Raises:
        ValueError: for an unknown model name.
    """
    import timm

    if name not in timm.list_models():
        msg = f"backbone {name!r} is not a timm model name; examples: 'resnet18', 'wide_resnet50_2'"
        raise ValueError(msg)
    kwargs = {}
    if weights is None and name.startswith(("resnet", "wide_resnet", "resnext")):
        kwargs["zero_init_last"] = bool(zero_init_last)
    model = timm.create_model(
        name, pretrained=False, features_only=True, out_indices=tuple(out_indices), in_chans=in_channels, **kwargs
    )
    if weights is not None:
        load_local_weights(model, weights)
    return model


class FeatureExtractor(nn.Module):
    """A frozen multi-scale feature extractor with per-channel standardisation fitted on training images.

    Args:
        backbone: timm model name.
        in_channels: image channels.
        out_indices: stages to return.
        weights: local weight file or ``None`` (random initialisation).
        standardize: standardise each channel with the training-set mean and standard deviation.
        recalibrate_batchnorm: re-estimate BatchNorm running statistics on training images in
            :meth:`fit_statistics`; ``None`` means "only for random initialisation".
        min_std: floor on the per-channel standard deviation (relative to the median channel's), so that
            near-constant channels are not amplified into noise.
        backbone_in_channels: input channels of the backbone's first convolution when they differ from
            ``in_channels``; a 1-channel image is then repeated to that many channels (a 3-channel teacher on
            grayscale slices, as teacher-student detectors use ImageNet-style encoders). ``None``: ``in_channels``.
        input_mean: per-channel mean subtracted from the (repeated) input before the backbone, e.g. ImageNet's
            ``(0.485, 0.456, 0.406)`` for a torchvision teacher; ``None``: no input normalisation.
        input_std: per-channel standard deviation the input is divided by (with ``input_mean``).
        zero_init_last: passed to :func:`build_backbone` (random initialisation only).

    Example:
        >>> extractor = FeatureExtractor("resnet18", in_channels=1)
        >>> [f.shape[1] for f in extractor(torch.rand(2, 1, 64, 64))]
        [64, 128, 256]
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        in_channels: int = 1,
        out_indices: Sequence[int] = (1, 2, 3),
        weights: str | Path | None = None,
        standardize: bool = True,
        recalibrate_batchnorm: bool | None = None,
        min_std: float = 0.05,
        backbone_in_channels: int | None = None,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
        zero_init_last: bool | None = None,
    ) -> None:
        super().__init__()
        if min_std < 0:
            msg = f"min_std must be >= 0, got {min_std}"
            raise ValueError(msg)
        model_channels = in_channels if backbone_in_channels is None else int(backbone_in_channels)
        if model_channels != in_channels and in_channels != 1:
            msg = (
                f"backbone_in_channels={model_channels} needs in_channels=1 (a grayscale image is repeated), "
                f"got in_channels={in_channels}"
            )
            raise ValueError(msg)
        if (input_mean is None) != (input_std is None):
            msg = f"input_mean and input_std must be given together, got {input_mean} and {input_std}"
            raise ValueError(msg)
        if input_mean is not None and not len(input_mean) == len(input_std) == model_channels:
            msg = f"input_mean and input_std need {model_channels} values each, got {input_mean} and {input_std}"
            raise ValueError(msg)
        if input_std is not None and min(input_std) <= 0:
            msg = f"input_std must be positive, got {input_std}"
            raise ValueError(msg)
        self.in_channels = in_channels
        self.backbone_in_channels = model_channels
        self.normalize_input = input_mean is not None
        mean = torch.tensor(list(input_mean) if input_mean is not None else [0.0] * model_channels)
        std = torch.tensor(list(input_std) if input_std is not None else [1.0] * model_channels)
        self.register_buffer("input_mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", std.view(1, -1, 1, 1), persistent=False)
        self.model = build_backbone(backbone, model_channels, out_indices, weights, zero_init_last)
        self.model.requires_grad_(False)
        self.model.eval()
        self.standardize = standardize
        self.recalibrate_batchnorm = weights is None if recalibrate_batchnorm is None else recalibrate_batchnorm
        self.min_std = min_std
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.strides: list[int] = list(self.model.feature_info.reduction())
        for level, channels in enumerate(self.channels):
            self.register_buffer(f"mean_{level}", torch.zeros(1, channels, 1, 1))
            self.register_buffer(f"std_{level}", torch.ones(1, channels, 1, 1))
        self.register_buffer("fitted", torch.tensor(False))

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Keep the backbone in eval mode whatever the parent module's mode (it is frozen)."""
        super().train(mode)
        self.model.eval()
        return self

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat a 1-channel image ``(B, 1, H, W)`` to the backbone's channels and normalise it (if configured)."""
        if x.shape[1] != self.backbone_in_channels and x.shape[1] == 1:
            x = x.expand(-1, self.backbone_in_channels, -1, -1)
        if self.normalize_input:
            x = (x - self.input_mean) / self.input_std
        return x

    @torch.no_grad()
    def fit_statistics(self, images: Iterable[torch.Tensor], device: torch.device | str | None = None) -> None:
        """Fit BatchNorm statistics (random init only) and per-channel feature statistics on training images.

        Args:
            images: an iterable of image batches ``(B, C, H, W)`` at the network size (e.g. a DataLoader's images).
            device: where to run; defaults to the module's device.
        """
        batches = list(images)
        if not batches:
            msg = "fit_statistics needs at least one batch of training images, got none"
            raise ValueError(msg)
        device = device or next(self.model.parameters()).device
        if self.recalibrate_batchnorm:
            self.model.train()
            try:
                reestimate_batch_norm(training_batch_norms(self.model), lambda: self._forward_all(batches, device))
            finally:
                self.model.eval()
        sums = [torch.zeros(c, dtype=torch.float64, device=device) for c in self.channels]
        squares = [torch.zeros(c, dtype=torch.float64, device=device) for c in self.channels]
        counts = [0] * len(self.channels)
        for batch in batches:
            for level, feature in enumerate(self.model(self.prepare_input(batch.to(device)))):
                feature = feature.double()
                sums[level] += feature.sum(dim=(0, 2, 3))
                squares[level] += (feature**2).sum(dim=(0, 2, 3))
                counts[level] += feature.shape[0] * feature.shape[2] * feature.shape[3]
        for level in range(len(self.channels)):
            mean = sums[level] / counts[level]
            std = (squares[level] / counts[level] - mean**2).clamp_min(0).sqrt()
            floor = max(float(std.median()) * self.min_std, 1e-6)
            dead = int((std < floor).sum())
            if dead:
                logger.warning("feature level %d: %d of %d channels are near-constant", level, dead, len(std))
            getattr(self, f"mean_{level}").copy_(mean.float().view(1, -1, 1, 1))
            getattr(self, f"std_{level}").copy_(std.clamp_min(floor).float().view(1, -1, 1, 1))
        self.fitted.fill_(True)

    def _forward_all(self, batches: Sequence[torch.Tensor], device: torch.device | str) -> int:
        for batch in batches:
            self.model(self.prepare_input(batch.to(device)))
        return len(batches)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Extract the features of ``x`` ``(B, C, H, W)``: a list of ``(B, C_l, H / s_l, W / s_l)`` tensors."""
        self.model.eval()
        with torch.no_grad():
            features = self.model(self.prepare_input(x))
        if not self.standardize:
            return list(features)
        return [(f - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}") for i, f in enumerate(features)]
