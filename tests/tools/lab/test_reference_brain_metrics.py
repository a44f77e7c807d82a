from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.metrics import evaluate_anomaly_detection
from tools.lab.reference_brain_metrics import main, reference_brain_metrics

SHAPE = (8, 8, 4)


def _nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), path)
    return path


def _dataset(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    lesion = np.zeros(SHAPE)
    lesion[2:4, 2:4, 1:3] = 1
    _nifti(root / "test" / "lesion" / "a.nii.gz", rng.random(SHAPE))
    _nifti(root / "ground_truth" / "lesion" / "a.nii.gz", lesion)
    _nifti(root / "test" / "good" / "b.nii.gz", rng.random(SHAPE))
    brains = root.parent / "brains"
    brain = np.zeros(SHAPE)
    brain[1:7, 1:7, :] = 1
    for name in ("a.nii.gz", "b.nii.gz"):
        _nifti(brains / name, brain)
    return root, brains


def _run(folder: Path, dataset: Path, maps: dict[str, np.ndarray], scored: dict[str, list[int]]) -> Path:
    rows = []
    for name, volume in maps.items():
        defect = "lesion" if name == "a" else "good"
        _nifti(folder / "maps" / f"{name}_anomaly.nii.gz", volume)
        for z in range(SHAPE[2]):
            score = f"{volume[..., z].max():.6g}" if z in scored[name] else ""
            rows.append(
                [str(dataset / "test" / defect / f"{name}.nii.gz"), z, score, "1", "", "", int(z in scored[name])]
            )
    with (folder / "maps" / "scores.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["file", "slice", "slice_score", "volume_score", "slice_anomalous", "volume_anomalous", "scored"]
        )
        writer.writerows(rows)
    (folder / "models").mkdir(parents=True)
    state = {"calibration.pixel_threshold": torch.tensor(0.5), "calibration.image_threshold": torch.tensor(0.6)}
    torch.save({"model": state}, folder / "models" / "model.pt")
    return folder


def test_runs_are_scored_on_common_slices_inside_the_reference_brain(tmp_path: Path) -> None:
    dataset, brains = _dataset(tmp_path / "data")
    rng = np.random.default_rng(1)
    maps = {name: rng.random(SHAPE) for name in ("a", "b")}
    first = _run(tmp_path / "first", dataset, maps, {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]})
    second = _run(tmp_path / "second", dataset, maps, {"a": [1, 2, 3], "b": [0, 1, 2]})
    result = reference_brain_metrics(dataset, brains, {"first": first, "second": second})
    # the slices both scored: a 1..3, b 0..2
    assert result["n_slices"] == 6 and result["n_abnormal_slices"] == 2
    assert result["runs"]["first"] == result["runs"]["second"]
    lesion = np.asarray(nib.load(dataset / "ground_truth" / "lesion" / "a.nii.gz").dataobj) > 0
    brain = np.asarray(nib.load(brains / "a.nii.gz").dataobj) > 0
    keys = [("a", z) for z in (1, 2, 3)] + [("b", z) for z in (0, 1, 2)]
    expected = evaluate_anomaly_detection(
        np.asarray([int(name == "a" and lesion[..., z].any()) for name, z in keys]),
        np.asarray([maps[name][..., z].max() for name, z in keys]),
        masks=[lesion[..., z] if name == "a" else np.zeros(SHAPE[:2], bool) for name, z in keys],
        maps=[maps[name][..., z] for name, z in keys],
        image_threshold=0.6,
        pixel_threshold=0.5,
        foreground=[brain[..., z] for _, z in keys],
    )
    for key, value in result["runs"]["first"].items():
        assert value == pytest.approx(expected[key], nan_ok=True), key


def test_cli_prints_a_table_and_rejects_bad_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset, brains = _dataset(tmp_path / "data")
    maps = {name: np.random.default_rng(2).random(SHAPE) for name in ("a", "b")}
    run = _run(tmp_path / "run", dataset, maps, {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]})
    assert main([str(dataset), "--brain-masks", str(brains), "--run", f"x={run}"]) == 0
    assert "| x |" in capsys.readouterr().out
    assert main([str(dataset), "--brain-masks", str(brains), "--run", "nofolder"]) == 2
    assert main([str(dataset), "--brain-masks", str(tmp_path / "none"), "--run", f"x={run}"]) == 2
    assert "no reference brain mask" in capsys.readouterr().err
