r"""The intensity yardstick: a normative model of standardised brain intensity, scored by its tail probability.

No learning beyond counting: on FLAIR and T2, lesions are brighter than normal tissue, and a threshold on intensity
is the baseline a learned detector has to beat (docs/design.md, "The yardstick"). For one slice :math:`x` (the
stripped brain, normalised per volume to [0, 1] by the shared preprocessing):

1. brain :math:`B = \{x > \text{brain\_threshold}\}` (the preprocessing sets everything outside the brain to 0);
2. per-slice robust standardisation :math:`z = (x - \mathrm{median}_B\,x) / \mathrm{IQR}_B\,x` (``"median_iqr"``;
   ``"mean_std"`` and ``"none"`` are the alternatives);
3. Gaussian smoothing of :math:`z` inside the brain with ``smoothing_sigma`` (normalised convolution,
   :math:`G * (z \cdot 1_B) / G * 1_B`, so the zeros outside the brain do not darken its rim);
4. score :math:`s = -\log_{10} p`, the one-sided empirical tail probability of the smoothed value under the
   distribution of the normal training brains' smoothed values (:mod:`scripts.distribution`): the upper tail for
   polarity ``"bright"``, the lower for ``"dark"``, the two-sided :math:`p = \min(1, 2 \min(p_\uparrow, p_\downarrow))`
   for ``"both"``;
5. zero outside the brain.

:math:`s` is a strictly increasing function of the tail probability, and for one polarity a non-decreasing function
of the smoothed standardised value, so the ranking of pixels and slices is that of the smoothed standardised
intensity itself; the tail probability makes the map read the same on any data (3 = one normal brain pixel in a
thousand is as extreme).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import records_arguments
from common.checks import check_image_size, check_non_negative
from common.scoring import Calibration

from .distribution import ValueHistogram, quantile_levels, score_tables

__all__ = ["POLARITIES", "STANDARDISATIONS", "IntensityModel", "gaussian_kernel"]

POLARITIES = ("bright", "dark", "both")
STANDARDISATIONS = ("median_iqr", "mean_std", "none")
MIN_SCALE = 1e-3
"""Smallest per-slice scale (IQR or standard deviation) divided by, for slices of (nearly) constant brain."""
TABLE_SIZE = 2048


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """A normalised 1D Gaussian kernel of standard deviation ``sigma`` (pixels), cut at ``truncate`` sigmas."""
    radius = max(1, int(math.ceil(truncate * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _masked_quantile(sorted_values: torch.Tensor, count: torch.Tensor, level: float) -> torch.Tensor:
    """The ``level`` quantile (linear interpolation) of the first ``count`` entries of each sorted row."""
    position = level * (count - 1).clamp_min(0).to(sorted_values.dtype)
    below = position.floor().long()
    above = position.ceil().long()
    weight = (position - below.to(position.dtype)).unsqueeze(1)
    low = sorted_values.gather(1, below.unsqueeze(1))
    high = sorted_values.gather(1, above.unsqueeze(1))
    return low * (1 - weight) + high * weight


@records_arguments()
class IntensityModel(nn.Module):
    """The intensity yardstick as a network: ``(B, C, H, W)`` slices to ``(B, 1, H, W)`` maps (module docstring).

    The fitted quantiles and the score tables derived from them are buffers, so ``model.pt`` stores them with the
    calibration. Inputs of another size than ``image_size`` are resized to it (bilinear) and the map is resized
    back, so ``smoothing_sigma`` is in pixels of ``image_size`` whatever the input's resolution. Only the first
    channel is read.

    Args:
        image_size: working size ``(H, W)``; the training slices' size.
        in_channels: input channels (the first is used).
        polarity: ``"bright"`` (FLAIR, T2 lesions), ``"dark"`` or ``"both"`` (two-sided).
        standardisation: ``"median_iqr"`` (robust, the default), ``"mean_std"`` or ``"none"``, per slice over its brain.
        smoothing_sigma: Gaussian smoothing inside the brain, pixels at ``image_size`` (0 = none).
        brain_threshold: pixels above this intensity are brain (the stripped background is 0).
        n_quantiles_per_tail: quantile levels per tail (:func:`scripts.distribution.quantile_levels`).

    Raises:
        ValueError: for an unknown polarity or standardisation, a negative sigma or a bad image size.

    Example:
        >>> net = IntensityModel(image_size=(32, 32), smoothing_sigma=0.0).eval()
        >>> net.fit([torch.rand(2, 1, 32, 32)])
        >>> net(torch.rand(1, 1, 32, 32)).shape
        torch.Size([1, 1, 32, 32])
    """

    def __init__(
        self,
        image_size: Sequence[int] = (256, 256),
        in_channels: int = 1,
        polarity: str = "bright",
        standardisation: str = "median_iqr",
        smoothing_sigma: float = 2.0,
        brain_threshold: float = 0.0,
        n_quantiles_per_tail: int = 200,
    ) -> None:
        super().__init__()
        self.image_size = check_image_size(image_size, minimum=8)
        if polarity not in POLARITIES:
            msg = f"polarity must be one of {POLARITIES}, got {polarity!r}"
            raise ValueError(msg)
        if standardisation not in STANDARDISATIONS:
            msg = f"standardisation must be one of {STANDARDISATIONS}, got {standardisation!r}"
            raise ValueError(msg)
        check_non_negative("smoothing_sigma", smoothing_sigma)
        self.in_channels = int(in_channels)
        self.polarity = polarity
        self.standardisation = standardisation
        self.smoothing_sigma = float(smoothing_sigma)
        self.brain_threshold = float(brain_threshold)
        levels = quantile_levels(n_quantiles_per_tail)
        kernel = gaussian_kernel(self.smoothing_sigma) if self.smoothing_sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", kernel, persistent=False)
        self.register_buffer("levels", torch.as_tensor(levels, dtype=torch.float64))
        self.register_buffer("quantiles", torch.zeros(len(levels), dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(False))
        self.register_buffer("table_start", torch.tensor(0.0))
        self.register_buffer("table_step", torch.tensor(1.0))
        self.register_buffer("upper_table", torch.zeros(TABLE_SIZE))
        self.register_buffer("lower_table", torch.zeros(TABLE_SIZE))
        self.register_buffer("tail_slopes", torch.zeros(2))
        self.calibration = Calibration()
        self.histogram: ValueHistogram | None = None

    # -- the map ----------------------------------------------------------------------------------------------------

    def brain(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean brain ``(B, 1, H, W)`` of slices ``(B, 1, H, W)``."""
        return x > self.brain_threshold

    def standardise(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """Centre and scale each slice by its brain's median and IQR (or mean and standard deviation)."""
        if self.standardisation == "none":
            return x
        flat = x.flatten(1)
        inside = brain.flatten(1)
        count = inside.sum(dim=1)
        if self.standardisation == "mean_std":
            weight = inside.to(x.dtype)
            n = count.clamp_min(1).to(x.dtype).unsqueeze(1)
            centre = (flat * weight).sum(dim=1, keepdim=True) / n
            scale = (((flat - centre) * weight) ** 2).sum(dim=1, keepdim=True).div(n).sqrt()
        else:
            ordered = torch.where(inside, flat, torch.full_like(flat, float("inf"))).sort(dim=1).values
            ordered = torch.where(torch.isinf(ordered), torch.zeros_like(ordered), ordered)  # empty brains: 0
            centre = _masked_quantile(ordered, count, 0.5)
            scale = _masked_quantile(ordered, count, 0.75) - _masked_quantile(ordered, count, 0.25)
        z = (flat - centre) / scale.clamp_min(MIN_SCALE)
        return z.view_as(x)

    def smooth(self, z: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """Gaussian smoothing of ``z`` inside the brain (normalised convolution); outside the brain 0."""
        weight = brain.to(z.dtype)
        if self.smoothing_sigma > 0:
            radius = (self.kernel.numel() - 1) // 2
            rows = self.kernel.view(1, 1, -1, 1).to(z.dtype)
            columns = self.kernel.view(1, 1, 1, -1).to(z.dtype)
            numerator = F.conv2d(F.conv2d(z * weight, rows, padding=(radius, 0)), columns, padding=(0, radius))
            denominator = F.conv2d(F.conv2d(weight, rows, padding=(radius, 0)), columns, padding=(0, radius))
            z = numerator / denominator.clamp_min(1e-6)
        return z * weight

    def values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The smoothed standardised values and the brain of slices ``(B, C, H, W)`` at ``image_size``."""
        x = x[:, :1].float()
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        brain = self.brain(x)
        return self.smooth(self.standardise(x, brain), brain), brain

    def _lookup(self, z: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Linear interpolation of ``table`` on its uniform grid, clamped to the grid."""
        position = ((z - self.table_start) / self.table_step).clamp(0, table.numel() - 1)
        below = position.floor().clamp(max=table.numel() - 2)
        index = below.long()
        fraction = position - below
        return table[index] * (1 - fraction) + table[index + 1] * fraction

    def tail_scores(self, z: torch.Tensor) -> torch.Tensor:
        """``-log10`` of the tail probability of values ``z`` for the model's polarity (module docstring)."""
        top = self.table_start + self.table_step * (self.upper_table.numel() - 1)
        scores = []
        if self.polarity in ("bright", "both"):
            beyond = (z - top).clamp_min(0) * self.tail_slopes[0]
            scores.append(self._lookup(z, self.upper_table) + beyond)
        if self.polarity in ("dark", "both"):
            beyond = (self.table_start - z).clamp_min(0) * self.tail_slopes[1]
            scores.append(self._lookup(z, self.lower_table) + beyond)
        if len(scores) == 1:
            return scores[0]
        return (torch.maximum(scores[0], scores[1]) - math.log10(2.0)).clamp_min(0)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        z, brain = self.values(x)
        maps = self.tail_scores(z) * brain.to(z.dtype)
        if size != self.image_size:
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly maps ``(B, 1, H, W)`` (higher = more anomalous), computed in float32 even under autocast."""
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._map(x.float())
        return self._map(x)

    # -- fitting ----------------------------------------------------------------------------------------------------

    def start_fit(self) -> None:
        """Start counting the normal brain values (a fresh histogram)."""
        self.histogram = ValueHistogram()

    @torch.no_grad()
    def accumulate(self, x: torch.Tensor, foreground: torch.Tensor | None = None) -> int:
        """Count the smoothed standardised brain values of normal slices; returns how many were counted.

        Args:
            x: normal slices ``(B, C, H, W)``.
            foreground: optional foreground masks of the slices (the brain is also limited to them).
        """
        if self.histogram is None:
            self.start_fit()
        z, brain = self.values(x)
        if foreground is not None:
            foreground = foreground[:, :1].float()
            if tuple(foreground.shape[-2:]) != self.image_size:
                foreground = F.interpolate(foreground, size=self.image_size, mode="nearest")
            brain = brain & (foreground > 0)
        values = z[brain]
        self.histogram.add(values)
        return int(values.numel())

    @torch.no_grad()
    def finish_fit(self) -> None:
        """Store the quantiles of the counted values and the score tables derived from them.

        Raises:
            ValueError: when nothing was counted.
        """
        if self.histogram is None:
            msg = "finish_fit called before any slice was counted"
            raise ValueError(msg)
        levels = self.levels.cpu().numpy()
        quantiles = self.histogram.quantiles(levels)
        self.set_quantiles(quantiles)

    @torch.no_grad()
    def set_quantiles(self, quantiles: np.ndarray | torch.Tensor) -> None:
        """Take fitted quantiles (at ``self.levels``) and derive the score tables."""
        quantiles = np.asarray(torch.as_tensor(quantiles, dtype=torch.float64).cpu())
        tables = score_tables(self.levels.cpu().numpy(), quantiles, TABLE_SIZE)
        self.quantiles.copy_(torch.as_tensor(quantiles))
        self.table_start.fill_(tables.start)
        self.table_step.fill_(tables.step)
        self.upper_table.copy_(torch.as_tensor(tables.upper))
        self.lower_table.copy_(torch.as_tensor(tables.lower))
        self.tail_slopes.copy_(torch.tensor([tables.upper_slope, tables.lower_slope]))
        self.fitted.fill_(True)

    def fit(self, batches: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fit on batches of normal slices (or ``(slices, foreground)`` pairs) in one pass."""
        self.start_fit()
        for batch in batches:
            if isinstance(batch, tuple | list):
                self.accumulate(batch[0], batch[1])
            else:
                self.accumulate(batch)
        self.finish_fit()
