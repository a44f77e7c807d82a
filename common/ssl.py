"""Self-supervised pretraining of a detector backbone on healthy slices with VICReg.

The normalizing-flow detectors (MS-NF, DNFAD) read a frozen ResNet18 that has no pretrained weights (nothing is
downloaded). This module pretrains that backbone offline on the healthy training slices with VICReg (Bardes, Ponce
and LeCun, 2022, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning", ICLR,
https://arxiv.org/abs/2105.04906); ``tools/configs/pretrain_backbone.json`` runs it with MONAI's
``SupervisedTrainer`` and writes a weight file that the bundles' ``backbone_weights`` loads as it is.

Why VICReg rather than SimCLR's NT-Xent (``monai.losses.ContrastiveLoss``): a contrastive loss treats every other
image of the batch as a negative, but the slices of one dataset are near-duplicates (neighbouring slices of one scan,
the same anatomy in every subject), so many "negatives" are false ones, and NT-Xent needs large batches to work at
all. VICReg uses no negatives: it keeps the two views' embeddings close (invariance), each embedding dimension spread
over the batch (variance) and the dimensions decorrelated (covariance), which also works with small batches.

Pieces:

* :class:`VICRegLoss`: the loss (Eqs. 1-6 of the paper), a configurable ``nn.Module``.
* :class:`Projector`: the expander MLP (Sec. 4.1: three linear layers, BatchNorm and ReLU after the first two).
* :class:`SelfSupervisedBackbone`: the backbone of :func:`common.backbones.build_backbone` (same modules, same state
  dict keys as the detectors' backbone), global-average-pooled at its last stage, followed by the projector.
* :func:`two_view_transforms`: two independently augmented views of each slice, from MONAI transforms.
* :func:`pretraining_records`: the healthy files to read (``train/good`` minus the bundles' calibration split, plus
  optional extra folders of healthy images; never ``test/``), and :func:`pretraining_slices`, their slices as the
  bundles' training selects them.
* :class:`PrepareViews` and :class:`BackboneWeightsSaver`: the glue to MONAI's trainer and the output file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from monai.transforms import (
    Compose,
    CopyItemsd,
    EnsureTyped,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleCropd,
    RandScaleIntensityd,
    Resized,
    SelectItemsd,
)
from torch import Tensor, nn

from common.backbones import build_backbone
from common.checks import check_int_at_least, check_non_negative
from common.data import ImageRecord, discover_dataset, list_image_files, split_training_records
from common.io import atomic_output
from common.parallel import unwrap_network
from common.volumes import SliceSettings, load_slices

__all__ = [
    "VIEW_KEYS",
    "BackboneWeightsSaver",
    "PrepareViews",
    "Projector",
    "SelfSupervisedBackbone",
    "VICRegLoss",
    "VICRegTerms",
    "ViewEmbeddings",
    "pretraining_records",
    "pretraining_slices",
    "two_view_transforms",
]

logger = logging.getLogger(__name__)

VIEW_KEYS = ("view_a", "view_b")
"""Dictionary keys of the two augmented views made by :func:`two_view_transforms`."""


class ViewEmbeddings(NamedTuple):
    """The projector outputs of the two views of a batch, each ``(B, D)`` (training output of the wrapper)."""

    embedding_a: Tensor
    embedding_b: Tensor


class VICRegTerms(NamedTuple):
    """The three unweighted VICReg terms (scalars): invariance ``s``, variance ``v`` and covariance ``c``."""

    invariance: Tensor
    variance: Tensor
    covariance: Tensor


# Written here: MONAI ships SimCLR's NT-Xent (ContrastiveLoss) and BarlowTwinsLoss but no VICReg, nor does any
# installed library.
class VICRegLoss(nn.Module):
    r"""VICReg loss (Bardes, Ponce and LeCun, ICLR 2022, https://arxiv.org/abs/2105.04906, Sec. 3).

    For the embeddings :math:`Z, Z' \in \mathbb{R}^{n \times d}` of two views of a batch of :math:`n` images:

    .. math::

        v(Z) = \frac{1}{d}\sum_{j=1}^{d} \max\big(0, \gamma - \sqrt{\mathrm{Var}(z^j) + \epsilon}\big)
            \qquad \text{(Eq. 1)}

        C(Z) = \frac{1}{n-1}\sum_{i=1}^{n} (z_i - \bar z)(z_i - \bar z)^\top, \qquad
        c(Z) = \frac{1}{d}\sum_{i \neq j} [C(Z)]_{i,j}^2 \qquad \text{(Eqs. 2-3)}

        s(Z, Z') = \frac{1}{n d}\sum_{i=1}^{n} \lVert z_i - z'_i \rVert_2^2 \qquad \text{(Eq. 5)}

        \ell(Z, Z') = \lambda\, s(Z, Z') + \mu\, \tfrac{1}{2}\big[v(Z) + v(Z')\big] + \nu\, \big[c(Z) + c(Z')\big]
            \qquad \text{(Eq. 6)}

    The paper's defaults are :math:`\lambda = \mu = 25`, :math:`\nu = 1`, :math:`\gamma = 1`,
    :math:`\epsilon = 10^{-4}`. Two normalisations follow the authors' reference implementation, for which those
    weights were tuned, rather than the letter of the equations: :math:`s` is a mean over all :math:`n d` entries
    (Eq. 5 divides by :math:`n` only) and the variance terms of the two branches are averaged (Eq. 6 sums them).
    The terms are computed in float32 whatever the input's precision (autocast), as the covariance of a large batch
    is not safe in float16.

    Args:
        invariance_weight: :math:`\lambda`, weight of the invariance term :math:`s` (>= 0).
        variance_weight: :math:`\mu`, weight of the variance terms :math:`v` (>= 0).
        covariance_weight: :math:`\nu`, weight of the covariance terms :math:`c` (>= 0).
        gamma: :math:`\gamma`, target standard deviation of every embedding dimension (> 0).
        eps: :math:`\epsilon`, added to the variance before the square root (> 0).

    Raises:
        ValueError: for a negative weight, or a ``gamma`` / ``eps`` that is not positive.

    Example:
        >>> loss = VICRegLoss()
        >>> z = torch.randn(8, 4)
        >>> float(loss(z, z)) < float(loss(z, torch.randn(8, 4)))
        True
    """

    def __init__(
        self,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        check_non_negative("invariance_weight", invariance_weight)
        check_non_negative("variance_weight", variance_weight)
        check_non_negative("covariance_weight", covariance_weight)
        for name, value in (("gamma", gamma), ("eps", eps)):
            if not value > 0:
                msg = f"{name} must be > 0, got {value}"
                raise ValueError(msg)
        self.invariance_weight = float(invariance_weight)
        self.variance_weight = float(variance_weight)
        self.covariance_weight = float(covariance_weight)
        self.gamma = float(gamma)
        self.eps = float(eps)

    def variance(self, z: Tensor) -> Tensor:
        """:math:`v(Z)` of Eq. 1: hinge on the standard deviation of each dimension over the batch ``(n, d)``."""
        std = torch.sqrt(z.var(dim=0) + self.eps)
        return torch.relu(self.gamma - std).mean()

    @staticmethod
    def covariance(z: Tensor) -> Tensor:
        """:math:`c(Z)` of Eqs. 2-3: sum of the squared off-diagonal covariances over the batch, divided by ``d``."""
        n, d = z.shape
        centred = z - z.mean(dim=0)
        cov = centred.T @ centred / (n - 1)
        diagonal = torch.eye(d, dtype=torch.bool, device=z.device)
        return cov.masked_fill(diagonal, 0.0).pow(2).sum() / d

    def terms(self, z_a: Tensor, z_b: Tensor) -> VICRegTerms:
        """The unweighted terms: ``s(Z, Z')`` (Eq. 5), ``(v(Z) + v(Z')) / 2`` and ``c(Z) + c(Z')``.

        Args:
            z_a: embeddings of the first views, ``(n, d)``.
            z_b: embeddings of the second views, ``(n, d)``.

        Raises:
            ValueError: when the shapes differ, are not 2D, or the batch has fewer than 2 samples.
        """
        if z_a.ndim != 2 or z_a.shape != z_b.shape:
            shapes = f"{tuple(z_a.shape)} and {tuple(z_b.shape)}"
            msg = f"VICRegLoss needs two (n, d) embeddings of the same shape, got {shapes}"
            raise ValueError(msg)
        if z_a.shape[0] < 2:
            msg = f"VICRegLoss needs a batch of at least 2 samples (variances over the batch), got {z_a.shape[0]}"
            raise ValueError(msg)
        z_a, z_b = z_a.float(), z_b.float()
        invariance = torch.mean((z_a - z_b) ** 2)
        variance = (self.variance(z_a) + self.variance(z_b)) / 2
        covariance = self.covariance(z_a) + self.covariance(z_b)
        return VICRegTerms(invariance, variance, covariance)

    def forward(self, z_a: Tensor | Sequence[Tensor], z_b: Tensor | None = None) -> Tensor:
        """The weighted loss of Eq. 6, a scalar.

        Args:
            z_a: embeddings of the first views ``(n, d)``, or a pair of embeddings such as the
                :class:`ViewEmbeddings` training output of :class:`SelfSupervisedBackbone` (then ``z_b`` is ``None``:
                a MONAI trainer passes its absent target there).
            z_b: embeddings of the second views ``(n, d)``.
        """
        if z_b is None:
            if isinstance(z_a, Tensor) or len(z_a) != 2:
                msg = "VICRegLoss needs two embeddings: call loss(z_a, z_b) or loss(ViewEmbeddings(z_a, z_b))"
                raise TypeError(msg)
            z_a, z_b = z_a
        s, v, c = self.terms(z_a, z_b)
        return self.invariance_weight * s + self.variance_weight * v + self.covariance_weight * c


class Projector(nn.Sequential):
    """The VICReg expander (Sec. 4.1): linear layers, each but the last followed by BatchNorm1d and ReLU.

    The paper uses three layers of 8192 units after a ResNet-50; the default here is 2048 for a ResNet18 stage.

    Args:
        in_features: width of the pooled backbone representation.
        channels: widths of the linear layers (the last is the embedding width ``d``); at least one.

    Raises:
        ValueError: when ``channels`` is empty or holds a width below 1.
    """

    def __init__(self, in_features: int, channels: Sequence[int] = (2048, 2048, 2048)) -> None:
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1:
            msg = f"projector channels must be one or more widths >= 1, got {list(channels)} (e.g. [2048, 2048, 2048])"
            raise ValueError(msg)
        layers: list[nn.Module] = []
        width = int(in_features)
        for index, out_features in enumerate(channels):
            last = index == len(channels) - 1
            layers.append(nn.Linear(width, out_features, bias=last))
            if not last:
                layers += [nn.BatchNorm1d(out_features), nn.ReLU(inplace=True)]
            width = out_features
        super().__init__(*layers)


class SelfSupervisedBackbone(nn.Module):
    """A detector backbone with a pooled representation and a VICReg projector, for self-supervised pretraining.

    ``self.backbone`` is exactly what :func:`common.backbones.build_backbone` builds for the detectors (a timm
    ``features_only`` model; random initialisation with active residual branches), so
    :meth:`backbone_state_dict` has the keys their ``backbone_weights`` expects. The representation is the global
    average of the last requested stage (with the default stages 1-3 of a ResNet18: ``layer3``, 256 channels, the
    deepest stage MS-NF and DNFAD read; ``layer4`` is not built, trained or saved).

    Args:
        backbone: timm model name (``"resnet18"``).
        in_channels: image channels (1 for MR slices).
        out_indices: backbone stages, as the detectors request them; the last one is pooled.
        projector_channels: widths of the :class:`Projector` layers.

    Example:
        >>> model = SelfSupervisedBackbone(projector_channels=(32, 32, 16))
        >>> model(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 256])
        >>> model.forward_train(torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)).embedding_a.shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        in_channels: int = 1,
        out_indices: Sequence[int] = (1, 2, 3),
        projector_channels: Sequence[int] = (2048, 2048, 2048),
    ) -> None:
        super().__init__()
        check_int_at_least("in_channels", in_channels, 1)
        if len(out_indices) < 1:
            msg = f"out_indices must name at least one backbone stage, got {tuple(out_indices)}"
            raise ValueError(msg)
        self.backbone_name = backbone
        self.in_channels = in_channels
        self.out_indices = tuple(int(i) for i in out_indices)
        self.backbone = build_backbone(backbone, in_channels, self.out_indices)
        self.representation_channels = int(self.backbone.feature_info.channels()[-1])
        self.projector = Projector(self.representation_channels, projector_channels)

    def forward(self, x: Tensor) -> Tensor:
        """The pooled representation of ``x`` ``(B, C, H, W)``: ``(B, C_last)``."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.backbone(x)[-1], 1), 1)

    def forward_train(self, view_a: Tensor, view_b: Tensor) -> ViewEmbeddings:
        """Embed both views ``(B, C, H, W)`` into a :class:`ViewEmbeddings` of two ``(B, D)`` tensors.

        Each view goes through the backbone and the projector on its own, so BatchNorm takes its batch statistics
        per view, as in the paper's two branches.
        """
        return ViewEmbeddings(self.projector(self(view_a)), self.projector(self(view_b)))

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The backbone's weights on the CPU, keyed as :func:`common.backbones.build_backbone`'s model."""
        return {key: value.detach().cpu().clone() for key, value in self.backbone.state_dict().items()}


