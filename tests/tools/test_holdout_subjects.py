"""Tests for tools.holdout_subjects: a development split from train/good and train/mixed alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.holdout_subjects import main, subject_of, write_holdout_split


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
