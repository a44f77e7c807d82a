"""Tests for tools.lab.holdout_subjects: a development split from train/good and train/mixed alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.anomaly_kinds import KINDS
from tools.lab.holdout_subjects import main, subject_of, write_holdout_split


def _touch(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(name.encode())


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    good = ["a_1_z010.png", "a_1_z011.png", "b_1_z010.png", "b_1_z011.png"]
    _touch(root / "train" / "good", good)
    _touch(root / "train" / "mixed", [*good, "a_1_z020.png", "b_1_z020.png", "b_1_z021.png"])
    _touch(root / "test" / "good", ["c_1_z010.png"])
    return root


def test_subject_is_the_stem_without_the_slice_number():
    assert subject_of(Path("brats_2013_pat0006_1_z031.png")) == "brats_2013_pat0006_1"
    assert subject_of(Path("sub_z1_z002.nii.gz")) == "sub_z1"


def test_split_holds_out_the_subject_and_never_reads_test(dataset, tmp_path):
    counts = write_holdout_split(dataset, tmp_path / "split", ["b_1"])
    assert counts == {"train/good": 2, "test/good": 2, "test/lesion": 2}
    names = {folder: sorted(p.name for p in (tmp_path / "split" / folder).iterdir()) for folder in counts}
    assert names["train/good"] == ["a_1_z010.png", "a_1_z011.png"]
    assert names["test/good"] == ["b_1_z010.png", "b_1_z011.png"]
    assert names["test/lesion"] == ["b_1_z020.png", "b_1_z021.png"]
    link = tmp_path / "split" / "test" / "lesion" / "b_1_z020.png"
    assert link.is_symlink() and link.read_bytes() == b"b_1_z020.png"
    assert not (tmp_path / "split" / "test" / "good" / "c_1_z010.png").exists()


def test_unknown_subject_and_existing_output_are_one_line_errors(dataset, tmp_path, capsys):
    with pytest.raises(ValueError, match="'zz' has no slices for test/good"):
        write_holdout_split(dataset, tmp_path / "split", ["zz"])
    (tmp_path / "exists").mkdir()
    assert main([str(dataset), str(tmp_path / "exists"), "--holdout", "a_1"]) == 2
    assert "already exists" in capsys.readouterr().err


def _brain_slice(path: Path, seed: int) -> None:
    """A 96x96 8-bit slice: a textured ellipse of 'brain' on a black background."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[:96, :96]
    inside = ((x - 48) / 40.0) ** 2 + ((y - 48) / 34.0) ** 2 < 1.0
    image = np.where(inside, 90 + rng.integers(-10, 10, (96, 96)), 0).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture
def png_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "pngs"
    for i, name in enumerate(["a_1_z010.png", "a_1_z011.png", "b_1_z010.png", "b_1_z011.png"]):
        _brain_slice(root / "train" / "good" / name, i)
        _brain_slice(root / "train" / "mixed" / name, i)
    _touch(root / "train" / "mixed", ["b_1_z020.png"])
    return root


def test_lesion_twins_differ_from_their_normal_slice_exactly_inside_the_mask(png_dataset, tmp_path):
    out = tmp_path / "twins"
    assert main([str(png_dataset), str(out), "--holdout", "b_1", "--lesion-twins", "3"]) == 0
    assert sorted(p.name for p in (out / "test" / "lesion").iterdir()) == ["b_1_z010.png", "b_1_z011.png"]
    for name in ("b_1_z010", "b_1_z011"):
        normal = np.asarray(Image.open(out / "test" / "good" / f"{name}.png")).astype(int)
        twin = np.asarray(Image.open(out / "test" / "lesion" / f"{name}.png")).astype(int)
        mask = np.asarray(Image.open(out / "ground_truth" / "lesion" / f"{name}_mask.png"))
        assert set(np.unique(mask)) == {0, 255}
        lesion = mask > 0
        np.testing.assert_array_equal(lesion, twin != normal)
        assert lesion.sum() >= 20 and np.all(normal[lesion] > 0)  # a real blob, inside the brain
        assert twin[lesion].mean() > 1.2 * normal[normal > 0].mean()  # hyperintense
    again = tmp_path / "again"
    write_holdout_split(png_dataset, again, ["b_1"], lesion_twins_seed=3)
    for name in ("b_1_z010.png", "b_1_z011.png"):  # the seed fixes the twins
        assert (again / "test" / "lesion" / name).read_bytes() == (out / "test" / "lesion" / name).read_bytes()


def test_lesion_twins_reject_a_colour_slice(png_dataset, tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png_dataset / "train" / "good" / "b_1_z010.png")
    with pytest.raises(ValueError, match=r"b_1_z010.png: expected a 2D 8-bit grayscale slice"):
        write_holdout_split(png_dataset, tmp_path / "twins", ["b_1"], lesion_twins_seed=0)