def _view_chain(
    key: str,
    crop_size: tuple[int, int],
    crop_scale: tuple[float, float],
    flip_prob: float,
    rotate_degrees: float,
    affine_prob: float,
    intensity_prob: float,
    blur_prob: float,
    blur_sigma: tuple[float, float],
    noise_prob: float,
    noise_std: float,
) -> Compose:
    return Compose(
        [
            # RandomResizedCrop (Sec. 4.1, App. C) with MONAI: a random crop of each side between the two scales of the
            # slice, then resized to the crop size.
            RandScaleCropd(keys=key, roi_scale=crop_scale[0], max_roi_scale=crop_scale[1], random_size=True),
            Resized(keys=key, spatial_size=crop_size, mode="bilinear"),
            RandFlipd(keys=key, prob=flip_prob, spatial_axis=0),
            RandAffined(keys=key, prob=affine_prob, rotate_range=math.radians(rotate_degrees), padding_mode="zeros"),
            # colour jitter of a grayscale image: contrast (gamma) and brightness (scale)
            RandAdjustContrastd(keys=key, prob=intensity_prob, gamma=(0.7, 1.5)),
            RandScaleIntensityd(keys=key, prob=intensity_prob, factors=0.2),
            RandGaussianSmoothd(keys=key, prob=blur_prob, sigma_x=blur_sigma, sigma_y=blur_sigma),
            RandGaussianNoised(keys=key, prob=noise_prob, std=noise_std),
        ]
    )


