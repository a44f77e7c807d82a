"""Evaluation figures: ROC curve, score histograms and overlays of maps on slices (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.io import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from common.evaluation import EvaluationResult

__all__ = ["save_evaluation_plots", "save_figure_atomic"]


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

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
    bins = np.histogram_bin_edges(scores, bins=30)
    for label, name in ((0, "normal"), (1, "abnormal")):
        if (labels == label).any():
            ax.hist(scores[labels == label], bins=bins, alpha=0.6, label=name)
    threshold = result.metrics.get("image_threshold")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label="calibrated threshold")
    ax.set(xlabel="slice score", ylabel="slices", title="Score histogram")
    ax.legend()
    written.append(save_figure_atomic(fig, output_dir / "score_histogram.png"))

    abnormal = [i for i, m in enumerate(result.masks) if m is not None and m.any()]
    if abnormal and n_overlays > 0:
        chosen = [abnormal[int(j)] for j in np.linspace(0, len(abnormal) - 1, min(n_overlays, len(abnormal)))]
        vmax = float(np.quantile(np.concatenate([result.maps[i].ravel() for i in chosen]), 0.999)) or 1.0
        fig, axes = plt.subplots(2, len(chosen), figsize=(2.2 * len(chosen), 4.6), squeeze=False)
        for col, i in enumerate(chosen):
            # MONAI arrays are (X, Y); transpose to show rows = Y as the image appears on screen.
            axes[0, col].imshow(result.images[i].T, cmap="gray")
            axes[0, col].contour(result.masks[i].T.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
            axes[0, col].set_title(f"score {result.scores[i]:.3g}", fontsize=8)
            axes[1, col].imshow(result.images[i].T, cmap="gray")
            axes[1, col].imshow(result.maps[i].T, cmap="jet", alpha=0.45, vmin=0, vmax=vmax)
            axes[1, col].contour(result.masks[i].T.astype(float), levels=[0.5], colors="white", linewidths=0.6)
            for ax in axes[:, col]:
                ax.axis("off")
        axes[0, 0].set_title(f"input + ground truth\nscore {result.scores[chosen[0]]:.3g}", fontsize=8)
        axes[1, 0].set_title("anomaly map", fontsize=8)
        written.append(save_figure_atomic(fig, output_dir / "overlays.png"))
    return written
