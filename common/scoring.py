"""From anomaly maps to image, slice and volume scores, and thresholds calibrated on normal data only.

docs/design.md: a slice score is computed from its map (max, top-k mean or mean, as each paper does) inside the
foreground; a volume score is the max over its slices unless a bundle says otherwise. Thresholds come from a
held-out part of ``train/good``: the pixel threshold is a high quantile of normal-pixel scores, the image threshold
the quantile of normal image scores giving the target false-positive rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import GaussianSmooth
from torch import nn

__all__ = ["PIXEL_RULES", "Calibration", "MapScorer", "calibrate_thresholds", "pixel_threshold", "volume_score"]

SCORE_METHODS = ("max", "topk_mean", "mean", "topk_probability")
VOLUME_METHODS = ("max", "mean")
PIXEL_RULES = ("pixel_quantile", "slice_max")
"""Pixel-threshold rules of :func:`pixel_threshold`."""


class MapScorer:
    r"""Turn raw network maps into foreground-restricted maps and image scores.

    Args:
        method: ``"max"``, ``"topk_mean"`` (mean of the ``topk_fraction`` highest foreground pixels), ``"mean"``, or
            ``"topk_probability"`` for maps that are negative log-probabilities :math:`m = -\log P`: the score is
            :math:`-\log\big(\tfrac{1}{k}\sum_{i \in \mathrm{top}k(m)} e^{-m_i}\big)`, the negative log of the mean of
            the ``k`` smallest probabilities, computed with ``logsumexp`` so it cannot underflow. It is a strictly
            increasing function of "mean of the top ``k`` of :math:`\max P - P`" (DNFAD Eqs. 16-17), so it ranks
            images exactly as that score does.
        topk_fraction: fraction of foreground pixels averaged by ``"topk_mean"`` and ``"topk_probability"``, in
            (0, 1].
        smoothing_sigma: Gaussian smoothing of the maps (pixels, 0 = none), applied before scoring.

    Example:
        >>> scorer = MapScorer("max")
        >>> maps = torch.zeros(1, 1, 4, 4); maps[0, 0, 1, 1] = 3.0
        >>> scorer.image_scores(maps, torch.ones_like(maps)).tolist()
        [3.0]
    """

    def __init__(self, method: str = "max", topk_fraction: float = 0.01, smoothing_sigma: float = 0.0) -> None:
        if method not in SCORE_METHODS:
            msg = f"score method must be one of {SCORE_METHODS}, got {method!r}"
            raise ValueError(msg)
        if not 0.0 < topk_fraction <= 1.0:
            msg = f"topk_fraction must be in (0, 1], got {topk_fraction}"
            raise ValueError(msg)
        if smoothing_sigma < 0:
            msg = f"smoothing_sigma must be >= 0, got {smoothing_sigma}"
            raise ValueError(msg)
        self.method = method
        self.topk_fraction = topk_fraction
        self.smoothing_sigma = smoothing_sigma

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (stored with the model)."""
        return {"method": self.method, "topk_fraction": self.topk_fraction, "smoothing_sigma": self.smoothing_sigma}

    def maps(self, raw_maps: torch.Tensor, foreground: torch.Tensor | None = None) -> torch.Tensor:
        """Smooth (optional) and zero the maps ``(B, 1, H, W)`` outside the foreground."""
        maps = raw_maps.float()
        if self.smoothing_sigma > 0:
            maps = GaussianSmooth(sigma=self.smoothing_sigma)(maps.flatten(0, 1)).view_as(maps)
        if foreground is not None:
            maps = maps * (foreground > 0)
        return maps

    def image_scores(self, maps: torch.Tensor, foreground: torch.Tensor | None = None) -> torch.Tensor:
        """Score each map ``(B, 1, H, W)`` over its foreground pixels; returns ``(B,)``.

        A map with an empty foreground is scored over all its pixels.
        """
        flat = maps.float().flatten(1)
        if foreground is None:
            inside = torch.ones_like(flat, dtype=torch.bool)
        else:
            inside = foreground.flatten(1) > 0
            inside = torch.where(inside.any(dim=1, keepdim=True), inside, torch.ones_like(inside))
        scores = []
        for values, keep in zip(flat, inside, strict=True):
            values = values[keep]
            if self.method == "max":
                scores.append(values.max())
            elif self.method == "mean":
                scores.append(values.mean())
            elif self.method == "topk_probability":
                k = max(1, math.ceil(self.topk_fraction * values.numel()))
                top = values.double().topk(k).values
                scores.append((math.log(k) - torch.logsumexp(-top, dim=0)).to(values.dtype))
            else:
                k = max(1, math.ceil(self.topk_fraction * values.numel()))
                scores.append(values.topk(k).values.mean())
        return torch.stack(scores)


def volume_score(slice_scores: Sequence[float] | np.ndarray, method: str = "max") -> float:
    """Aggregate slice scores into a volume score (docs/design.md: max unless the bundle says otherwise)."""
    if method not in VOLUME_METHODS:
        msg = f"volume score method must be one of {VOLUME_METHODS}, got {method!r}"
        raise ValueError(msg)
    values = np.asarray(slice_scores, dtype=np.float64)
    if values.size == 0:
        return float("nan")
    return float(values.max() if method == "max" else values.mean())


