"""Tests for tools/phantoms.py: brain-like phantoms with synthetic lesions and the demo dataset writer."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tools.phantoms import (
    SPACING_MM,
    main,
    make_slice,
    make_subject_pair,
    make_volume,
    volume_affine,
    write_dataset,
)

SHAPE_3D = (64, 64, 24)

PAIR_CASES = [
    ((64, 64), 0),  # 2D, small slice
    ((128, 128), 1),  # 2D, default slice size
    ((48, 48, 12), 2),  # 3D, small volume
    (SHAPE_3D, 3),  # 3D, anisotropic voxels over 24 slices
]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("lesion", [False, True], ids=["normal", "lesion"])
@pytest.mark.parametrize("size", [64, 128], ids=["64", "128"])
def test_make_slice_values(size: int, lesion: bool) -> None:
    image, mask, brain = make_slice(np.random.default_rng(11), size=size, lesion=lesion)
    assert image.shape == mask.shape == brain.shape == (size, size)
    assert image.dtype == np.float32 and mask.dtype == np.uint8 and brain.dtype == np.uint8
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    assert set(np.unique(mask)) <= {0, 1} and set(np.unique(brain)) == {0, 1}
    assert bool(mask.any()) == lesion
    # A head in the middle of a dark background: the corners hold only noise.
    assert 0.15 < brain.mean() < 0.7
    assert brain[size // 2, size // 2] == 1
    corners = np.concatenate([image[:6, :6].ravel(), image[-6:, -6:].ravel()])
    assert corners.mean() < 0.1
    assert image[brain.astype(bool)].mean() > 0.25


@pytest.mark.parametrize("lesion", [False, True], ids=["normal", "lesion"])
def test_make_volume_values(lesion: bool) -> None:
    volume, mask, brain = make_volume(np.random.default_rng(5), SHAPE_3D, lesion=lesion)
    assert volume.shape == mask.shape == brain.shape == SHAPE_3D
    assert volume.dtype == np.float32 and mask.dtype == np.uint8 and brain.dtype == np.uint8
    assert np.isfinite(volume).all() and volume.min() >= 0.0 and volume.max() <= 1.0
    assert set(np.unique(mask)) <= {0, 1}
    assert bool(mask.any()) == lesion
    # The head tapers towards both ends of the axial (last) axis.
    area = brain.sum(axis=(0, 1))
    assert area.min() > 0
    assert area[0] < 0.8 * area.max() and area[-1] < 0.8 * area.max()
    # Anatomy varies smoothly along z: neighbouring brain-mask slices overlap strongly in the middle of the volume
    # (where the head is widest) and still overlap where it narrows towards the vertex.
    depth = SHAPE_3D[2]
    ious = []
    for k in range(depth - 1):
        a, b = brain[..., k].astype(bool), brain[..., k + 1].astype(bool)
        ious.append((a & b).sum() / (a | b).sum())
    assert min(ious[depth // 4 : 3 * depth // 4]) > 0.85
    assert min(ious) > 0.3


@pytest.mark.parametrize("seed", range(4))
def test_volume_lesions_span_several_slices(seed: int) -> None:
    _, mask, _ = make_volume(np.random.default_rng(seed), SHAPE_3D, lesion=True)
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    assert slices.size >= 2


@pytest.mark.parametrize(("shape", "seed"), PAIR_CASES, ids=["2d-64", "2d-128", "3d-48", "3d-64"])
def test_lesion_mask_is_exactly_the_changed_pixels(shape: tuple[int, ...], seed: int) -> None:
    normal, abnormal, mask, brain = make_subject_pair(np.random.default_rng(seed), shape)
    assert normal.shape == abnormal.shape == mask.shape == brain.shape == shape
    changed = normal != abnormal
    assert changed.any()
    np.testing.assert_array_equal(changed, mask.astype(bool))
    # Lesions only brighten the image, and they lie inside the brain.
    assert (abnormal[changed] > normal[changed]).all()
    assert brain[mask.astype(bool)].all()


@pytest.mark.parametrize(("shape", "seed"), PAIR_CASES, ids=["2d-64", "2d-128", "3d-48", "3d-64"])
def test_pair_matches_single_renders(shape: tuple[int, ...], seed: int) -> None:
    normal, abnormal, mask, brain = make_subject_pair(np.random.default_rng(seed), shape)
    if len(shape) == 2:
        outs = [make_slice(np.random.default_rng(seed), shape[0], lesion=flag) for flag in (False, True)]
    else:
        outs = [make_volume(np.random.default_rng(seed), shape, lesion=flag) for flag in (False, True)]
    (image0, mask0, brain0), (image1, mask1, brain1) = outs
    np.testing.assert_array_equal(image0, normal)
    np.testing.assert_array_equal(image1, abnormal)
    np.testing.assert_array_equal(mask1, mask)
    assert not mask0.any()
    np.testing.assert_array_equal(brain0, brain)
    np.testing.assert_array_equal(brain1, brain)


@pytest.mark.parametrize("seed", range(6))
def test_lesions_are_hyperintense(seed: int) -> None:
    normal, abnormal, mask, brain = make_subject_pair(np.random.default_rng(seed), (128, 128))
    inside = mask.astype(bool)
    # White matter is the largest tissue inside the brain mask, so the brain median is at white-matter level.
    white = float(np.median(normal[brain.astype(bool)]))
    assert abnormal[inside].mean() > white + 0.2
    assert abnormal[inside].mean() > normal[inside].mean() + 0.15
    # Heterogeneous, with a soft edge: not a single flat value.
    assert abnormal[inside].std() > 0.02
    # 1 to 3 blobs (a blob may be cut into pieces by a sulcus, so allow a few extra components).
    _, n_components = ndimage.label(inside)
    assert 1 <= n_components <= 6


def test_determinism_and_variation() -> None:
    a = make_slice(np.random.default_rng(3), 64, lesion=True)
    b = make_slice(np.random.default_rng(3), 64, lesion=True)
    c = make_slice(np.random.default_rng(4), 64, lesion=True)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])
    # Each subject has its own head shape.
    brains = [make_slice(np.random.default_rng(s), 64)[2].astype(bool) for s in range(4)]
    for i in range(len(brains)):
        for j in range(i + 1, len(brains)):
            iou = (brains[i] & brains[j]).sum() / (brains[i] | brains[j]).sum()
            assert iou < 0.97


def test_write_dataset_2d(tmp_path: Path) -> None:
    out = write_dataset(tmp_path / "ds", dims=2, n_train=3, n_test_good=2, n_test_lesion=2, size=64, seed=1)
    assert out == tmp_path / "ds"
    assert _files(out / "train" / "good") == ["train_0000.png", "train_0001.png", "train_0002.png"]
    assert _files(out / "test" / "good") == ["good_0000.png", "good_0001.png"]
    assert _files(out / "test" / "lesion") == ["lesion_0000.png", "lesion_0001.png"]
    assert _files(out / "ground_truth" / "lesion") == ["lesion_0000_mask.png", "lesion_0001_mask.png"]
    assert not (out / "brain_mask").exists()
    for stem in ("lesion_0000", "lesion_0001"):
        with Image.open(out / "test" / "lesion" / f"{stem}.png") as im:
            assert im.mode == "L" and im.size == (64, 64)
            image = np.asarray(im)
        with Image.open(out / "ground_truth" / "lesion" / f"{stem}_mask.png") as im:
            assert im.mode == "L"
            mask = np.asarray(im)
        assert set(np.unique(mask)) == {0, 255}
        # The lesion is bright in the stored 8-bit image.
        assert image[mask > 0].mean() > np.median(image[image > 40]) + 40
    # The stored image is the 8-bit rendering of make_slice with the file's own seed.
    expected, _, _ = make_slice(np.random.default_rng([1, 0, 1]), 64)
    with Image.open(out / "train" / "good" / "train_0001.png") as im:
        np.testing.assert_array_equal(np.asarray(im), np.round(expected * 255).astype(np.uint8))


def test_write_dataset_3d(tmp_path: Path) -> None:
    out = write_dataset(tmp_path, dims=3, n_train=2, n_test_good=1, n_test_lesion=1, size=48, depth=12, seed=0)
    assert _files(out / "train" / "good") == ["train_0000.nii.gz", "train_0001.nii.gz"]
    assert _files(out / "test" / "good") == ["good_0000.nii.gz"]
    assert _files(out / "test" / "lesion") == ["lesion_0000.nii.gz"]
    assert _files(out / "ground_truth" / "lesion") == ["lesion_0000.nii.gz"]
    assert _files(out / "brain_mask" / "good") == ["good_0000.nii.gz", "train_0000.nii.gz", "train_0001.nii.gz"]
    assert _files(out / "brain_mask" / "lesion") == ["lesion_0000.nii.gz"]

    expected_affine = volume_affine((48, 48, 12))
    assert not np.allclose(expected_affine, np.eye(4))
    np.testing.assert_allclose(np.abs(np.diag(expected_affine)[:3]), SPACING_MM)
    image = nib.load(out / "test" / "lesion" / "lesion_0000.nii.gz")
    mask = nib.load(out / "ground_truth" / "lesion" / "lesion_0000.nii.gz")
    brain = nib.load(out / "brain_mask" / "lesion" / "lesion_0000.nii.gz")
    for img in (image, mask, brain):
        assert img.shape == (48, 48, 12)
        np.testing.assert_allclose(img.affine, expected_affine, atol=1e-5)
        np.testing.assert_allclose(img.header.get_zooms(), SPACING_MM, atol=1e-6)
    assert image.get_data_dtype() == np.float32
    assert mask.get_data_dtype() == np.uint8 and brain.get_data_dtype() == np.uint8
    data, m, b = image.get_fdata(), np.asarray(mask.dataobj), np.asarray(brain.dataobj)
    assert 0.0 <= data.min() and data.max() <= 1.0
    assert set(np.unique(m)) == {0, 1}
    assert b[m > 0].all()
    expected, expected_mask, _ = make_volume(np.random.default_rng([0, 2, 0]), (48, 48, 12), lesion=True)
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected)
    np.testing.assert_array_equal(m, expected_mask)
    # Atomic writes leave no temporary files behind.
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_write_dataset_is_deterministic(tmp_path: Path) -> None:
    kwargs = {"dims": 2, "n_train": 2, "n_test_good": 1, "n_test_lesion": 1, "size": 48}
    a = write_dataset(tmp_path / "a", seed=7, **kwargs)
    b = write_dataset(tmp_path / "b", seed=7, **kwargs)
    c = write_dataset(tmp_path / "c", seed=8, **kwargs)
    names = [p.relative_to(a) for p in sorted(a.rglob("*.png"))]
    assert len(names) == 5
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert all((a / name).read_bytes() != (c / name).read_bytes() for name in names)
    # 3D files are byte-identical too (gzip without a time stamp).
    d = write_dataset(tmp_path / "d", dims=3, n_train=1, n_test_good=0, n_test_lesion=0, size=32, depth=8, seed=7)
    e = write_dataset(tmp_path / "e", dims=3, n_train=1, n_test_good=0, n_test_lesion=0, size=32, depth=8, seed=7)
    name = Path("train/good/train_0000.nii.gz")
    assert (d / name).read_bytes() == (e / name).read_bytes()


BAD_DATASET_ARGS = [
    ({"dims": 4}, "dims"),  # only 2D and 3D
    ({"dims": 1}, "dims"),  # only 2D and 3D
    ({"n_train": 0}, "n_train"),  # training needs at least one image
    ({"n_test_good": -1}, "n_test_good"),  # negative count
    ({"n_test_lesion": -2}, "n_test_lesion"),  # negative count
    ({"size": 16}, "size"),  # below the 32-pixel minimum
    ({"dims": 3, "depth": 4}, "depth"),  # too few slices for a volume
    ({"seed": -1}, "seed"),  # seeds are non-negative
]


@pytest.mark.parametrize(("kwargs", "name"), BAD_DATASET_ARGS, ids=[n for _, n in BAD_DATASET_ARGS])
def test_write_dataset_bad_arguments(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        write_dataset(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_generators_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="size"):
        make_slice(rng, size=16)
    with pytest.raises(ValueError, match="shape"):
        make_volume(rng, shape=(64, 64))
    with pytest.raises(ValueError, match="shape"):
        make_volume(rng, shape=(64, 16, 24))
    with pytest.raises(ValueError, match="shape"):
        make_subject_pair(rng, shape=(64, 64, 64, 2))
    with pytest.raises(TypeError, match="rng"):
        make_slice(0)  # type: ignore[arg-type]


def test_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / "cli"), "--n-train", "2", "--n-test-good", "1", "--n-test-lesion", "1", "--size", "40"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "train/good" in printed and "test/lesion" in printed
    assert len(list((tmp_path / "cli" / "train" / "good").glob("*.png"))) == 2
    assert len(list((tmp_path / "cli" / "ground_truth" / "lesion").glob("*_mask.png"))) == 1
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "cli2"), "--dims", "4"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "cli3"), "--size", "8"])
    assert exc.value.code == 2
    assert "size" in capsys.readouterr().err


MIXED_CASES = [
    # 2D: PNG slices, no masks, no brain masks
    ({"dims": 2, "size": 40}, ".png"),
    # 3D: NIfTI volumes with brain masks under brain_mask/mixed
    ({"dims": 3, "size": 32, "depth": 8}, ".nii.gz"),
]


@pytest.mark.parametrize(("kwargs", "suffix"), MIXED_CASES, ids=["2d", "3d"])
def test_write_dataset_mixed_folder(tmp_path: Path, kwargs: dict, suffix: str) -> None:
    common = {"n_train": 2, "n_test_good": 1, "n_test_lesion": 1, "seed": 5, **kwargs}
    plain = write_dataset(tmp_path / "plain", **common)
    out = write_dataset(tmp_path / "mixed", n_mixed_good=3, n_mixed_lesion=2, **common)
    assert not (plain / "train" / "mixed").exists()
    assert _files(out / "train" / "mixed") == [f"mixed_{i:04d}{suffix}" for i in range(5)]
    # the other splits do not depend on the mixed folder
    for folder in ("train/good", "test/good", "test/lesion"):
        for name in _files(plain / folder):
            assert (plain / folder / name).read_bytes() == (out / folder / name).read_bytes()
    assert _files(out / "ground_truth" / "lesion") == _files(plain / "ground_truth" / "lesion")  # mixed is unlabelled
    if kwargs["dims"] == 3:
        assert _files(out / "brain_mask" / "mixed") == _files(out / "train" / "mixed")
    if kwargs["dims"] == 2:
        # exactly 2 of the 5 images are lesioned renderings of their own seed, the others healthy ones
        lesioned = []
        for index, name in enumerate(_files(out / "train" / "mixed")):
            with Image.open(out / "train" / "mixed" / name) as im:
                stored = np.asarray(im)
            renders = {
                flag: np.round(make_slice(np.random.default_rng([5, 4, index]), 40, lesion=flag)[0] * 255).astype(
                    np.uint8
                )
                for flag in (False, True)
            }
            matches = [flag for flag, image in renders.items() if np.array_equal(image, stored)]
            assert len(matches) == 1, name
            lesioned.append(matches[0])
        assert sum(lesioned) == 2


def test_write_dataset_mixed_bad_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_mixed_lesion"):
        write_dataset(tmp_path / "bad", n_mixed_lesion=-1)
