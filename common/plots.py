"""Evaluation figures: ROC curves, score histograms and overlays of maps on slices (matplotlib, no display).

One model's evaluation (:func:`save_evaluation_plots`) and the comparison of several models on one test set
(:func:`save_roc_comparison`, :func:`save_histogram_grid`, :func:`save_overlay_grid`) share the drawing helpers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from common.io import atomic_output

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from common.results import EvaluationResult

__all__ = [
    "save_evaluation_plots",
    "save_figure_atomic",
    "save_histogram_grid",
    "save_overlay_grid",
    "save_roc_comparison",
]


def _pyplot() -> ModuleType:
    """The ``matplotlib.pyplot`` module on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_histogram(ax: Axes, labels: np.ndarray, scores: np.ndarray, threshold: float | None, title: str) -> None:
    """Normal and abnormal score histograms on shared bins, with the calibrated threshold as a dashed line."""
    bins = np.histogram_bin_edges(scores, bins=30)
    for label, name in ((0, "normal"), (1, "abnormal")):
        if (labels == label).any():
            ax.hist(scores[labels == label], bins=bins, alpha=0.6, label=name)
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label="calibrated threshold")
    ax.set(xlabel="slice score", ylabel="slices", title=title)
    ax.legend(fontsize=7)


def _draw_overlay(
    ax: Axes, image: np.ndarray, mask: np.ndarray | None, anomaly_map: np.ndarray | None, vmax: float
) -> None:
    """A slice in gray, optionally its map in colour, and the ground-truth contour; MONAI ``(X, Y)`` is transposed."""
    ax.imshow(image.T, cmap="gray")
    if anomaly_map is not None:
        ax.imshow(anomaly_map.T, cmap="jet", alpha=0.45, vmin=0, vmax=vmax)
    if mask is not None and mask.any():
        colour = "lime" if anomaly_map is None else "white"
        ax.contour(mask.T.astype(float), levels=[0.5], colors=colour, linewidths=0.7)
    ax.axis("off")


def save_figure_atomic(figure: Figure, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG under a temporary name, then rename it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            figure.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    finally:
        plt.close(figure)
    return path


def save_evaluation_plots(result: EvaluationResult, output_dir: str | Path, n_overlays: int = 6) -> list[Path]:
    """Write ``roc_image.png``, ``score_histogram.png`` and ``overlays.png`` into ``output_dir``.

    Args:
        result: per-slice predictions and metrics.
        output_dir: destination folder.
        n_overlays: abnormal slices to show (spread evenly over the abnormal test slices).

    Returns:
        The paths written.
    """
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    output_dir = Path(output_dir)
    labels = np.asarray(result.labels)
    scores = np.asarray(result.scores)
    written = []
    if len(np.unique(labels)) == 2:
        fpr, tpr, _ = roc_curve(labels, scores)
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot(fpr, tpr, label=f"AUROC {result.metrics.get('image_auroc', float('nan')):.3f}")
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.5)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="Image-level ROC")
        ax.legend(loc="lower right")
        written.append(save_figure_atomic(fig, output_dir / "roc_image.png"))
    fig, ax = plt.subplots(figsize=(5, 3))
    _draw_histogram(ax, labels, scores, result.metrics.get("image_threshold"), "Score histogram")
    written.append(save_figure_atomic(fig, output_dir / "score_histogram.png"))

    abnormal = [i for i, m in enumerate(result.masks) if m is not None and m.any()]
    if abnormal and n_overlays > 0:
        chosen = [abnormal[int(j)] for j in np.linspace(0, len(abnormal) - 1, min(n_overlays, len(abnormal)))]
        vmax = float(np.quantile(np.concatenate([result.maps[i].ravel() for i in chosen]), 0.999)) or 1.0
        fig, axes = plt.subplots(2, len(chosen), figsize=(2.2 * len(chosen), 4.6), squeeze=False)
        for col, i in enumerate(chosen):
            _draw_overlay(axes[0, col], result.images[i], result.masks[i], None, vmax)
            axes[0, col].set_title(f"score {result.scores[i]:.3g}", fontsize=8)
            _draw_overlay(axes[1, col], result.images[i], result.masks[i], result.maps[i], vmax)
        axes[0, 0].set_title(f"input + ground truth\nscore {result.scores[chosen[0]]:.3g}", fontsize=8)
        axes[1, 0].set_title("anomaly map", fontsize=8)
        written.append(save_figure_atomic(fig, output_dir / "overlays.png"))
    return written


def save_roc_comparison(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC"
) -> Path | None:
    """ROC curves of several models on one plot, each labelled with its AUROC (scikit-learn).

    Args:
        curves: model name -> ``(labels, scores)`` (0/1 ground truth and scores, flattened).
        path: the PNG to write.
        title: the plot title.

    Returns:
        The path written, or ``None`` when no model has both classes.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    usable = {n: (np.asarray(y).ravel(), np.asarray(s).ravel()) for n, (y, s) in curves.items()}
    usable = {n: (y, s) for n, (y, s) in usable.items() if len(np.unique(y)) == 2}
    if not usable:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (labels, scores) in usable.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.5)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title)
    ax.legend(loc="lower right", fontsize=7)
    return save_figure_atomic(fig, path)


def save_histogram_grid(
    histograms: Mapping[str, tuple[np.ndarray, np.ndarray, float | None]], path: str | Path
) -> Path | None:
    """One normal-vs-abnormal score histogram per model, side by side.

    Args:
        histograms: model name -> ``(labels, scores, calibrated image threshold or None)``.
        path: the PNG to write.

    Returns:
        The path written, or ``None`` for no model.
    """
    if not histograms:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(histograms), figsize=(4 * len(histograms), 3), squeeze=False)
    for ax, (name, (labels, scores, threshold)) in zip(axes[0], histograms.items(), strict=True):
        _draw_histogram(ax, np.asarray(labels), np.asarray(scores), threshold, name)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def save_overlay_grid(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    maps: Mapping[str, Sequence[np.ndarray]],
    path: str | Path,
    titles: Sequence[str] | None = None,
) -> Path | None:
    """The same slices across models: one column per slice; the input with its ground-truth contour, then each map.

    Each model's maps share one colour scale (0 to their 99.9th percentile) so its rows compare within the model.

    Args:
        images: the input slices ``(X, Y)``.
        masks: their ground truth (or ``None``).
        maps: model name -> one map per slice, in the order of ``images``.
        path: the PNG to write.
        titles: optional column titles.

    Returns:
        The path written, or ``None`` when there is no slice.
    """
    if not images:
        return None
    plt = _pyplot()
    n_rows, n_cols = 1 + len(maps), len(images)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.3 * n_rows), squeeze=False)
    for col, (image, mask) in enumerate(zip(images, masks, strict=True)):
        _draw_overlay(axes[0, col], image, mask, None, 1.0)
        if titles is not None:
            axes[0, col].set_title(titles[col], fontsize=7)
    for row, (name, model_maps) in enumerate(maps.items(), start=1):
        vmax = float(np.quantile(np.concatenate([m.ravel() for m in model_maps]), 0.999)) or 1.0
        for col, (image, mask) in enumerate(zip(images, masks, strict=True)):
            _draw_overlay(axes[row, col], image, mask, model_maps[col], vmax)
        axes[row, 0].text(-0.05, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, ha="right", va="center")
    axes[0, 0].text(-0.05, 0.5, "input", transform=axes[0, 0].transAxes, rotation=90, ha="right", va="center")
    return save_figure_atomic(fig, path)
