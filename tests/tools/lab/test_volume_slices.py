"""Tests for tools.lab.volume_slices: a 3D dataset's slices written as a 2D dataset."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.data import discover_dataset
from common.volumes import SliceSettings, load_slices
from tools.lab.volume_slices import main, write_slice_dataset

SHAPE = (32, 28, 10)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 2.0, 1.0])), path)


def _head(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 'head' volume: a bright skull shell around a textured brain, the brain mask covering slices 2-7."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[: SHAPE[0], : SHAPE[1]]
    radius = ((x - 16) / 13.0) ** 2 + ((y - 14) / 11.0) ** 2
    brain2d = radius < 0.6
    head = np.zeros(SHAPE, dtype=np.float32)
    brain = np.zeros(SHAPE, dtype=np.uint8)
    for z in range(2, 8):
        head[..., z] = np.where(radius < 1.0, 250.0, 0.0)
        head[..., z][brain2d] = 80 + rng.integers(0, 40, brain2d.sum())
        brain[..., z] = brain2d
    return head, brain


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for folder, name, seed in [
        ("train/good", "a.nii.gz", 0),
        ("test/good", "b.nii.gz", 1),
        ("test/lesion", "c.nii.gz", 2),
    ]:
        head, brain = _head(seed)
        defect = folder.split("/")[1]
        if defect == "lesion":
            lesion = np.zeros(SHAPE, dtype=np.uint8)
            lesion[14:18, 12:16, 4:6] = 1
            head[lesion > 0] = 200.0
            _save(lesion, root / "ground_truth" / defect / name)
        _save(head, root / folder / name)
        _save(brain, root / "brain_mask" / defect / name)
    return root


def test_slices_are_the_bundles_stripped_slices_with_masks(dataset: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in dataset.rglob("*.nii.gz")}
    out = tmp_path / "slices"
    counts, skipped = write_slice_dataset(dataset, out)
    assert skipped == []
    assert counts == {"train/good": 6, "test/good": 6, "test/lesion": 6}  # brain slices 2-7 of each volume
    assert sorted(p.name for p in (out / "test" / "lesion").iterdir())[0] == "c_z002.png"
    settings = SliceSettings(min_foreground=0.05, min_brain_fraction=0.25)
    reference = next(
        item
        for item in load_slices(discover_dataset(dataset).test, settings)
        if "c.nii" in item["source"] and item["slice"] == 4
    )
    written = np.asarray(Image.open(out / "test" / "lesion" / "c_z004.png"))
    assert written.dtype == np.uint8 and written.shape == SHAPE[:2]
    np.testing.assert_allclose(written / 255.0, reference["image"][0], atol=0.5 / 255 + 1e-6)
    brain = np.asarray(nib.load(dataset / "brain_mask" / "lesion" / "c.nii.gz").dataobj)[..., 4] > 0
    assert written[~brain].max() == 0, "the skull is stripped"
    assert (written[brain] > 0).mean() > 0.9, "the brain is kept"
    mask = np.asarray(Image.open(out / "ground_truth" / "lesion" / "c_z004_mask.png"))
    assert set(np.unique(mask)) == {0, 255} and (mask > 0).sum() == 16
    assert not (np.asarray(Image.open(out / "ground_truth" / "lesion" / "c_z002_mask.png")) > 0).any()
    assert not (out / "ground_truth" / "good").exists()
    assert {p: p.read_bytes() for p in dataset.rglob("*.nii.gz")} == before, "inputs are never modified"
    # the written dataset reads back as a 2D dataset whose slice labels follow the masks
    loaded = load_slices(discover_dataset(out).test, settings)
    assert sum(item["label"] for item in loaded) == 2


def test_errors_are_one_line(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main([str(dataset), str(tmp_path / "full")]) == 2
    assert "output folder is not empty" in capsys.readouterr().err
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(dataset / "test" / "good" / "d.png")
    with pytest.raises(ValueError, match=r"d\.png: not a NIfTI volume"):
        write_slice_dataset(dataset, tmp_path / "out")


def test_unreadable_volume_is_skipped_and_reported_and_the_rest_is_written(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = dataset / "test" / "good" / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    out = tmp_path / "slices"
    assert main([str(dataset), str(out)]) == 1
    captured = capsys.readouterr()
    assert "train/good: 6 slices, test/good: 6 slices, test/lesion: 6 slices" in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m tools.lab.volume_slices: skipped {bad}: "), lines
    assert len(list((out / "test" / "good").iterdir())) == 6
    assert not any(p.name.startswith("broken") for p in out.rglob("*"))
