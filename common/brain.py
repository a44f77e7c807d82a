"""Brain extraction of 3D MR volumes, as a MONAI dictionary transform.

Scans come as the scanner made them: skull, scalp, eyes and neck around the brain. A detector trained on them learns
the skull and the skull base, and its computed foreground is the whole head, so every bundle first finds the brain.
:class:`ExtractBrainMaskd` is the one place that does it; training, calibration, batch inference, evaluation and the
MONAI Label ``preprocessing`` all run it (through :func:`common.volumes.load_record` or directly in a bundle's
``inference.json``):

1. a brain mask already in the data (a ``brain_mask/`` file) is kept as it is and never recomputed;
2. otherwise a 3D volume goes through the configured extractor, by default deepbet (Fisch et al., "deepbet: Fast
   brain extraction of T1-weighted MRI using Convolutional Neural Networks", Computers in Biology and Medicine 179,
   2024; its network weights ship inside its wheel, so nothing is downloaded);
3. an extraction that finds less than :data:`MIN_BRAIN_VOLUME_ML` of brain at the header's voxel size is an error
   naming the file, never a silent fall-back to the whole head;
4. a 2D image cannot be extracted (the networks need a volume): it keeps the computed foreground and the run logs one
   warning.

Extractors are plain callables ``(volume (X, Y, Z) float32, affine (4, 4)) -> bool mask (X, Y, Z)``. ``"deepbet"``
names the default one, ``"none"`` turns extraction off, and ``"package.module:function"`` imports any other (a
faster stand-in for tests, or a site's own tool).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = [
    "BRAIN_EXTRACTION_MODES",
    "BRAIN_MASK_KEY",
    "MIN_BRAIN_VOLUME_ML",
    "BrainExtractionError",
    "DeepbetExtractor",
    "ExtractBrainMaskd",
    "check_brain_mask",
    "check_brain_extraction",
    "get_extractor",
    "voxel_volume_ml",
]

logger = logging.getLogger(__name__)

BRAIN_EXTRACTION_MODES = ("deepbet", "none")
"""Named settings of ``brain_extraction``; a ``"module:function"`` path names any other extractor."""

BRAIN_MASK_KEY = "brain_mask"
"""Where :class:`ExtractBrainMaskd` puts the mask and :class:`common.transforms.NormalizeVolumed` reads it."""

MIN_BRAIN_VOLUME_ML = 300.0
"""Smallest plausible brain, in millilitres. Adult intracranial volumes are about 1,100-1,900 ml and a newborn's
brain about 350 ml, so less than 300 ml means the extraction failed (a wrong contrast, a scan of another body part,
a partial field of view) and the file must not be scored."""

Extractor = Callable[[np.ndarray, np.ndarray], np.ndarray]


class BrainExtractionError(ValueError):
    """Brain extraction failed or returned an implausible brain for one file."""


def voxel_volume_ml(affine: np.ndarray | torch.Tensor) -> float:
    """Volume of one voxel in millilitres, from a 4x4 voxel-to-world affine in millimetres.

    Example:
        >>> voxel_volume_ml(np.diag([2.0, 2.0, 2.0, 1.0]))
        0.008
    """
    matrix = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    return float(abs(np.linalg.det(matrix[:3, :3]))) / 1000.0


def check_brain_mask(
    mask: np.ndarray, affine: np.ndarray | torch.Tensor, source: str, min_volume_ml: float = MIN_BRAIN_VOLUME_ML
) -> float:
    """Reject an empty or implausibly small extracted brain.

    Args:
        mask: the boolean brain mask.
        affine: the volume's voxel-to-world affine (millimetres).
        source: the file name for the message.
        min_volume_ml: the smallest plausible brain volume.

    Returns:
        The brain volume in millilitres.

    Raises:
        BrainExtractionError: ``"<file>: ..."`` when the brain is smaller than ``min_volume_ml``.
    """
    volume_ml = float(np.count_nonzero(mask)) * voxel_volume_ml(affine)
    if volume_ml < min_volume_ml:
        msg = (
            f"{source}: brain extraction found {volume_ml:.0f} ml of brain, less than the {min_volume_ml:.0f} ml of "
            "a plausible brain (not a head MR volume, or a wrong voxel size in its header); the file is not scored"
        )
        raise BrainExtractionError(msg)
    return volume_ml


class DeepbetExtractor:
    """deepbet brain extraction (Fisch et al., 2024) of one volume given as an array and its affine.

    deepbet reorients the volume to RAS, finds the head's bounding box with a small network at 128^3, segments the
    brain inside it with a second network at 256^3, keeps the largest component and fills holes; the mask comes back
    on the input's grid. The two TorchScript networks are loaded once per process from the installed wheel.

    Args:
        threshold: probability above which a voxel is brain (deepbet's default 0.5).
        use_gpu: run on CUDA when it is available.
    """

    _lock = threading.Lock()
    _models: dict[bool, Any] = {}

    def __init__(self, threshold: float = 0.5, use_gpu: bool = True) -> None:
        if not 0.0 < threshold < 1.0:
            msg = f"deepbet threshold must be in (0, 1), got {threshold}"
            raise ValueError(msg)
        self.threshold = threshold
        self.use_gpu = use_gpu and torch.cuda.is_available()

    def _model(self) -> Any:
        with self._lock:
            if self.use_gpu not in self._models:
                try:
                    from deepbet import BrainExtraction
                except ImportError as error:
                    msg = "brain_extraction 'deepbet' needs the deepbet package (pip install deepbet)"
                    raise ImportError(msg) from error
                self._models[self.use_gpu] = BrainExtraction(no_gpu=not self.use_gpu)
            return self._models[self.use_gpu]

    def __call__(self, volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Boolean brain mask of ``volume`` ``(X, Y, Z)`` with voxel-to-world ``affine``."""
        import nibabel as nib

        image = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=np.float64))
        model = self._model()
        with self._lock:  # one extraction at a time: the networks and deepbet's bounding box are shared state
            _, mask, _ = model.run(image, threshold=self.threshold)
        return np.asarray(mask.dataobj) > 0


