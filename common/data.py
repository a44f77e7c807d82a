"""Dataset discovery, image loading and MONAI transform chains.

The dataset layout (``docs/design.md``)::

    <dataset_dir>/
      train/good/              normal training images
      train/mixed/             optional unlabelled mix (used by the GAN bundle)
      test/good/               normal test images
      test/<defect>/           abnormal test images
      ground_truth/<defect>/   masks: 2D ``<stem>_mask.png``; 3D the image's file name
      brain_mask/<class>/      optional foreground masks (same file name as the image)

Files may be 2D images (png, jpg, tif, bmp, 2D NIfTI) or 3D NIfTI volumes. Loading goes through MONAI's
``LoadImage`` (PIL for 2D images with a converter to one grayscale channel, nibabel for NIfTI), so arrays follow
MONAI's spatial order: a PNG of ``H`` rows and ``W`` columns is read as ``(W, H)``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.data import PILReader
from monai.transforms import (
    Compose,
    EnsureTyped,
    LoadImage,
    RandAffined,
    Resized,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
)
from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "DatasetLayoutError",
    "ImageRecord",
    "IntensitySettings",
    "discover_dataset",
    "eval_transforms",
    "file_stem",
    "is_nifti",
    "list_image_files",
    "load_image",
    "normalize_intensity",
    "split_training_records",
    "train_transforms",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NORMAL_CLASS = "good"


class DatasetLayoutError(ValueError):
    """A dataset folder does not follow the expected layout."""


def file_stem(path: str | Path) -> str:
    """File name without its image suffix (``.nii.gz`` counts as one suffix)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_nifti(path: str | Path) -> bool:
    """Whether ``path`` names a NIfTI file."""
    return str(path).lower().endswith((".nii", ".nii.gz"))


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted, hidden files and other suffixes skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES)
    )


@dataclass
class ImageRecord:
    """One image file of a dataset and what belongs to it.

    Attributes:
        image: the image file.
        label: 0 for normal, 1 for abnormal, ``None`` when unknown (unlabelled or inference data).
        defect: the class folder name (``good``, a defect name, ``mixed``) or ``""``.
        mask: ground-truth anomaly mask file, if any.
        foreground: foreground (brain) mask file, if any.
    """

    image: Path
    label: int | None = None
    defect: str = ""
    mask: Path | None = None
    foreground: Path | None = None

    @property
    def stem(self) -> str:
        """File name without suffix."""
        return file_stem(self.image)


@dataclass
class DatasetIndex:
    """The files of a dataset in the docs/design.md layout."""

    root: Path
    train_good: list[ImageRecord] = field(default_factory=list)
    train_mixed: list[ImageRecord] = field(default_factory=list)
    test: list[ImageRecord] = field(default_factory=list)


_LAYOUT_HELP = (
    "expected <dataset_dir>/train/good/ with normal images (png/jpg/tif/bmp or NIfTI), optionally test/good/, "
    "test/<defect>/ and ground_truth/<defect>/"
)


def _mask_for(root: Path, defect: str, image: Path) -> Path | None:
    folder = root / "ground_truth" / defect
    for candidate in (folder / image.name, folder / f"{file_stem(image)}_mask.png"):
        if candidate.is_file():
            return candidate
    matches = [p for p in list_image_files(folder) if file_stem(p) in (file_stem(image), f"{file_stem(image)}_mask")]
    return matches[0] if matches else None


def _foreground_for(root: Path, defect: str, image: Path) -> Path | None:
    candidate = root / "brain_mask" / defect / image.name
    return candidate if candidate.is_file() else None


