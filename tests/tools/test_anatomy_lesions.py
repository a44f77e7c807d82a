"""Tests for tools/anatomy_lesions.py: synthetic lesions in real head volumes and the real-anatomy dataset writer."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tools.anatomy_lesions import DEFAULT_CONTRAST, implant_lesions, write_anatomy_dataset, write_lesion_twins
from tools.anatomy_lesions import main as lesions_main
from tools.phantoms import main

IXI_T1 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ixi_t1"
SPACING = (2.0, 2.0, 2.0)
SHAPE = (40, 40, 30)
SLOPE = 2.5  # stored uint8 values are scaled, like the IXI files


def _head(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A tiny uint8 "head": bright scalp and skull shells around a textured brain ellipsoid; returns (volume, brain)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.asarray(shape, dtype=np.float32) - 1.0) / 2.0
    radial = np.sqrt(sum(((g - c) / (c - 1.0)) ** 2 for g, c in zip(grid, centre, strict=True)))
    volume = np.zeros(shape, dtype=np.float32)
    volume[radial < 1.0] = 170.0  # scalp
    volume[radial < 0.9] = 220.0  # skull
    volume[radial < 0.8] = 20.0  # CSF
    brain = radial < 0.72
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    volume[brain] = 80.0 + 15.0 * np.sign(texture[brain]) + 5.0 * rng.standard_normal(int(brain.sum()))
    return np.clip(np.round(volume), 0, 255).astype(np.uint8), brain


def _implant(seed: int = 0, **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    volume, brain = _head()
    lesioned, mask = implant_lesions(volume, brain, np.random.default_rng(seed), SPACING, **kwargs)
    return volume, brain, lesioned, mask


@pytest.mark.parametrize("seed", range(4))
def test_lesions_inside_brain_hyperintense_and_mask_is_change(seed: int) -> None:
    volume, brain, lesioned, mask = _implant(seed)
    assert lesioned.dtype == np.uint8 and lesioned.shape == SHAPE
    assert mask.dtype == bool and mask.shape == SHAPE
    assert mask.any()
    assert not (mask & ~brain).any()
    assert np.array_equal(mask, lesioned != volume)
    assert (lesioned >= volume).all()  # only brighter
    assert lesioned[mask].mean() > volume[brain].mean() + 20
    assert lesioned[mask].mean() > np.percentile(volume[brain], 90)  # brighter than the brightest tissue
    assert lesioned[mask].max() < 255  # not saturated
    assert lesioned[mask].std() > 0  # heterogeneous
    assert 1 <= ndimage.label(mask)[1] <= 3


def test_reproducible_and_seed_dependent() -> None:
    _, _, first, first_mask = _implant(5)
    _, _, again, again_mask = _implant(5)
    _, _, other, other_mask = _implant(6)
    assert np.array_equal(first, again) and np.array_equal(first_mask, again_mask)
    assert not np.array_equal(first_mask, other_mask)


def test_inputs_not_modified() -> None:
    volume, brain = _head()
    volume_before, brain_before = volume.copy(), brain.copy()
    lesioned, mask = implant_lesions(volume, brain, np.random.default_rng(0), SPACING)
    assert mask.any()
    assert np.array_equal(volume, volume_before) and np.array_equal(brain, brain_before)
    assert lesioned is not volume


def test_float_volume_keeps_dtype_and_anisotropic_spacing() -> None:
    volume, brain = _head()
    scaled = volume.astype(np.float32) * np.float32(13.9)
    lesioned, mask = implant_lesions(scaled, brain.astype(np.uint8), np.random.default_rng(1), (1.5, 1.5, 3.0))
    assert lesioned.dtype == np.float32
    assert mask.any() and not (mask & ~brain).any()
    assert np.array_equal(mask, lesioned != scaled)
    assert lesioned[mask].mean() > scaled[brain].mean()


def test_parameters_control_size_count_and_contrast() -> None:
    small = [_implant(seed, n_lesions=(1, 1), radius_mm=(4.0, 5.0))[3].sum() for seed in range(3)]
    large = [_implant(seed, n_lesions=(1, 1), radius_mm=(12.0, 14.0))[3].sum() for seed in range(3)]
    assert max(small) < min(large)
    for seed in range(3):
        assert ndimage.label(_implant(seed, n_lesions=(1, 1))[3])[1] == 1
    _, _, dim, dim_mask = _implant(2, contrast=1.1)
    _, _, bright, bright_mask = _implant(2, contrast=DEFAULT_CONTRAST + 0.3)
    assert np.array_equal(dim_mask, bright_mask)  # same geometry for the same seed
    assert bright[bright_mask].mean() > dim[dim_mask].mean() + 5


def test_lesion_shrinks_to_fit_a_small_brain() -> None:
    volume, _ = _head()
    brain = np.zeros(SHAPE, dtype=bool)
    brain[17:23, 17:23, 12:18] = True  # 12 mm cube: no 6-15 mm lesion fits
    lesioned, mask = implant_lesions(volume, brain, np.random.default_rng(0), SPACING)
    assert mask.any() and not (mask & ~brain).any()
    assert np.array_equal(mask, lesioned != volume)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"volume": np.zeros((8, 8), np.uint8)}, ValueError, "volume"),
        ({"brain": np.ones((4, 4, 4), bool)}, ValueError, "brain"),
        ({"brain": np.zeros(SHAPE, bool)}, ValueError, "empty"),
        ({"rng": 0}, TypeError, "rng"),
        ({"spacing_mm": (2.0, 0.0, 2.0)}, ValueError, "spacing_mm"),
        ({"spacing_mm": (2.0, 2.0)}, ValueError, "spacing_mm"),
        ({"n_lesions": (0, 2)}, ValueError, "n_lesions"),
        ({"n_lesions": (3, 1)}, ValueError, "n_lesions"),
        ({"n_lesions": (1.5, 2)}, ValueError, "n_lesions"),
        ({"radius_mm": (0.0, 5.0)}, ValueError, "radius_mm"),
        ({"radius_mm": (8.0, 5.0)}, ValueError, "radius_mm"),
        ({"contrast": 0.0}, ValueError, "contrast"),
        ({"contrast": float("nan")}, ValueError, "contrast"),
        ({"contrast": True}, ValueError, "contrast"),
    ],
)
def test_implant_errors(kwargs: dict, error: type, match: str) -> None:
    volume, brain = _head()
    args = {"volume": volume, "brain": brain, "rng": np.random.default_rng(0), "spacing_mm": SPACING}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        implant_lesions(**args)


# --- write_anatomy_dataset ---------------------------------------------------------------------------------------

NAMES = [f"S{i:02d}_T1.nii.gz" for i in range(6)]
AFFINE = np.array(
    [[0.0, 0.0, 2.0, -40.0], [-2.0, 0.0, 0.0, 38.0], [0.0, 2.0, 0.0, -30.0], [0.0, 0.0, 0.0, 1.0]]
)  # oblique axis order like the IXI files


def _save(array: np.ndarray, path: Path, slope: float | None = None) -> None:
    image = nib.Nifti1Image(array, AFFINE)
    image.set_qform(AFFINE, code=1)
    image.set_sform(AFFINE, code=1)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("source")
    for index, name in enumerate(NAMES):
        volume, brain = _head(index)
        _save(volume, root / "train" / "good" / name, slope=SLOPE)
        _save(brain.astype(np.uint8), root / "brain_mask" / "good" / name)
    return root


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_write_layout_splits_and_headers(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = write_anatomy_dataset(source, out, n_train=3, seed=0)
    assert (summary["n_train"], summary["n_test_good"], summary["n_test_lesion"]) == (3, 1, 2)
    assert summary["brain_masks"] is False
    splits = {
        "train": out / "train" / "good",
        "test_good": out / "test" / "good",
        "test_lesion": out / "test" / "lesion",
    }
    for split, folder in splits.items():
        assert _names(folder) == summary[split]
    assert _names(out / "ground_truth" / "lesion") == summary["test_lesion"]
    assert not (out / "brain_mask").exists()
    assert sorted(summary["train"] + summary["test_good"] + summary["test_lesion"]) == NAMES  # each subject once
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(NAMES + summary["test_lesion"])  # no temps
    for name in summary["train"] + summary["test_good"]:
        folder = splits["train"] if name in summary["train"] else splits["test_good"]
        assert (folder / name).read_bytes() == (source / "train" / "good" / name).read_bytes()
    assert set(summary["lesion_ml"]) == set(summary["test_lesion"])

    for name in summary["test_lesion"]:
        original = nib.load(source / "train" / "good" / name)
        lesioned = nib.load(splits["test_lesion"] / name)
        truth = nib.load(out / "ground_truth" / "lesion" / name)
        brain = np.asanyarray(nib.load(source / "brain_mask" / "good" / name).dataobj) > 0
        for image in (lesioned, truth):
            assert image.shape == original.shape
            np.testing.assert_array_equal(image.affine, original.affine)
            assert image.header.get_zooms() == original.header.get_zooms()
            assert int(image.header["qform_code"]) == int(original.header["qform_code"]) == 1
            assert int(image.header["sform_code"]) == int(original.header["sform_code"]) == 1
        assert lesioned.get_data_dtype() == np.uint8 and truth.get_data_dtype() == np.uint8
        assert lesioned.dataobj.slope == pytest.approx(SLOPE) and lesioned.dataobj.inter == 0.0
        mask = np.asanyarray(truth.dataobj)
        assert set(np.unique(mask)) == {0, 1}
        before, after = original.get_fdata(), lesioned.get_fdata()
        np.testing.assert_array_equal(after != before, mask == 1)  # the scaling is kept: only lesions changed
        assert not (mask.astype(bool) & ~brain).any()
        assert after[mask == 1].mean() > before[brain].mean()
        assert summary["lesion_ml"][name] == pytest.approx(mask.sum() * 8.0 / 1000.0)


def test_write_with_brain_masks_reproducible_and_seeded(source: Path, tmp_path: Path) -> None:
    first = write_anatomy_dataset(source, tmp_path / "a", n_train=2, seed=3, with_brain_masks=True)
    assert (first["n_train"], first["n_test_good"], first["n_test_lesion"]) == (2, 2, 2)
    assert first["brain_masks"] is True
    assert _names(tmp_path / "a" / "brain_mask" / "good") == sorted(first["train"] + first["test_good"])
    assert _names(tmp_path / "a" / "brain_mask" / "lesion") == first["test_lesion"]
    for path in (tmp_path / "a" / "brain_mask").rglob("*.nii.gz"):
        assert path.read_bytes() == (source / "brain_mask" / "good" / path.name).read_bytes()

    again = write_anatomy_dataset(source, tmp_path / "b", n_train=2, seed=3)
    assert {k: again[k] for k in ("train", "test_good", "test_lesion", "lesion_ml")} == {
        k: first[k] for k in ("train", "test_good", "test_lesion", "lesion_ml")
    }
    for folder in ("test/lesion", "ground_truth/lesion"):
        for name in first["test_lesion"]:
            assert (tmp_path / "a" / folder / name).read_bytes() == (tmp_path / "b" / folder / name).read_bytes()
    other = write_anatomy_dataset(source, tmp_path / "c", n_train=2, seed=4)
    assert (other["train"], other["test_lesion"]) != (first["train"], first["test_lesion"])


def test_write_refuses_a_subject_left_in_another_split(source: Path, tmp_path: Path) -> None:
    first = write_anatomy_dataset(source, tmp_path, n_train=3, seed=0)
    write_anatomy_dataset(source, tmp_path, n_train=3, seed=0)  # same split again: files replaced
    with pytest.raises(ValueError, match="two splits"):
        write_anatomy_dataset(source, tmp_path, n_train=4, seed=0)
    assert _names(tmp_path / "train" / "good") == first["train"]  # nothing written by the refused run


def test_write_errors(source: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "train" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no NIfTI volumes .*train/good"):
        write_anatomy_dataset(empty, tmp_path / "out", n_train=1)
    with pytest.raises(ValueError, match="no NIfTI volumes"):
        write_anatomy_dataset(tmp_path / "missing", tmp_path / "out", n_train=1)

    partial = tmp_path / "partial"
    for name in NAMES[:3]:
        _save(_head()[0], partial / "train" / "good" / name)
    _save(_head()[1].astype(np.uint8), partial / "brain_mask" / "good" / NAMES[0])
    with pytest.raises(ValueError, match=rf"brain masks missing in .*brain_mask/good .*{NAMES[1]}"):
        write_anatomy_dataset(partial, tmp_path / "out", n_train=1)

    with pytest.raises(ValueError, match=r"leaves 1 of the 6 subjects .*at least 2"):
        write_anatomy_dataset(source, tmp_path / "out", n_train=5)
    with pytest.raises(ValueError, match="n_train"):
        write_anatomy_dataset(source, tmp_path / "out", n_train=0)
    with pytest.raises(ValueError, match="seed"):
        write_anatomy_dataset(source, tmp_path / "out", n_train=2, seed=-1)
    assert not (tmp_path / "out").exists()


def test_cli_from_volumes(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main([str(out), "--from-volumes", str(source), "--n-train", "2", "--seed", "1", "--with-brain-masks"]) == 0
    printed = capsys.readouterr().out
    assert "test/lesion: 2 files" in printed and "brain_mask/lesion: 2 files" in printed
    assert len(_names(out / "train" / "good")) == 2 and len(_names(out / "ground_truth" / "lesion")) == 2
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "x"), "--from-volumes", str(source), "--n-train", "6"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "y"), "--with-brain-masks"])
    assert exit_info.value.code == 2
    assert "--from-volumes" in capsys.readouterr().err


@pytest.mark.realdata
@pytest.mark.skipif(not IXI_T1.is_dir(), reason=f"real data not found at {IXI_T1}")
def test_ixi_t1_lesion_set(tmp_path: Path) -> None:
    summary = write_anatomy_dataset(IXI_T1, tmp_path, n_train=16, seed=0)
    assert (summary["n_train"], summary["n_test_good"], summary["n_test_lesion"]) == (16, 4, 4)
    assert len(_names(tmp_path / "train" / "good")) == 16
    assert len(_names(tmp_path / "test" / "good")) == 4
    assert (
        _names(tmp_path / "test" / "lesion") == _names(tmp_path / "ground_truth" / "lesion") == summary["test_lesion"]
    )
    assert not (tmp_path / "brain_mask").exists()
    total_lesion = total_brain = 0
    for name in summary["test_lesion"]:
        original = nib.load(IXI_T1 / "train" / "good" / name)
        lesioned = nib.load(tmp_path / "test" / "lesion" / name)
        brain = np.asanyarray(nib.load(IXI_T1 / "brain_mask" / "good" / name).dataobj) > 0
        mask = np.asanyarray(nib.load(tmp_path / "ground_truth" / "lesion" / name).dataobj) > 0
        before, after = original.get_fdata(), lesioned.get_fdata()
        np.testing.assert_array_equal(after != before, mask)
        assert not (mask & ~brain).any()
        # A single lesion of the smallest radius (6 mm) is ~0.05 % of a brain: the 0.1 % floor holds for the set.
        fraction = mask.sum() / brain.sum()
        assert 0.0005 <= fraction <= 0.03, (name, fraction)
        total_lesion, total_brain = total_lesion + mask.sum(), total_brain + brain.sum()
        # Hyperintense: well above the brain mean and its 95th percentile (white matter), not saturated.
        assert after[mask].mean() > 1.5 * before[brain].mean()
        assert after[mask].mean() > np.percentile(before[brain], 95)
        assert np.asanyarray(lesioned.dataobj.get_unscaled())[mask].max() < 255
    assert 0.001 <= total_lesion / total_brain <= 0.03


# --- write_lesion_twins ------------------------------------------------------------------------------------------

TWINS = [NAMES[1], NAMES[4]]


def test_lesion_twins_layout_and_contents(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "val"
    lesion_ml = write_lesion_twins(source, out, TWINS, seed=1)
    assert sorted(lesion_ml) == sorted(TWINS)
    for folder in ("test/good", "test/lesion", "ground_truth/lesion", "brain_mask/good", "brain_mask/lesion"):
        assert _names(out / folder) == sorted(TWINS), folder
    assert sorted(p.name for p in out.iterdir()) == ["brain_mask", "ground_truth", "test"]
    assert len([p for p in out.rglob("*") if p.is_file()]) == 5 * len(TWINS)  # no temporary file left
    for name in TWINS:
        source_bytes = (source / "train" / "good" / name).read_bytes()
        assert (out / "test" / "good" / name).read_bytes() == source_bytes
        mask_bytes = (source / "brain_mask" / "good" / name).read_bytes()
        assert (out / "brain_mask" / "good" / name).read_bytes() == mask_bytes
        assert (out / "brain_mask" / "lesion" / name).read_bytes() == mask_bytes
        original = nib.load(source / "train" / "good" / name)
        lesioned = nib.load(out / "test" / "lesion" / name)
        truth = np.asanyarray(nib.load(out / "ground_truth" / "lesion" / name).dataobj)
        brain = np.asanyarray(nib.load(source / "brain_mask" / "good" / name).dataobj) > 0
        np.testing.assert_array_equal(lesioned.affine, original.affine)
        assert lesioned.dataobj.slope == pytest.approx(SLOPE)
        assert set(np.unique(truth)) == {0, 1}
        before, after = original.get_fdata(), lesioned.get_fdata()
        np.testing.assert_array_equal(after != before, truth == 1)  # the twin differs only inside its lesion mask
        assert not (truth.astype(bool) & ~brain).any()
        assert (after[truth == 1] > before[truth == 1]).all()
        assert lesion_ml[name] == pytest.approx(truth.sum() * 8.0 / 1000.0)


def test_lesion_twins_reproducible_and_seeded(source: Path, tmp_path: Path) -> None:
    names = [NAMES[2]]
    first = write_lesion_twins(source, tmp_path / "a", names, seed=7)
    again = write_lesion_twins(source, tmp_path / "b", names, seed=7)
    other = write_lesion_twins(source, tmp_path / "c", names, seed=8)
    assert first == again
    for folder in ("test/lesion", "ground_truth/lesion"):
        path = Path(folder) / names[0]
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    masks = [np.asanyarray(nib.load(tmp_path / run / "ground_truth" / "lesion" / names[0]).dataobj) for run in "ac"]
    assert masks[0].any() and masks[1].any()
    assert not np.array_equal(masks[0], masks[1])
    assert first != other
    # the healthy copy does not depend on the seed
    good = [(tmp_path / run / "test" / "good" / names[0]).read_bytes() for run in "ac"]
    assert good[0] == good[1]


def test_lesion_twins_match_the_test_set_lesions_of_the_same_seed(source: Path, tmp_path: Path) -> None:
    summary = write_anatomy_dataset(source, tmp_path / "test_set", n_train=3, seed=7)
    name = summary["test_lesion"][0]
    assert write_lesion_twins(source, tmp_path / "twins", [name], seed=7) == {name: summary["lesion_ml"][name]}
    for folder in ("test/lesion", "ground_truth/lesion"):
        path = Path(folder) / name
        assert (tmp_path / "twins" / path).read_bytes() == (tmp_path / "test_set" / path).read_bytes()


def test_lesion_twins_errors(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"train/good/missing\.nii\.gz: not found"):
        write_lesion_twins(source, out, [NAMES[0], "missing.nii.gz"])
    no_mask = tmp_path / "no_mask"
    _save(_head()[0], no_mask / "train" / "good" / NAMES[0])
    with pytest.raises(ValueError, match=rf"brain_mask/good/{NAMES[0]}: not found"):
        write_lesion_twins(no_mask, out, [NAMES[0]])
    with pytest.raises(ValueError, match="names: no volume named"):
        write_lesion_twins(source, out, [])
    with pytest.raises(ValueError, match="seed"):
        write_lesion_twins(source, out, [NAMES[0]], seed=-1)
    assert not out.exists()  # names are checked before anything is written


def test_lesion_twins_cli(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert lesions_main([str(source), str(out), "--names", *TWINS, "--seed", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(TWINS)
    for line, name in zip(lines, TWINS, strict=True):
        truth = np.asanyarray(nib.load(out / "ground_truth" / "lesion" / name).dataobj)
        assert line == f"{name}: {truth.sum() * 8.0 / 1000.0:.1f} ml of lesion"
    assert _names(out / "test" / "lesion") == sorted(TWINS)

    assert lesions_main([str(source), str(tmp_path / "bad"), "--names", "nope.nii.gz"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err.strip().splitlines()
    assert len(error) == 1
    assert error[0].startswith("python -m tools.anatomy_lesions: error: ") and "nope.nii.gz: not found" in error[0]
    assert lesions_main([str(source), str(tmp_path / "bad")]) == 2  # --names is required
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