_EXTRACTORS: dict[str, Extractor] = {}


def check_brain_extraction(method: str) -> str:
    """Return ``method`` if it is ``"deepbet"``, ``"none"`` or a ``"module:function"`` path; raise otherwise."""
    if not isinstance(method, str) or not (method in BRAIN_EXTRACTION_MODES or ":" in method):
        msg = f"brain_extraction must be one of {BRAIN_EXTRACTION_MODES} or 'module:function', got {method!r}"
        raise ValueError(msg)
    return method


def get_extractor(method: str) -> Extractor | None:
    """The extractor a ``brain_extraction`` setting names (``None`` for ``"none"``), created once per process.

    Raises:
        ValueError: for an unknown name or a ``"module:function"`` path that cannot be imported.
    """
    check_brain_extraction(method)
    if method == "none":
        return None
    if method not in _EXTRACTORS:
        if method == "deepbet":
            _EXTRACTORS[method] = DeepbetExtractor()
        else:
            module_name, _, attribute = method.partition(":")
            try:
                _EXTRACTORS[method] = getattr(importlib.import_module(module_name), attribute)
            except (ImportError, AttributeError) as error:
                msg = f"brain_extraction {method!r} cannot be imported: {error}"
                raise ValueError(msg) from error
    return _EXTRACTORS[method]


_warned_2d = threading.Event()


def _warn_2d_once(source: str) -> None:
    if not _warned_2d.is_set():
        _warned_2d.set()
        logger.warning(
            "%s: brain extraction needs a 3D volume; 2D images use their computed foreground instead (extract on "
            "the volumes first, then slice: see the README, 'Raw scans'). Warned once per run.",
            source,
        )


class ExtractBrainMaskd(MapTransform):
    """Add the brain mask of each 3D image under ``mask_key``, unless the data already has one.

    Args:
        keys: the image keys, channel-first ``(1, X, Y, Z)`` (``MetaTensor`` with its affine; a plain array is taken
            to have 1 mm voxels). ``(1, X, Y)`` 2D images and one-slice volumes are left without a mask (one warning
            per run).
        method: ``"deepbet"``, ``"none"`` (the transform does nothing) or ``"module:function"``.
        mask_key: where the mask goes (float 0/1, the image's meta); with several keys, ``<mask_key>_<key>``. A mask
            already under that key (read from ``brain_mask/``) takes precedence and is not recomputed.
        min_volume_ml: the smallest plausible extracted brain (see :func:`check_brain_mask`).
        allow_missing_keys: do not fail on missing keys.

    Raises:
        BrainExtractionError: ``"<file>: ..."`` when an extraction returns an implausibly small brain.
    """

    def __init__(
        self,
        keys: KeysCollection,
        method: str = "deepbet",
        mask_key: str = BRAIN_MASK_KEY,
        min_volume_ml: float = MIN_BRAIN_VOLUME_ML,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.method = check_brain_extraction(method)
        self.mask_key = mask_key
        self.min_volume_ml = min_volume_ml

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return ``data`` with a brain mask for every 3D image that has none."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        for key in keys:
            out_key = self.mask_key if len(keys) == 1 else f"{self.mask_key}_{key}"
            if out_key in d and d[out_key] is not None:
                continue  # a mask from the dataset takes precedence
            image = d[key]
            meta = getattr(image, "meta", None) or {}
            source = str(meta.get("filename_or_obj", key))
            array = torch.as_tensor(image)
            if self.method == "none":
                continue
            if array.ndim == 3 or (array.ndim == 4 and min(array.shape[1:]) == 1):  # a 2D image or a one-slice file
                _warn_2d_once(source)
                continue
            if array.ndim != 4 or array.shape[0] != 1:
                msg = f"{source}: expected a (1, X, Y, Z) volume for brain extraction, got {tuple(array.shape)}"
                raise ValueError(msg)
            extractor = get_extractor(self.method)
            if extractor is None:
                continue
            affine = getattr(image, "affine", None)
            affine = np.eye(4) if affine is None else np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)
            volume = np.asarray(array[0].detach().cpu(), dtype=np.float32)
            try:
                mask = np.asarray(extractor(volume, affine), dtype=bool)
            except BrainExtractionError:
                raise
            except Exception as error:  # deepbet raises AssertionError on an empty head, among others
                reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                msg = f"{source}: brain extraction failed ({reason[:200]})"
                raise BrainExtractionError(msg) from error
            if mask.shape != volume.shape:
                msg = f"{source}: brain extraction returned shape {mask.shape} for a volume of shape {volume.shape}"
                raise BrainExtractionError(msg)
            volume_ml = check_brain_mask(mask, affine, source, self.min_volume_ml)
            logger.debug("%s: extracted %.0f ml of brain with %s", source, volume_ml, self.method)
            d[out_key] = MetaTensor(torch.from_numpy(mask[None].astype(np.float32)), meta=dict(meta))
        return d