def discover_dataset(dataset_dir: str | Path, require_test: bool = False) -> DatasetIndex:
    """Index a dataset laid out as in docs/design.md.

    Args:
        dataset_dir: the dataset root.
        require_test: also require a ``test/`` folder with at least one image (evaluation).

    Returns:
        The records of ``train/good``, ``train/mixed`` and ``test/*`` with their masks and foreground masks.

    Raises:
        DatasetLayoutError: when the folder is missing, has no ``train/good`` images, or (with ``require_test``)
            no test images; the message says what was expected.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        msg = f"{root}: dataset_dir does not exist or is not a folder; {_LAYOUT_HELP}"
        logger.error(msg)
        raise DatasetLayoutError(msg)
    index = DatasetIndex(root=root)
    index.train_good = [
        ImageRecord(p, 0, NORMAL_CLASS, None, _foreground_for(root, NORMAL_CLASS, p))
        for p in list_image_files(root / "train" / NORMAL_CLASS)
    ]
    index.train_mixed = [
        ImageRecord(p, None, "mixed", None, _foreground_for(root, "mixed", p))
        for p in list_image_files(root / "train" / "mixed")
    ]
    test_root = root / "test"
    if test_root.is_dir():
        for folder in sorted(p for p in test_root.iterdir() if p.is_dir()):
            defect = folder.name
            label = 0 if defect == NORMAL_CLASS else 1
            for p in list_image_files(folder):
                mask = None if label == 0 else _mask_for(root, defect, p)
                index.test.append(ImageRecord(p, label, defect, mask, _foreground_for(root, defect, p)))
    if not index.train_good and not require_test:
        found = sorted(p.name for p in root.iterdir())[:10]
        msg = f"{root}: no training images in train/good/ (found entries {found}); {_LAYOUT_HELP}"
        logger.error(msg)  # one clear line before MONAI's config machinery wraps the exception
        raise DatasetLayoutError(msg)
    if require_test and not index.test:
        msg = f"{root}: no test images under test/<class>/; {_LAYOUT_HELP}"
        logger.error(msg)
        raise DatasetLayoutError(msg)
    return index


def split_training_records(
    records: Sequence[ImageRecord], calibration_fraction: float = 0.15, seed: int = 0, min_calibration: int = 1
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Hold out part of the normal training images for threshold calibration.

    Whole files are held out (a 3D volume never contributes slices to both parts).

    Args:
        records: normal training records.
        calibration_fraction: fraction of files held out, in [0, 0.5].
        seed: shuffling seed.
        min_calibration: held-out files at least (when there are at least two files).

    Returns:
        ``(train, calibration)`` record lists.
    """
    if not 0.0 <= calibration_fraction <= 0.5:
        msg = f"calibration_fraction must be in [0, 0.5], got {calibration_fraction}"
        raise ValueError(msg)
    order = list(records)
    random.Random(seed).shuffle(order)
    n_cal = math.ceil(len(order) * calibration_fraction) if calibration_fraction > 0 else 0
    if calibration_fraction > 0 and len(order) >= 2:
        n_cal = min(max(n_cal, min_calibration), len(order) - 1)
    else:
        n_cal = 0
    return sorted(order[n_cal:], key=lambda r: r.image), sorted(order[:n_cal], key=lambda r: r.image)


def _to_grayscale(image: Image.Image) -> Image.Image:
    """PIL converter: RGB, RGBA, palette and bilevel images to one 8-bit luminance channel."""
    if image.mode in ("RGB", "RGBA", "P", "PA", "LA", "CMYK", "1", "YCbCr", "HSV", "LAB"):
        return image.convert("L")
    return image


_LOADER: LoadImage | None = None


def _loader() -> LoadImage:
    global _LOADER
    if _LOADER is None:
        _LOADER = LoadImage(image_only=True, dtype=np.float32)
        # Registered readers take precedence over the defaults: 2D images go through PIL with a grayscale converter.
        _LOADER.register(PILReader(converter=_to_grayscale))
    return _LOADER


def load_image(path: str | Path) -> torch.Tensor:
    """Load an image file as a MONAI ``MetaTensor`` without a channel axis: ``(X, Y)`` or ``(X, Y, Z)``.

    Colour and palette 2D images become one grayscale channel; singleton trailing axes of NIfTI files are dropped.

    Raises:
        ValueError: ``"<file>: ..."`` when the file cannot be read or is not a 2D image or a 3D volume.
    """
    try:
        data = _loader()(str(path))
    except Exception as error:  # MONAI wraps reader errors in several exception types
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        msg = f"{path}: cannot be read as an image ({reason[:200]})"
        raise ValueError(msg) from error
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3) or min(data.shape) < 1:
        msg = f"{path}: expected a 2D image or a 3D volume, got shape {tuple(data.shape)}"
        raise ValueError(msg)
    if not torch.isfinite(torch.as_tensor(data)).all():
        msg = f"{path}: contains NaN or infinite values"
        raise ValueError(msg)
    return data


