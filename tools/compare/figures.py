"""The comparison figures of a run, from each model's :class:`~tools.compare.predictions.SlicePredictions`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from common.data import is_nifti
from common.plots import save_histogram_grid, save_overlay_grid, save_roc_comparison
from tools.compare.predictions import SlicePredictions

__all__ = ["FIGURES", "save_comparison_figures"]

FIGURES = ("roc_image.png", "roc_pixel.png", "score_histograms.png", "overlays.png")
"""The files :func:`save_comparison_figures` writes (the pixel ROC and overlays need ground-truth masks)."""


def _common_abnormal_slices(predictions: Mapping[str, SlicePredictions], n_slices: int) -> list[tuple[str, int]]:
    """Up to ``n_slices`` slices with an anomalous mask that every model scored, spread evenly over them."""
    keys = None
    for pred in predictions.values():
        abnormal = {k for k, m in zip(pred.keys, pred.masks, strict=True) if m is not None and m.any()}
        keys = abnormal if keys is None else keys & abnormal
    ordered = sorted(keys or ())
    if not ordered or n_slices < 1:
        return []
    return [ordered[int(j)] for j in np.linspace(0, len(ordered) - 1, min(n_slices, len(ordered)))]


def save_comparison_figures(
    predictions: Mapping[str, SlicePredictions],
    thresholds: Mapping[str, float | None],
    output_dir: str | Path,
    n_overlays: int = 6,
) -> list[Path]:
    """Write ``roc_image.png``, ``roc_pixel.png``, ``score_histograms.png`` and ``overlays.png``.

    Args:
        predictions: model name -> its per-slice outputs on the test set.
        thresholds: model name -> calibrated image threshold (drawn on its histogram) or ``None``.
        output_dir: destination folder.
        n_overlays: test slices in the overlay grid (the same abnormal slices for every model).

    Returns:
        The paths written (a figure is skipped when its data are missing, e.g. no masks for the pixel ROC).
    """
    output_dir = Path(output_dir)
    image_curves = {n: (np.asarray(p.labels), np.asarray(p.scores)) for n, p in predictions.items()}
    pixel_curves = {n: p.pixels() for n, p in predictions.items()}
    histograms = {n: (*image_curves[n], thresholds.get(n)) for n in predictions}
    written = [
        save_roc_comparison(image_curves, output_dir / "roc_image.png", "Image-level (slice) ROC"),
        save_roc_comparison(pixel_curves, output_dir / "roc_pixel.png", "Pixel-level ROC (all pixels)"),
        save_histogram_grid(histograms, output_dir / "score_histograms.png"),
    ]
    chosen = _common_abnormal_slices(predictions, n_overlays)
    if chosen:
        first = next(iter(predictions.values()))
        rows = [first.keys.index(key) for key in chosen]
        maps = {n: [p.maps[p.keys.index(key)] for key in chosen] for n, p in predictions.items()}
        titles = [Path(file).name + (f" [{index}]" if is_nifti(file) else "") for file, index in chosen]
        written.append(
            save_overlay_grid(
                [first.image_slice(i) for i in rows],
                [first.masks[i] for i in rows],
                maps,
                output_dir / "overlays.png",
                titles,
            )
        )
    return [path for path in written if path is not None]