def pixel_threshold(
    normal_slice_pixels: Sequence[np.ndarray], rule: str = "pixel_quantile", value: float = 0.999
) -> float:
    """Pixel threshold from the foreground pixel scores of normal slices.

    Rules:

    - ``"pixel_quantile"``: the ``value`` quantile of every normal foreground pixel score (docs/design.md: a high
      quantile of normal-pixel scores).
    - ``"slice_max"``: the ``1 - value`` quantile of each normal slice's largest foreground pixel score, so that a
      fraction ``value`` of normal slices get a non-empty mask (the per-slice form of the same quantile: the
      false-positive rate is counted in slices, as the image threshold counts it).

    Args:
        normal_slice_pixels: one array of foreground pixel scores per normal slice.
        rule: one of :data:`PIXEL_RULES`.
        value: the quantile (``"pixel_quantile"``) or the slice false-positive rate (``"slice_max"``), in (0, 1).

    Returns:
        The threshold; a pixel is anomalous when its score is above it.

    Raises:
        ValueError: for an unknown rule, a value outside (0, 1), or no normal pixel.
    """
    if rule not in PIXEL_RULES:
        msg = f"pixel threshold rule must be one of {PIXEL_RULES}, got {rule!r}"
        raise ValueError(msg)
    if not 0.0 < value < 1.0:
        msg = f"the {rule} value must be in (0, 1), got {value}"
        raise ValueError(msg)
    slices = [np.asarray(p, dtype=np.float64).ravel() for p in normal_slice_pixels]
    slices = [p for p in slices if p.size]
    if not slices:
        msg = (
            "calibration needs normal foreground pixels, got none (is calibration_fraction 0 or train/good too small?)"
        )
        raise ValueError(msg)
    if rule == "pixel_quantile":
        return float(np.quantile(np.concatenate(slices), value))
    return float(np.quantile([p.max() for p in slices], 1.0 - value))


def calibrate_thresholds(
    normal_pixel_scores: np.ndarray | Sequence[np.ndarray],
    normal_image_scores: np.ndarray,
    pixel_quantile: float = 0.999,
    image_fpr: float = 0.05,
    pixel_rule: str = "pixel_quantile",
    pixel_slice_fpr: float = 0.05,
) -> tuple[float, float]:
    """Thresholds from normal data only.

    Args:
        normal_pixel_scores: foreground pixel scores of held-out normal images, one array per slice (a single array
            counts as one slice).
        normal_image_scores: image scores of the same images.
        pixel_quantile: quantile of normal pixel scores used as the pixel threshold (rule ``"pixel_quantile"``).
        image_fpr: target false-positive rate on normal images; the image threshold is their
            ``1 - image_fpr`` quantile.
        pixel_rule: how the pixel threshold is set, one of :data:`PIXEL_RULES` (:func:`pixel_threshold`).
        pixel_slice_fpr: share of normal slices allowed a non-empty mask (rule ``"slice_max"``).

    Returns:
        ``(pixel_threshold, image_threshold)``.
    """
    if not 0.0 < pixel_quantile < 1.0:
        msg = f"pixel_quantile must be in (0, 1), got {pixel_quantile}"
        raise ValueError(msg)
    if not 0.0 < image_fpr < 1.0:
        msg = f"image_fpr must be in (0, 1), got {image_fpr}"
        raise ValueError(msg)
    slices = [normal_pixel_scores] if isinstance(normal_pixel_scores, np.ndarray) else list(normal_pixel_scores)
    images = np.asarray(normal_image_scores, dtype=np.float64).ravel()
    if not any(np.size(p) for p in slices) or images.size == 0:
        msg = "calibration needs normal images, got none (is calibration_fraction 0 or train/good too small?)"
        raise ValueError(msg)
    value = pixel_quantile if pixel_rule == "pixel_quantile" else pixel_slice_fpr
    return pixel_threshold(slices, pixel_rule, value), float(np.quantile(images, 1.0 - image_fpr))


class Calibration(nn.Module):
    """Calibrated thresholds and the settings a model was trained with, stored in the model's ``state_dict``.

    The thresholds are buffers (``pixel_threshold``, ``image_threshold``; NaN until calibrated), so any loader
    of the plain ``state_dict`` (MONAI Label included) gets them. The preprocessing and scoring settings travel as
    the module's extra state (a plain dict, loadable with ``weights_only=True``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pixel_threshold", torch.tensor(float("nan")))
        self.register_buffer("image_threshold", torch.tensor(float("nan")))
        self.settings: dict[str, Any] = {}

    @property
    def calibrated(self) -> bool:
        """Whether both thresholds are set."""
        return bool(torch.isfinite(self.pixel_threshold)) and bool(torch.isfinite(self.image_threshold))

    def set_thresholds(self, pixel_threshold: float, image_threshold: float, **settings: Any) -> None:
        """Store thresholds and the settings that produced them."""
        self.pixel_threshold.fill_(pixel_threshold)
        self.image_threshold.fill_(image_threshold)
        self.settings.update(settings)

    def get_extra_state(self) -> dict[str, Any]:
        """Settings saved with the ``state_dict``."""
        return dict(self.settings)

    def set_extra_state(self, state: Any) -> None:
        """Restore the settings from a ``state_dict``."""
        self.settings = dict(state) if isinstance(state, dict) else {}
