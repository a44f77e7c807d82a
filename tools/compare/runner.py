"""The comparison runs: each bundle trained, run and evaluated through its own configs, for every seed.

Every step is the user's command: :func:`tools.bundles.run_bundle` starts ``python -m monai.bundle run`` with the
bundle's ``train.json`` (run id ``training``), ``inference.json`` over ``<dataset>/test`` and ``evaluate.json``
against the dataset's ground truth. The network of the first seed is then benchmarked in this process with
:func:`tools.benchmark.run_benchmark`. A bundle whose step fails is reported with a one-line error and the others go
on. Layout of the output folder::

    <output_dir>/results.json, results.md, roc_image.png, roc_pixel.png, score_histograms.png, overlays.png
    <output_dir>/runs/<bundle>/seed<k>/models/model.pt   training output (with train/ logs and TensorBoard)
    <output_dir>/runs/<bundle>/seed<k>/maps/             inference: <stem>_anomaly.nii.gz, scores.csv
    <output_dir>/runs/<bundle>/seed<k>/eval/             evaluation: metrics.json and the bundle's own plots
    <output_dir>/runs/<bundle>/seed<k>/logs/             train.log, inference.log, evaluate.log
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nibabel as nib

from common.data import discover_dataset, is_nifti
from common.evaluation import write_json_atomic
from common.io import atomic_output
from tools.benchmark import DEFAULT_VOLUME_SHAPE, environment_info, run_benchmark
from tools.bundles import BundleRunError, bundle_dir, bundle_slice_settings, run_bundle
from tools.compare.figures import save_comparison_figures
from tools.compare.kinds import aggregate_kinds, kind_metrics, kinds_of, mean_over_kinds, prediction_foregrounds
from tools.compare.predictions import SlicePredictions, load_predictions
from tools.compare.report import aggregate, aggregate_runs, json_safe, markdown_report, one_line_error
from tools.compare.settings import CONFIGS, CompareSettings, config_ids, config_overrides
from tools.components import resolve_device

__all__ = ["CONFIGS", "compare", "config_overrides"]  # the first and last re-exported from settings

_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt): ")


def _root_cause(log_file: Path) -> str | None:
    """The first exception line of a failed command's log: the root of a chained traceback, not MONAI's wrapper."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((line.strip() for line in lines if _EXCEPTION_LINE.match(line)), None)


def _test_set(dataset: Path) -> dict[str, Any]:
    """Files of the test split, whether they are 3D volumes, and the first volume's shape."""
    records = discover_dataset(dataset, require_test=True).test
    shape = None
    for record in records:
        if is_nifti(record.image):
            candidate = tuple(int(s) for s in nib.load(str(record.image)).shape)
            if len(candidate) == 3:
                shape = candidate
                break
    return {"n_files": len(records), "kind": "3D" if shape else "2D", "volume_shape": list(shape) if shape else None}


class _Step:
    """Progress over the whole comparison: a tqdm bar whose description names the current step."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="step", disable=not enabled, dynamic_ncols=True)

    def start(self, text: str) -> None:
        self.bar.set_description_str(text)

    def done(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _run_seed(
    bundle: str, seed: int, settings: CompareSettings, split: Mapping[str, dict[str, Any]], step: _Step
) -> dict[str, Any]:
    """Train (or take the given checkpoint), infer over ``test/`` and evaluate; returns the run's record."""
    run_dir = settings.output_dir / "runs" / bundle / f"seed{seed}"
    logs = run_dir / "logs"
    common = {"seed": seed, "device": settings.device, "image_size": settings.image_size}
    common = {k: v for k, v in common.items() if v is not None}
    run: dict[str, Any] = {"seed": seed, "run_dir": str(run_dir)}

    def call(config: str, run_id: str, paths: dict[str, Any], log: str) -> float:
        ids = config_ids(bundle, config)
        overrides = {**{k: v for k, v in common.items() if k in ids}, **split[config], **paths}
        try:
            return _timed(
                lambda: run_bundle(bundle, config, run_id, overrides, log_file=logs / log, timeout=settings.timeout_s)
            )
        except BundleRunError as error:
            cause = _root_cause(logs / log)
            if cause is None:
                raise
            msg = f"{config}: {cause} (log: {logs / log})"
            raise BundleRunError(msg) from error

    checkpoint = settings.checkpoints.get(bundle)
    step.start(f"{bundle} seed {seed}: " + ("training" if checkpoint is None else "checkpoint"))
    if checkpoint is None:
        train = {"dataset_dir": settings.train_dataset or settings.dataset, "ckpt_dir": run_dir / "models"}
        train["output_dir"] = run_dir / "train"
        train.update({k: v for k, v in (("max_epochs", settings.max_epochs), ("batch_size", settings.batch_size)) if v})
        run["train_s"] = call("train.json", "training", train, "train.log")
        checkpoint = run_dir / "models" / "model.pt"
    run["checkpoint"] = str(checkpoint)
    step.done()
    step.start(f"{bundle} seed {seed}: inference")
    paths = {"dataset_dir": settings.dataset / "test", "output_dir": run_dir / "maps", "ckpt_path": checkpoint}
    run["inference_s"] = call("inference.json", "run", paths, "inference.log")
    step.done()
    step.start(f"{bundle} seed {seed}: evaluation")
    paths = {"dataset_dir": settings.dataset, "output_dir": run_dir / "eval", "ckpt_path": checkpoint}
    run["evaluate_s"] = call("evaluate.json", "run", paths, "evaluate.log")
    run["metrics"] = json.loads((run_dir / "eval" / "metrics.json").read_text())
    step.done()
    return run


