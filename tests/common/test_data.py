"""Tests for common.data: dataset discovery, loading, intensity normalisation and transform chains."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from common.data import (
    DatasetLayoutError,
    ImageRecord,
    IntensitySettings,
    discover_dataset,
    eval_transforms,
    file_stem,
    load_image,
    normalize_intensity,
    split_training_records,
    train_transforms,
)

# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)
    return path


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def _make_layout(root: Path) -> None:
    """A small dataset in the docs/design.md layout: 2D PNGs and one 3D NIfTI test volume with a 3D mask."""
    rng = np.random.default_rng(0)

    def gray() -> np.ndarray:
        return rng.integers(0, 256, (12, 10), dtype=np.uint8)

    for name in ("n1.png", "n2.png", "n3.png"):
        _png(root / "train" / "good" / name, gray())
    _png(root / "train" / "mixed" / "m1.png", gray())
    _png(root / "test" / "good" / "g1.png", gray())
    _png(root / "test" / "tumor" / "t1.png", gray())
    _png(root / "test" / "tumor" / "t2.png", gray())  # no mask for this one
    _nifti(root / "test" / "tumor" / "v1.nii.gz", rng.random((6, 5, 4)).astype(np.float32))
    _png(root / "ground_truth" / "tumor" / "t1_mask.png", np.zeros((12, 10), np.uint8))
    _nifti(root / "ground_truth" / "tumor" / "v1.nii.gz", np.zeros((6, 5, 4), np.uint8))
    _png(root / "brain_mask" / "good" / "n2.png", np.full((12, 10), 255, np.uint8))
    _nifti(root / "brain_mask" / "tumor" / "v1.nii.gz", np.ones((6, 5, 4), np.uint8))
    # files that are not images of the dataset
    (root / "train" / "good" / ".hidden.png").write_bytes(b"not an image")
    (root / "train" / "good" / "notes.txt").write_text("ignored")


def _records(n: int) -> list[ImageRecord]:
    return [ImageRecord(Path(f"/data/img_{i:02d}.png"), 0, "good") for i in range(n)]


# ----------------------------------------------------------------------------------------------------------------------
# discover_dataset


def test_discover_dataset_finds_records_labels_masks_and_foregrounds(tmp_path: Path) -> None:
    _make_layout(tmp_path)
    index = discover_dataset(tmp_path)
    assert index.root == tmp_path
    assert [r.image.name for r in index.train_good] == ["n1.png", "n2.png", "n3.png"]
    assert all(r.label == 0 and r.defect == "good" and r.mask is None for r in index.train_good)
    assert [r.foreground for r in index.train_good] == [None, tmp_path / "brain_mask" / "good" / "n2.png", None]
    assert [(r.image.name, r.label, r.defect) for r in index.train_mixed] == [("m1.png", None, "mixed")]
    test = {r.image.name: r for r in index.test}
    assert set(test) == {"g1.png", "t1.png", "t2.png", "v1.nii.gz"}
    assert (test["g1.png"].label, test["g1.png"].defect, test["g1.png"].mask) == (0, "good", None)
    assert (test["t1.png"].label, test["t1.png"].defect) == (1, "tumor")
    assert test["t1.png"].mask == tmp_path / "ground_truth" / "tumor" / "t1_mask.png"
    assert test["t2.png"].label == 1 and test["t2.png"].mask is None
    assert test["v1.nii.gz"].mask == tmp_path / "ground_truth" / "tumor" / "v1.nii.gz"
    assert test["v1.nii.gz"].foreground == tmp_path / "brain_mask" / "tumor" / "v1.nii.gz"
    assert test["v1.nii.gz"].stem == "v1"


def test_discover_dataset_require_test_passes_with_test_images(tmp_path: Path) -> None:
    _make_layout(tmp_path)
    assert len(discover_dataset(tmp_path, require_test=True).test) == 4


LAYOUT_ERROR_CASES = [
    # an empty folder: no train/good
    ("empty", False, "train/good"),
    # test images only, no train/good (training needs train/good)
    ("test-only", False, "train/good"),
    # the folder does not exist at all
    ("missing", False, "train/good"),
    # train/good present but require_test asks for test images
    ("train-only", True, "test/"),
]
LAYOUT_ERROR_IDS = ["empty-dir", "no-train-good", "missing-dir", "require-test-without-test"]


@pytest.mark.parametrize(("kind", "require_test", "expected"), LAYOUT_ERROR_CASES, ids=LAYOUT_ERROR_IDS)
def test_discover_dataset_layout_errors_name_folder_and_expectation(
    tmp_path: Path, kind: str, require_test: bool, expected: str
) -> None:
    root = tmp_path / "dataset"
    if kind != "missing":
        root.mkdir()
    if kind == "test-only":
        _png(root / "test" / "good" / "a.png", np.zeros((4, 4), np.uint8))
    if kind == "train-only":
        _png(root / "train" / "good" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetLayoutError) as info:
        discover_dataset(root, require_test=require_test)
    message = str(info.value)
    assert message.startswith(str(root))
    assert expected in message
    assert "train/good" in message  # the layout help is always included
    assert isinstance(info.value, ValueError)


FILE_STEM_CASES = [
    # compressed NIfTI: the double suffix counts as one
    ("/a/b/brain_001.nii.gz", "brain_001"),
    # upper-case compressed NIfTI
    ("scan.NII.GZ", "scan"),
    # plain NIfTI
    ("scan.v2.nii", "scan.v2"),
    # PNG mask file
    ("case_3_mask.png", "case_3_mask"),
    # unknown suffix: pathlib's stem
    ("notes.txt", "notes"),
]
FILE_STEM_IDS = ["nii-gz", "nii-gz-upper", "nii-with-dot", "png", "other"]


@pytest.mark.parametrize(("path", "stem"), FILE_STEM_CASES, ids=FILE_STEM_IDS)
def test_file_stem(path: str, stem: str) -> None:
    assert file_stem(path) == stem


# ----------------------------------------------------------------------------------------------------------------------
# split_training_records

SPLIT_CASES = [
    # 20 files, 15%: ceil(3) held out
    (20, 0.15, 1, 17, 3),
    # 2 files, 50%: one each
    (2, 0.5, 1, 1, 1),
    # 3 files, tiny fraction: min_calibration keeps one held out
    (3, 0.01, 1, 2, 1),
    # min_calibration larger than the set: at least one file stays for training
    (5, 0.2, 10, 1, 4),
    # fraction 0: nothing held out
    (6, 0.0, 1, 6, 0),
    # a single file cannot be split: it stays in training
    (1, 0.3, 1, 1, 0),
]
SPLIT_IDS = ["20-files", "2-files", "3-files-tiny-fraction", "min-calibration-capped", "fraction-0", "single-file"]


@pytest.mark.parametrize(("n", "fraction", "min_cal", "n_train", "n_cal"), SPLIT_CASES, ids=SPLIT_IDS)
def test_split_training_records_sizes_disjoint_complete(
    n: int, fraction: float, min_cal: int, n_train: int, n_cal: int
) -> None:
    records = _records(n)
    train, cal = split_training_records(records, fraction, seed=3, min_calibration=min_cal)
    assert (len(train), len(cal)) == (n_train, n_cal)
    train_files, cal_files = {r.image for r in train}, {r.image for r in cal}
    assert not train_files & cal_files
    assert train_files | cal_files == {r.image for r in records}
    assert [r.image for r in train] == sorted(r.image for r in train)


def test_split_training_records_is_deterministic_and_seed_dependent() -> None:
    records = _records(30)
    first = split_training_records(records, 0.3, seed=7)
    second = split_training_records(list(records), 0.3, seed=7)
    assert [r.image for r in first[0]] == [r.image for r in second[0]]
    assert [r.image for r in first[1]] == [r.image for r in second[1]]
    other_seeds = {tuple(r.image for r in split_training_records(records, 0.3, seed=s)[1]) for s in range(5)}
    assert len(other_seeds) > 1


@pytest.mark.parametrize("fraction", [-0.1, 0.51, 1.0], ids=["negative", "above-half", "one"])
def test_split_training_records_validates_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="calibration_fraction"):
        split_training_records(_records(4), fraction)


# ----------------------------------------------------------------------------------------------------------------------
# load_image

PNG_MODE_CASES = [
    # RGB colour image
    ("RGB", 3),
    # RGB with alpha channel
    ("RGBA", 4),
    # palette image (indices into a colour table)
    ("P", 3),
    # grayscale stays grayscale
    ("L", 1),
]
PNG_MODE_IDS = ["rgb", "rgba", "palette", "gray"]


@pytest.mark.parametrize(("mode", "channels"), PNG_MODE_CASES, ids=PNG_MODE_IDS)
def test_load_image_png_modes_give_one_grayscale_channel(tmp_path: Path, mode: str, channels: int) -> None:
    rng = np.random.default_rng(1)
    height, width = 10, 14
    shape = (height, width) if channels == 1 else (height, width, min(channels, 4))
    array = rng.integers(0, 256, shape, dtype=np.uint8)
    path = _png(tmp_path / f"img_{mode}.png", array, mode if mode == "P" else None)
    assert Image.open(path).mode == mode
    data = load_image(path)
    # MONAI's PIL reader returns (W, H)
    assert tuple(data.shape) == (width, height)
    expected = np.asarray(Image.open(path).convert("L"), dtype=np.float32).T
    np.testing.assert_array_equal(np.asarray(data), expected)


def test_load_image_nifti_keeps_array_and_drops_singleton_axis(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    volume = rng.random((6, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(load_image(_nifti(tmp_path / "v.nii.gz", volume))), volume)
    data = load_image(_nifti(tmp_path / "s.nii.gz", volume[..., None]))
    assert tuple(data.shape) == (6, 5, 4)


BAD_FILE_CASES = [
    # PNG suffix, random bytes
    ("broken.png", "cannot be read"),
    # compressed NIfTI suffix, random bytes
    ("broken.nii.gz", "cannot be read"),
    # a 4D NIfTI (time series)
    ("series.nii.gz", "expected a 2D image or a 3D volume"),
    # a NIfTI with a NaN voxel
    ("nan.nii.gz", "NaN"),
]
BAD_FILE_IDS = ["corrupt-png", "corrupt-nifti", "4d-nifti", "nan-nifti"]


@pytest.mark.parametrize(("name", "expected"), BAD_FILE_CASES, ids=BAD_FILE_IDS)
def test_load_image_bad_files_raise_value_error_starting_with_path(tmp_path: Path, name: str, expected: str) -> None:
    path = tmp_path / name
    rng = np.random.default_rng(3)
    if name.startswith("broken"):
        path.write_bytes(rng.bytes(512))
    elif name.startswith("series"):
        _nifti(path, rng.random((4, 5, 6, 2)).astype(np.float32))
    else:
        volume = rng.random((4, 5, 6)).astype(np.float32)
        volume[1, 2, 3] = np.nan
        _nifti(path, volume)
    with pytest.raises(ValueError) as info:
        load_image(path)
    assert str(info.value).startswith(str(path))
    assert expected in str(info.value)


# ----------------------------------------------------------------------------------------------------------------------
# intensity

BAD_INTENSITY_CASES = [
    # unknown mode
    ({"mode": "zscore"}, "mode"),
    # lower percentile above the upper one
    ({"lower": 60.0, "upper": 40.0}, "lower"),
    # upper percentile above 100
    ({"upper": 101.0}, "upper"),
    # negative lower percentile
    ({"lower": -1.0}, "lower"),
    # empty range
    ({"a_min": 5.0, "a_max": 5.0}, "a_max"),
]
BAD_INTENSITY_IDS = ["bad-mode", "lower-above-upper", "upper-above-100", "negative-lower", "empty-range"]


@pytest.mark.parametrize(("kwargs", "name"), BAD_INTENSITY_CASES, ids=BAD_INTENSITY_IDS)
def test_intensity_settings_validation(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        IntensitySettings(**kwargs)


def test_intensity_settings_as_dict_round_trip() -> None:
    settings = IntensitySettings(mode="range", lower=1.0, upper=99.0, a_min=-100.0, a_max=400.0)
    assert IntensitySettings(**settings.as_dict()) == settings


def _percentile_reference(array: np.ndarray, lower: float, upper: float) -> np.ndarray:
    lo, hi = np.percentile(array, [lower, upper])
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0)


def test_normalize_intensity_auto_8bit_image_divides_by_255() -> None:
    array = np.array([[0.0, 51.0, 102.0], [153.0, 204.0, 255.0]], np.float32)
    out = normalize_intensity(torch.as_tensor(array), IntensitySettings(), is_volume=False)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), array / 255.0, atol=1e-6)
    # a dark 8-bit image is NOT stretched: auto uses the fixed 0..255 range for 2D 8-bit data
    dark = np.array([[0.0, 10.0], [20.0, 30.0]], np.float32)
    np.testing.assert_allclose(normalize_intensity(torch.as_tensor(dark), IntensitySettings(), False), dark / 255.0)


AUTO_PERCENTILE_CASES = [
    # 3D volumes always use percentiles, even with 8-bit values
    (lambda rng: rng.integers(0, 256, (6, 5, 4)).astype(np.float32), True),
    # 2D image with values above 255 (16-bit / MRI)
    (lambda rng: rng.random((16, 12)).astype(np.float32) * 4000.0, False),
    # 2D image with negative values (CT)
    (lambda rng: rng.random((16, 12)).astype(np.float32) * 100.0 - 50.0, False),
]
AUTO_PERCENTILE_IDS = ["volume", "2d-16bit", "2d-negative"]


@pytest.mark.parametrize(("make", "is_volume"), AUTO_PERCENTILE_CASES, ids=AUTO_PERCENTILE_IDS)
def test_normalize_intensity_auto_uses_percentiles_otherwise(make, is_volume: bool) -> None:
    array = make(np.random.default_rng(4))
    settings = IntensitySettings(lower=2.0, upper=98.0)
    out = normalize_intensity(torch.as_tensor(array), settings, is_volume).numpy()
    np.testing.assert_allclose(out, _percentile_reference(array, 2.0, 98.0), atol=1e-5)


def test_normalize_intensity_percentile_mode_clips_and_scales() -> None:
    array = np.random.default_rng(5).normal(100.0, 20.0, (20, 20)).astype(np.float32)
    out = normalize_intensity(torch.as_tensor(array), IntensitySettings(mode="percentile"), is_volume=False).numpy()
    np.testing.assert_allclose(out, _percentile_reference(array, 0.5, 99.5), atol=1e-5)
    assert out.min() == 0.0 and out.max() == 1.0


def test_normalize_intensity_range_mode_clips_to_range() -> None:
    array = np.array([-300.0, -100.0, 0.0, 150.0, 400.0, 900.0], np.float32)
    settings = IntensitySettings(mode="range", a_min=-100.0, a_max=400.0)
    out = normalize_intensity(torch.as_tensor(array), settings, is_volume=True).numpy()
    np.testing.assert_allclose(out, [0.0, 0.0, 0.2, 0.5, 1.0, 1.0], atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# transforms

SIZE = (64, 48)  # MONAI order (X, Y) = (width, height)


def _square_image() -> np.ndarray:
    """A bright rectangle centred in a (1, 64, 48) image: rotation about the centre leaves its centroid in place."""
    image = np.zeros((1, *SIZE), np.float32)
    image[0, 24:40, 16:32] = 1.0
    return image


def _centroid(image: torch.Tensor | np.ndarray) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)[0]
    grid = np.meshgrid(*(np.arange(s) for s in array.shape), indexing="ij")
    return np.array([(g * array).sum() / array.sum() for g in grid])


TRANSFORM_SIZE_CASES = [
    # upsampled square
    ((32, 32), (64, 64)),
    # downsampled, non-square
    ((80, 60), (40, 24)),
]
TRANSFORM_SIZE_IDS = ["32-to-64", "80x60-to-40x24"]


@pytest.mark.parametrize(("in_size", "out_size"), TRANSFORM_SIZE_CASES, ids=TRANSFORM_SIZE_IDS)
def test_transforms_give_configured_size_for_image_and_foreground(
    in_size: tuple[int, int], out_size: tuple[int, int]
) -> None:
    rng = np.random.default_rng(6)
    item = {"image": rng.random((1, *in_size)).astype(np.float32), "foreground": np.ones((1, *in_size), np.float32)}
    train = train_transforms(image_size=out_size)
    train.set_random_state(seed=0)
    for chain in (train, eval_transforms(image_size=out_size)):
        out = chain({k: v.copy() for k, v in item.items()})
        assert tuple(out["image"].shape) == (1, *out_size)
        assert tuple(out["foreground"].shape) == (1, *out_size)
        assert out["image"].dtype == torch.float32
        # nearest-neighbour resampling keeps the foreground binary
        assert set(torch.unique(out["foreground"]).tolist()) <= {0.0, 1.0}
    # the image key alone works too (foreground is optional)
    assert tuple(train({"image": item["image"].copy()})["image"].shape) == (1, *out_size)


def test_eval_transforms_are_deterministic_and_only_resize() -> None:
    image = _square_image()
    chain = eval_transforms(image_size=SIZE)
    first = chain({"image": image.copy()})["image"]
    second = chain({"image": image.copy()})["image"]
    assert torch.equal(first, second)
    np.testing.assert_allclose(first.numpy(), image, atol=1e-6)


def test_train_transforms_without_augmentation_equal_eval_transforms() -> None:
    image = _square_image()
    train = train_transforms(image_size=SIZE, rotate_degrees=0.0, translate_fraction=(0.0, 0.0))
    train.set_random_state(seed=0)
    expected = eval_transforms(image_size=SIZE)({"image": image.copy()})["image"]
    np.testing.assert_allclose(train({"image": image.copy()})["image"].numpy(), expected.numpy(), atol=1e-5)


def test_train_transforms_rotation_moves_pixels_but_not_the_centroid() -> None:
    image = _square_image()
    train = train_transforms(image_size=SIZE, rotate_degrees=20.0, translate_fraction=(0.0, 0.0))
    train.set_random_state(seed=1)
    changed = 0
    for _ in range(10):
        out = train({"image": image.copy()})["image"]
        changed += int(np.abs(out.numpy() - image).max() > 0.2)
        np.testing.assert_allclose(_centroid(out), _centroid(image), atol=0.3)
    assert changed >= 8


def test_train_transforms_translation_stays_within_configured_fraction() -> None:
    image = _square_image()
    fractions = (0.02, 0.09)  # of (width, height), as in the MS-NF paper
    rotate = 3.0
    train = train_transforms(image_size=SIZE, rotate_degrees=rotate, translate_fraction=fractions)
    train.set_random_state(seed=2)
    limits = np.array([f * s for f, s in zip(fractions, SIZE, strict=True)])  # 1.28 px in x, 4.32 px in y
    # slack: the translation may be applied before the rotation (sin 3 deg * 4.32 px ~ 0.23 px) plus interpolation
    slack = 0.5
    start = _centroid(image)
    shifts = []
    for _ in range(100):
        out = train({"image": image.copy()})["image"]
        assert tuple(out.shape) == (1, *SIZE)
        shifts.append(_centroid(out) - start)
    shifts = np.abs(np.array(shifts))
    assert (shifts <= limits + slack).all(), f"max shifts {shifts.max(axis=0)} exceed {limits + slack}"
    # the image actually moves, and the larger (height) translation is used along the second axis
    assert (shifts > 0.1).any(axis=0).all()
    assert shifts[:, 1].max() > limits[0] + slack
