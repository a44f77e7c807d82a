"""MONAI dictionary transforms for one study: the path MONAI Label takes through a bundle's ``inference.json``.

MONAI Label runs ``preprocessing`` → ``inferer`` → ``postprocessing`` on a single image. These transforms wrap the
same functions as batch inference (:class:`common.brain.ExtractBrainMaskd` for the brain mask, placed before
:class:`NormalizeVolumed` in ``preprocessing``; :func:`common.volumes.normalize_with_foreground` for stripping, the
per-volume normalisation and the foreground; :func:`common.volumes.slice_indices` for the slices that are scored;
:func:`common.inference.score_volume` for smoothing and foreground restriction), so a map from MONAI Label equals the
``<stem>_anomaly.nii.gz`` of a batch run. Arrays are channel-first: ``(1, X, Y, Z)`` for volumes, ``(1, X, Y)`` for 2D
images.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.brain import BRAIN_MASK_KEY
from common.data import is_nifti
from common.inference import score_volume
from common.scoring import MapScorer
from common.training import load_thresholds
from common.volumes import SliceSettings, normalize_with_foreground, slice_indices

__all__ = ["AnomalyMapd", "NormalizeVolumed", "pixel_threshold"]


def _single_channel(array: torch.Tensor, key: Hashable, transform: str) -> torch.Tensor:
    if array.ndim not in (3, 4) or array.shape[0] != 1:
        msg = f"{transform}: {key!r} must be (1, X, Y) or (1, X, Y, Z), got shape {tuple(array.shape)}"
        raise ValueError(msg)
    return array[0]


def _source_name(array: Any) -> str:
    meta = getattr(array, "meta", {}) or {}
    return str(meta.get("filename_or_obj", ""))


class NormalizeVolumed(MapTransform):
    """Strip, normalise each image per volume to [0, 1] and add its foreground, as batch inference does.

    With a brain mask under ``brain_mask_key`` (from :class:`common.brain.ExtractBrainMaskd`, which runs before this
    transform) the image is stripped and normalised over the brain and the foreground is the brain. Without one the
    foreground is computed from the image (``"auto"`` / ``"compute"``) or is everything (``"file"`` / ``"none"``).

    Args:
        keys: the image keys, each ``(1, X, Y)`` or ``(1, X, Y, Z)``.
        settings: the slice settings of the bundle (intensity and foreground; a dict is accepted).
        foreground_key: where the foreground ``(1, ...)`` (float 0/1, same meta as the image) goes; with several
            keys, ``<foreground_key>_<key>``.
        brain_mask_key: the brain mask ``(1, ...)`` of the image, if any; with several keys, ``<brain_mask_key>_<key>``.
        allow_missing_keys: do not fail on missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        settings: SliceSettings | dict | None = None,
        foreground_key: str = "foreground",
        brain_mask_key: str = BRAIN_MASK_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.settings = settings if isinstance(settings, SliceSettings) else SliceSettings(**(settings or {}))
        self.foreground_key = foreground_key
        self.brain_mask_key = brain_mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return ``data`` with each image normalised and its foreground added."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        for key in keys:
            array = torch.as_tensor(d[key])
            raw = _single_channel(array, key, type(self).__name__)
            from_volume_file = raw.ndim == 3 or is_nifti(Path(_source_name(d[key])))
            mask_key = self.brain_mask_key if len(keys) == 1 else f"{self.brain_mask_key}_{key}"
            brain = d.get(mask_key)
            if brain is not None:
                brain = _single_channel(torch.as_tensor(brain), mask_key, type(self).__name__).cpu().numpy() > 0
                if brain.shape != tuple(raw.shape):
                    source = _source_name(d[key])
                    msg = f"{source}: brain mask shape {brain.shape} does not match image shape {tuple(raw.shape)}"
                    raise ValueError(msg)
            image, foreground = normalize_with_foreground(raw, self.settings, from_volume_file, brain)
            meta = getattr(d[key], "meta", None)
            d[key] = MetaTensor(torch.from_numpy(image)[None], meta=meta)
            out_key = self.foreground_key if len(keys) == 1 else f"{self.foreground_key}_{key}"
            d[out_key] = MetaTensor(torch.from_numpy(foreground.astype("float32"))[None], meta=meta)
        return d


class AnomalyMapd(MapTransform):
    """Turn the network's stitched raw maps into the final anomaly map (smoothing, zero outside the foreground).

    Args:
        keys: the prediction keys, each ``(1, X, Y)`` or ``(1, X, Y, Z)``.
        scorer: the bundle's scorer (the smoothing it applies per slice).
        foreground_key: the foreground written by :class:`NormalizeVolumed` (``None``: everything).
        axis: the slicing axis of volumes (2D images are one slice).
        settings: the bundle's slice settings; volume slices they leave out (too little brain, outside the slice
            range) get a zero map, as in batch inference. ``None`` keeps every slice.
        allow_missing_keys: do not fail on missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        scorer: MapScorer,
        foreground_key: str | None = "foreground",
        axis: int = 2,
        settings: SliceSettings | dict | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if axis not in (0, 1, 2):
            msg = f"AnomalyMapd: axis must be 0, 1 or 2, got {axis}"
            raise ValueError(msg)
        self.scorer = scorer
        self.foreground_key = foreground_key
        self.axis = axis
        self.settings = SliceSettings(**settings) if isinstance(settings, dict) else settings

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return ``data`` with each prediction replaced by its final anomaly map (float32, same meta)."""
        d = dict(data)
        for key in self.key_iterator(d):
            pred = torch.as_tensor(d[key])
            raw = _single_channel(pred, key, type(self).__name__)
            if self.foreground_key is not None and self.foreground_key in d:
                fg = torch.as_tensor(d[self.foreground_key])
                foreground = _single_channel(fg, self.foreground_key, type(self).__name__)
            else:
                foreground = torch.ones_like(raw)
            is_image = raw.ndim == 2
            volume, inside = (raw[..., None], foreground[..., None]) if is_image else (raw, foreground)
            maps, _ = score_volume(volume, inside, 2 if is_image else self.axis, self.scorer)
            if not is_image and self.settings is not None:
                kept = slice_indices(np.asarray(foreground.cpu()) > 0, self.axis, self.settings)
                dropped = sorted(set(range(maps.shape[self.axis])) - set(kept))
                if kept and dropped:  # batch inference scores every slice when none is kept
                    maps.index_fill_(self.axis, torch.tensor(dropped, device=maps.device), 0.0)
            maps = maps[..., 0] if is_image else maps
            d[key] = MetaTensor(maps[None].to(torch.float32), meta=getattr(d[key], "meta", None))
        return d


def pixel_threshold(checkpoint: str | Path) -> float:
    """The calibrated pixel threshold stored in a bundle's ``model.pt``.

    Raises:
        FileNotFoundError: when the checkpoint does not exist.
        ValueError: when the checkpoint holds no calibrated threshold.
    """
    return load_thresholds(checkpoint)[0]
