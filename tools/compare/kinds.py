"""Per-kind figures of a comparison: each anomaly class of the test set against the normal test images alone.

A test set with several anomaly classes (``test/<kind>/`` besides ``test/good``, e.g. the suite written by
``python -m tools.anomaly_suite``) is also scored one kind at a time: the slices of ``test/good`` and
``test/<kind>`` only, with the metric code, the foreground and the calibrated thresholds of the bundles' evaluation
(:meth:`common.evaluation.AnomalyEvaluation.compute_metrics`). The figures come from the stored per-slice
predictions (:class:`~tools.compare.predictions.SlicePredictions`), so no extra inference runs. Each seed also gets
the unweighted mean over kinds, which is then aggregated over seeds like every other figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from common.metrics import evaluate_anomaly_detection
from common.volumes import LoadedImage, SliceSettings, load_record
from tools.compare.predictions import SlicePredictions
from tools.compare.report import aggregate, aggregate_runs

__all__ = [
    "NORMAL_CLASS",
    "aggregate_kinds",
    "kind_metrics",
    "kinds_of",
    "mean_over_kinds",
    "prediction_foregrounds",
    "subset_metrics",
]

NORMAL_CLASS = "good"
"""The class folder of the normal test images, shared by every kind."""

_NOT_AVERAGED = ("n_", "threshold")
"""Keys that are counts or thresholds, not figures: left out of the mean over kinds."""


def _slice_classes(predictions: SlicePredictions) -> list[str]:
    return [predictions.records[file].defect for file, _ in predictions.keys]


def kinds_of(predictions: SlicePredictions) -> list[str]:
    """The anomaly classes of the scored test slices (every class folder but ``good``), sorted."""
    return sorted(set(_slice_classes(predictions)) - {NORMAL_CLASS})


def prediction_foregrounds(predictions: SlicePredictions, slice_settings: SliceSettings) -> list[np.ndarray]:
    """The foreground of every predicted slice, as the bundles' evaluation takes it.

    :func:`common.volumes.load_record` with the evaluation's slice settings: the ``brain_mask/`` file when the
    record has one, else the foreground computed from the normalised image.

    Raises:
        ValueError: when a foreground slice does not have the shape of its map.
    """
    loaded: dict[str, LoadedImage] = {}
    out = []
    for (file, index), slice_map in zip(predictions.keys, predictions.maps, strict=True):
        if file not in loaded:
            loaded = {file: load_record(predictions.records[file], slice_settings)}  # slices come file by file
        image = loaded[file]
        foreground = image.slice(image.foreground, index if image.is_volume else 0)
        if foreground.shape != slice_map.shape:
            msg = f"{file}: foreground slice {foreground.shape} does not match its map {slice_map.shape}"
            raise ValueError(msg)
        out.append(foreground)
    return out


def subset_metrics(
    predictions: SlicePredictions,
    foregrounds: Sequence[np.ndarray],
    indices: Sequence[int],
    image_threshold: float | None = None,
    pixel_threshold: float | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """:func:`common.metrics.evaluate_anomaly_detection` on the slices ``indices``, as the bundles' evaluation runs it.

    Pixel metrics take the slices with ground truth, when one of them has an anomalous pixel; the counts
    ``n_slices`` and ``n_abnormal_slices`` follow.
    """
    labels = np.asarray([predictions.labels[i] for i in indices])
    scores = np.asarray([predictions.scores[i] for i in indices])
    with_gt = [i for i in indices if predictions.masks[i] is not None]
    kwargs: dict[str, Any] = {}
    if with_gt and any(predictions.masks[i].any() for i in with_gt):
        kwargs = {
            "masks": [predictions.masks[i] for i in with_gt],
            "maps": [predictions.maps[i] for i in with_gt],
            "foreground": [foregrounds[i] for i in with_gt],
            "pixel_threshold": pixel_threshold,
        }
    metrics = evaluate_anomaly_detection(labels, scores, image_threshold=image_threshold, fpr_limit=fpr_limit, **kwargs)
    metrics.update(n_slices=len(indices), n_abnormal_slices=int(labels.sum()))
    return metrics


def kind_metrics(
    predictions: SlicePredictions,
    foregrounds: Sequence[np.ndarray],
    image_threshold: float | None = None,
    pixel_threshold: float | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, dict[str, float]]:
    """The metrics of each anomaly kind: the slices of ``test/good`` and ``test/<kind>`` alone.

    Args:
        predictions: one model's per-slice outputs on the whole test set.
        foregrounds: the foreground of each slice (:func:`prediction_foregrounds`).
        image_threshold: the model's calibrated image threshold (``None``: no threshold metrics).
        pixel_threshold: the model's calibrated pixel threshold.
        fpr_limit: AUPRO integration limit.

    Returns:
        ``{kind: metrics}`` in :func:`kinds_of` order.
    """
    classes = _slice_classes(predictions)
    return {
        kind: subset_metrics(
            predictions,
            foregrounds,
            [i for i, c in enumerate(classes) if c in (NORMAL_CLASS, kind)],
            image_threshold,
            pixel_threshold,
            fpr_limit,
        )
        for kind in kinds_of(predictions)
    }


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def mean_over_kinds(per_kind: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """The unweighted mean over kinds of every figure (counts and thresholds left out).

    A figure that is undefined for one kind (``None``, NaN) has no mean (``None``), so every mean covers all kinds.

    Example:
        >>> mean_over_kinds({"a": {"image_auroc": 1.0, "n_slices": 4}, "b": {"image_auroc": 0.5, "n_slices": 6}})
        {'image_auroc': 0.75}
    """
    keys = sorted({k for m in per_kind.values() for k in m if not any(p in k for p in _NOT_AVERAGED)})
    out: dict[str, float | None] = {}
    for key in keys:
        values = [m.get(key) for m in per_kind.values()]
        out[key] = float(np.mean(values)) if all(_finite(v) for v in values) else None
    return out


def aggregate_kinds(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per kind, and for the mean over kinds, every figure's mean ± sample std over the seeds' runs.

    Args:
        runs: one record per seed with ``kinds`` (``{kind: metrics}``) and ``mean_over_kinds``.

    Returns:
        ``{"kinds": {kind: {key: stat}}, "mean_over_kinds": {key: stat}}`` (stats of
        :func:`tools.compare.report.aggregate`).
    """
    kinds = sorted({kind for run in runs for kind in run.get("kinds", {})})
    per_kind = {kind: aggregate_runs([run["kinds"].get(kind, {}) for run in runs]) for kind in kinds}
    keys = sorted({k for run in runs for k in run.get("mean_over_kinds", {})})
    mean = {key: aggregate(run.get("mean_over_kinds", {}).get(key) for run in runs) for key in keys}
    return {"kinds": per_kind, "mean_over_kinds": mean}