def two_view_transforms(
    crop_size: Sequence[int] = (224, 224),
    crop_scale: Sequence[float] = (0.4, 1.0),
    flip_prob: float = 0.5,
    rotate_degrees: float = 10.0,
    affine_prob: float = 0.5,
    intensity_prob: float = 0.8,
    blur_prob: Sequence[float] = (1.0, 0.1),
    blur_sigma: Sequence[float] = (0.1, 2.0),
    noise_prob: float = 0.2,
    noise_std: float = 0.02,
) -> Compose:
    """MONAI chain that turns a slice dictionary ``{"image": (1, X, Y), ...}`` into ``{"view_a", "view_b"}``.

    The image is copied to both keys and each copy goes through its own instance of the augmentation chain, so the
    two views get independent random parameters. The chain follows VICReg's image augmentations (App. C: random
    resized crop, horizontal flip, colour jitter, Gaussian blur with probability 1.0 for one view and 0.1 for the
    other) for grayscale MR slices: a small rotation replaces the colour-to-grayscale step, intensity gamma and
    scaling replace colour jitter, and mild Gaussian noise replaces solarisation. Only the two views are kept.

    Args:
        crop_size: output size ``(X, Y)`` of both views.
        crop_scale: range of the crop side as a fraction of the slice side (each axis drawn on its own).
        flip_prob: probability of a left-right flip (MONAI's first spatial axis).
        rotate_degrees: maximal absolute rotation (degrees) of the random affine.
        affine_prob: probability of the random rotation.
        intensity_prob: probability of each of the gamma-contrast and intensity-scaling steps.
        blur_prob: Gaussian blur probability of view a and of view b.
        blur_sigma: range of the blur's sigma (pixels).
        noise_prob: probability of additive Gaussian noise.
        noise_std: upper bound of the noise's standard deviation (intensities are in [0, 1]).

    Raises:
        ValueError: for a crop scale outside ``0 < low <= high <= 1``, a crop size below 32 or a probability outside
            [0, 1].
    """
    size = tuple(int(s) for s in crop_size)
    if len(size) != 2 or min(size) < 32:
        msg = f"crop_size must be two sizes of at least 32 (the ResNet's stride), got {tuple(crop_size)}"
        raise ValueError(msg)
    scale = tuple(float(s) for s in crop_scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        msg = f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {tuple(crop_scale)}"
        raise ValueError(msg)
    blur = [float(p) for p in blur_prob]
    if len(blur) != 2:
        msg = f"blur_prob needs one probability per view, got {list(blur_prob)}"
        raise ValueError(msg)
    probabilities = {"flip_prob": flip_prob, "affine_prob": affine_prob, "intensity_prob": intensity_prob}
    probabilities |= {"noise_prob": noise_prob, "blur_prob[0]": blur[0], "blur_prob[1]": blur[1]}
    for name, value in probabilities.items():
        if not 0.0 <= value <= 1.0:
            msg = f"{name} must be a probability in [0, 1], got {value}"
            raise ValueError(msg)
    sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
    chains = [
        _view_chain(
            key, size, scale, flip_prob, rotate_degrees, affine_prob, intensity_prob, p, sigma, noise_prob, noise_std
        )
        for key, p in zip(VIEW_KEYS, blur, strict=True)
    ]
    return Compose(
        [
            CopyItemsd(keys="image", times=2, names=list(VIEW_KEYS)),
            *chains,
            SelectItemsd(keys=list(VIEW_KEYS)),
            EnsureTyped(keys=list(VIEW_KEYS), dtype=torch.float32, track_meta=False),
        ]
    )


def pretraining_records(
    dataset_dir: str | Path,
    extra_dirs: Sequence[str | Path] = (),
    calibration_fraction: float = 0.15,
    seed: int = 0,
) -> list[ImageRecord]:
    """The healthy files pretraining reads: ``train/good`` less the calibration split, plus extra healthy folders.

    The split is :func:`common.data.split_training_records` with the bundles' ``calibration_fraction`` and ``seed``,
    so a detector trained with the same two values calibrates its thresholds on files the backbone never saw. No
    file under ``test/`` is ever opened (the dataset index lists names only, and only ``train/good`` is kept).

    Args:
        dataset_dir: a dataset in the docs/design.md layout.
        extra_dirs: further folders of healthy images or volumes (the image files directly inside each), e.g. the
            ``train/good`` of another dataset; never a folder under ``dataset_dir/test``.
        calibration_fraction: fraction of ``train/good`` files left out, as the bundles hold them out (0 keeps all).
        seed: the split's seed (the bundles' ``seed``).

    Returns:
        The records, label 0 (normal); extra files carry no foreground mask file (it is computed).

    Raises:
        common.data.DatasetLayoutError: when ``dataset_dir`` has no ``train/good`` images.
        ValueError: when an extra folder holds no image file or lies under ``dataset_dir/test``.
    """
    index = discover_dataset(dataset_dir)
    records, _ = split_training_records(index.train_good, calibration_fraction, seed)
    test_root = (Path(dataset_dir) / "test").resolve()
    for folder in extra_dirs:
        folder = Path(folder)
        if folder.resolve() == test_root or test_root in folder.resolve().parents:
            msg = f"{folder}: extra_dirs must hold healthy training images, not the test set under {test_root}"
            raise ValueError(msg)
        files = list_image_files(folder)
        if not files:
            msg = f"{folder}: extra healthy folder has no image files directly inside (give e.g. <dataset>/train/good)"
            raise ValueError(msg)
        records += [ImageRecord(path, 0, "good") for path in files]
    logger.info("self-supervised pretraining on %d healthy files", len(records))
    return records


def pretraining_slices(
    records: Sequence[ImageRecord], settings: SliceSettings | dict | None = None
) -> list[dict[str, Any]]:
    """The slice dictionaries of ``records``, cut as the bundles cut them (:func:`common.volumes.load_slices`).

    Args:
        records: the files (:func:`pretraining_records`).
        settings: the bundles' slice settings (axis, brain extraction, ``min_brain_fraction``, intensity, ...).

    Raises:
        ValueError: when fewer than 2 slices remain (VICReg's variances need a batch of at least 2).
    """
    slices = load_slices(records, settings)
    if len(slices) < 2:
        msg = (
            f"self-supervised pretraining needs at least 2 healthy slices, got {len(slices)} from {len(records)} files"
        )
        raise ValueError(msg)
    return slices


class PrepareViews:
    """``prepare_batch`` for MONAI's ``SupervisedTrainer``: the two views as the network's inputs, no target.

    Returns ``(view_a, None, (view_b,), {})``, so the trainer's inferer (:class:`common.training.ForwardTrainInferer`)
    calls ``network.forward_train(view_a, view_b)`` and the loss gets the :class:`ViewEmbeddings` and ``None``.

    Raises:
        KeyError: when the batch lacks a view (the dataset's transform must be :func:`two_view_transforms`).
    """

    def __call__(
        self,
        batchdata: Mapping[Hashable, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[Tensor, None, tuple[Tensor], dict]:
        """Move both views to ``device``."""
        missing = [key for key in VIEW_KEYS if key not in batchdata]
        if missing:
            msg = f"training batch lacks {missing}; its transform must make {list(VIEW_KEYS)} (two_view_transforms)"
            raise KeyError(msg)
        view_a, view_b = (
            torch.as_tensor(batchdata[key]).to(device=device, non_blocking=non_blocking, **kwargs) for key in VIEW_KEYS
        )
        return view_a, None, (view_b,), {}


class BackboneWeightsSaver:
    """Write the backbone's weights when training completes (also after an early stop), atomically.

    The file holds ``{"state_dict": <backbone state dict>, "pretraining": <plain description>}``; ``state_dict`` has
    the keys of :func:`common.backbones.build_backbone`'s model, which
    :func:`common.backbones.load_local_weights` (the bundles' ``backbone_weights``) reads directly.

    Args:
        network: the :class:`SelfSupervisedBackbone` being trained (a ``DistributedDataParallel`` wrapper is unwrapped).
        output_path: the weight file to write (``.pt``); its folder is created.
        description: extra plain values stored under ``"pretraining"`` (settings of the run).
    """

    def __init__(
        self, network: nn.Module, output_path: str | Path, description: Mapping[str, Any] | None = None
    ) -> None:
        self.network = network
        self.output_path = Path(output_path)
        self.description = dict(description or {})

    def attach(self, engine: Any) -> None:
        """Save when ``engine`` completes."""
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any = None) -> None:
        """Write the weight file."""
        model = unwrap_network(self.network)
        description = {
            "method": "VICReg",
            "backbone": model.backbone_name,
            "in_channels": model.in_channels,
            "out_indices": list(model.out_indices),
            **self.description,
        }
        if engine is not None:
            description.update(epochs=int(engine.state.epoch), iterations=int(engine.state.iteration))
        with atomic_output(self.output_path) as tmp:
            torch.save({"state_dict": model.backbone_state_dict(), "pretraining": description}, tmp)
        logger.info("wrote the pretrained backbone weights to %s", self.output_path)
