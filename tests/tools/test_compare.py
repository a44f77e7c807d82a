"""Tests for tools/compare: the detector comparison end to end on tiny phantoms, its aggregation and its tables."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from common.data import discover_dataset, file_stem, load_image
from common.metrics import aupro
from tools.compare.cli import build_parser, main, parse_scoped_overrides, settings_from_args
from tools.compare.figures import FIGURES
from tools.compare.report import aggregate, aggregate_runs, format_stat, json_safe, markdown_table, one_line_error
from tools.phantoms import write_dataset

OK_BUNDLES = ("ms_nf", "skip_ts")
FAILING = "dnfad"  # given a value its network rejects, so its training fails
# Tiny networks and budget: one epoch on 64x64 phantoms; the benchmark times a 40x40x6 volume.
TINY_ARGS = [
    "--seeds", "0", "--epochs", "1", "--batch-size", "4", "--image-size", "64", "--device", "cpu",
    "--override", "ms_nf:n_blocks=2", "--override", "ms_nf:hidden_channels=16",
    "--override", f'{FAILING}:n_blocks="many"',
    "--bench-iterations", "1", "--bench-batch-size", "2", "--volume-shape", "40", "40", "6", "--no-progress",
]  # fmt: skip
METRIC_KEYS = (
    "image_auroc", "image_ap", "image_f1", "image_accuracy", "image_recall", "pixel_auroc",
    "pixel_auroc_foreground", "aupro", "aupro_foreground", "best_dice", "dice",
)  # fmt: skip
COST_KEYS = ("train_s", "slices_per_s", "volume_s", "peak_memory_mib", "parameters", "gflops_per_slice")

AGGREGATE_CASES = [
    ([0.8, 0.9], {"mean": 0.85, "std": float(np.std([0.8, 0.9], ddof=1)), "n": 2}),  # sample std over seeds
    ([0.7], {"mean": 0.7, "std": 0.0, "n": 1}),  # one seed: std 0
    ([0.5, None, float("nan")], {"mean": 0.5, "std": 0.0, "n": 1}),  # undefined values are skipped
    ([None, float("nan")], {"mean": None, "std": None, "n": 0}),  # nothing defined
    ([1, 2, 3], {"mean": 2.0, "std": 1.0, "n": 3}),  # integers
]

FORMAT_CASES = [
    ({"mean": 0.81234, "std": 0.01234, "n": 3}, 3, "0.812 ± 0.012"),  # several seeds
    ({"mean": 0.81234, "std": 0.0, "n": 1}, 3, "0.812"),  # one seed: no ±
    ({"mean": None, "std": None, "n": 0}, 3, "–"),  # undefined
    ({"mean": 1234567.0, "std": 0.0, "n": 1}, 0, "1,234,567"),  # counts with separators
]

BAD_ARGS_CASES = [
    (["/no/such/dataset", "--output-dir", "{tmp}"], "is not a folder"),  # missing dataset folder
    (["{data}", "--output-dir", "{tmp}", "--bundles", "no_such_bundle"], "unknown bundle"),  # lists the bundles
    (["{data}", "--output-dir", "{tmp}", "--bundles", ""], "--bundles"),  # empty list
    (["{data}", "--output-dir", "{tmp}", "--bundles", "ms_nf,ms_nf"], "twice"),  # duplicate
    (["{data}", "--output-dir", "{tmp}", "--override", "skip_ts:n_blocks=1", "--bundles", "ms_nf"], "not among"),
    (["{data}", "--output-dir", "{tmp}", "--checkpoint", "ms_nf=/no/model.pt"], "not found"),  # missing model
    (["{data}", "--output-dir", "{tmp}", "--checkpoint", "ms_nf"], "BUNDLE=PATH"),  # malformed
    (["{data}", "--output-dir", "{tmp}", "--epochs", "0"], "--epochs"),  # non-positive
    (["{data}", "--output-dir", "{tmp}", "--image-size", "64", "64", "64"], "--image-size"),  # three sizes
    (["{data}", "--output-dir", "{tmp}", "--peers", "no_such_peer"], "unknown peer"),  # lists the peers
    (["{data}"], "--output-dir"),  # argparse: required option
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2D phantoms: 8 normal training images, 2 normal and 3 lesion test images (64x64)."""
    root = tmp_path_factory.mktemp("compare") / "data"
    return write_dataset(root, dims=2, n_train=8, n_test_good=2, n_test_lesion=3, size=64, seed=0)


