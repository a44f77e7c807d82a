"""Aggregation over seeds and the comparison report: ``results.json`` contents and the ``results.md`` tables.

Every figure of a bundle is the mean over its seeds with the sample standard deviation (``ddof=1``; 0 for a single
seed). Undefined values (``None``, NaN: e.g. a volume AUROC without normal volumes) are left out of the mean and shown
as ``–`` when no seed has one. A model that fails gets one line in its row's ``error`` (:func:`one_line_error`).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

import numpy as np

__all__ = [
    "COST_COLUMNS",
    "DETECTION_COLUMNS",
    "KIND_COLUMNS",
    "aggregate",
    "aggregate_runs",
    "format_stat",
    "json_safe",
    "kind_matrix",
    "kind_table",
    "markdown_report",
    "markdown_table",
    "one_line_error",
]

DETECTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("image_auroc", "image AUROC"),
    ("image_ap", "image AP"),
    ("image_f1", "F1 @thr"),
    ("image_accuracy", "accuracy @thr"),
    ("image_recall", "recall @thr"),
    ("pixel_auroc", "pixel AUROC"),
    ("pixel_auroc_foreground", "pixel AUROC (fg)"),
    ("aupro", "AUPRO"),
    ("aupro_foreground", "AUPRO (fg)"),
    ("best_dice", "best Dice"),
    ("dice", "Dice @thr"),
    ("volume_auroc", "volume AUROC"),
)
"""Detection and localisation columns: ``metrics.json`` keys of the bundles' evaluation and their headers."""

COST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("train_s", "training s"),
    ("slices_per_s", "slices/s (model)"),
    ("volume_s", "s / volume"),
    ("peak_memory_mib", "peak memory MiB"),
    ("parameters", "parameters"),
    ("gflops_per_slice", "GFLOP / slice"),
)
"""Cost columns: training wall time per seed, then the benchmark of the first seed's model."""

KIND_COLUMNS: tuple[tuple[str, str], ...] = (
    ("image_auroc", "image AUROC"),
    ("image_ap", "image AP"),
    ("image_recall", "recall @thr"),
    ("pixel_auroc_foreground", "pixel AUROC (fg)"),
    ("aupro_foreground", "AUPRO (fg)"),
    ("best_dice_foreground", "best Dice (fg)"),
)
"""Columns of the per-kind table (:mod:`tools.compare.kinds`): detection, then localisation inside the foreground."""

MEAN_OVER_KINDS = "mean over kinds"
"""The label of the mean over kinds in the per-kind tables."""

