"""Skip-TS: a frozen teacher encoder and a student decoder joined by skip connections.

Paper: Liu M., Jiao Y., Lu J., Chen H., "Anomaly Detection for Medical Images Using Teacher-Student Model with Skip
Connections and Multi-scale Anomaly Consistency", IEEE Transactions on Instrumentation and Measurement 73, 2024,
https://ieeexplore.ieee.org/document/10540605. The design continues reverse distillation (Deng & Li, "Anomaly
Detection via Reverse Distillation from One-Class Embedding", CVPR 2022, https://arxiv.org/abs/2201.10703).

* T-Net (Sec. III-B): a ResNet-type encoder split into four sub-encoders E1-E4 giving ``F_t^1 .. F_t^4`` (strides
  4, 8, 16, 32); frozen and in eval mode. Grayscale slices are repeated to 3 channels.
* S-Net (Sec. III-C): three sub-decoders D3, D2, D1 mirroring E4, E3, E2; each starts with a transposed
  convolution (kernel 3, stride 2) and returns ``F_s^l`` of the shape of ``F_t^l``. D3 takes ``F_t^4``; with skip
  connections D_j takes ``F_t^{j+1} + F_s^{j+1}`` (without: ``F_s^{j+1}``, the "w/o SC" ablation).
* Anomaly map (Sec. III-E, eqs. 1, 7): ``M_ano = sum_l Upsample(M_l)`` with ``M_l = 1 - cos(F_t^l, F_s^l)``; the
  Gaussian smoothing (sigma = 4) and the image score ``max(M_ano)`` (eq. 8) are applied by
  :class:`common.scoring.MapScorer`. With ``map_weighting="teacher_norm"`` (the default, a departure) each ``M_l`` is
  multiplied by ``min(1, ||F_t^l|| / tau_l)`` (:func:`scripts.loss.teacher_strength_weights`), ``tau_l`` the median
  teacher norm over the training foreground.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from common.backbones import RANDOM_INITS, FeatureExtractor, random_init_options
from common.checkpoint import records_arguments
from common.checks import check_bool, check_image_size
from common.scoring import Calibration

from .loss import cosine_distance_map, teacher_strength_weights

__all__ = [
    "DECODER_SPECS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAP_WEIGHTINGS",
    "RANDOM_TEACHERS",
    "SkipTS",
    "SkipTSTrainOutput",
    "StudentDecoder",
]

logger = logging.getLogger(__name__)

RANDOM_TEACHERS = RANDOM_INITS
MAP_WEIGHTINGS = ("none", "teacher_norm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# teacher name -> (residual block type, blocks of the teacher stages E2, E3, E4, bottleneck width / output channels)
DECODER_SPECS: dict[str, tuple[str, tuple[int, int, int], float]] = {
    "resnet18": ("basic", (2, 2, 2), 1.0),
    "resnet34": ("basic", (4, 6, 3), 1.0),
    "resnet50": ("bottleneck", (4, 6, 3), 0.5),
    "wide_resnet50_2": ("bottleneck", (4, 6, 3), 1.0),
}


class SkipTSTrainOutput(NamedTuple):
    """Training outputs: teacher features ``F_t^1..F_t^3`` and student features ``F_s^1..F_s^3`` (same shapes)."""

    teacher: list[torch.Tensor]
    student: list[torch.Tensor]


def _up_conv(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """Transposed convolution, kernel 3, stride 2 (Sec. III-C); the exact output size is given at call time."""
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=False)


class _UpBlock(nn.Module):
    """A residual block that doubles the resolution: the mirror of a ResNet block that halves it.

    ``basic``: ConvT3x3(s2)-BN-ReLU-Conv3x3-BN; ``bottleneck``: Conv1x1-BN-ReLU-ConvT3x3(s2)-BN-ReLU-Conv1x1-BN.
    The shortcut is a ConvT3x3(s2)-BN; the sum goes through a ReLU.
    """

    def __init__(self, block: str, in_channels: int, out_channels: int, width: int) -> None:
        super().__init__()
        self.block = block
        if block == "basic":
            self.conv_a = nn.Identity()
            self.up = _up_conv(in_channels, out_channels)
            self.norm_up = nn.BatchNorm2d(out_channels)
            self.conv_b = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        else:
            self.conv_a = nn.Sequential(
                nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
            )
            self.up = _up_conv(width, width)
            self.norm_up = nn.BatchNorm2d(width)
            self.conv_b = nn.Conv2d(width, out_channels, 1, bias=False)
        self.norm_b = nn.BatchNorm2d(out_channels)
        self.shortcut = _up_conv(in_channels, out_channels)
        self.norm_shortcut = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Up-sample ``x`` ``(B, C_in, h, w)`` to ``(B, C_out, *size)``."""
        out = F.relu(self.norm_up(self.up(self.conv_a(x), output_size=list(size))))
        out = self.norm_b(self.conv_b(out))
        return F.relu(out + self.norm_shortcut(self.shortcut(x, output_size=list(size))))