@pytest.fixture(scope="module")
def compared(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, dict]:
    out = tmp_path_factory.mktemp("compare_out") / "out"
    bundles = ",".join([OK_BUNDLES[0], FAILING, OK_BUNDLES[1]])  # the failing bundle sits between the others
    report = out.parent / "docs" / "benchmarks.md"
    rc = main([str(dataset), "--output-dir", str(out), "--bundles", bundles, *TINY_ARGS, "--report", str(report)])
    return rc, out, json.loads((out / "results.json").read_text())


def _rows(results: dict) -> dict[str, dict]:
    return {row["name"]: row for row in results["rows"]}


@pytest.mark.slow
def test_compare_writes_every_output(compared: tuple[int, Path, dict]) -> None:
    rc, out, results = compared
    assert rc == 1  # one bundle failed
    for name in ("results.json", "results.md", *FIGURES):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*"))  # no temporary file left behind
    assert (out.parent / "docs" / "benchmarks.md").read_text() == (out / "results.md").read_text()
    assert results["command"].startswith("python -m tools.compare ")
    assert results["settings"]["seeds"] == [0]
    assert results["settings"]["budget"]["image_size"] == [64, 64] and results["settings"]["budget"]["max_epochs"] == 1
    for key in ("device", "device_name", "torch", "monai", "numpy", "python"):
        assert results["environment"][key], key
    assert results["test_set"] == {
        "n_files": 5, "kind": "2D", "volume_shape": None, "n_slices": 5, "n_abnormal_slices": 3
    }  # fmt: skip
    json.dumps(results, allow_nan=False)  # strict JSON


@pytest.mark.slow
def test_compare_rows_have_documented_keys(compared: tuple[int, Path, dict]) -> None:
    _, _, results = compared
    rows = _rows(results)
    assert [row["name"] for row in results["rows"]] == [OK_BUNDLES[0], FAILING, OK_BUNDLES[1]]
    for name in OK_BUNDLES:
        row = rows[name]
        assert row["status"] == "ok" and row["error"] is None
        assert row["input_size"] == "64x64"
        for key in METRIC_KEYS:
            assert set(row["metrics"][key]) == {"mean", "std", "n"} and row["metrics"][key]["n"] == 1, (name, key)
        for key in COST_KEYS:
            stat = row["cost"][key]
            assert stat["n"] == 1 and math.isfinite(stat["mean"]) and stat["mean"] > 0, (name, key)
        assert row["benchmark"]["end_to_end"]["volume_shape"] == [40, 40, 6]
        assert row["runs"][0]["seed"] == 0 and Path(row["runs"][0]["checkpoint"]).is_file()


@pytest.mark.slow
def test_failing_bundle_is_reported_in_one_line(compared: tuple[int, Path, dict]) -> None:
    _, out, results = compared
    row = _rows(results)[FAILING]
    assert row["status"] == "failed"
    print(f"{FAILING} error: {row['error']}")
    assert "\n" not in row["error"] and row["error"].startswith("seed 0:"), row["error"]
    assert "train.json: ValueError" in row["error"] and "n_blocks" in row["error"], row["error"]  # the root cause
    md = (out / "results.md").read_text()
    assert f"| {FAILING} | failed |" in md and f"- {FAILING}: {row['error']}" in md


@pytest.mark.slow
def test_markdown_report_lists_every_bundle(compared: tuple[int, Path, dict]) -> None:
    _, out, results = compared
    md = (out / "results.md").read_text()
    assert results["command"] in md and "seeds: 0" in md and "## Detection and localisation" in md
    assert "| detector | image AUROC | image AP | F1 @thr |" in md and "## Cost" in md
    for name in OK_BUNDLES:
        assert f"| {name} (64x64) | " in md


