"""Evaluation of a trained detector on a dataset with ground truth: ``metrics.json`` and plots.

Every test file (2D image or 3D volume) is cut into slices as in training; each slice is scored from its map. A
slice is abnormal when its ground-truth mask has any anomalous pixel (files without a mask take their folder's
label). Image metrics use the slice scores; pixel metrics use the slices with ground truth (normal slices count as
all-normal masks), over all pixels and inside the foreground. For 3D test sets the volume-level AUROC uses the
volume scores. Thresholds are the ones calibrated on normal training data and stored in the model; nothing is
tuned on the test set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common.data import ImageRecord, discover_dataset
from common.inference import VolumeRunner
from common.io import atomic_output
from common.metrics import evaluate_anomaly_detection, image_metrics
from common.results import EvaluationResult
from common.volumes import LoadedImage

__all__ = ["AnomalyEvaluation", "write_json_atomic"]

logger = logging.getLogger(__name__)


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write JSON under a temporary name, then rename it."""
    path = Path(path)
    with atomic_output(path) as tmp, tmp.open("w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
    return path


class AnomalyEvaluation(VolumeRunner):
    """Evaluate a detector on ``<dataset_dir>/test`` against ``ground_truth`` (docs/design.md layout).

    Args:
        fpr_limit: AUPRO integration limit.
        plots: write ROC, histogram and overlay PNGs.
        n_overlays: abnormal slices shown in the overlay figure.
        **kwargs: the arguments of :class:`~common.inference.VolumeRunner` (``dataset_dir`` is the dataset root and
            ``output_dir`` receives ``metrics.json`` and the plots).
    """

    def __init__(
        self, *args: Any, fpr_limit: float = 0.3, plots: bool = True, n_overlays: int = 6, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fpr_limit = fpr_limit
        self.plots = plots
        self.n_overlays = n_overlays

    def dataset_records(self) -> list[ImageRecord]:
        """The test records of the dataset (``test/<class>/`` with their masks)."""
        return discover_dataset(self.dataset_dir, require_test=True).test

    @staticmethod
    def _readable(
        loaded_files: Iterator[tuple[ImageRecord, LoadedImage | Exception]],
    ) -> Iterator[tuple[ImageRecord, LoadedImage]]:
        """The files that could be read; an unreadable one (``ValueError``) is logged and skipped, others raise."""
        for record, loaded in loaded_files:
            if isinstance(loaded, ValueError):
                logger.error("skipped %s", loaded)
                continue
            if isinstance(loaded, BaseException):
                raise loaded
            yield record, loaded

    def predict_test_set(self) -> EvaluationResult:
        """Run the detector over the test split (unreadable files are logged and skipped)."""
        result = EvaluationResult()
        readable = self._readable(self.load_files(self.dataset_records()))
        for record, loaded, prediction in self.predict_files(readable, extra_outputs=False):
            if isinstance(prediction, BaseException):
                raise prediction
            maps, scores, selected, vol_score, _ = prediction
            for i in selected:
                mask = loaded.slice(loaded.mask, i) if loaded.mask is not None else None
                result.labels.append(int(mask.any()) if mask is not None else int(record.label))
                result.scores.append(float(scores[i]))
                result.images.append(loaded.slice(loaded.image, i))
                result.maps.append(loaded.slice(maps, i))
                result.foregrounds.append(loaded.slice(loaded.foreground, i))
                if mask is None and not record.label:
                    mask = np.zeros(result.maps[-1].shape, dtype=bool)  # a normal file is all-normal ground truth
                result.masks.append(mask)
            if loaded.is_volume:
                result.volume_labels.append(int(record.label))
                result.volume_scores.append(vol_score)
        if not result.labels:
            msg = f"{self.dataset_dir}: no test slice could be evaluated"
            raise ValueError(msg)
        return result

    def compute_metrics(self, result: EvaluationResult) -> dict[str, Any]:
        """Image, pixel and (3D) volume metrics at the calibrated thresholds."""
        pixel_threshold, image_threshold = self.thresholds or (None, None)
        with_gt = [i for i, m in enumerate(result.masks) if m is not None]
        kwargs: dict[str, Any] = {}
        if with_gt and any(result.masks[i].any() for i in with_gt):
            kwargs = {
                "masks": [result.masks[i] for i in with_gt],
                "maps": [result.maps[i] for i in with_gt],
                "foreground": [result.foregrounds[i] for i in with_gt],
                "pixel_threshold": pixel_threshold,
            }
        metrics = evaluate_anomaly_detection(
            np.asarray(result.labels),
            np.asarray(result.scores),
            image_threshold=image_threshold,
            fpr_limit=self.fpr_limit,
            **kwargs,
        )
        if result.volume_labels:
            volume = image_metrics(np.asarray(result.volume_labels), np.asarray(result.volume_scores), image_threshold)
            metrics.update({f"volume_{k}": v for k, v in volume.items()})
        metrics.update(
            {
                "n_slices": len(result.labels),
                "n_abnormal_slices": int(np.sum(result.labels)),
                "n_slices_with_ground_truth": len(with_gt),
                "n_volumes": len(result.volume_labels),
                "image_threshold": image_threshold,
                "pixel_threshold": pixel_threshold,
            }
        )
        return metrics

    def run(self) -> dict[str, Any]:
        """Predict, compute metrics, write ``metrics.json`` (and plots); returns the metrics."""
        self.prepare()
        result = self.predict_test_set()
        result.metrics = self.compute_metrics(result)
        write_json_atomic(self.output_dir / "metrics.json", result.metrics)
        if self.plots:
            from common.plots import save_evaluation_plots

            save_evaluation_plots(result, self.output_dir, self.n_overlays)
        logger.info("metrics written to %s", self.output_dir / "metrics.json")
        return result.metrics
