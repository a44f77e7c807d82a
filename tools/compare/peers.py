"""Reference models from anomalib (PaDiM, FastFlow, Reverse Distillation, PatchCore, CFlow) as comparison rows.

anomalib is an optional extra (``pip install 'uad-bundles[peers]'``, anomalib 2.x); neither the bundles nor the
tests need it. Each peer trains on the same ``train/good`` images at the same input size, with a randomly
initialised ResNet18 backbone (no download, like the bundles' ``backbone_weights: null``) and the same epoch budget,
then predicts the test split; its maps are resized to each test image and scored with :mod:`common.metrics` exactly
like the bundles, inside the foreground too: each test image's ground truth and foreground come from
:func:`common.volumes.load_record` with the slice settings of the first compared bundle's ``evaluate.json``
(:func:`evaluation_slice_settings`), the call the bundles' evaluation makes (the ``brain_mask/`` file when the
dataset has one, else the foreground computed from the image). anomalib calibrates no threshold on held-out normal
images, so the threshold metrics (F1, Dice at the threshold) are left empty for peers. A test set with several
anomaly classes is also scored per kind (:mod:`tools.compare.kinds`), from the same predictions and foregrounds.

The first seed's trained torch model (``model.model``, eval mode) is benchmarked like the bundles' networks, by
:func:`tools.benchmark.benchmark_network` (the model-alone code of :func:`tools.benchmark.run_benchmark`) at the
same input size, benchmark batch size and device, with the 3-channel input anomalib feeds it, in fp32 as anomalib's
inference runs (:func:`peer_cost`). Peers take 2D datasets only (anomalib's ``Folder`` reads images, not NIfTI
volumes), so they have no seconds per volume.

EfficientAD (``efficient_ad``) is known but cannot be trained under these rules: it needs anomalib's pretrained
teacher and the ImageNette images, downloaded at training time. Its row fails with that reason before anything is
trained (:data:`OFFLINE_UNAVAILABLE`).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.data import ImageRecord, discover_dataset
from common.metrics import evaluate_anomaly_detection
from common.volumes import SliceSettings, load_record
from tools.bundles import bundle_slice_settings
from tools.compare.kinds import aggregate_kinds, kind_metrics, kinds_of, mean_over_kinds
from tools.compare.predictions import SlicePredictions
from tools.compare.report import aggregate, aggregate_runs, one_line_error
from tools.compare.settings import CompareSettings, config_overrides

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "PEERS",
    "PEER_IN_CHANNELS",
    "check_peers",
    "evaluation_ground_truth",
    "evaluation_slice_settings",
    "peer_cost",
    "run_peers",
]

PEERS = {
    "padim": "Padim",
    "fastflow": "Fastflow",
    "reverse_distillation": "ReverseDistillation",
    "patchcore": "Patchcore",
    "cflow": "Cflow",
    "efficient_ad": "EfficientAd",
}
"""``--peers`` names and their anomalib model classes."""

OFFLINE_UNAVAILABLE = {
    "efficient_ad": "EfficientAD cannot run at this budget: its teacher is anomalib's pretrained PDN and its training "
    "penalty reads ImageNette, both downloaded at training time; the comparison runs offline with random-init "
    "backbones, so it is not trained",
}
"""Peers that cannot be trained under the comparison's rules, with the reason their row reports."""

PEER_IN_CHANNELS = 3
"""Channels of a peer's network input: anomalib's ``Folder`` reads every image as RGB and its pre-processor resizes
and normalises the 3 channels before ``model.model``."""

DEFAULT_IMAGE_SIZE = (256, 256)
"""A peer's input size when the comparison sets none."""


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


def evaluation_slice_settings(settings: CompareSettings) -> SliceSettings:
    """The slice settings the bundles' evaluation uses on this comparison's test set.

    The ``slice_settings`` of the first compared bundle's ``configs/evaluate.json`` with the comparison's overrides
    for that bundle (all bundles ship the same foreground settings; a per-bundle override is followed for the first
    bundle only).
    """
    bundle = settings.bundles[0]
    overrides = {**settings.overrides, **settings.bundle_overrides.get(bundle, {})}
    return bundle_slice_settings(bundle, "evaluate.json", config_overrides(bundle, overrides)["evaluate.json"])


def evaluation_ground_truth(record: ImageRecord, slice_settings: SliceSettings) -> tuple[np.ndarray | None, np.ndarray]:
    """The ground-truth mask (``None`` without a mask file) and the foreground of a 2D test image, ``(X, Y)``.

    Both come from :func:`common.volumes.load_record`, as in :class:`common.evaluation.AnomalyEvaluation`: the
    ``brain_mask/`` file when the record has one, else the foreground computed from the normalised image.
    """
    loaded = load_record(record, slice_settings)
    mask = loaded.slice(loaded.mask, 0) if loaded.mask is not None else None
    return mask, loaded.slice(loaded.foreground, 0)


