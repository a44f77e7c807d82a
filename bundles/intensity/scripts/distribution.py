r"""The normative distribution of standardised brain intensity: a histogram while fitting, quantiles once fitted.

Fitting accumulates the standardised, smoothed brain values of the normal training slices in a fine histogram
(:class:`ValueHistogram`: fixed memory whatever the data set's size, and summed exactly across processes). Its
quantiles at :func:`quantile_levels` (log-spaced towards both tails, so the tails are resolved where the scores are
decided) are the fitted model, stored in ``model.pt``.

A value :math:`z` is scored by its one-sided empirical tail probability under the model,

.. math::

    p_{\uparrow}(z) = 1 - F(z), \qquad p_{\downarrow}(z) = F(z), \qquad s_{\uparrow}(z) = -\log_{10} p_{\uparrow}(z),

with :math:`F` the piecewise-linear distribution function through the quantiles. Beyond the most extreme fitted
quantile the tail is taken as exponential, fitted on the last :data:`TAIL_DECADES` decades of the fitted tail: the
score goes on rising linearly in :math:`z` (it never saturates, so a brighter lesion always scores higher).
:func:`score_tables` tabulates :math:`s_{\uparrow}` and :math:`s_{\downarrow}` on a uniform grid of :math:`z`, so the
network reads a score with one multiply-add and two table look-ups per pixel (exportable to TorchScript and ONNX).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "HISTOGRAM_BINS",
    "HISTOGRAM_RANGE",
    "MIN_TAIL_PROBABILITY",
    "TAIL_DECADES",
    "ScoreTables",
    "ValueHistogram",
    "quantile_levels",
    "score_tables",
]

MIN_TAIL_PROBABILITY = 1e-6
"""The most extreme quantile levels fitted: ``1e-6`` and ``1 - 1e-6`` (a score of 6 decades)."""
TAIL_DECADES = 3.0
"""Decades of the fitted tail whose width sets the slope of the exponential extrapolation beyond it."""
HISTOGRAM_RANGE = (-50.0, 50.0)
"""Range of the fitting histogram; values outside it fall in the edge bins (their exact extremes are kept)."""
HISTOGRAM_BINS = 100_000
"""Bins of the fitting histogram (width 0.001 over :data:`HISTOGRAM_RANGE`)."""


def quantile_levels(n_per_tail: int = 200) -> np.ndarray:
    """Probability levels of the stored quantiles: log-spaced from ``1e-6`` to 0.5 and mirrored up to ``1 - 1e-6``.

    Args:
        n_per_tail: levels from :data:`MIN_TAIL_PROBABILITY` to 0.5 (each tail); the median is shared.

    Returns:
        Strictly increasing levels in (0, 1), ``2 * n_per_tail - 1`` of them.
    """
    if n_per_tail < 2:
        msg = f"n_per_tail must be >= 2, got {n_per_tail}"
        raise ValueError(msg)
    lower = np.logspace(np.log10(MIN_TAIL_PROBABILITY), np.log10(0.5), n_per_tail)
    return np.concatenate([lower, 1.0 - lower[-2::-1]])


class ValueHistogram:
    """A fine histogram of values with their exact minimum and maximum; mergeable by adding counts.

    Args:
        value_range: ``(low, high)`` of the bins; values outside fall in the edge bins.
        bins: number of bins.
    """

    def __init__(self, value_range: tuple[float, float] = HISTOGRAM_RANGE, bins: int = HISTOGRAM_BINS) -> None:
        self.low, self.high = float(value_range[0]), float(value_range[1])
        self.bins = int(bins)
        self.counts = torch.zeros(self.bins, dtype=torch.float64)
        self.extremes = torch.tensor([float("inf"), float("-inf")], dtype=torch.float64)

    @property
    def total(self) -> float:
        """Number of values added."""
        return float(self.counts.sum())

    def add(self, values: torch.Tensor) -> None:
        """Count ``values`` (any shape, any device)."""
        values = values.detach().flatten().double().cpu()
        if not values.numel():
            return
        clamped = values.clamp(self.low, np.nextafter(self.high, self.low))
        self.counts += torch.histc(clamped, bins=self.bins, min=self.low, max=self.high)
        self.extremes[0] = min(float(self.extremes[0]), float(values.min()))
        self.extremes[1] = max(float(self.extremes[1]), float(values.max()))

    def merge(self, other: ValueHistogram) -> None:
        """Add another histogram's counts (same bins)."""
        self.counts += other.counts
        self.extremes[0] = min(float(self.extremes[0]), float(other.extremes[0]))
        self.extremes[1] = max(float(self.extremes[1]), float(other.extremes[1]))

    def quantiles(self, levels: np.ndarray) -> np.ndarray:
        """The values at probability ``levels`` (linear within a bin; the extreme bins end at the exact extremes).

        Raises:
            ValueError: when no value was added.
        """
        counts = self.counts.numpy()
        total = counts.sum()
        if total <= 0:
            msg = "no brain values to fit the intensity model on (are the training slices empty?)"
            raise ValueError(msg)
        edges = np.linspace(self.low, self.high, self.bins + 1)
        occupied = np.flatnonzero(counts)
        lo, hi = float(self.extremes[0]), float(self.extremes[1])
        # The distribution function at the edges of the occupied bins, from the exact minimum to the exact maximum.
        left = np.maximum(edges[occupied], lo)
        right = np.minimum(edges[occupied + 1], hi)
        cdf_right = np.cumsum(counts[occupied]) / total
        cdf_left = np.concatenate([[0.0], cdf_right[:-1]])
        points = np.stack([left, right], axis=1).ravel()
        cdf = np.stack([cdf_left, cdf_right], axis=1).ravel()
        return np.interp(levels, cdf, points)


