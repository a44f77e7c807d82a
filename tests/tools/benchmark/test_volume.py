"""Tests for tools.benchmark.volume: the shape of a ``--volume`` file and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tools.benchmark.volume import DEFAULT_VOLUME_SHAPE, volume_file_shape


def _nifti(path: Path, shape: tuple[int, ...]) -> Path:
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=np.float32), np.eye(4)), str(path))
    return path


def test_volume_file_shape_reads_the_header(tmp_path: Path) -> None:
    assert DEFAULT_VOLUME_SHAPE == (240, 240, 155)
    assert volume_file_shape(_nifti(tmp_path / "v.nii.gz", (12, 10, 8))) == (12, 10, 8)
    assert volume_file_shape(_nifti(tmp_path / "t.nii", (12, 10, 8, 1))) == (12, 10, 8)  # trailing axis dropped


@pytest.mark.parametrize(
    ("shape", "message"),
    [((12, 10), "must be a 3D volume, got shape (12, 10)"), ((12, 10, 1), "must be a 3D volume")],
)
def test_volume_file_shape_rejects_other_shapes(tmp_path: Path, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        volume_file_shape(_nifti(tmp_path / "v.nii.gz", shape))


def test_volume_file_shape_rejects_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no.nii.gz: --volume not found"):
        volume_file_shape(tmp_path / "no.nii.gz")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"--volume must be a 3D NIfTI volume \(.nii or .nii.gz\)"):
        volume_file_shape(text)
    damaged = tmp_path / "damaged.nii.gz"
    damaged.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="damaged.nii.gz: cannot be read as NIfTI"):
        volume_file_shape(damaged)