_DIGITS = {"train_s": 0, "volume_s": 1, "slices_per_s": 1, "peak_memory_mib": 0, "parameters": 0, "gflops_per_slice": 2}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def aggregate(values: Iterable[Any]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation and count of the finite numbers among ``values``.

    Args:
        values: one value per seed; ``None``, NaN and non-numbers are skipped.

    Returns:
        ``{"mean", "std", "n"}``; ``std`` is 0 for one value; ``mean`` and ``std`` are ``None`` for none.

    Example:
        >>> aggregate([0.8, 0.9, None])
        {'mean': 0.85, 'std': 0.07071067811865474, 'n': 2}
    """
    finite = [v for v in (_number(x) for x in values) if v is not None]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": float(np.mean(finite)), "std": std, "n": len(finite)}


def aggregate_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """:func:`aggregate` for every numeric key found in any of ``runs`` (one flat dict per seed), in sorted order."""
    keys = sorted({k for run in runs for k, v in run.items() if _number(v) is not None})
    return {key: aggregate(run.get(key) for run in runs) for key in keys}


def format_stat(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``"0.812 ± 0.012"``, ``"0.812"`` for one seed, ``"–"`` when undefined.

    Example:
        >>> format_stat({"mean": 0.8123, "std": 0.0121, "n": 3})
        '0.812 ± 0.012'
    """
    if not stat or stat.get("mean") is None:
        return "–"
    mean = f"{stat['mean']:,.{digits}f}"
    if stat.get("n", 1) > 1:
        return f"{mean} ± {stat['std']:,.{digits}f}"
    return mean


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (strict JSON), numpy scalars as numbers, paths as strings."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_ERROR_LINE = re.compile(r"(\b\w*(Error|Exception)\b: |Error: | - ERROR - )")


def one_line_error(error: BaseException, limit: int = 300) -> str:
    """The most telling line of an error: the last ``...Error: ...`` line of a bundle's output, else the first line."""
    if isinstance(error, subprocess.TimeoutExpired):
        return f"timed out after {error.timeout:.0f} s"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    matches = [line for line in lines[1:] if _ERROR_LINE.search(line)]
    line = matches[-1] if matches else lines[0]
    line = line.split(" - ERROR - ", 1)[-1]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], section: str) -> str:
    """A markdown table, one row per entry of ``rows`` with its ``name`` and ``section`` stats; failures say so.

    Args:
        rows: the ``results.json`` rows (``name``, ``status``, ``error``, the ``section`` dict of stats and, when
            known, ``input_size``, shown after the name).
        columns: ``(key, header)`` pairs.
        section: ``"metrics"`` or ``"cost"``.
    """
    lines = [
        "| detector | " + " | ".join(header for _, header in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in rows:
        if row["status"] != "ok":
            cells = ["failed"] + [""] * (len(columns) - 1)
        else:
            cells = [format_stat(row[section].get(key), _DIGITS.get(key, 3)) for key, _ in columns]
        name = f"{row['name']} ({row['input_size']})" if row.get("input_size") else row["name"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _kind_stats(row: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    if kind == MEAN_OVER_KINDS:
        return row.get("mean_over_kinds") or {}
    return (row.get("kinds") or {}).get(kind) or {}


def _label(row: Mapping[str, Any]) -> str:
    return f"{row['name']} ({row['input_size']})" if row.get("input_size") else row["name"]


def kind_table(rows: Sequence[Mapping[str, Any]], kinds: Sequence[str], columns: Sequence[tuple[str, str]]) -> str:
    """The per-kind markdown table: one row group per kind (then the mean over kinds), one row per detector in it.

    Args:
        rows: the ``results.json`` rows; a row without per-kind figures (failed) shows ``–``.
        kinds: the anomaly kinds, in table order.
        columns: ``(key, header)`` pairs.
    """
    lines = [
        "| kind | detector | " + " | ".join(header for _, header in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for kind in [*kinds, MEAN_OVER_KINDS]:
        for row in rows:
            stats = _kind_stats(row, kind)
            cells = [format_stat(stats.get(key)) for key, _ in columns]
            lines.append(f"| {kind} | {_label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kind_matrix(rows: Sequence[Mapping[str, Any]], kinds: Sequence[str], key: str) -> str:
    """One figure as a detectors x kinds markdown table, the mean over kinds last."""
    columns = [*kinds, MEAN_OVER_KINDS]
    lines = ["| detector | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
        cells = [format_stat(_kind_stats(row, kind).get(key)) for kind in columns]
        lines.append(f"| {_label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _kind_section(results: Mapping[str, Any]) -> list[str]:
    """The ``## Per kind`` lines of ``results.md`` (none when the test set has one anomaly class)."""
    rows = results["rows"]
    counts = results.get("test_set", {}).get("kinds") or {}
    kinds = sorted({kind for row in rows for kind in row.get("kinds") or {}})
    if not kinds:
        return []
    sizes = ", ".join(
        f"{kind} {counts[kind]['n_slices']} ({counts[kind]['n_abnormal_slices']} abnormal)"
        for kind in kinds
        if kind in counts
    )
    lines = [
        "## Per kind",
        "",
        "Each anomaly class against the normal test images alone (`test/good` + `test/<kind>`), scored from the same "
        "stored predictions by the same metric code, inside the same foreground, at the same calibrated thresholds "
        f"as the table above. {MEAN_OVER_KINDS.capitalize()}: the unweighted mean of the kinds' figures for each "
        "seed, then mean ± sample standard deviation over the seeds." + (f" Slices: {sizes}." if sizes else ""),
        "",
    ]
    if any(row["name"] == "intensity" for row in rows):
        lines += [
            "The intensity yardstick has no randomness (no random initialisation, no sampling): its seeds only move "
            "the calibration split drawn from `train/good`, so its ± is that split's effect alone.",
            "",
        ]
    for key, header in (("image_auroc", "Image AUROC"), ("aupro_foreground", "AUPRO (fg)")):
        lines += [f"### {header} per kind", "", kind_matrix(rows, kinds, key), ""]
    lines += ["### All figures per kind", "", kind_table(rows, kinds, KIND_COLUMNS), ""]
    return lines


def _used_columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], section: str) -> list:
    """The columns that at least one successful row has a value for."""
    ok = [row for row in rows if row["status"] == "ok"]
    used = [c for c in columns if any((row[section].get(c[0]) or {}).get("mean") is not None for row in ok)]
    return used or list(columns[:1])


def markdown_report(results: Mapping[str, Any]) -> str:
    """The ``results.md`` text: settings, the detection table, the cost table, failures and notes."""
    rows = results["rows"]
    settings = results["settings"]
    env = results["environment"]
    budget = settings["budget"]
    test = results.get("test_set", {})
    seeds = ", ".join(str(s) for s in settings["seeds"])
    size = "x".join(str(s) for s in budget["image_size"]) if budget.get("image_size") else "each config's default"
    given = budget.get("checkpoints") or {}
    trained = [row["name"] for row in rows if row.get("kind", "bundle") == "bundle" and row["name"] not in given]
    training = f"models trained here on `{settings['train_dataset']}`" if trained else "no training here"
    lines = [
        "# Detector comparison",
        "",
        f"Command: `{results['command']}`",
        "",
        f"- dataset: `{settings['dataset']}` ({training}); test set: "
        f"{test.get('n_files', '?')} {test.get('kind', '')} files, {test.get('n_slices', '?')} slices "
        f"({test.get('n_abnormal_slices', '?')} abnormal)",
        f"- seeds: {seeds}; figures are mean ± sample standard deviation over the seeds"
        + (f"; models given with `--checkpoint` are evaluated once ({', '.join(given)})" if given else ""),
        f"- budget: image size {size}"
        + (
            f", epochs {budget.get('max_epochs') or 'config default'}, batch size "
            f"{budget.get('batch_size') or 'config default'}"
            if trained
            else ""
        )
        + f"; overrides `{json.dumps(budget.get('overrides') or {})}`"
        + (f"; checkpoints `{json.dumps(given)}`" if given else ""),
        f"- device: {env['device']}: {env['device_name']} ({env['cpu_count']} CPUs, {env['torch_threads']} torch "
        f"threads); python {env['python']}, torch {env['torch']}, monai {env['monai']}, numpy {env['numpy']}",
        f"- date: {results['date']}; total wall time {results['wall_s'] / 60:.1f} min",
        "",
        "## Detection and localisation",
        "",
        markdown_table(rows, _used_columns(rows, DETECTION_COLUMNS, "metrics"), "metrics"),
        "",
        *_kind_section(results),
        "## Cost",
        "",
        markdown_table(rows, COST_COLUMNS, "cost"),
        "",
    ]
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        lines += ["## Failed", ""] + [f"- {row['name']}: {row['error']}" for row in failed] + [""]
    volume = results.get("benchmark_volume_shape")
    lines += [
        "## Notes",
        "",
        "- Image metrics are per slice (a slice is abnormal when its mask has an anomalous pixel); `@thr` = at the "
        "threshold each model calibrated on held-out normal training images (nothing is chosen on the test split). "
        "Pixel metrics over all pixels of the evaluated slices and, `(fg)`, inside the foreground; AUPRO integrated "
        "up to FPR 0.3 and normalised. Best Dice is an upper bound that uses the ground truth.",
        "- Checkpoints: the last epoch, unless a bundle's documented label-free criterion picks another (AnomalyPro: "
        "pseudo-AUC on unlabelled `train/mixed`).",
        "- Training s: wall time of the training command (process start-up included), mean over seeds. Slices/s: "
        "the model alone on device-resident batches; s / volume: one "
        f"{'x'.join(map(str, volume)) if volume else '?'} NIfTI volume read → maps → write; peak memory: "
        "`torch.cuda.max_memory_allocated` on CUDA, peak RSS of the benchmark process on the CPU; FLOPs counted by "
        "`torch.utils.flop_counter.FlopCounterMode` (one multiply-add = 2) at the configured size. All from "
        "`tools.benchmark.run_benchmark` on the first seed's model.",
    ]
    if any(row.get("kind") == "peer" for row in rows):
        lines += [
            "- anomalib peers: trained on the same images, size and epochs with a random-init ResNet18; anomalib "
            "calibrates no threshold on held-out normal images, so `@thr` is empty. Their maps, resized to each test "
            "image, are scored by the same metric code; `(fg)` uses the foreground the bundles' evaluation uses for "
            "the same image (`brain_mask/` file, else the computed foreground). Their cost columns come from "
            "`tools.benchmark.benchmark_network`, the model-alone code of `run_benchmark`, on the first seed's "
            "`model.model` (3-channel input, fp32 as anomalib runs it) at the same size, batch size and device; "
            "s / volume stays empty (they take 2D images only).",
        ]
    lines += [
        "- Figures: `roc_image.png`, `roc_pixel.png`, `score_histograms.png`, `overlays.png` (first seed).",
        "",
    ]
    return "\n".join(lines)