def _lesioned_slice(path: Path, seed: int, centre: tuple[int, int] | None) -> np.ndarray:
    """A brain slice (see :func:`_brain_slice`) with a bright disc of radius 9 at ``centre``; returns the disc."""
    _brain_slice(path, seed)
    image = np.asarray(Image.open(path)).copy()
    x, y = np.mgrid[:96, :96]
    disc = np.zeros_like(image, dtype=bool) if centre is None else (x - centre[0]) ** 2 + (y - centre[1]) ** 2 < 81
    image[disc] = 200
    Image.fromarray(image).save(path)
    return disc


def test_hyperintensity_masks_outline_the_bright_lesions_and_drop_slices_without_one(png_dataset, tmp_path):
    mixed = png_dataset / "train" / "mixed"
    discs = {
        "b_1_z020.png": _lesioned_slice(mixed / "b_1_z020.png", 7, (40, 50)),
        "b_1_z021.png": _lesioned_slice(mixed / "b_1_z021.png", 8, (60, 40)),
    }
    _lesioned_slice(mixed / "b_1_z022.png", 9, None)  # abnormal by its folder, but nothing brighter than normal
    source_bytes = {name: (mixed / name).read_bytes() for name in [*discs, "b_1_z022.png"]}
    out = tmp_path / "real"
    assert main([str(png_dataset), str(out), "--holdout", "b_1", "--hyperintensity-masks", "2.5"]) == 0
    assert sorted(p.name for p in (out / "test" / "lesion").iterdir()) == sorted(discs)
    for name, disc in discs.items():
        mask = np.asarray(Image.open(out / "ground_truth" / "lesion" / name.replace(".png", "_mask.png"))) > 0
        dice = 2 * (mask & disc).sum() / (mask.sum() + disc.sum())
        assert dice > 0.9, (name, dice)
    assert not (out / "ground_truth" / "lesion" / "b_1_z022_mask.png").exists()
    for name, content in source_bytes.items():  # inputs untouched (the dropped slice was a link)
        assert (mixed / name).read_bytes() == content


def test_hyperintensity_masks_and_lesion_twins_exclude_each_other(png_dataset, tmp_path):
    with pytest.raises(ValueError, match="either lesion twins or hyperintensity masks"):
        write_holdout_split(png_dataset, tmp_path / "both", ["b_1"], lesion_twins_seed=0, hyperintensity_factor=2.5)


def test_hyperintensity_masks_reject_a_colour_slice_naming_it(png_dataset, tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png_dataset / "train" / "mixed" / "b_1_z020.png")
    assert main([str(png_dataset), str(tmp_path / "real"), "--holdout", "b_1", "--hyperintensity-masks", "2.5"]) == 2
    error = capsys.readouterr().err
    assert "b_1_z020.png: expected a 2D 8-bit grayscale slice" in error and len(error.strip().splitlines()) == 1


def test_anomaly_twins_one_class_per_kind_inside_the_brain(png_dataset, tmp_path):
    out = tmp_path / "kinds"
    assert main([str(png_dataset), str(out), "--holdout", "b_1", "--lesion-twins", "3", "--twin-kinds", *KINDS]) == 0
    assert not (out / "test" / "lesion").exists()
    for kind in KINDS:
        assert sorted(p.name for p in (out / "test" / kind).iterdir()) == ["b_1_z010.png", "b_1_z011.png"], kind
        for name in ("b_1_z010", "b_1_z011"):
            normal = np.asarray(Image.open(out / "test" / "good" / f"{name}.png")).astype(int)
            twin = np.asarray(Image.open(out / "test" / kind / f"{name}.png")).astype(int)
            mask = np.asarray(Image.open(out / "ground_truth" / kind / f"{name}_mask.png")) > 0
            assert mask.sum() >= 20 and np.all(normal[mask] > 0), kind  # a real blob, inside the brain
            assert not ((twin != normal) & (normal == 0)).any(), kind
            if kind not in ("deformation", "mass_effect"):
                assert not ((twin != normal) & ~mask).any(), kind  # intensity kinds change only their mask
    again = tmp_path / "again"
    write_holdout_split(png_dataset, again, ["b_1"], lesion_twins_seed=3, twin_kinds=["texture"])
    path = Path("test") / "texture" / "b_1_z010.png"
    assert (again / path).read_bytes() == (out / path).read_bytes()


def test_twin_kinds_need_lesion_twins_and_known_kinds(png_dataset, tmp_path):
    with pytest.raises(ValueError, match="need a lesion twins seed"):
        write_holdout_split(png_dataset, tmp_path / "a", ["b_1"], twin_kinds=["texture"])
    with pytest.raises(ValueError, match="unknown kind 'sparkle'"):
        write_holdout_split(png_dataset, tmp_path / "b", ["b_1"], lesion_twins_seed=0, twin_kinds=["sparkle"])