@dataclass
class IntensitySettings:
    """How raw intensities become [0, 1].

    Attributes:
        mode: ``"auto"`` (8-bit 2D images: fixed range 0..255; everything else: percentiles), ``"percentile"``
            (per image / per volume: clip to the ``lower``..``upper`` percentiles, then scale to [0, 1]) or
            ``"range"`` (clip to ``a_min``..``a_max`` then scale).
        lower: lower percentile.
        upper: upper percentile.
        a_min: range minimum.
        a_max: range maximum.
    """

    mode: str = "auto"
    lower: float = 0.5
    upper: float = 99.5
    a_min: float = 0.0
    a_max: float = 255.0

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "percentile", "range"):
            msg = f"intensity mode must be one of 'auto', 'percentile', 'range', got {self.mode!r}"
            raise ValueError(msg)
        if not 0 <= self.lower < self.upper <= 100:
            msg = f"percentiles must satisfy 0 <= lower < upper <= 100, got lower={self.lower}, upper={self.upper}"
            raise ValueError(msg)
        if self.a_max <= self.a_min:
            msg = f"a_max must be > a_min, got a_min={self.a_min}, a_max={self.a_max}"
            raise ValueError(msg)

    def as_dict(self) -> dict[str, float | str]:
        """Plain dict (stored with the model)."""
        return {"mode": self.mode, "lower": self.lower, "upper": self.upper, "a_min": self.a_min, "a_max": self.a_max}


def normalize_intensity(
    image: torch.Tensor, settings: IntensitySettings, is_volume: bool, inside: np.ndarray | None = None
) -> torch.Tensor:
    """Scale one image or one whole volume to [0, 1] (per-volume normalisation, docs/design.md).

    Args:
        image: the image or volume, any shape.
        settings: the intensity settings.
        is_volume: the array comes from a volume file (NIfTI, 2D or 3D); ``"auto"`` uses percentiles for it and a
            fixed 0..255 range only for 8-bit pictures (png, jpg, ...).
        inside: optional boolean mask of the image's shape (the brain): percentiles are taken over these voxels
            only, so the air, skull and scalp around a brain do not move its intensity range.

    Returns:
        A float tensor of the same shape in [0, 1].
    """
    mode = settings.mode
    if mode == "auto":
        eight_bit = not is_volume and float(image.min()) >= 0 and float(image.max()) <= 255
        mode = "range" if eight_bit else "percentile"
        a_min, a_max = 0.0, 255.0
    else:
        a_min, a_max = settings.a_min, settings.a_max
    if mode == "percentile" and inside is not None and np.any(inside):
        # ScaleIntensityRangePercentiles has no mask argument: take the percentiles of the brain voxels here and
        # scale with the range transform.
        values = np.asarray(image, dtype=np.float32)[np.asarray(inside, dtype=bool)]
        a_min, a_max = (float(v) for v in np.percentile(values, [settings.lower, settings.upper]))
        mode = "range" if a_max > a_min else "constant"
    if mode == "constant":
        return torch.zeros(tuple(image.shape), dtype=torch.float32)
    if mode == "range":
        transform = ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)
    else:
        transform = ScaleIntensityRangePercentiles(
            lower=settings.lower, upper=settings.upper, b_min=0.0, b_max=1.0, clip=True
        )
    return torch.as_tensor(transform(image), dtype=torch.float32)


def train_transforms(
    image_size: Sequence[int] = (256, 256),
    rotate_degrees: float = 3.0,
    translate_fraction: Sequence[float] = (0.02, 0.09),
    keys: Sequence[str] = ("image", "foreground"),
) -> Compose:
    """Training chain for slice dictionaries ``{"image": (1, X, Y), ...}``: resize, then random affine.

    The augmentation follows the MS-NF paper (Sec. 4.2): random rotation within ±3° and random translation of
    up to 2% of the width and 9% of the height. Arrays are in MONAI order, so the first spatial axis is the
    image width and the second its height.

    Args:
        image_size: network input size ``(X, Y)``.
        rotate_degrees: maximal absolute rotation in degrees.
        translate_fraction: maximal translation as fractions of ``(width, height)``.
        keys: keys to transform (the first is the image; others are resampled with nearest neighbour).
    """
    size = tuple(int(s) for s in image_size)
    modes = ["bilinear"] + ["nearest"] * (len(keys) - 1)
    return Compose(
        [
            Resized(keys=keys, spatial_size=size, mode=modes, allow_missing_keys=True),
            RandAffined(
                keys=keys,
                prob=1.0,
                rotate_range=math.radians(rotate_degrees),
                translate_range=[f * s for f, s in zip(translate_fraction, size, strict=True)],
                mode=modes,
                padding_mode="zeros",
                allow_missing_keys=True,
            ),
            EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False, allow_missing_keys=True),
        ]
    )


def eval_transforms(image_size: Sequence[int] = (256, 256), keys: Sequence[str] = ("image", "foreground")) -> Compose:
    """Evaluation chain: resize to the network size only."""
    size = tuple(int(s) for s in image_size)
    modes = ["bilinear"] + ["nearest"] * (len(keys) - 1)
    return Compose(
        [
            Resized(keys=keys, spatial_size=size, mode=modes, allow_missing_keys=True),
            EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False, allow_missing_keys=True),
        ]
    )