def _recomputed(run_dir: Path, dataset: Path) -> dict[str, float]:
    """Image and pixel metrics from the written maps, scores.csv and ground truth (scikit-learn, common.metrics)."""
    records = {str(r.image.resolve()): r for r in discover_dataset(dataset).test}
    labels, scores, masks, maps = [], [], [], []
    with (run_dir / "maps" / "scores.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["scored"] == "0":
                continue
            record = records[str(Path(row["file"]).resolve())]
            anomaly_map = nib.load(run_dir / "maps" / f"{file_stem(record.image)}_anomaly.nii.gz").get_fdata()
            mask = np.asarray(load_image(record.mask)) > 0 if record.mask else np.zeros(anomaly_map.shape, bool)
            labels.append(int(mask.any()))
            scores.append(float(row["slice_score"]))
            masks.append(mask)
            maps.append(anomaly_map)
    pixel_labels = np.concatenate([m.ravel() for m in masks])
    pixel_scores = np.concatenate([m.ravel() for m in maps])
    return {
        "image_auroc": roc_auc_score(labels, scores),
        "pixel_auroc": roc_auc_score(pixel_labels, pixel_scores),
        "aupro": aupro(masks, maps),
    }


@pytest.mark.parametrize("bundle", OK_BUNDLES)
@pytest.mark.slow
def test_metrics_match_the_saved_maps(compared: tuple[int, Path, dict], dataset: Path, bundle: str) -> None:
    _, _, results = compared
    row = _rows(results)[bundle]
    expected = _recomputed(Path(row["runs"][0]["run_dir"]), dataset)
    for key, value in expected.items():
        assert row["metrics"][key]["mean"] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_checkpoint_on_3d_volumes(compared: tuple[int, Path, dict], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Given model.pt files evaluated on a 3D test set: no training, volume AUROC, the benchmark on the test grid.

    No ``--image-size`` or architecture override is repeated: each checkpoint describes its network (MS-NF was
    trained at 64x64 with ``n_blocks=2`` and ``hidden_channels=16``, none of them the config default).
    """
    _, _, results = compared
    checkpoints = {name: _rows(results)[name]["runs"][0]["checkpoint"] for name in OK_BUNDLES}
    root = tmp_path_factory.mktemp("compare3d")
    data = write_dataset(root / "data", dims=3, n_train=1, n_test_good=1, n_test_lesion=1, size=40, depth=8)
    out = root / "out"
    args = [str(data), "--output-dir", str(out), "--bundles", ",".join(OK_BUNDLES)]
    args += [arg for name, path in checkpoints.items() for arg in ("--checkpoint", f"{name}={path}")]
    assert main([*args, "--device", "cpu", "--bench-iterations", "1", "--bench-batch-size", "2", "--no-progress"]) == 0
    rows = _rows(json.loads((out / "results.json").read_text()))
    for name, checkpoint in checkpoints.items():
        row = rows[name]
        assert row["status"] == "ok", row["error"]
        assert "train_s" not in row["runs"][0] and row["cost"]["train_s"]["n"] == 0
        assert row["runs"][0]["checkpoint"] == checkpoint
        assert "volume_auroc" in row["metrics"]
        assert row["benchmark"]["end_to_end"]["volume_shape"] == [40, 40, 8]
        assert row["benchmark"]["settings"]["image_size"] == [64, 64] and row["input_size"] == "64x64"
    arguments = rows["ms_nf"]["benchmark"]["model"]["arguments"]
    assert (arguments["n_blocks"], arguments["hidden_channels"]) == (2, 16)


@pytest.mark.parametrize(("args", "message"), BAD_ARGS_CASES, ids=[c[1] for c in BAD_ARGS_CASES])
def test_bad_arguments_give_one_line(
    args: list[str], message: str, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [a.format(data=dataset, tmp=tmp_path / "out") for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.skipif(importlib.util.find_spec("anomalib") is not None, reason="anomalib is installed")
def test_peers_without_anomalib(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(dataset), "--output-dir", str(tmp_path), "--peers", "padim,fastflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs anomalib" in err and "[peers]" in err


@pytest.mark.parametrize(("values", "expected"), AGGREGATE_CASES, ids=[str(c[0]) for c in AGGREGATE_CASES])
def test_aggregate(values: list, expected: dict) -> None:
    result = aggregate(values)
    assert result["n"] == expected["n"]
    for key in ("mean", "std"):
        assert result[key] == (None if expected[key] is None else pytest.approx(expected[key])), key


def test_aggregate_runs_takes_every_numeric_key() -> None:
    runs = [{"auroc": 0.8, "note": "x", "dice": float("nan")}, {"auroc": 0.6, "dice": 0.4}]
    result = aggregate_runs(runs)
    assert sorted(result) == ["auroc", "dice"]
    assert result["auroc"]["mean"] == pytest.approx(0.7) and result["dice"] == {"mean": 0.4, "std": 0.0, "n": 1}


@pytest.mark.parametrize(("stat", "digits", "expected"), FORMAT_CASES, ids=[c[2] for c in FORMAT_CASES])
def test_format_stat(stat: dict, digits: int, expected: str) -> None:
    assert format_stat(stat, digits) == expected


def test_markdown_table() -> None:
    rows = [
        {"name": "a", "status": "ok", "input_size": "64x64", "metrics": {"x": aggregate([0.5, 0.7])}},
        {"name": "b", "status": "failed", "error": "boom", "metrics": {}},
        {"name": "c", "status": "ok", "metrics": {}},
    ]
    table = markdown_table(rows, [("x", "X"), ("y", "Y")], "metrics")
    assert table.splitlines() == [
        "| detector | X | Y |",
        "|---|---|---|",
        "| a (64x64) | 0.600 ± 0.141 | – |",
        "| b | failed |  |",
        "| c | – | – |",
    ]


def test_json_safe() -> None:
    assert json_safe({"a": float("nan"), "b": [np.float32(0.5), Path("/x")], "c": np.int64(3)}) == {
        "a": None, "b": [0.5, "/x"], "c": 3
    }  # fmt: skip


def test_default_bundles_put_the_intensity_yardstick_first(dataset: Path, tmp_path: Path) -> None:
    """Every comparison shows the yardstick row unless --bundles says otherwise; every bundle runs by default."""
    settings = settings_from_args(build_parser().parse_args([str(dataset), "--output-dir", str(tmp_path)]))
    assert settings.bundles == ["intensity", "ms_nf", "dnfad", "skip_ts", "anomalypro"]


def test_parse_scoped_overrides() -> None:
    shared, scoped = parse_scoped_overrides(["seed=1", "ms_nf:n_blocks=4", "ms_nf:image_size=[64,64]"], ["ms_nf"])
    assert shared == {"seed": 1} and scoped == {"ms_nf": {"n_blocks": 4, "image_size": [64, 64]}}


def test_one_line_error() -> None:
    error = RuntimeError(
        "python -m monai.bundle run failed with exit code 1:\nTraceback\n  File x\nValueError: bad n\nend"
    )
    assert one_line_error(error) == "ValueError: bad n"
    assert one_line_error(ValueError("first\nsecond")) == "first"


def test_peer_maps_are_resized_to_monai_order() -> None:
    from tools.compare.peers import _resize

    anomaly_map = np.zeros((4, 6), dtype=np.float32)  # anomalib (H, W)
    anomaly_map[0, 5] = 1.0  # top row, right-most column: x = 5, y = 0
    out = _resize(anomaly_map, (12, 8))  # MONAI (X, Y) of the test image
    x, y = np.unravel_index(out.argmax(), out.shape)
    assert out.shape == (12, 8) and x >= 9 and y <= 1
