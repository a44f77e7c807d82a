"""Reference models from anomalib (PaDiM, FastFlow, Reverse Distillation) as extra rows of the comparison.

anomalib is an optional extra (``pip install 'uad-bundles[peers]'``, anomalib 2.x); neither the bundles nor the
tests need it. Each peer trains on the same ``train/good`` images at the same input size, with a randomly
initialised ResNet18 backbone (no download, like the bundles' ``backbone_weights: null``) and the same epoch budget,
then predicts the test split; its maps are resized to each test image and scored with :mod:`common.metrics` exactly
like the bundles. anomalib calibrates no threshold on held-out normal images, so the threshold metrics (F1, Dice at
the threshold) are left empty for peers. Peers take 2D datasets only (anomalib's ``Folder`` reads images, not
NIfTI volumes).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.data import discover_dataset, load_image
from common.metrics import evaluate_anomaly_detection
from tools.compare.predictions import SlicePredictions
from tools.compare.report import aggregate, aggregate_runs, one_line_error

if TYPE_CHECKING:
    from tools.compare.settings import CompareSettings

__all__ = ["PEERS", "check_peers", "run_peers"]

PEERS = {"padim": "Padim", "fastflow": "Fastflow", "reverse_distillation": "ReverseDistillation"}
"""``--peers`` names and their anomalib model classes."""


def check_peers(names: Sequence[str]) -> None:
    """Check that the peer names are known and anomalib is importable.

    Raises:
        ValueError: for an unknown name (listing the known ones) or when anomalib is not installed.
    """
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        msg = f"--peers: unknown peer {unknown[0]!r}; available: {sorted(PEERS)}"
        raise ValueError(msg)
    if importlib.util.find_spec("anomalib") is None:
        msg = "--peers needs anomalib, which is not installed: pip install 'uad-bundles[peers]'"
        raise ValueError(msg)


def _build_model(name: str, image_size: Sequence[int]) -> Any:
    """The anomalib model ``name`` with a random-init ResNet18 and a pre-processor resizing to ``image_size``."""
    from anomalib import models

    cls = getattr(models, PEERS[name])
    pre_processor = cls.configure_pre_processor(image_size=tuple(image_size))
    return cls(backbone="resnet18", pre_trained=False, pre_processor=pre_processor)


def _datamodule(settings: CompareSettings, seed: int) -> Any:
    from anomalib.data import Folder

    index = discover_dataset(settings.dataset, require_test=True)
    if any(str(r.image).endswith((".nii", ".nii.gz")) for r in index.test):
        msg = f"{settings.dataset}: anomalib peers take 2D image datasets only"
        raise ValueError(msg)
    defects = sorted({r.defect for r in index.test if r.label})
    train = (settings.train_dataset or settings.dataset) / "train" / "good"
    masks = [settings.dataset / "ground_truth" / d for d in defects if (settings.dataset / "ground_truth" / d).is_dir()]
    return Folder(
        name="compare",
        root=settings.dataset,
        normal_dir=train,
        abnormal_dir=[settings.dataset / "test" / d for d in defects],
        normal_test_dir=settings.dataset / "test" / "good",
        mask_dir=masks or None,
        train_batch_size=settings.batch_size or 16,
        eval_batch_size=16,
        num_workers=0,
        # anomalib's default moves part of the test split to validation; keep the whole test split. Validation only
        # sets anomalib's own threshold and score normalisation (monotonic), which no metric here uses.
        val_split_mode="same_as_test",
        seed=seed,
    )


def _resize(anomaly_map: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An anomalib ``(H, W)`` map as a MONAI-ordered ``(X, Y)`` array of ``shape`` (bilinear)."""
    import torch
    from torch.nn.functional import interpolate

    tensor = torch.as_tensor(anomaly_map, dtype=torch.float32)[None, None]
    return interpolate(tensor, size=shape[::-1], mode="bilinear", align_corners=False)[0, 0].numpy().T


def _run_one(name: str, settings: CompareSettings, seed: int) -> tuple[dict[str, Any], SlicePredictions]:
    """Train and predict one peer for one seed; its metrics (common.metrics) and per-image predictions."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(seed, workers=True)
    run_dir = settings.output_dir / "runs" / name / f"seed{seed}"
    datamodule = _datamodule(settings, seed)
    model = _build_model(name, settings.image_size or (256, 256))
    accelerator = "gpu" if (settings.device or "").startswith("cuda") else "cpu" if settings.device else "auto"
    engine = Engine(
        max_epochs=settings.max_epochs or 1, accelerator=accelerator, devices=1, default_root_dir=run_dir, logger=False
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_s = time.perf_counter() - start
    records = {str(r.image.resolve()): r for r in discover_dataset(settings.dataset, require_test=True).test}
    pred = SlicePredictions(records=records)
    for batch in engine.predict(model=model, dataloaders=datamodule.test_dataloader()):
        for path, score, amap in zip(batch.image_path, batch.pred_score, batch.anomaly_map, strict=True):
            record = records[str(Path(path).resolve())]
            mask = np.asarray(load_image(record.mask)) > 0 if record.mask is not None else None
            shape = mask.shape if mask is not None else np.asarray(load_image(record.image)).shape[:2]
            pred.append(record, 0, float(score), _resize(np.squeeze(amap.cpu().numpy()), shape), mask)
    with_gt = [i for i, m in enumerate(pred.masks) if m is not None]
    pixel = {"masks": [pred.masks[i] for i in with_gt], "maps": [pred.maps[i] for i in with_gt]} if with_gt else {}
    metrics = evaluate_anomaly_detection(np.asarray(pred.labels), np.asarray(pred.scores), **pixel)
    return {"seed": seed, "train_s": train_s, "metrics": metrics}, pred


def run_peers(settings: CompareSettings, step: Any) -> Iterator[tuple[dict[str, Any], SlicePredictions | None]]:
    """One row per peer (all seeds), like the bundles' rows; a failing peer is reported and the others go on."""
    for name in settings.peers:
        row: dict[str, Any] = {"name": f"{name} (anomalib)", "kind": "peer", "status": "ok", "error": None, "runs": []}
        first: SlicePredictions | None = None
        try:
            for seed in settings.seeds:
                step.start(f"{name} (anomalib) seed {seed}")
                run, pred = _run_one(name, settings, seed)
                row["runs"].append(run)
                first = first or pred
                step.done()
        except Exception as error:  # anomalib raises many types; the row reports it and the comparison goes on
            row.update(status="failed", error=one_line_error(error))
            step.done(len(settings.seeds) - len(row["runs"]))
            yield row, None
            continue
        row["metrics"] = aggregate_runs([run["metrics"] for run in row["runs"]])
        row["cost"] = {"train_s": aggregate(run["train_s"] for run in row["runs"])}
        yield row, first
