"""Tests for tools.compare.kinds and the per-kind report: each anomaly class against test/good alone."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.inference import list_input_files, output_stems
from tools.bundles import bundle_slice_settings
from tools.compare.cli import main
from tools.compare.kinds import (
    aggregate_kinds,
    kind_metrics,
    kinds_of,
    mean_over_kinds,
    prediction_foregrounds,
    subset_metrics,
)
from tools.compare.predictions import load_predictions
from tools.compare.report import MEAN_OVER_KINDS, aggregate, kind_matrix, kind_table, markdown_report
from tools.phantoms import write_dataset

SIZE = 16
LESION = (slice(6, 10), slice(6, 10))  # inside the brain
BRAIN = (slice(2, 14), slice(2, 14))
# slice scores: "perfect" outscores every normal slice, "chance" ties them on average (image AUROC exactly 0.5)
GOOD_SCORES = {"g0": 0.1, "g1": 0.2, "g2": 0.3, "g3": 0.4}
PERFECT_SCORES = {"p0": 0.9}
CHANCE_SCORES = {"c0": 0.1, "c1": 0.4}
IMAGE_THRESHOLD = 0.35


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _mask(region: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[region] = 255
    return mask


def _two_kinds(data: Path) -> None:
    """A 2D test set with normal images, a kind the detector finds perfectly and one it finds at chance."""
    _png(data / "train" / "good" / "t.png", np.full((SIZE, SIZE), 80))
    for kind, names in (("good", GOOD_SCORES), ("perfect", PERFECT_SCORES), ("chance", CHANCE_SCORES)):
        for name in names:
            _png(data / "test" / kind / f"{name}.png", np.full((SIZE, SIZE), 80))
            _png(data / "brain_mask" / kind / f"{name}.png", _mask(BRAIN))
            if kind != "good":
                _png(data / "ground_truth" / kind / f"{name}_mask.png", _mask(LESION))


def _map(name: str) -> np.ndarray:
    """Perfect: the lesion exactly. Chance: flat, as the normal maps inside the brain. Normal: high outside it."""
    amap = np.zeros((SIZE, SIZE), np.float32)
    if name in PERFECT_SCORES:
        amap[LESION] = 1.0
    if name in GOOD_SCORES:
        amap[:] = 5.0
        amap[BRAIN] = 0.0  # outside the foreground the normal maps outscore every lesion: only the fg figures are 1
    return amap.T  # MONAI (X, Y) order, as inference writes 2D maps


def _write_maps(maps: Path, data: Path) -> None:
    inputs = list_input_files(data / "test")
    maps.mkdir(parents=True)
    scores = {**GOOD_SCORES, **PERFECT_SCORES, **CHANCE_SCORES}
    with (maps / "scores.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "slice", "slice_score", "scored"])
        for path, stem in zip(inputs, output_stems(inputs, data / "test"), strict=True):
            nib.save(nib.Nifti1Image(_map(path.stem), np.eye(4)), maps / f"{stem}_anomaly.nii.gz")
            writer.writerow([str(path), 0, scores[path.stem], 1])


@pytest.fixture
def predicted(tmp_path: Path):
    data = tmp_path / "data"
    _two_kinds(data)
    _write_maps(tmp_path / "maps", data)
    predictions = load_predictions(tmp_path / "maps", data)
    return predictions, prediction_foregrounds(predictions, bundle_slice_settings("intensity", "evaluate.json"))


def test_each_kind_is_scored_against_the_normal_images_alone(predicted) -> None:
    predictions, foregrounds = predicted
    assert kinds_of(predictions) == ["chance", "perfect"]
    per_kind = kind_metrics(predictions, foregrounds, image_threshold=IMAGE_THRESHOLD, pixel_threshold=0.5)
    perfect, chance = per_kind["perfect"], per_kind["chance"]
    assert (perfect["n_slices"], perfect["n_abnormal_slices"]) == (5, 1)
    assert (chance["n_slices"], chance["n_abnormal_slices"]) == (6, 2)
    assert perfect["image_auroc"] == pytest.approx(1.0) and chance["image_auroc"] == pytest.approx(0.5)
    assert perfect["image_recall"] == pytest.approx(1.0) and chance["image_recall"] == pytest.approx(0.5)
    assert perfect["pixel_auroc_foreground"] == pytest.approx(1.0)
    assert perfect["aupro_foreground"] == pytest.approx(1.0)
    assert perfect["best_dice_foreground"] == pytest.approx(1.0) and perfect["dice_foreground"] == pytest.approx(1.0)
    assert perfect["pixel_auroc"] < 0.9  # outside the foreground the normal maps are high: the fg figures used it
    assert chance["pixel_auroc_foreground"] == pytest.approx(0.5)
    mean = mean_over_kinds(per_kind)
    assert mean["image_auroc"] == pytest.approx(0.75) and mean["pixel_auroc_foreground"] == pytest.approx(0.75)
    assert "n_slices" not in mean and "image_threshold" not in mean
    everything = subset_metrics(predictions, foregrounds, range(len(predictions.keys)), IMAGE_THRESHOLD)
    assert everything["image_auroc"] == pytest.approx(8 / 12)  # the all-classes figure is not the mean over kinds


def test_mean_over_kinds_needs_every_kind() -> None:
    assert mean_over_kinds({"a": {"x": 1.0, "y": 0.2}, "b": {"x": 0.0, "y": float("nan")}}) == {"x": 0.5, "y": None}


def test_aggregate_kinds_over_seeds() -> None:
    runs = [
        {"kinds": {"a": {"image_auroc": 1.0}, "b": {"image_auroc": 0.5}}, "mean_over_kinds": {"image_auroc": 0.75}},
        {"kinds": {"a": {"image_auroc": 0.8}, "b": {"image_auroc": 0.5}}, "mean_over_kinds": {"image_auroc": 0.65}},
    ]
    out = aggregate_kinds(runs)
    assert out["kinds"]["a"]["image_auroc"] == aggregate([1.0, 0.8])
    assert out["kinds"]["b"]["image_auroc"] == {"mean": 0.5, "std": 0.0, "n": 2}
    assert out["mean_over_kinds"]["image_auroc"] == aggregate([0.75, 0.65])


def _row(name: str, a: float, b: float) -> dict:
    kinds = {"a": {"image_auroc": aggregate([a])}, "b": {"image_auroc": aggregate([b])}}
    return {"name": name, "status": "ok", "kinds": kinds, "mean_over_kinds": {"image_auroc": aggregate([(a + b) / 2])}}


def test_kind_tables() -> None:
    rows = [_row("intensity", 0.9, 0.5), _row("ms_nf", 0.6, 0.7), {"name": "dnfad", "status": "failed"}]
    assert kind_matrix(rows, ["a", "b"], "image_auroc").splitlines() == [
        f"| detector | a | b | {MEAN_OVER_KINDS} |",
        "|---|---|---|---|",
        "| intensity | 0.900 | 0.500 | 0.700 |",
        "| ms_nf | 0.600 | 0.700 | 0.650 |",
        "| dnfad | – | – | – |",
    ]
    table = kind_table(rows, ["a", "b"], [("image_auroc", "image AUROC")]).splitlines()
    assert table[0] == "| kind | detector | image AUROC |" and len(table) == 2 + 3 * 3  # kinds a, b and the mean
    assert table[2] == "| a | intensity | 0.900 |" and table[-2] == f"| {MEAN_OVER_KINDS} | ms_nf | 0.650 |"


# end to end: the intensity yardstick (one cheap bundle, no training randomness) on phantoms with two kinds
TINY_ARGS = [
    "--bundles", "intensity", "--seeds", "0", "1", "--image-size", "64", "--device", "cpu",
    "--bench-iterations", "1", "--bench-batch-size", "2", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def two_kind_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2D phantoms with test/lesion and a second kind, test/other (the lesions of another seed)."""
    root = tmp_path_factory.mktemp("kinds")
    data = write_dataset(root / "data", dims=2, n_train=8, n_test_good=3, n_test_lesion=2, size=64, seed=0)
    other = write_dataset(root / "other", dims=2, n_train=1, n_test_good=1, n_test_lesion=2, size=64, seed=1)
    shutil.copytree(other / "test" / "lesion", data / "test" / "other")
    shutil.copytree(other / "ground_truth" / "lesion", data / "ground_truth" / "other")
    return data