class _ResBlock(nn.Module):
    """A residual block at constant resolution (basic: two 3x3 convs; bottleneck: 1x1-3x3-1x1)."""

    def __init__(self, block: str, channels: int, width: int) -> None:
        super().__init__()
        if block == "basic":
            layers = [
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
            ]
        else:
            layers = [
                nn.Conv2d(channels, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, channels, 1, bias=False),
                nn.BatchNorm2d(channels),
            ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(x + body(x))``."""
        return F.relu(x + self.body(x))


class _SubDecoder(nn.Module):
    """Sub-decoder D_j: one up-sampling block then ``n_blocks - 1`` residual blocks."""

    def __init__(self, block: str, in_channels: int, out_channels: int, n_blocks: int, width: int) -> None:
        super().__init__()
        self.up = _UpBlock(block, in_channels, out_channels, width)
        self.blocks = nn.Sequential(*(_ResBlock(block, out_channels, width) for _ in range(n_blocks - 1)))

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Decode ``x`` to ``(B, C_out, *size)``."""
        return self.blocks(self.up(x, size))


class StudentDecoder(nn.Module):
    """S-Net: sub-decoders D3, D2, D1 with optional skip connections (Sec. III-C).

    Args:
        channels: teacher channels ``(C_1, C_2, C_3, C_4)`` of ``F_t^1 .. F_t^4``.
        block: ``"basic"`` or ``"bottleneck"`` residual blocks (as the teacher's).
        n_blocks: blocks of D1, D2, D3 (mirroring the teacher stages E2, E3, E4).
        width_factor: bottleneck width as a fraction of a sub-decoder's output channels.
        skip_connections: feed ``F_t^{j+1} + F_s^{j+1}`` to D_j (``False``: only ``F_s^{j+1}``).

    Raises:
        ValueError: for wrong channel or block counts.
        TypeError: when ``skip_connections`` is not a ``bool``.
    """

    def __init__(
        self,
        channels: Sequence[int],
        block: str = "basic",
        n_blocks: Sequence[int] = (2, 2, 2),
        width_factor: float = 1.0,
        skip_connections: bool = True,
    ) -> None:
        super().__init__()
        if len(channels) != 4 or len(n_blocks) != 3 or min(n_blocks) < 1:
            msg = f"need 4 teacher channel counts and 3 block counts >= 1, got {list(channels)} and {list(n_blocks)}"
            raise ValueError(msg)
        self.skip_connections = check_bool("skip_connections", skip_connections)
        # decoders[j - 1] is D_j: C_{j+1} -> C_j
        self.decoders = nn.ModuleList(
            _SubDecoder(block, channels[j + 1], channels[j], n_blocks[j], max(1, int(channels[j] * width_factor)))
            for j in range(3)
        )

    def forward(self, teacher: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Student features ``[F_s^1, F_s^2, F_s^3]`` from teacher features ``[F_t^1, .., F_t^4]``."""
        student: list[torch.Tensor] = [None, None, None]  # type: ignore[list-item]
        x = teacher[3]  # D3 takes F_t^4
        for j in (2, 1, 0):
            student[j] = self.decoders[j](x, teacher[j].shape[-2:])
            if j > 0:
                x = teacher[j] + student[j] if self.skip_connections else student[j]
        return student


@records_arguments(runtime=("teacher_weights", "from_checkpoint"), readout=("map_levels", "map_weighting"))
class SkipTS(nn.Module):
    """Skip-TS teacher-student anomaly detector (Liu et al., IEEE TIM 2024).

    In eval mode ``forward(x)`` returns the anomaly map ``(B, 1, H, W)`` at the input resolution (higher = more
    anomalous): the sum of the selected levels' ``1 - cos`` maps, each bilinearly upsampled (eq. 7). Inputs are
    resized to ``image_size`` for the teacher when it is given.

    Args:
        in_channels: image channels (1: grayscale, repeated to 3 channels for the teacher).
        image_size: network input size ``(X, Y)`` (paper: 256 x 256), or ``None`` to run at the input size.
        teacher: timm/torchvision ResNet name, one of :data:`DECODER_SPECS` (paper: ``"wide_resnet50_2"``).
        teacher_weights: local torchvision (or timm) state-dict file, or ``None`` for random initialisation (logged
            as a warning: the paper assumes ImageNet weights).
        skip_connections: skip connections ``F_t^{j+1} + F_s^{j+1}`` (``False``: the "w/o SC" ablation).
        map_levels: levels of ``{1, 2, 3}`` summed into the anomaly map (ablation; paper: all three).
        standardize_features: standardise the teacher features per channel with training-set statistics (fitted by
            :class:`common.training.FeatureStatisticsHandler`) before distillation; ``False`` keeps the raw
            post-ReLU features as the paper does with a pretrained teacher.
        normalize_input: normalise the 3-channel teacher input with ImageNet mean and standard deviation (what a
            torchvision teacher expects).
        random_teacher: how a random teacher (no ``teacher_weights``) is initialised: ``"recalibrated"`` (residual
            branches active, BatchNorm statistics re-estimated on training images, as :mod:`common.backbones` does
            for MS-NF) or ``"timm"`` (timm's default: zero-initialised last BatchNorm of each residual block,
            untouched BatchNorm statistics, the random-init teacher of anomalib's reverse distillation).
        map_weighting: ``"teacher_norm"`` discounts each level's map where the teacher's features are weaker than
            their median over the training foreground (fitted by :meth:`fit_foreground_statistics`); ``"none"`` is
            the paper's eq. 1.
        from_checkpoint: the weights (teacher included) will be loaded from a trained ``model.pt``; silences the
            random-teacher warning (inference and evaluation configs).

    Raises:
        ValueError: for an unknown teacher or ``map_weighting``, a bad ``image_size`` or ``map_levels``.
        TypeError: when a switch (``skip_connections``, ``standardize_features``, ``normalize_input``,
            ``from_checkpoint``) is not a ``bool``, e.g. the string ``"false"`` from a lower-case command-line
            override.

    Example:
        >>> net = SkipTS(image_size=(64, 64)).eval()
        >>> net(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: Sequence[int] | None = (256, 256),
        teacher: str = "resnet18",
        teacher_weights: str | Path | None = None,
        skip_connections: bool = True,
        map_levels: Sequence[int] = (1, 2, 3),
        standardize_features: bool = False,
        normalize_input: bool = True,
        random_teacher: str = "timm",
        map_weighting: str = "teacher_norm",
        from_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("skip_connections", skip_connections),
            ("standardize_features", standardize_features),
            ("normalize_input", normalize_input),
            ("from_checkpoint", from_checkpoint),
        ):
            check_bool(name, value)
        if teacher not in DECODER_SPECS:
            msg = f"teacher must be one of {sorted(DECODER_SPECS)}, got {teacher!r}"
            raise ValueError(msg)
        if image_size is not None:
            image_size = check_image_size(image_size)
        levels = sorted({int(level) for level in map_levels})
        if not levels or not set(levels) <= {1, 2, 3}:
            msg = f"map_levels must be a non-empty subset of [1, 2, 3], got {list(map_levels)}"
            raise ValueError(msg)
        if map_weighting not in MAP_WEIGHTINGS:
            msg = f"map_weighting must be one of {MAP_WEIGHTINGS}, got {map_weighting!r}"
            raise ValueError(msg)
        if in_channels not in (1, 3):
            msg = f"in_channels must be 1 (grayscale) or 3, got {in_channels}"
            raise ValueError(msg)
        if teacher_weights is None and not from_checkpoint:
            logger.warning(
                "Skip-TS teacher %s has random weights (teacher_weights is null); the paper assumes an "
                "ImageNet-pretrained teacher: give a local torchvision state dict with teacher_weights",
                teacher,
            )
        self.image_size = image_size
        self.map_levels = levels
        self.extractor = FeatureExtractor(
            teacher,
            in_channels=in_channels,
            out_indices=(1, 2, 3, 4),
            weights=teacher_weights,
            standardize=standardize_features,
            backbone_in_channels=3,
            input_mean=IMAGENET_MEAN if normalize_input else None,
            input_std=IMAGENET_STD if normalize_input else None,
            **random_init_options(random_teacher, teacher_weights, key="random_teacher"),
        )
        block, n_blocks, width_factor = DECODER_SPECS[teacher]
        self.student = StudentDecoder(self.extractor.channels, block, n_blocks, width_factor, skip_connections)
        self.calibration = Calibration()
        self.map_weighting = map_weighting
        # tau_l per level, held whatever the weighting (a checkpoint evaluates either way); 0 until fitted
        self.register_buffer("teacher_norm_reference", torch.zeros(3))

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher encoder (E1-E4)."""
        return self.extractor.model

    def train(self, mode: bool = True) -> SkipTS:
        """Set the student's mode; the teacher stays in eval mode (frozen, Sec. III-B)."""
        super().train(mode)
        self.extractor.train(False)
        return self

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen teacher's features of ``x`` (resized to ``image_size`` first), detached."""
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return [f.detach() for f in self.extractor(x)]

    def forward_train(self, x: torch.Tensor) -> SkipTSTrainOutput:
        """Teacher features ``F_t^1..F_t^3`` and student features ``F_s^1..F_s^3`` for the loss (eq. 5)."""
        teacher = self.teacher_features(x)
        return SkipTSTrainOutput(teacher[:3], self.student(teacher))

    def level_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-level maps ``M_1, M_2, M_3`` (eq. 1, weighted by the teacher's strength when configured)."""
        out = self.forward_train(x)
        maps = [cosine_distance_map(t, s) for t, s in zip(out.teacher, out.student, strict=True)]
        if self.map_weighting == "teacher_norm":
            maps = [
                m * teacher_strength_weights(t, self.teacher_norm_reference[level])
                for level, (m, t) in enumerate(zip(maps, out.teacher, strict=True))
            ]
        return maps

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # checkpoints written before map_weighting existed have no reference: they load as unfitted (weights 1)
        key = prefix + "teacher_norm_reference"
        if key not in state_dict:
            if self.map_weighting == "teacher_norm":
                logger.warning("checkpoint has no teacher norm reference; the maps are not weighted (as 'none')")
            state_dict[key] = torch.zeros_like(self.teacher_norm_reference)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit_foreground_statistics(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str | None = None
    ) -> None:
        """Fit ``tau_l``, the median teacher feature norm over the foreground of training slices (per level).

        Fitted whatever ``map_weighting`` is, so a checkpoint can be read out either way. The teacher is frozen, so
        this runs once, before training (:class:`common.training.ForegroundStatisticsHandler`). A feature position
        counts as foreground when at least half of its cell is; a batch with no such position at a level
        contributes all its positions there.

        Args:
            batches: ``(image, foreground)`` batches ``(B, C, H, W)`` / ``(B, 1, H, W)`` of normal training slices.
            device: where to run; defaults to the teacher's device.

        Raises:
            ValueError: when ``batches`` is empty.
        """
        device = device or self.teacher_norm_reference.device
        norms: list[list[torch.Tensor]] = [[], [], []]
        for image, foreground in batches:
            image, foreground = image.to(device).float(), foreground.to(device).float()
            for level, feature in enumerate(self.teacher_features(image)[:3]):
                inside = F.interpolate(foreground, size=feature.shape[-2:], mode="area") >= 0.5
                norm = feature.norm(dim=1, keepdim=True)
                norms[level].append(norm[inside] if bool(inside.any()) else norm.flatten())
        if not norms[0]:
            msg = "fit_foreground_statistics needs at least one batch of training slices, got none"
            raise ValueError(msg)
        reference = torch.stack([torch.cat(level).double().median().float() for level in norms])
        self.teacher_norm_reference.copy_(reference.to(self.teacher_norm_reference.device))
        logger.info("teacher norm reference (median over the training foreground): %s", reference.tolist())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly map ``M_ano`` ``(B, 1, H, W)`` for images ``(B, C, H, W)`` (eq. 7, before smoothing)."""
        size = tuple(x.shape[-2:])
        maps = self.level_maps(x)
        upsampled = [
            F.interpolate(maps[level - 1], size=size, mode="bilinear", align_corners=False) for level in self.map_levels
        ]
        return torch.stack(upsampled, dim=0).sum(dim=0)