class ScoreTables(NamedTuple):
    """The scores of :func:`score_tables` on a uniform grid ``start + step * i`` and the slopes beyond it."""

    start: float
    step: float
    upper: np.ndarray
    lower: np.ndarray
    upper_slope: float
    lower_slope: float


def _tail_slope(levels: np.ndarray, quantiles: np.ndarray, probability: np.ndarray) -> float:
    """Decades of tail probability per unit of value over the last :data:`TAIL_DECADES` decades of one tail.

    ``probability`` is the tail probability at each level (``1 - level`` for the upper tail, ``level`` for the
    lower); the slope is for moving outwards from the extreme quantile.
    """
    extreme = int(np.argmin(probability))
    inner = int(np.argmin(np.abs(np.log10(probability) - (np.log10(probability[extreme]) + TAIL_DECADES))))
    width = abs(float(quantiles[extreme] - quantiles[inner]))
    decades = float(np.log10(probability[inner] / probability[extreme]))
    return decades / max(width, 1e-6)


def score_tables(levels: np.ndarray, quantiles: np.ndarray, size: int = 2048) -> ScoreTables:
    r"""Tabulate :math:`s_{\uparrow}` and :math:`s_{\downarrow}` (module docstring) between the extreme quantiles.

    Args:
        levels: strictly increasing probability levels in (0, 1).
        quantiles: the fitted values at those levels (non-decreasing).
        size: grid points.

    Returns:
        The tables; the grid spans the extreme quantiles (a tiny span around them when all values are equal).
    """
    levels = np.asarray(levels, dtype=np.float64)
    quantiles = np.maximum.accumulate(np.asarray(quantiles, dtype=np.float64))
    start, stop = float(quantiles[0]), float(quantiles[-1])
    if stop - start < 1e-6:
        start, stop = start - 1e-3, stop + 1e-3
    grid = np.linspace(start, stop, size)
    # F through the quantiles; tied quantiles (a point mass) take their largest level, so F jumps at them.
    unique, first = np.unique(quantiles[::-1], return_index=True)
    top_levels = levels[::-1][first]
    cdf = np.interp(grid, unique, top_levels, left=0.0, right=1.0)
    bottom = MIN_TAIL_PROBABILITY
    upper = -np.log10(np.clip(1.0 - cdf, bottom, 1.0))
    # The lower tail: F just below each value, from the smallest level of tied quantiles.
    unique_low, first_low = np.unique(quantiles, return_index=True)
    low_levels = levels[first_low]
    cdf_low = np.interp(grid, unique_low, low_levels, left=0.0, right=1.0)
    lower = -np.log10(np.clip(cdf_low, bottom, 1.0))
    return ScoreTables(
        start=start,
        step=(stop - start) / (size - 1),
        upper=upper.astype(np.float32),
        lower=lower.astype(np.float32),
        upper_slope=_tail_slope(levels, quantiles, 1.0 - levels),
        lower_slope=_tail_slope(levels, quantiles, levels),
    )
