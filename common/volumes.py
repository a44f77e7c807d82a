"""Slice-wise handling of images and NIfTI volumes.

Networks work on 2D slices ``(B, C, H, W)``. This module turns files (2D images or 3D volumes) into normalised 2D
slices with their foreground and ground-truth masks, runs a 2D network over whole volumes with MONAI's
``SliceInferer``, and writes maps back on the input's exact grid (shape, affine and header).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.inferers import Inferer, SliceInferer

from common.brain import BRAIN_MASK_KEY, ExtractBrainMaskd, check_brain_extraction
from common.data import ImageRecord, IntensitySettings, is_nifti, load_image, normalize_intensity
from common.foreground import MIN_COMPONENT_FRACTION, compute_foreground
from common.io import atomic_output

__all__ = [
    "LoadedImage",
    "SliceSettings",
    "SliceWiseInferer",
    "load_record",
    "load_slices",
    "normalize_with_foreground",
    "select_slices",
    "slice_indices",
    "write_map",
]

logger = logging.getLogger(__name__)


@dataclass
class SliceSettings:
    """How files become 2D slices.

    Attributes:
        axis: spatial axis to slice 3D volumes along (0, 1 or 2; 2 = the last axis, axial for usual NIfTI files).
        slice_range: optional ``[start, stop)`` slice indices to keep (applied before ``min_foreground``).
        min_foreground: keep only slices whose foreground covers at least this fraction of the slice (0 keeps all).
        intensity: intensity normalisation (per 2D image, per 3D volume).
        foreground: ``"auto"`` (mask file when the dataset has one, else computed from the image), ``"file"``
            (mask file only; none means everything is foreground), ``"compute"`` or ``"none"`` (no foreground).
        foreground_min_component: for computed foregrounds, the connected components kept: those of at least this
            fraction of the largest one (see :func:`common.foreground.compute_foreground`; 1 keeps the largest
            alone, 0 keeps all).
        brain_extraction: how 3D volumes without a ``brain_mask/`` file get their brain mask in the ``"auto"``
            foreground mode: ``"deepbet"``, ``"none"`` or ``"module:function"`` (:mod:`common.brain`). Voxels
            outside a brain mask (file or extraction) are set to the background before normalisation.
        min_brain_fraction: keep only volume slices whose foreground area is at least this fraction of the volume's
            largest foreground slice (0, the default here, keeps all; the bundles' configs use 0.25). Slices left
            out take no part in training or calibration and are not scored at inference.
    """

    axis: int = 2
    slice_range: Sequence[int] | None = None
    min_foreground: float = 0.0
    intensity: IntensitySettings | dict | None = None
    foreground: str = "auto"
    foreground_min_component: float = MIN_COMPONENT_FRACTION
    brain_extraction: str = "deepbet"
    min_brain_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2):
            msg = f"slice axis must be 0, 1 or 2, got {self.axis}"
            raise ValueError(msg)
        if self.slice_range is not None and (len(self.slice_range) != 2 or self.slice_range[0] >= self.slice_range[1]):
            msg = f"slice_range must be [start, stop) with start < stop, got {self.slice_range}"
            raise ValueError(msg)
        if not 0.0 <= self.min_foreground < 1.0:
            msg = f"min_foreground must be in [0, 1), got {self.min_foreground}"
            raise ValueError(msg)
        if self.foreground not in ("auto", "file", "compute", "none"):
            msg = f"foreground must be one of 'auto', 'file', 'compute', 'none', got {self.foreground!r}"
            raise ValueError(msg)
        if not 0.0 <= self.foreground_min_component <= 1.0:
            msg = f"foreground_min_component must be in [0, 1], got {self.foreground_min_component}"
            raise ValueError(msg)
        check_brain_extraction(self.brain_extraction)
        if not 0.0 <= self.min_brain_fraction < 1.0:
            msg = f"min_brain_fraction must be in [0, 1), got {self.min_brain_fraction}"
            raise ValueError(msg)
        if self.intensity is None:
            self.intensity = IntensitySettings()
        elif isinstance(self.intensity, dict):
            self.intensity = IntensitySettings(**self.intensity)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (stored with the model)."""
        return {
            "axis": self.axis,
            "slice_range": list(self.slice_range) if self.slice_range is not None else None,
            "min_foreground": self.min_foreground,
            "intensity": self.intensity.as_dict(),
            "foreground": self.foreground,
            "foreground_min_component": self.foreground_min_component,
            "brain_extraction": self.brain_extraction,
            "min_brain_fraction": self.min_brain_fraction,
        }


@dataclass
class LoadedImage:
    """A loaded, normalised file with its masks, always as a volume ``(X, Y, Z)`` (2D images have ``Z = 1``).

    Attributes:
        record: the source record.
        image: intensities in [0, 1] (zero outside a brain mask, when there is one).
        foreground: boolean foreground (the brain mask, else the computed foreground).
        mask: boolean ground truth or ``None``.
        is_volume: whether the file is a 3D volume.
        axis: the slicing axis used (2 for 2D images).
        foreground_source: where the foreground came from: ``"file"`` (``brain_mask/``), ``"extraction"``,
            ``"computed"`` or ``"none"``.
    """

    record: ImageRecord
    image: np.ndarray
    foreground: np.ndarray
    mask: np.ndarray | None
    is_volume: bool
    axis: int
    foreground_source: str = "computed"

    @property
    def n_slices(self) -> int:
        """Number of slices along the slicing axis."""
        return self.image.shape[self.axis]

    @property
    def is_brain_mask(self) -> bool:
        """Whether the foreground is a brain mask (from a file or an extraction), not a computed head mask."""
        return self.foreground_source in ("file", "extraction")

    def slice(self, array: np.ndarray, index: int) -> np.ndarray:
        """One 2D slice of a volume-shaped array."""
        return np.take(array, index, axis=self.axis)


def _load_mask(path: Path, shape: tuple[int, ...], image: Path, what: str) -> np.ndarray:
    mask = np.asarray(load_image(path)) > 0
    if mask.shape != shape:
        msg = f"{path}: {what} shape {mask.shape} does not match image {image.name} shape {shape}"
        raise ValueError(msg)
    return mask


def brain_mask_for(
    data: torch.Tensor, settings: SliceSettings, mask_file: np.ndarray | None = None
) -> tuple[np.ndarray | None, str]:
    """The brain mask of one loaded image through :class:`common.brain.ExtractBrainMaskd`, and where it came from.

    Args:
        data: the raw image ``(X, Y)`` or volume ``(X, Y, Z)`` (a ``MetaTensor`` carries its file name and affine).
        settings: the foreground mode and ``brain_extraction`` (extraction runs in the ``"auto"`` mode only;
            ``"file"`` uses mask files alone).
        mask_file: the mask read from ``brain_mask/``, if any (it takes precedence).

    Returns:
        ``(mask, source)``: a boolean mask or ``None`` (no brain mask: the foreground is computed or everything), and
        ``"file"``, ``"extraction"`` or ``"none"``.

    Raises:
        common.brain.BrainExtractionError: when the extraction fails or finds an implausibly small brain.
    """
    if settings.foreground not in ("auto", "file"):
        return None, "none"
    if mask_file is not None:
        return np.asarray(mask_file, dtype=bool), "file"
    if settings.foreground == "file":  # mask files only
        return None, "none"
    extract = ExtractBrainMaskd(keys="image", method=settings.brain_extraction)
    out = extract({"image": data[None]})
    if out.get(BRAIN_MASK_KEY) is None:
        return None, "none"
    return np.asarray(out[BRAIN_MASK_KEY][0]) > 0, "extraction"


def load_record(record: ImageRecord, settings: SliceSettings) -> LoadedImage:
    """Load a file, find its brain, strip and normalise it per image / per volume, and attach its masks.

    The brain mask is the ``brain_mask/`` file when the record has one, else the extracted brain of a 3D volume
    (``settings.brain_extraction``); without either the foreground is computed from the image (2D images,
    ``brain_extraction: "none"``) and the image is not stripped.

    Raises:
        ValueError: ``"<file>: ..."`` for unreadable files, wrong dimensionality, mismatched masks or a failed
            brain extraction.
    """
    data = load_image(record.image)
    is_volume = data.ndim == 3
    if is_volume and not is_nifti(record.image):
        msg = f"{record.image}: 3D data is only read from NIfTI files, got shape {tuple(data.shape)}"
        raise ValueError(msg)
    shape = tuple(data.shape)
    mask = _load_mask(record.mask, shape, record.image, "mask") if record.mask is not None else None
    mask_file = None
    if record.foreground is not None and settings.foreground in ("auto", "file"):
        mask_file = _load_mask(record.foreground, shape, record.image, "foreground mask")
    brain, source = brain_mask_for(data, settings, mask_file)
    image, foreground = normalize_with_foreground(data, settings, is_volume or is_nifti(record.image), brain)
    if brain is None:
        source = "none" if settings.foreground in ("none", "file") else "computed"
    axis = settings.axis if is_volume else 2
    if not is_volume:
        image, foreground = image[..., None], foreground[..., None]
        mask = mask[..., None] if mask is not None else None
    return LoadedImage(record, image.astype(np.float32), foreground, mask, is_volume, axis, source)


def normalize_with_foreground(
    data: np.ndarray | torch.Tensor,
    settings: SliceSettings,
    from_volume_file: bool,
    brain_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Strip (with a brain mask), normalise one image or volume (per image / per volume) and give its foreground.

    With a brain mask the intensities are normalised over the brain alone (the percentiles of ``"percentile"`` mode
    are taken inside it) and every voxel outside it is set to the background value 0, so the network sees the
    stripped brain. Without one the whole image is normalised and the foreground is computed from it (or is
    everything), as for 2D images.

    Args:
        data: raw intensities ``(X, Y)`` or ``(X, Y, Z)``.
        settings: the intensity and foreground settings.
        from_volume_file: the array comes from a NIfTI file (never treated as an 8-bit picture by ``"auto"``).
        brain_mask: the brain mask (a ``brain_mask/`` file or an extraction), if any; used by the ``"auto"`` and
            ``"file"`` modes.

    Returns:
        ``(image, foreground)``: float32 intensities in [0, 1] and a boolean foreground of the same shape.
    """
    use_mask = brain_mask is not None and settings.foreground in ("auto", "file")
    inside = np.asarray(brain_mask, dtype=bool) if use_mask else None
    image = normalize_intensity(torch.as_tensor(data), settings.intensity, from_volume_file, inside)
    image = image.numpy().astype(np.float32)
    if inside is not None:
        image[~inside] = 0.0
        return image, inside
    if settings.foreground in ("none", "file"):
        foreground = np.ones(image.shape, dtype=bool)
    else:
        foreground = compute_foreground(image, settings.foreground_min_component)
    return image, foreground


def slice_indices(foreground: np.ndarray, axis: int, settings: SliceSettings) -> list[int]:
    """Indices of the volume slices to use, from the foreground of the whole volume ``(X, Y, Z)``.

    The rules, in order: the ``slice_range``; ``min_foreground`` (foreground share of the slice);
    ``min_brain_fraction`` (foreground area relative to the volume's largest foreground slice).
    """
    n_slices = foreground.shape[axis]
    indices = list(range(n_slices))
    if settings.slice_range is not None:
        start, stop = settings.slice_range
        indices = list(range(max(start, 0), min(stop, n_slices)))
    other = tuple(a for a in range(foreground.ndim) if a != axis)
    if settings.min_foreground > 0:
        fractions = foreground.mean(axis=other)
        indices = [i for i in indices if fractions[i] >= settings.min_foreground]
    if settings.min_brain_fraction > 0:
        areas = foreground.sum(axis=other)
        largest = areas.max() if areas.size else 0
        indices = [i for i in indices if largest > 0 and areas[i] >= settings.min_brain_fraction * largest]
    return indices


def select_slices(loaded: LoadedImage, settings: SliceSettings) -> list[int]:
    """Indices of the slices to use (:func:`slice_indices`; a 2D image is the one slice ``[0]``)."""
    if not loaded.is_volume:
        return [0]
    return slice_indices(loaded.foreground, loaded.axis, settings)


def load_slices(
    records: Sequence[ImageRecord], settings: SliceSettings | dict | None = None, skip_errors: bool = False
) -> list[dict[str, Any]]:
    """Load files and cut them into slice dictionaries for a MONAI ``Dataset``.

    Each dictionary holds ``image`` and ``foreground`` as ``(1, X, Y)`` float32 arrays, ``mask`` when the file
    has ground truth, ``label`` (slice label: any anomalous pixel in its mask; else the record's label),
    ``volume_label``, ``source`` and ``slice``.

    Args:
        records: the files.
        settings: slicing settings (a dict is turned into :class:`SliceSettings`).
        skip_errors: log and skip unreadable files instead of raising.
    """
    settings = _as_settings(settings)
    slices: list[dict[str, Any]] = []
    for record in records:
        try:
            loaded = load_record(record, settings)
        except ValueError as error:
            if not skip_errors:
                raise
            logger.error("skipped %s", error)
            continue
        for index in select_slices(loaded, settings):
            item: dict[str, Any] = {
                "image": loaded.slice(loaded.image, index)[None],
                "foreground": loaded.slice(loaded.foreground, index)[None].astype(np.float32),
                "source": str(record.image),
                "slice": index,
                "volume_label": -1 if record.label is None else int(record.label),
            }
            if loaded.mask is not None:
                item["mask"] = loaded.slice(loaded.mask, index)[None].astype(np.float32)
                item["label"] = int(item["mask"].any())
            else:
                item["label"] = item["volume_label"]
            slices.append(item)
    return slices


def _as_settings(settings: SliceSettings | dict | None) -> SliceSettings:
    if settings is None:
        return SliceSettings()
    if isinstance(settings, dict):
        return SliceSettings(**settings)
    return settings


class SliceWiseInferer(Inferer):
    """Run a 2D network over 2D images ``(B, C, H, W)`` or, slice by slice, over volumes ``(B, C, X, Y, Z)``.

    Volumes go through MONAI's :class:`~monai.inferers.SliceInferer` with the whole slice as the window
    (``roi_size=(-1, -1)``), so ``sw_batch_size`` slices share one forward pass and the output is stitched back
    into a volume of the input's spatial shape.

    Args:
        spatial_dim: slicing axis of the volume (0, 1, 2).
        sw_batch_size: slices per forward pass.
    """

    def __init__(self, spatial_dim: int = 2, sw_batch_size: int = 16) -> None:
        super().__init__()
        if spatial_dim not in (0, 1, 2):
            msg = f"spatial_dim must be 0, 1 or 2, got {spatial_dim}"
            raise ValueError(msg)
        if sw_batch_size < 1:
            msg = f"sw_batch_size must be >= 1, got {sw_batch_size}"
            raise ValueError(msg)
        self.spatial_dim = spatial_dim
        self.sw_batch_size = sw_batch_size

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        """Return the network's output for a batch of images or volumes (same spatial shape as ``inputs``)."""
        if inputs.ndim == 4:
            return torch.cat(
                [
                    network(inputs[i : i + self.sw_batch_size], *args, **kwargs)
                    for i in range(0, len(inputs), self.sw_batch_size)
                ]
            )
        if inputs.ndim != 5:
            msg = f"expected (B, C, H, W) images or (B, C, X, Y, Z) volumes, got shape {tuple(inputs.shape)}"
            raise ValueError(msg)
        inferer = SliceInferer(
            spatial_dim=self.spatial_dim,
            roi_size=(-1, -1),
            sw_batch_size=self.sw_batch_size,
            overlap=0.0,
            progress=False,
        )
        return inferer(inputs, network, *args, **kwargs)


def write_map(
    array: np.ndarray, reference: str | Path, out_path: str | Path, dtype: type[np.generic] = np.float32
) -> Path:
    """Write a map (float32 by default) or a mask atomically as NIfTI on the grid of ``reference``.

    For a NIfTI reference the output keeps its shape, affine and header (data type set to ``dtype``, scaling
    cleared; an integer mask gets the display range of its values); for 2D images the map is written with an
    identity affine in MONAI's array order. The file is written to a temporary name in the output folder and renamed,
    so no half-written output is ever left.

    nibabel is used directly (not ``SaveImage``) because the output must be written under a temporary name and
    keep the reference header as it is.

    Args:
        array: the map, with the reference's array shape.
        reference: the input file.
        out_path: the destination ``.nii.gz`` path.
        dtype: the stored data type (``np.uint8`` for masks).

    Raises:
        ValueError: when the map's shape differs from the reference's.
    """
    out_path = Path(out_path)
    data = np.asarray(array).astype(dtype)
    if is_nifti(reference):
        ref = nib.load(str(reference))
        ref_shape = tuple(ref.shape)
        while len(ref_shape) > data.ndim and ref_shape[-1] == 1:
            ref_shape = ref_shape[:-1]
        if data.shape != ref_shape:
            msg = f"{reference}: map shape {data.shape} does not match the input shape {ref_shape}"
            raise ValueError(msg)
        header = ref.header.copy()
        header.set_data_dtype(dtype)
        header.set_slope_inter(1.0, 0.0)
        if np.issubdtype(dtype, np.integer) and "cal_min" in header:
            header["cal_min"], header["cal_max"] = 0.0, float(max(1, data.max(initial=0)))
        image = ref.__class__(data.reshape(ref.shape), ref.affine, header)
    else:
        image = nib.Nifti1Image(data, np.eye(4))
    with atomic_output(out_path) as tmp:
        nib.save(image, str(tmp))
    return out_path
