"""Tests for tools/brain_extract.py: brain masks written once into a dataset's ``brain_mask/`` folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.brain import MIN_BRAIN_VOLUME_ML
from tools.brain_extract import main

STAND_IN = "tests.tools.test_brain_extract:threshold_brain"
SHAPE = (24, 24, 12)
AFFINE_10MM = np.diag([10.0, 10.0, 10.0, 1.0])  # one voxel is 1 ml: the blob is far above the plausibility floor
IXI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ixi_t1"


def threshold_brain(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A fast stand-in for deepbet: the voxels brighter than the volume's mean."""
    return volume > volume.mean()


def _head(seed: int) -> np.ndarray:
    """A dim 'head' with a bright ellipsoidal 'brain' in the middle (about 500 voxels), as int16."""
    x, y, z = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in SHAPE), indexing="ij")
    brain = (x / 8) ** 2 + (y / 7) ** 2 + (z / 4) ** 2 <= 1
    rng = np.random.default_rng(seed)
    return (np.where(brain, 400, 40) + rng.integers(0, 30, SHAPE)).astype(np.int16)


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE_10MM) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _expected(path: Path) -> np.ndarray:
    image = nib.load(str(path))
    return threshold_brain(np.asarray(image.dataobj, dtype=np.float32), image.affine)