def _benchmark(
    bundle: str, checkpoint: str, settings: CompareSettings, overrides: Mapping[str, Any], shape: Sequence[int]
) -> dict[str, Any]:
    """:func:`tools.benchmark.run_benchmark` on the trained model and the cost figures the report shows."""
    bench = run_benchmark(
        bundle,
        image_size=None if "image_size" in overrides else settings.image_size,
        batch_size=settings.bench_batch_size,
        iterations=settings.bench_iterations,
        volume_shape=shape,
        device=settings.device,
        overrides=overrides,
        checkpoint=checkpoint,
        warmup=settings.bench_warmup,
    )
    memory = bench["memory"]
    peaks = [m["peak_mib"] for m in (memory["model"], memory["end_to_end"]) if m.get("peak_mib") is not None]
    size = "x".join(str(v) for v in bench["settings"]["image_size"])
    cost = {
        "slices_per_s": bench["throughput"]["slices_per_s"],
        "volume_s": bench["end_to_end"]["total_s"],
        "peak_memory_mib": max(peaks) if peaks else None,
        "parameters": bench["model"]["parameters_total"],
        "gflops_per_slice": bench["model"]["flops_per_slice"] / 1e9,
    }
    return {"cost": cost, "benchmark": bench, "input_size": size}


def _bundle_row(
    bundle: str, settings: CompareSettings, shape: Sequence[int], step: _Step
) -> tuple[dict[str, Any], SlicePredictions | None]:
    """All seeds of one bundle, its benchmark and its first seed's predictions; a failure ends the bundle's row."""
    seeds = settings.seeds[:1] if bundle in settings.checkpoints else settings.seeds
    row: dict[str, Any] = {"name": bundle, "kind": "bundle", "status": "ok", "error": None, "runs": []}
    remaining = 3 * len(seeds) + 1
    where = "configuration"
    try:
        overrides = {**settings.overrides, **settings.bundle_overrides.get(bundle, {})}
        split = config_overrides(bundle, overrides)
        for seed in seeds:
            where = f"seed {seed}"
            row["runs"].append(_run_seed(bundle, seed, settings, split, step))
            remaining -= 3
        where = "benchmark"
        step.start(f"{bundle}: benchmark")
        row.update(_benchmark(bundle, row["runs"][0]["checkpoint"], settings, split["inference.json"], shape))
        step.done()
        remaining -= 1
        where = "reading the maps"
        axis = int(overrides.get("slice_axis", 2))
        predictions = load_predictions(Path(row["runs"][0]["run_dir"]) / "maps", settings.dataset, axis)
        if len(kinds_of(predictions)) > 1:
            where = "per-kind metrics"
            step.start(f"{bundle}: per-kind metrics")
            slice_settings = bundle_slice_settings(bundle, "evaluate.json", split["evaluate.json"])
            _add_kind_metrics(row["runs"], predictions, slice_settings, settings.dataset, axis)
            row.update(aggregate_kinds(row["runs"]))
    except (BundleRunError, subprocess.TimeoutExpired, ValueError, OSError, RuntimeError, KeyError) as error:
        step.done(remaining)
        row.update(status="failed", error=f"{where}: {one_line_error(error)}")
        return row, None
    row["metrics"] = aggregate_runs([run["metrics"] for run in row["runs"]])
    row["cost"]["train_s"] = aggregate(run.get("train_s") for run in row["runs"])
    row["cost"] = {k: v if isinstance(v, dict) else aggregate([v]) for k, v in row["cost"].items()}
    return row, predictions


