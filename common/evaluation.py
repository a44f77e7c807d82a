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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.data import ImageRecord, discover_dataset
from common.inference import predict_volume
from common.io import atomic_output
from common.metrics import evaluate_anomaly_detection, image_metrics
from common.scoring import MapScorer, volume_score
from common.training import load_checkpoint
from common.volumes import SliceSettings, load_record, select_slices

__all__ = ["AnomalyEvaluation", "EvaluationResult", "write_json_atomic"]

logger = logging.getLogger(__name__)


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write JSON under a temporary name, then rename it."""
    path = Path(path)
    with atomic_output(path) as tmp, tmp.open("w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
    return path


@dataclass
class EvaluationResult:
    """Per-slice predictions of an evaluation run and the metrics computed from them."""

    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray | None] = field(default_factory=list)
    foregrounds: list[np.ndarray] = field(default_factory=list)
    volume_labels: list[int] = field(default_factory=list)
    volume_scores: list[float] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


class AnomalyEvaluation:
    """Evaluate a detector on ``<dataset_dir>/test`` against ``ground_truth``.

    Args:
        network: the detector.
        dataset_dir: dataset root (DESIGN.md layout, with ``test/``).
        output_dir: where ``metrics.json`` and the plots go.
        slice_settings: slicing and normalisation (as in training).
        scorer: how maps become slice scores (as in training).
        device: where to run.
        checkpoint: ``model.pt`` to load, or ``None`` when the network is already loaded.
        sw_batch_size: slices per forward pass.
        volume_method: volume score from slice scores (``"max"`` or ``"mean"``).
        fpr_limit: AUPRO integration limit.
        plots: write ROC, histogram and overlay PNGs.
        n_overlays: abnormal slices shown in the overlay figure.
        amp: bf16 autocast on CUDA.
    """

    def __init__(
        self,
        network: nn.Module,
        dataset_dir: str | Path,
        output_dir: str | Path,
        slice_settings: SliceSettings,
        scorer: MapScorer,
        device: torch.device | str = "cpu",
        checkpoint: str | Path | None = None,
        sw_batch_size: int = 16,
        volume_method: str = "max",
        fpr_limit: float = 0.3,
        plots: bool = True,
        n_overlays: int = 6,
        amp: bool = True,
    ) -> None:
        self.network = network
        self.dataset_dir = Path(dataset_dir)
        self.output_dir = Path(output_dir)
        self.slice_settings = slice_settings
        self.scorer = scorer
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.sw_batch_size = sw_batch_size
        self.volume_method = volume_method
        self.fpr_limit = fpr_limit
        self.plots = plots
        self.n_overlays = n_overlays
        self.amp = amp

    def dataset_records(self) -> list[ImageRecord]:
        """The test records of the dataset (``test/<class>/`` with their masks)."""
        return discover_dataset(self.dataset_dir, require_test=True).test

    def predict(self) -> EvaluationResult:
        """Run the detector over the test split (unreadable files are logged and skipped)."""
        result = EvaluationResult()
        for record in self.dataset_records():
            try:
                loaded = load_record(record, self.slice_settings)
            except ValueError as error:
                logger.error("skipped %s", error)
                continue
            maps, scores = predict_volume(self.network, loaded, self.scorer, self.device, self.sw_batch_size, self.amp)
            selected = select_slices(loaded, self.slice_settings) or list(range(loaded.n_slices))
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
                result.volume_scores.append(volume_score(scores[selected], self.volume_method))
        if not result.labels:
            msg = f"{self.dataset_dir}: no test slice could be evaluated"
            raise ValueError(msg)
        return result

    def compute_metrics(self, result: EvaluationResult) -> dict[str, Any]:
        """Image, pixel and (3D) volume metrics at the calibrated thresholds."""
        calibration = getattr(self.network, "calibration", None)
        calibrated = calibration is not None and calibration.calibrated
        image_threshold = float(calibration.image_threshold) if calibrated else None
        pixel_threshold = float(calibration.pixel_threshold) if calibrated else None
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
            np.asarray(result.labels), np.asarray(result.scores), image_threshold=image_threshold,
            fpr_limit=self.fpr_limit, **kwargs
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
        if self.checkpoint is not None:
            load_checkpoint(self.network, self.checkpoint)
        self.network.to(self.device).eval()
        result = self.predict()
        result.metrics = self.compute_metrics(result)
        write_json_atomic(self.output_dir / "metrics.json", result.metrics)
        if self.plots:
            from common.plots import save_evaluation_plots

            save_evaluation_plots(result, self.output_dir, self.n_overlays)
        logger.info("metrics written to %s", self.output_dir / "metrics.json")
        return result.metrics