def _snapshot(root: Path) -> dict[str, bytes]:
    """The bytes of every file outside ``brain_mask/``."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "brain_mask"
    }


def _hidden(root: Path) -> list[Path]:
    return [p for p in (root / "brain_mask").rglob("*") if p.name.startswith(".")]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """train/good with two volumes, test/good with one, test/lesion with two (the second with an affine rotation)."""
    root = tmp_path / "data"
    _write_nifti(root / "train" / "good" / "n0.nii.gz", _head(0))
    _write_nifti(root / "train" / "good" / "n1.nii", _head(1))
    _write_nifti(root / "test" / "good" / "g0.nii.gz", _head(2))
    _write_nifti(root / "test" / "lesion" / "l0.nii.gz", _head(3))
    rotated = np.array([[0.0, -10.0, 0.0, 120.0], [10.0, 0.0, 0.0, -90.0], [0.0, 0.0, 10.0, -60.0], [0, 0, 0, 1]])
    _write_nifti(root / "test" / "lesion" / "l1.nii.gz", _head(4), rotated)
    return root


def _masks(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root / "brain_mask")) for p in (root / "brain_mask").rglob("*") if p.is_file())


def test_masks_on_the_image_grid(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    before = _snapshot(dataset)
    assert main([str(dataset), "--method", STAND_IN]) == 0
    assert capsys.readouterr().out.strip() == "written 5, skipped 0 (mask exists), not 3D 0, failed 0"
    assert _masks(dataset) == [
        "good/g0.nii.gz",
        "good/n0.nii.gz",
        "good/n1.nii",
        "lesion/l0.nii.gz",
        "lesion/l1.nii.gz",
    ]
    for image_path in sorted(p for p in dataset.rglob("*.nii*") if p.parts[-3] in ("train", "test")):
        image = nib.load(str(image_path))
        mask = nib.load(str(dataset / "brain_mask" / image_path.parent.name / image_path.name))
        assert mask.shape == image.shape
        np.testing.assert_allclose(mask.affine, image.affine)
        assert mask.get_data_dtype() == np.uint8
        data = np.asarray(mask.dataobj)
        assert set(np.unique(data)) == {0, 1}
        np.testing.assert_array_equal(data.astype(bool), _expected(image_path))
        assert data.sum() >= MIN_BRAIN_VOLUME_ML  # 1 ml voxels
    assert _snapshot(dataset) == before
    assert not _hidden(dataset)


def test_existing_masks_are_kept_unless_overwrite(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(dataset), "--method", STAND_IN]) == 0
    capsys.readouterr()
    edited = dataset / "brain_mask" / "lesion" / "l0.nii.gz"
    _write_nifti(edited, np.zeros(SHAPE, np.uint8))  # a mask edited by hand
    before = {p: p.read_bytes() for p in (dataset / "brain_mask").rglob("*") if p.is_file()}
    assert main([str(dataset), "--method", STAND_IN]) == 0
    assert capsys.readouterr().out.strip() == "written 0, skipped 5 (mask exists), not 3D 0, failed 0"
    assert {p: p.read_bytes() for p in (dataset / "brain_mask").rglob("*") if p.is_file()} == before
    assert main([str(dataset), "--method", STAND_IN, "--overwrite", "--classes", "lesion"]) == 0
    assert capsys.readouterr().out.strip() == "written 2, skipped 0 (mask exists), not 3D 0, failed 0"
    np.testing.assert_array_equal(
        np.asarray(nib.load(str(edited)).dataobj).astype(bool), _expected(dataset / "test" / "lesion" / "l0.nii.gz")
    )
    assert (dataset / "brain_mask" / "good" / "n0.nii.gz").read_bytes() == before[
        dataset / "brain_mask" / "good" / "n0.nii.gz"
    ]
    assert not _hidden(dataset)


def test_class_filter(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(dataset), "--method", STAND_IN, "--classes", "lesion"]) == 0
    assert capsys.readouterr().out.strip() == "written 2, skipped 0 (mask exists), not 3D 0, failed 0"
    assert _masks(dataset) == ["lesion/l0.nii.gz", "lesion/l1.nii.gz"]


def test_failures_are_reported_and_the_rest_written(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    (dataset / "train" / "good" / "broken.nii.gz").write_bytes(b"not a nifti file")
    # 1 mm voxels: the same blob is under a millilitre of brain, an implausible extraction
    _write_nifti(dataset / "test" / "lesion" / "tiny.nii.gz", _head(5), np.eye(4))
    before = _snapshot(dataset)
    assert main([str(dataset), "--method", STAND_IN]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == "written 5, skipped 0 (mask exists), not 3D 0, failed 2"
    failures = [line for line in captured.err.splitlines() if "broken.nii.gz" in line or "tiny.nii.gz" in line]
    assert len(failures) == 2, captured.err
    broken = next(line for line in failures if "broken.nii.gz" in line)
    tiny = next(line for line in failures if "tiny.nii.gz" in line)
    assert broken.startswith(f"{dataset / 'train' / 'good' / 'broken.nii.gz'}: ") and "cannot be read" in broken
    assert tiny.startswith(f"{dataset / 'test' / 'lesion' / 'tiny.nii.gz'}: ") and "ml of brain" in tiny
    assert _masks(dataset) == [
        "good/g0.nii.gz",
        "good/n0.nii.gz",
        "good/n1.nii",
        "lesion/l0.nii.gz",
        "lesion/l1.nii.gz",
    ]
    assert not _hidden(dataset)
    assert _snapshot(dataset) == before


def test_a_failed_write_leaves_no_file(
    dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def half_write(image: nib.Nifti1Image, filename: str) -> None:
        Path(filename).write_bytes(b"\x1f\x8b half")
        msg = "No space left on device"
        raise OSError(28, msg)

    monkeypatch.setattr(nib, "save", half_write)
    assert main([str(dataset), "--method", STAND_IN, "--classes", "lesion"]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == "written 0, skipped 0 (mask exists), not 3D 0, failed 2"
    assert "l0.nii.gz: OSError: [Errno 28] No space left on device" in captured.err
    assert not [p for p in (dataset / "brain_mask").rglob("*") if p.is_file()]


def test_2d_files_are_skipped(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    Image.fromarray(np.full((24, 24), 128, np.uint8)).save(dataset / "train" / "good" / "slice.png")
    _write_nifti(dataset / "test" / "good" / "flat.nii.gz", _head(6)[:, :, 6])  # a 2D NIfTI
    assert main([str(dataset), "--method", STAND_IN]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "written 5, skipped 0 (mask exists), not 3D 2, failed 0"
    skipped = [line for line in captured.err.splitlines() if "needs a 3D volume" in line]
    assert len(skipped) == 2 and any("slice.png" in line for line in skipped)
    assert any("flat.nii.gz" in line for line in skipped)
    assert not (dataset / "brain_mask" / "good" / "slice.png").exists()
    assert not (dataset / "brain_mask" / "good" / "flat.nii.gz").exists()


def test_same_name_in_train_and_test_good(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copy(dataset / "train" / "good" / "n0.nii.gz", dataset / "test" / "good" / "n0.nii.gz")
    assert main([str(dataset), "--method", STAND_IN]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == "written 5, skipped 0 (mask exists), not 3D 0, failed 1"
    assert "same mask file" in captured.err


def test_test_files_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "inference"
    _write_nifti(root / "test" / "lesion" / "l0.nii.gz", _head(0))
    assert main([str(root), "--method", STAND_IN]) == 0
    assert capsys.readouterr().out.strip() == "written 1, skipped 0 (mask exists), not 3D 0, failed 0"
    assert (root / "brain_mask" / "lesion" / "l0.nii.gz").is_file()


def test_read_only_dataset(dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A dataset where masks cannot be written is one error line, unless every mask is already there."""
    assert main([str(dataset), "--method", STAND_IN, "--classes", "lesion"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # chmod would not stop root
    assert main([str(dataset), "--method", STAND_IN]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not writable" in err
    assert main([str(dataset), "--method", STAND_IN, "--classes", "lesion"]) == 0
    assert capsys.readouterr().out.strip() == "written 0, skipped 2 (mask exists), not 3D 0, failed 0"


BAD_ARGUMENT_CASES = [
    (["--method", "none"], "extracts nothing"),
    (["--method", "bet"], "brain_extraction must be one of"),
    (["--method", "no_such_module:extract"], "cannot be imported"),
    (["--classes", "tumour"], "no files of class tumour; classes found: good lesion"),
    (["--overwite"], "unrecognized arguments"),
]
BAD_ARGUMENT_IDS = ["method-none", "method-unknown", "method-not-importable", "class-absent", "misspelt-option"]


@pytest.mark.parametrize(("extra", "expected"), BAD_ARGUMENT_CASES, ids=BAD_ARGUMENT_IDS)
def test_bad_arguments_give_one_line(
    dataset: Path, capsys: pytest.CaptureFixture, extra: list[str], expected: str
) -> None:
    assert main([str(dataset), "--method", STAND_IN, *extra]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and expected in err and err.startswith("python -m tools.brain_extract: error:")
    assert not captured.out and not (dataset / "brain_mask").exists()


@pytest.mark.parametrize("layout", ["absent", "empty", "file"])
def test_bad_dataset_dir_gives_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, layout: str) -> None:
    root = tmp_path / "data"
    if layout == "empty":
        (root / "train" / "good").mkdir(parents=True)
    elif layout == "file":
        root.write_text("not a folder")
    assert main([str(root), "--method", STAND_IN]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(root) in err and "train/good" in err


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.slow
@pytest.mark.realdata
def test_deepbet_on_ixi(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Real deepbet on one IXI T1 volume against the dataset's reference brain mask (measured Dice 0.978-0.983)."""
    images = sorted((IXI / "train" / "good").glob("*.nii.gz"))
    if not images:
        pytest.skip(f"{IXI} is absent")
    source = images[0]
    reference = IXI / "brain_mask" / "good" / source.name
    root = tmp_path / "ixi"
    (root / "train" / "good").mkdir(parents=True)
    shutil.copy(source, root / "train" / "good" / source.name)
    assert main([str(root)]) == 0
    assert capsys.readouterr().out.strip() == "written 1, skipped 0 (mask exists), not 3D 0, failed 0"
    mask = nib.load(str(root / "brain_mask" / "good" / source.name))
    expected = nib.load(str(reference))
    assert mask.shape == expected.shape and mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, nib.load(str(source)).affine)
    dice = _dice(np.asarray(mask.dataobj) > 0, np.asarray(expected.dataobj) > 0)
    print(f"deepbet Dice on {source.name}: {dice:.4f}")
    assert dice >= 0.95