@pytest.mark.slow
def test_compare_reports_each_kind(two_kind_phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([str(two_kind_phantoms), "--output-dir", str(out), *TINY_ARGS]) == 0
    results = json.loads((out / "results.json").read_text())
    (row,) = results["rows"]
    assert results["test_set"]["kinds"] == {
        "lesion": {"n_slices": 5, "n_abnormal_slices": 2}, "other": {"n_slices": 5, "n_abnormal_slices": 2}
    }  # fmt: skip
    assert sorted(row["kinds"]) == ["lesion", "other"] and row["kinds"]["lesion"]["image_auroc"]["n"] == 2
    for run in row["runs"]:
        expected = np.mean([run["kinds"][k]["aupro_foreground"] for k in ("lesion", "other")])
        assert run["mean_over_kinds"]["aupro_foreground"] == pytest.approx(expected)
    assert row["mean_over_kinds"]["image_auroc"] == aggregate(
        [run["mean_over_kinds"]["image_auroc"] for run in row["runs"]]
    )
    # the per-kind code over every class reproduces the bundle's own evaluation: same foreground, same thresholds
    predictions = load_predictions(Path(row["runs"][0]["run_dir"]) / "maps", two_kind_phantoms)
    foregrounds = prediction_foregrounds(predictions, bundle_slice_settings("intensity", "evaluate.json"))
    metrics = row["runs"][0]["metrics"]
    everything = subset_metrics(
        predictions, foregrounds, range(len(predictions.keys)), metrics["image_threshold"], metrics["pixel_threshold"]
    )
    for key in ("image_auroc", "image_f1", "pixel_auroc_foreground", "aupro_foreground", "dice_foreground"):
        assert everything[key] == pytest.approx(metrics[key], abs=1e-9), key
    md = (out / "results.md").read_text()
    assert md == markdown_report(results)
    assert "## Per kind" in md and "its seeds only move the calibration split" in md
    assert "| lesion | intensity (64x64) |" in md and f"| {MEAN_OVER_KINDS} | intensity (64x64) |" in md