def peer_cost(network: nn.Module, settings: CompareSettings) -> dict[str, Any]:
    """Benchmark a peer's torch model as the bundles' networks are benchmarked in the same comparison.

    :func:`tools.benchmark.benchmark_network` with :data:`PEER_IN_CHANNELS` input channels at the comparison's image
    size (:data:`DEFAULT_IMAGE_SIZE` when it sets none), ``bench_batch_size``, ``bench_warmup``,
    ``bench_iterations`` and device; fp32 (anomalib's inference runs without autocast).

    Returns:
        ``{"cost": {...}, "benchmark": {...}, "input_size": "HxW"}`` like the bundles' rows; ``volume_s`` is ``None``
        (peers take 2D images only).
    """
    from tools.benchmark import benchmark_network

    size = tuple(settings.image_size or DEFAULT_IMAGE_SIZE)
    bench = benchmark_network(
        network,
        size,
        PEER_IN_CHANNELS,
        settings.bench_batch_size,
        settings.bench_warmup,
        settings.bench_iterations,
        settings.device,
        amp=False,
    )
    cost = {
        "slices_per_s": bench["slices_per_s"],
        "volume_s": None,
        "peak_memory_mib": bench["memory"].get("peak_mib"),
        "parameters": bench["parameters"]["total"],
        "gflops_per_slice": bench["flops_per_slice"] / 1e9,
    }
    return {"cost": cost, "benchmark": bench, "input_size": "x".join(str(v) for v in size)}


def _build_model(name: str, image_size: Sequence[int]) -> Any:
    """The anomalib model ``name`` with a random-init ResNet18 and a pre-processor resizing to ``image_size``.

    Raises:
        ValueError: for a peer of :data:`OFFLINE_UNAVAILABLE`, with its reason (before anomalib is imported).
    """
    if name in OFFLINE_UNAVAILABLE:
        raise ValueError(OFFLINE_UNAVAILABLE[name])
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


def _run_one(
    name: str, settings: CompareSettings, seed: int, benchmark: bool
) -> tuple[dict[str, Any], SlicePredictions, dict[str, Any] | None]:
    """Train and predict one peer for one seed; its metrics (common.metrics), per-image predictions and cost.

    With ``benchmark``, the trained ``model.model`` is benchmarked (:func:`peer_cost`); else the cost is ``None``.
    """
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(seed, workers=True)
    run_dir = settings.output_dir / "runs" / name / f"seed{seed}"
    datamodule = _datamodule(settings, seed)
    model = _build_model(name, settings.image_size or DEFAULT_IMAGE_SIZE)
    accelerator = "gpu" if (settings.device or "").startswith("cuda") else "cpu" if settings.device else "auto"
    engine = Engine(
        max_epochs=settings.max_epochs or 1, accelerator=accelerator, devices=1, default_root_dir=run_dir, logger=False
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_s = time.perf_counter() - start
    records = {str(r.image.resolve()): r for r in discover_dataset(settings.dataset, require_test=True).test}
    slice_settings = evaluation_slice_settings(settings)
    pred = SlicePredictions(records=records)
    foregrounds: list[np.ndarray] = []
    for batch in engine.predict(model=model, dataloaders=datamodule.test_dataloader()):
        for path, score, amap in zip(batch.image_path, batch.pred_score, batch.anomaly_map, strict=True):
            record = records[str(Path(path).resolve())]
            mask, foreground = evaluation_ground_truth(record, slice_settings)
            pred.append(record, 0, float(score), _resize(np.squeeze(amap.cpu().numpy()), foreground.shape), mask)
            foregrounds.append(foreground)
    with_gt = [i for i, m in enumerate(pred.masks) if m is not None]
    pixel: dict[str, Any] = {}
    if with_gt and any(pred.masks[i].any() for i in with_gt):  # as the bundles' evaluation
        pixel = {
            "masks": [pred.masks[i] for i in with_gt],
            "maps": [pred.maps[i] for i in with_gt],
            "foreground": [foregrounds[i] for i in with_gt],
        }
    metrics = evaluate_anomaly_detection(np.asarray(pred.labels), np.asarray(pred.scores), **pixel)
    run: dict[str, Any] = {"seed": seed, "train_s": train_s, "metrics": metrics}
    if len(kinds_of(pred)) > 1:  # no calibrated thresholds: the threshold metrics stay empty per kind too
        run["kinds"] = kind_metrics(pred, foregrounds)
        run["mean_over_kinds"] = mean_over_kinds(run["kinds"])
    cost = peer_cost(model.model, settings) if benchmark else None
    return run, pred, cost


def run_peers(settings: CompareSettings, step: Any) -> Iterator[tuple[dict[str, Any], SlicePredictions | None]]:
    """One row per peer (all seeds), like the bundles' rows; a failing peer is reported and the others go on."""
    for name in settings.peers:
        row: dict[str, Any] = {"name": f"{name} (anomalib)", "kind": "peer", "status": "ok", "error": None, "runs": []}
        first: SlicePredictions | None = None
        cost: dict[str, Any] | None = None
        try:
            for seed in settings.seeds:
                step.start(f"{name} (anomalib) seed {seed}")
                run, pred, seed_cost = _run_one(name, settings, seed, benchmark=cost is None)
                row["runs"].append(run)
                first = first or pred
                cost = cost or seed_cost
                step.done()
        except Exception as error:  # anomalib raises many types; the row reports it and the comparison goes on
            row.update(status="failed", error=one_line_error(error))
            step.done(len(settings.seeds) - len(row["runs"]))
            yield row, None
            continue
        row["metrics"] = aggregate_runs([run["metrics"] for run in row["runs"]])
        if any("kinds" in run for run in row["runs"]):
            row.update(aggregate_kinds(row["runs"]))
        row.update(benchmark=cost["benchmark"], input_size=cost["input_size"])
        row["cost"] = {"train_s": aggregate(run["train_s"] for run in row["runs"])}
        row["cost"].update({key: aggregate([value]) for key, value in cost["cost"].items()})
        yield row, first
