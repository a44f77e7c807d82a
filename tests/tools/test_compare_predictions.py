"""Tests for tools.compare.predictions: pairing a bundle's inference outputs with the dataset's test records."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from common.inference import list_input_files, output_stems
from tools.compare.predictions import load_predictions


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def _twins(data: Path) -> None:
    _png(data / "train" / "good" / "t.png", 50)
    _png(data / "test" / "good" / "a.png", 50)
    _png(data / "test" / "lesion" / "a.png", 200)
    _png(data / "test" / "lesion" / "b.png", 200)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    for name in ("a", "b"):
        (data / "ground_truth" / "lesion").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(data / "ground_truth" / "lesion" / f"{name}_mask.png")


def _write_run(maps: Path, inputs: list[Path], stems: list[str], values: list[float]) -> None:
    maps.mkdir()
    for stem, value in zip(stems, values, strict=True):
        nib.save(nib.Nifti1Image(np.full((8, 8), value, np.float32), np.eye(4)), maps / f"{stem}_anomaly.nii.gz")
    with (maps / "scores.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "slice", "slice_score", "scored"])
        writer.writerows([str(path), 0, value, 1] for path, value in zip(inputs, values, strict=True))


def test_twins_with_one_name_in_two_classes_get_their_own_maps(tmp_path):
    """``test/good/a.png`` and ``test/lesion/a.png`` (MVTec-style names, lesion twins) must not share a map."""
    data = tmp_path / "data"
    _twins(data)
    inputs = list_input_files(data / "test")
    stems = output_stems(inputs, data / "test")
    assert stems == ["good_a", "lesion_a", "b"]
    _write_run(tmp_path / "maps", inputs, stems, [0.0, 1.0, 2.0])
    predictions = load_predictions(tmp_path / "maps", data)
    assert predictions.labels == [0, 1, 1]
    for index, amap in enumerate(predictions.maps):
        np.testing.assert_array_equal(amap, np.full((8, 8), float(index), np.float32))


def test_a_run_over_one_class_folder_is_read_by_plain_stems(tmp_path):
    """Inference over ``test/good`` alone names its outputs by the plain stem (as tools.threshold_rules runs it)."""
    data = tmp_path / "data"
    _twins(data)
    inputs = list_input_files(data / "test" / "good")
    _write_run(tmp_path / "good", inputs, output_stems(inputs, data / "test" / "good"), [5.0])
    predictions = load_predictions(tmp_path / "good", data)
    assert predictions.labels == [0]
    np.testing.assert_array_equal(predictions.maps[0], np.full((8, 8), 5.0, np.float32))