def _add_kind_metrics(
    runs: Sequence[dict[str, Any]], first: SlicePredictions, slice_settings: Any, dataset: Path, axis: int
) -> None:
    """Add ``kinds`` and ``mean_over_kinds`` to every seed's run, from its stored maps and its own thresholds.

    The foreground does not depend on the seed: it is read once, for the first seed's slices. A later seed whose
    scored slices differ from the first's has its own foreground read.
    """
    foregrounds = prediction_foregrounds(first, slice_settings)
    for index, run in enumerate(runs):
        pred = first if index == 0 else load_predictions(Path(run["run_dir"]) / "maps", dataset, axis)
        fg = foregrounds if pred.keys == first.keys else prediction_foregrounds(pred, slice_settings)
        metrics = run["metrics"]
        run["kinds"] = kind_metrics(pred, fg, metrics.get("image_threshold"), metrics.get("pixel_threshold"))
        run["mean_over_kinds"] = mean_over_kinds(run["kinds"])


def _record_kinds(test_set: dict[str, Any], row: Mapping[str, Any]) -> None:
    """Slice counts of each kind (``test/good`` and ``test/<kind>``) in ``test_set["kinds"]``, from the first row."""
    kinds = row["runs"][0].get("kinds") if row.get("runs") else None
    if kinds and "kinds" not in test_set:
        test_set["kinds"] = {
            kind: {"n_slices": m["n_slices"], "n_abnormal_slices": m["n_abnormal_slices"]} for kind, m in kinds.items()
        }


def _write_outputs(results: dict[str, Any], output_dir: Path) -> None:
    write_json_atomic(output_dir / "results.json", json_safe(results))
    with atomic_output(output_dir / "results.md") as tmp:
        tmp.write_text(markdown_report(results))


def compare(settings: CompareSettings, progress: bool = True) -> dict[str, Any]:
    """Run the whole comparison and write its outputs; returns the ``results.json`` contents.

    Args:
        settings: what to compare.
        progress: show a progress bar over every step (stderr).

    Raises:
        ValueError: for a missing dataset, an unknown bundle, a bad device or an unavailable peer (before anything
            runs; failures of a bundle itself are reported in its row instead).
    """
    start = time.perf_counter()
    for name in settings.bundles:
        bundle_dir(name)  # unknown bundle: ValueError listing the available ones
    for folder in {settings.dataset, settings.train_dataset or settings.dataset}:
        if not Path(folder).is_dir():
            msg = f"{folder}: dataset folder not found"
            raise ValueError(msg)
    device = resolve_device(settings.device)
    if settings.peers:
        from tools.compare.peers import check_peers

        check_peers(settings.peers)
    test_set = _test_set(settings.dataset)
    shape = settings.volume_shape or test_set["volume_shape"] or DEFAULT_VOLUME_SHAPE
    settings.output_dir.mkdir(parents=True, exist_ok=True)

    runs_per_bundle = [(1 if b in settings.checkpoints else len(settings.seeds)) for b in settings.bundles]
    total = sum(3 * n + 1 for n in runs_per_bundle) + len(settings.peers) * len(settings.seeds) + 1
    step = _Step(total, progress)
    budget = {
        "image_size": settings.image_size,
        "max_epochs": settings.max_epochs,
        "batch_size": settings.batch_size,
        "overrides": {**({"*": settings.overrides} if settings.overrides else {}), **settings.bundle_overrides},
        "checkpoints": {k: str(v) for k, v in settings.checkpoints.items()},
    }
    results: dict[str, Any] = {
        "command": settings.command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {**json_safe(asdict(settings)), "budget": budget},
        "environment": environment_info(device),
        "test_set": test_set,
        "benchmark_volume_shape": list(shape),
        "rows": [],
        "wall_s": 0.0,
    }
    results["settings"]["dataset"] = str(settings.dataset)
    results["settings"]["train_dataset"] = str(settings.train_dataset or settings.dataset)
    predictions: dict[str, SlicePredictions] = {}
    thresholds: dict[str, float | None] = {}
    try:
        for bundle in settings.bundles:
            row, pred = _bundle_row(bundle, settings, shape, step)
            results["rows"].append(row)
            if pred is not None:
                predictions[bundle] = pred
                thresholds[bundle] = row["runs"][0]["metrics"].get("image_threshold")
                _record_kinds(test_set, row)
                metrics = row["runs"][0]["metrics"]
                test_set.update(n_slices=metrics.get("n_slices"), n_abnormal_slices=metrics.get("n_abnormal_slices"))
            results["wall_s"] = time.perf_counter() - start
            _write_outputs(results, settings.output_dir)
        if settings.peers:
            from tools.compare.peers import run_peers

            for row, pred in run_peers(settings, step):
                results["rows"].append(row)
                if pred is not None:
                    predictions[row["name"]] = pred
                    thresholds[row["name"]] = None
                    _record_kinds(test_set, row)
        step.start("figures")
        results["figures"] = [
            p.name for p in save_comparison_figures(predictions, thresholds, settings.output_dir, settings.n_overlays)
        ]
        step.done()
    finally:
        step.close()
        results["wall_s"] = time.perf_counter() - start
        _write_outputs(results, settings.output_dir)
    return results
