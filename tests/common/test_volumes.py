"""Tests for common.volumes: slice selection, loading with masks, slice-wise inference and writing maps."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from common.data import ImageRecord, load_image
from common.foreground import compute_foreground
from common.volumes import (
    LoadedImage,
    SliceSettings,
    SliceWiseInferer,
    load_record,
    load_slices,
    select_slices,
    slice_indices,
    write_map,
)

SHAPE = (20, 16, 9)

# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _affine() -> np.ndarray:
    """Rotation about z and x, anisotropic scaling and an offset."""
    a, b = 0.3, -0.2
    rot_z = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rot_x = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_x @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = [-10.0, 5.5, 30.0]
    return affine


def _write_volume(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, _affine() if affine is None else affine)
    image.header["descrip"] = b"uad test volume"
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    return path


def _random_volume(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _blob_volume(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A bright box in a dark volume, with a little noise, for foreground computation."""
    volume = 0.05 * _random_volume(1, shape)
    volume[4:16, 3:13, 2:7] += 1.0
    return volume


class TimesTwo(nn.Module):
    """A 'network' returning its input times 2: catches transposed or flipped slices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x


class PlusSliceMean(nn.Module):
    """Adds each slice's mean to the slice: catches slices put back at the wrong index."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x.mean(dim=(2, 3), keepdim=True)


def _tmp_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------------------------------------------------
# SliceWiseInferer and write_map: the slice -> stitch round trip

ROUND_TRIP_CASES = [
    # slices along the first axis
    (0, TimesTwo()),
    (0, PlusSliceMean()),
    # slices along the second axis
    (1, TimesTwo()),
    (1, PlusSliceMean()),
    # slices along the last (axial) axis
    (2, TimesTwo()),
    (2, PlusSliceMean()),
]
ROUND_TRIP_IDS = [
    "axis0-times2",
    "axis0-slice-mean",
    "axis1-times2",
    "axis1-slice-mean",
    "axis2-times2",
    "axis2-slice-mean",
]


def _expected(volume: np.ndarray, network: nn.Module, axis: int) -> np.ndarray:
    if isinstance(network, TimesTwo):
        return 2.0 * volume
    others = tuple(a for a in range(3) if a != axis)
    return volume + volume.mean(axis=others, keepdims=True)


@pytest.mark.parametrize(("axis", "network"), ROUND_TRIP_CASES, ids=ROUND_TRIP_IDS)
def test_slice_stitch_round_trip_on_the_input_grid(tmp_path: Path, axis: int, network: nn.Module) -> None:
    volume = _random_volume(axis)
    source = _write_volume(tmp_path / "in" / "case.nii.gz", volume)
    data = torch.as_tensor(np.asarray(load_image(source)))
    inferer = SliceWiseInferer(spatial_dim=axis, sw_batch_size=4)
    with torch.no_grad():
        output = inferer(data[None, None], network)
    assert tuple(output.shape) == (1, 1, *SHAPE)
    expected = _expected(volume, network, axis)
    np.testing.assert_allclose(np.asarray(output[0, 0]), expected, rtol=1e-5, atol=1e-6)

    out_dir = tmp_path / "out"
    written = write_map(np.asarray(output[0, 0]), source, out_dir / "case_anomaly.nii.gz")
    assert written == out_dir / "case_anomaly.nii.gz"
    reference, result = nib.load(str(source)), nib.load(str(written))
    assert result.shape == SHAPE
    np.testing.assert_allclose(result.affine, reference.affine)
    np.testing.assert_array_equal(result.get_fdata(dtype=np.float32), np.asarray(output[0, 0], dtype=np.float32))
    np.testing.assert_allclose(result.get_fdata(), expected, rtol=1e-5, atol=1e-6)
    assert _tmp_leftovers(out_dir) == []


def test_slice_wise_inferer_passes_2d_batches_through_in_chunks() -> None:
    calls = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return 2.0 * x

    images = torch.rand(5, 1, 8, 6, generator=torch.Generator().manual_seed(0))
    output = SliceWiseInferer(sw_batch_size=2)(images, Recorder())
    torch.testing.assert_close(output, 2.0 * images)
    assert calls == [2, 2, 1]


def test_slice_wise_inferer_batches_slices_per_forward_pass() -> None:
    calls = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(x.shape))
            return x

    SliceWiseInferer(spatial_dim=2, sw_batch_size=4)(torch.rand(1, 1, *SHAPE), Recorder())
    assert sum(shape[0] for shape in calls) == SHAPE[2]
    assert max(shape[0] for shape in calls) == 4
    assert all(shape[1:] == (1, SHAPE[0], SHAPE[1]) for shape in calls)


INFERER_ERROR_CASES = [
    # axis out of range
    (lambda: SliceWiseInferer(spatial_dim=3), "spatial_dim"),
    # empty batches
    (lambda: SliceWiseInferer(sw_batch_size=0), "sw_batch_size"),
    # a 3D tensor is neither (B, C, H, W) nor (B, C, X, Y, Z)
    (lambda: SliceWiseInferer()(torch.zeros(1, 4, 4), TimesTwo()), "expected"),
]
INFERER_ERROR_IDS = ["axis-3", "batch-0", "3d-input"]


@pytest.mark.parametrize(("make", "expected"), INFERER_ERROR_CASES, ids=INFERER_ERROR_IDS)
def test_slice_wise_inferer_errors(make, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        make()


def test_write_map_keeps_header_fields_and_writes_float32(tmp_path: Path) -> None:
    source = _write_volume(tmp_path / "case.nii.gz", (_random_volume(3) * 1000).astype(np.int16))
    array = _random_volume(4)
    written = write_map(array, source, tmp_path / "out" / "case_anomaly.nii.gz")
    result = nib.load(str(written))
    assert result.header["descrip"].tobytes().rstrip(b"\0") == b"uad test volume"
    assert result.header.get_xyzt_units() == ("mm", "sec")
    assert result.get_data_dtype() == np.float32
    np.testing.assert_allclose(result.header.get_zooms(), nib.load(str(source)).header.get_zooms())
    np.testing.assert_allclose(result.get_sform(), nib.load(str(source)).get_sform())
    np.testing.assert_array_equal(np.asanyarray(result.dataobj), array)


def test_write_map_2d_nifti_with_singleton_axis(tmp_path: Path) -> None:
    source = _write_volume(tmp_path / "slice.nii", _random_volume(5, (12, 10, 1)))
    array = _random_volume(6, (12, 10))
    result = nib.load(str(write_map(array, source, tmp_path / "slice_anomaly.nii.gz")))
    assert result.shape == (12, 10, 1)
    np.testing.assert_allclose(result.affine, _affine())
    np.testing.assert_array_equal(result.get_fdata(dtype=np.float32)[..., 0], array)


def test_write_map_png_reference_uses_identity_affine(tmp_path: Path) -> None:
    png = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (10, 14), dtype=np.uint8)).save(png)
    array = _random_volume(8, tuple(load_image(png).shape))
    assert array.shape == (14, 10)
    result = nib.load(str(write_map(array, png, tmp_path / "photo_anomaly.nii.gz")))
    np.testing.assert_allclose(result.affine, np.eye(4))
    np.testing.assert_array_equal(result.get_fdata(dtype=np.float32), array)


def test_write_map_wrong_shape_raises_naming_the_file(tmp_path: Path) -> None:
    source = _write_volume(tmp_path / "case.nii.gz", _random_volume(9))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ValueError) as info:
        write_map(np.zeros((20, 16, 8), np.float32), source, out_dir / "case_anomaly.nii.gz")
    assert str(info.value).startswith(str(source))
    assert "(20, 16, 8)" in str(info.value)
    assert list(out_dir.iterdir()) == []


def test_write_map_leaves_nothing_behind_when_saving_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _write_volume(tmp_path / "case.nii.gz", _random_volume(10))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "case_anomaly.nii.gz").write_bytes(b"previous result")

    def failing_save(image: nib.Nifti1Image, filename: str) -> None:
        Path(filename).write_bytes(b"half written")
        msg = "disk full"
        raise OSError(msg)

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_map(_random_volume(11), source, out_dir / "case_anomaly.nii.gz")
    assert sorted(p.name for p in out_dir.iterdir()) == ["case_anomaly.nii.gz"]
    assert (out_dir / "case_anomaly.nii.gz").read_bytes() == b"previous result"


# ----------------------------------------------------------------------------------------------------------------------
# load_record


def test_load_record_uses_foreground_file_when_present(tmp_path: Path) -> None:
    image = _write_volume(tmp_path / "img.nii.gz", _blob_volume())
    brain = np.zeros(SHAPE, np.uint8)
    brain[2:10, 2:8, :] = 1
    foreground = _write_volume(tmp_path / "brain.nii.gz", brain)
    loaded = load_record(ImageRecord(image, foreground=foreground), SliceSettings())
    np.testing.assert_array_equal(loaded.foreground, brain > 0)
    assert loaded.is_volume and loaded.axis == 2 and loaded.n_slices == SHAPE[2]
    assert loaded.image.dtype == np.float32
    assert 0.0 <= loaded.image.min() and loaded.image.max() <= 1.0
    # "compute" ignores the file
    computed = load_record(ImageRecord(image, foreground=foreground), SliceSettings(foreground="compute"))
    np.testing.assert_array_equal(computed.foreground, compute_foreground(computed.image))
    assert not np.array_equal(computed.foreground, brain > 0)


FOREGROUND_MODE_CASES = [
    # auto without a file: computed from the image
    ("auto", "computed"),
    # compute: computed from the image
    ("compute", "computed"),
    # file without a file: everything is foreground
    ("file", "ones"),
    # none: everything is foreground
    ("none", "ones"),
]
FOREGROUND_MODE_IDS = ["auto", "compute", "file-missing", "none"]


@pytest.mark.parametrize(("mode", "expected"), FOREGROUND_MODE_CASES, ids=FOREGROUND_MODE_IDS)
def test_load_record_foreground_modes_without_file(tmp_path: Path, mode: str, expected: str) -> None:
    image = _write_volume(tmp_path / "img.nii.gz", _blob_volume())
    loaded = load_record(ImageRecord(image), SliceSettings(foreground=mode, brain_extraction="none"))
    assert loaded.foreground.dtype == bool and loaded.foreground.shape == SHAPE
    if expected == "ones":
        assert loaded.foreground.all()
    else:
        np.testing.assert_array_equal(loaded.foreground, compute_foreground(loaded.image))
        assert 0 < loaded.foreground.sum() < loaded.foreground.size
        assert loaded.foreground[10, 8, 4] and not loaded.foreground[0, 0, 0]


def test_load_record_computed_foreground_keeps_components_by_fraction(tmp_path: Path) -> None:
    volume = np.zeros(SHAPE, np.float32)
    volume[2:12, 2:12, 1:7] = 100.0  # the largest component: 600 voxels
    volume[15:19, 12:16, 2:6] = 100.0  # a separate one: 64 voxels, about 11% of the largest
    image = _write_volume(tmp_path / "img.nii.gz", volume)
    kept = {
        fraction: load_record(
            ImageRecord(image), SliceSettings(foreground="compute", foreground_min_component=fraction)
        ).foreground
        for fraction in (0.1, 0.2)
    }
    assert kept[0.1][16, 13, 3] and kept[0.1].sum() == 600 + 64
    assert not kept[0.2][16, 13, 3] and kept[0.2].sum() == 600


def test_load_record_none_ignores_foreground_file(tmp_path: Path) -> None:
    image = _write_volume(tmp_path / "img.nii.gz", _blob_volume())
    foreground = _write_volume(tmp_path / "brain.nii.gz", np.zeros(SHAPE, np.uint8))
    loaded = load_record(ImageRecord(image, foreground=foreground), SliceSettings(foreground="none"))
    assert loaded.foreground.all()


def test_load_record_2d_image_becomes_single_slice_volume(tmp_path: Path) -> None:
    png = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(12).integers(0, 256, (10, 14), dtype=np.uint8)).save(png)
    loaded = load_record(ImageRecord(png), SliceSettings(axis=0))
    assert loaded.image.shape == (14, 10, 1)
    assert not loaded.is_volume and loaded.axis == 2 and loaded.n_slices == 1
    np.testing.assert_allclose(loaded.image[..., 0], np.asarray(load_image(png)) / 255.0, atol=1e-6)


def test_load_record_auto_intensity_2d_float_nifti_uses_percentiles(tmp_path: Path) -> None:
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(_random_volume(15, (16, 12)), np.eye(4)), str(path))
    loaded = load_record(ImageRecord(path), SliceSettings())
    assert not loaded.is_volume
    assert loaded.image.max() == pytest.approx(1.0)


MISMATCH_CASES = [
    # ground-truth mask one slice short
    ("mask", "mask"),
    # foreground mask one slice short
    ("foreground", "foreground mask"),
]
MISMATCH_IDS = ["mask", "foreground"]


@pytest.mark.parametrize(("field", "what"), MISMATCH_CASES, ids=MISMATCH_IDS)
def test_load_record_mask_shape_mismatch_names_the_mask_file(tmp_path: Path, field: str, what: str) -> None:
    image = _write_volume(tmp_path / "img.nii.gz", _blob_volume())
    wrong = _write_volume(tmp_path / "wrong_mask.nii.gz", np.zeros((20, 16, 8), np.uint8))
    with pytest.raises(ValueError) as info:
        load_record(ImageRecord(image, **{field: wrong}), SliceSettings())
    message = str(info.value)
    assert message.startswith(str(wrong))
    assert what in message and "img.nii.gz" in message


def test_load_record_rejects_3d_data_from_non_nifti(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png = tmp_path / "stack.png"
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(png)
    # a reader that returns a stack for a 2D file format (e.g. a multi-page TIFF)
    monkeypatch.setattr("common.volumes.load_image", lambda path: torch.rand(5, 6, 3))
    with pytest.raises(ValueError) as info:
        load_record(ImageRecord(png), SliceSettings())
    assert str(info.value).startswith(str(png))
    assert "only read from NIfTI" in str(info.value)


# ----------------------------------------------------------------------------------------------------------------------
# select_slices


def _loaded_with_foreground(tmp_path: Path, axis: int = 2):
    """A volume whose foreground file covers slices 0..3 fully, 4..5 at 25% and 6..8 not at all (axis 2)."""
    image = _write_volume(tmp_path / "img.nii.gz", _blob_volume())
    brain = np.zeros(SHAPE, np.uint8)
    brain[:, :, 0:4] = 1
    brain[:10, :8, 4:6] = 1
    foreground = _write_volume(tmp_path / "brain.nii.gz", brain)
    settings = SliceSettings(axis=axis)
    return load_record(ImageRecord(image, foreground=foreground), settings)


SELECT_CASES = [
    # everything
    ({}, list(range(9))),
    # a range
    ({"slice_range": (2, 6)}, [2, 3, 4, 5]),
    # a range past the end is clipped
    ({"slice_range": (7, 50)}, [7, 8]),
    # a range starting below zero is clipped
    ({"slice_range": (-3, 2)}, [0, 1]),
    # full foreground only
    ({"min_foreground": 0.5}, [0, 1, 2, 3]),
    # any slice with a quarter of foreground
    ({"min_foreground": 0.25}, [0, 1, 2, 3, 4, 5]),
    # range first, then the foreground rule
    ({"slice_range": (3, 9), "min_foreground": 0.2}, [3, 4, 5]),
]
SELECT_IDS = [
    "all",
    "range",
    "range-past-end",
    "range-negative-start",
    "min-fg-half",
    "min-fg-quarter",
    "range-and-min-fg",
]


@pytest.mark.parametrize(("kwargs", "expected"), SELECT_CASES, ids=SELECT_IDS)
def test_select_slices(tmp_path: Path, kwargs: dict, expected: list[int]) -> None:
    loaded = _loaded_with_foreground(tmp_path)
    assert select_slices(loaded, SliceSettings(**kwargs)) == expected


def test_select_slices_follows_the_axis(tmp_path: Path) -> None:
    loaded = _loaded_with_foreground(tmp_path, axis=0)
    # along axis 0 the foreground fraction is 4/9 + 2/9 * 8/16 = 5/9 for x < 10 and 4/9 beyond
    assert select_slices(loaded, SliceSettings(axis=0, min_foreground=0.5)) == list(range(10))
    assert select_slices(loaded, SliceSettings(axis=0, slice_range=(15, 30))) == list(range(15, 20))


def test_select_slices_2d_image_is_one_slice(tmp_path: Path) -> None:
    png = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    loaded = load_record(ImageRecord(png), SliceSettings())
    assert select_slices(loaded, SliceSettings(slice_range=(3, 5), min_foreground=0.9)) == [0]


# ----------------------------------------------------------------------------------------------------------------------
# load_slices


def _mask_volume() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[5:8, 4:6, 3] = 1
    mask[10, 10, 6] = 1  # a single anomalous voxel still makes slice 6 abnormal
    return mask


LOAD_SLICES_AXIS_CASES = [
    # axial slices (last axis)
    (2, (1, 20, 16), {3, 6}),
    # slices along the first axis
    (0, (1, 16, 9), {5, 6, 7, 10}),
    # slices along the second axis
    (1, (1, 20, 9), {4, 5, 10}),
]
LOAD_SLICES_AXIS_IDS = ["axis2", "axis0", "axis1"]


@pytest.mark.parametrize(("axis", "shape", "abnormal"), LOAD_SLICES_AXIS_CASES, ids=LOAD_SLICES_AXIS_IDS)
def test_load_slices_shapes_and_labels_from_masks(
    tmp_path: Path, axis: int, shape: tuple[int, ...], abnormal: set[int]
) -> None:
    volume = _blob_volume()
    image = _write_volume(tmp_path / "img.nii.gz", volume)
    mask = _write_volume(tmp_path / "mask.nii.gz", _mask_volume())
    record = ImageRecord(image, label=1, defect="tumor", mask=mask)
    slices = load_slices([record], {"axis": axis, "foreground": "none"})
    assert [item["slice"] for item in slices] == list(range(SHAPE[axis]))
    normalised = load_record(record, SliceSettings(axis=axis, foreground="none")).image
    for item in slices:
        assert item["image"].shape == shape and item["image"].dtype == np.float32
        assert item["foreground"].shape == shape and item["foreground"].dtype == np.float32
        assert item["mask"].shape == shape
        np.testing.assert_array_equal(item["image"][0], np.take(normalised, item["slice"], axis=axis))
        np.testing.assert_array_equal(item["mask"][0], np.take(_mask_volume(), item["slice"], axis=axis) > 0)
        assert item["label"] == int(item["slice"] in abnormal)
        assert item["volume_label"] == 1
        assert item["source"] == str(image)


def test_load_slices_labels_without_masks_and_2d_images(tmp_path: Path) -> None:
    normal = _write_volume(tmp_path / "normal.nii.gz", _blob_volume())
    png = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(13).integers(0, 256, (10, 14), dtype=np.uint8)).save(png)
    settings = SliceSettings(brain_extraction="none")
    slices = load_slices([ImageRecord(normal, label=0), ImageRecord(png, label=None)], settings)
    assert len(slices) == SHAPE[2] + 1
    assert all(item["label"] == 0 and "mask" not in item for item in slices[:-1])
    last = slices[-1]
    assert last["image"].shape == (1, 14, 10)
    assert (last["label"], last["volume_label"], last["slice"]) == (-1, -1, 0)


def test_load_slices_skip_errors(tmp_path: Path) -> None:
    good = _write_volume(tmp_path / "good.nii.gz", _blob_volume())
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(np.random.default_rng(14).bytes(400))
    records = [ImageRecord(corrupt, 0), ImageRecord(good, 0)]
    settings = SliceSettings(brain_extraction="none")
    with pytest.raises(ValueError) as info:
        load_slices(records, settings)
    assert str(info.value).startswith(str(corrupt))
    slices = load_slices(records, settings, skip_errors=True)
    assert len(slices) == SHAPE[2]
    assert {item["source"] for item in slices} == {str(good)}


# ----------------------------------------------------------------------------------------------------------------------
# SliceSettings

BAD_SETTINGS_CASES = [
    # axis out of range
    ({"axis": 3}, "axis"),
    # negative axis
    ({"axis": -1}, "axis"),
    # empty range
    ({"slice_range": (5, 5)}, "slice_range"),
    # reversed range
    ({"slice_range": (6, 2)}, "slice_range"),
    # range with one value
    ({"slice_range": (4,)}, "slice_range"),
    # fraction of 1 would drop every slice with any background
    ({"min_foreground": 1.0}, "min_foreground"),
    # negative fraction
    ({"min_foreground": -0.1}, "min_foreground"),
    # unknown foreground mode
    ({"foreground": "otsu"}, "foreground"),
    # intensity settings given as a dict are validated too
    ({"intensity": {"mode": "zscore"}}, "mode"),
    # component fraction above 1
    ({"foreground_min_component": 1.5}, "foreground_min_component"),
]
BAD_SETTINGS_IDS = [
    "axis-3",
    "axis-negative",
    "range-empty",
    "range-reversed",
    "range-one-value",
    "min-fg-1",
    "min-fg-negative",
    "foreground-unknown",
    "intensity-dict-bad-mode",
    "min-component-above-1",
]


@pytest.mark.parametrize(("kwargs", "name"), BAD_SETTINGS_CASES, ids=BAD_SETTINGS_IDS)
def test_slice_settings_validation(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SliceSettings(**kwargs)


def test_slice_settings_as_dict_round_trip() -> None:
    settings = SliceSettings(axis=1, slice_range=(2, 7), min_foreground=0.1, intensity={"mode": "range"})
    as_dict = settings.as_dict()
    assert as_dict["slice_range"] == [2, 7] and as_dict["intensity"]["mode"] == "range"
    assert SliceSettings(**as_dict).as_dict() == as_dict


# ----------------------------------------------------------------------------------------------------------------------
# brain extraction in load_record (a stand-in extractor: "tests.common.test_volumes:box_brain")

BRAIN_BOX = (slice(4, 16), slice(4, 12), slice(2, 7))  # 12 x 8 x 5 = 480 voxels of 1 ml: a plausible brain
BOX_CALLS: list[tuple[int, ...]] = []
BOX_BRAIN = "tests.common.test_volumes:box_brain"


def box_brain(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Stand-in extractor: the brain is a fixed box, whatever the intensities."""
    BOX_CALLS.append(volume.shape)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[BRAIN_BOX] = True
    return mask


def _head_volume() -> np.ndarray:
    """A brain (100..200) in the box, a bright skull and scalp (up to 1000) around it, on 10 mm voxels."""
    rng = np.random.default_rng(21)
    volume = rng.uniform(0.0, 1000.0, SHAPE).astype(np.float32)
    volume[BRAIN_BOX] = rng.uniform(100.0, 200.0, volume[BRAIN_BOX].shape)
    return volume


def _box_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[BRAIN_BOX] = True
    return mask


def _expected_brain_normalised(volume: np.ndarray, inside: np.ndarray, lower: float = 0.5, upper: float = 99.5):
    low, high = np.percentile(volume[inside], [lower, upper])
    expected = np.clip((volume - low) / (high - low), 0.0, 1.0)
    expected[~inside] = 0.0
    return expected


def test_load_record_extracts_strips_and_normalises_over_the_brain(tmp_path: Path) -> None:
    volume = _head_volume()
    image = _write_volume(tmp_path / "head.nii.gz", volume, np.diag([10.0, 10.0, 10.0, 1.0]))
    BOX_CALLS.clear()
    loaded = load_record(ImageRecord(image), SliceSettings(brain_extraction=BOX_BRAIN))
    assert BOX_CALLS == [SHAPE]
    assert loaded.foreground_source == "extraction" and loaded.is_brain_mask
    np.testing.assert_array_equal(loaded.foreground, _box_mask())
    assert (loaded.image[~_box_mask()] == 0.0).all()  # the skull and scalp are gone
    # the brain's own percentiles: its intensities span [0, 1] although the skull is five times brighter
    np.testing.assert_allclose(loaded.image, _expected_brain_normalised(volume, _box_mask()), atol=1e-5)
    assert loaded.image[_box_mask()].min() == 0.0 and loaded.image[_box_mask()].max() == pytest.approx(1.0)

    # without extraction: the whole head is normalised and nothing is stripped
    plain = load_record(ImageRecord(image), SliceSettings(brain_extraction="none"))
    assert plain.foreground_source == "computed" and not plain.is_brain_mask
    np.testing.assert_array_equal(plain.foreground, compute_foreground(plain.image))
    assert (plain.image[~_box_mask()] > 0).mean() > 0.9
    assert plain.image[_box_mask()].max() < 0.25  # the brain is dark next to the skull


def test_load_record_brain_mask_file_wins_over_extraction(tmp_path: Path) -> None:
    volume = _head_volume()
    affine = np.diag([10.0, 10.0, 10.0, 1.0])
    image = _write_volume(tmp_path / "head.nii.gz", volume, affine)
    given = np.zeros(SHAPE, np.uint8)
    given[2:18, 2:14, 1:8] = 1
    foreground = _write_volume(tmp_path / "brain_mask" / "good" / "head.nii.gz", given, affine)
    BOX_CALLS.clear()
    loaded = load_record(ImageRecord(image, foreground=foreground), SliceSettings(brain_extraction=BOX_BRAIN))
    assert BOX_CALLS == []  # never recomputed
    assert loaded.foreground_source == "file"
    np.testing.assert_array_equal(loaded.foreground, given > 0)
    np.testing.assert_allclose(loaded.image, _expected_brain_normalised(volume, given > 0), atol=1e-5)


EXTRACTION_MODE_CASES = [
    # "file" uses mask files alone: no file, no extraction, no foreground
    ("file", BOX_BRAIN, "none"),
    # a computed foreground never extracts
    ("compute", BOX_BRAIN, "computed"),
    # extraction off in the auto mode: computed
    ("auto", "none", "computed"),
    # no foreground at all
    ("none", BOX_BRAIN, "none"),
]
EXTRACTION_MODE_IDS = ["file-without-file", "compute", "auto-extraction-off", "none"]


@pytest.mark.parametrize(("mode", "method", "source"), EXTRACTION_MODE_CASES, ids=EXTRACTION_MODE_IDS)
def test_load_record_extracts_only_in_the_auto_mode(tmp_path: Path, mode: str, method: str, source: str) -> None:
    image = _write_volume(tmp_path / "head.nii.gz", _head_volume(), np.diag([10.0, 10.0, 10.0, 1.0]))
    BOX_CALLS.clear()
    loaded = load_record(ImageRecord(image), SliceSettings(foreground=mode, brain_extraction=method))
    assert BOX_CALLS == [] and loaded.foreground_source == source and not loaded.is_brain_mask
    assert (loaded.image[~_box_mask()] > 0).any()  # not stripped


def test_load_record_implausible_extraction_names_the_file(tmp_path: Path) -> None:
    # 2.4 mm^3 voxels: the 480-voxel box is about 1 ml of brain
    image = _write_volume(tmp_path / "head.nii.gz", _head_volume())
    with pytest.raises(ValueError) as info:
        load_record(ImageRecord(image), SliceSettings(brain_extraction=BOX_BRAIN))
    assert str(info.value).startswith(f"{image}: brain extraction found 1 ml of brain")
    assert len(str(info.value).splitlines()) == 1


# ----------------------------------------------------------------------------------------------------------------------
# min_brain_fraction

BRAIN_AREAS = (0, 10, 50, 100, 40)  # foreground voxels of each axial slice


def _foreground_with_areas(areas: tuple[int, ...] = BRAIN_AREAS) -> np.ndarray:
    foreground = np.zeros((10, 10, len(areas)), dtype=bool)
    for index, area in enumerate(areas):
        foreground[..., index].flat[:area] = True
    return foreground


MIN_BRAIN_CASES = [
    # slices with at least 25 voxels (a quarter of the largest, 100)
    ({"min_brain_fraction": 0.25}, [2, 3, 4]),
    # 0 keeps everything
    ({"min_brain_fraction": 0.0}, [0, 1, 2, 3, 4]),
    # just above the 10-voxel slice
    ({"min_brain_fraction": 0.11}, [2, 3, 4]),
    # exactly 10%: the 10-voxel slice is kept
    ({"min_brain_fraction": 0.1}, [1, 2, 3, 4]),
    # the largest slice only
    ({"min_brain_fraction": 0.99}, [3]),
    # the range first: the largest slice is still that of the whole volume
    ({"slice_range": (0, 3), "min_brain_fraction": 0.25}, [2]),
    # min_foreground (share of the 100-voxel slice) and then min_brain_fraction
    ({"min_foreground": 0.45, "min_brain_fraction": 0.25}, [2, 3]),
]
MIN_BRAIN_IDS = ["quarter", "zero", "0.11", "0.1-inclusive", "largest-only", "with-range", "with-min-foreground"]


@pytest.mark.parametrize(("kwargs", "expected"), MIN_BRAIN_CASES, ids=MIN_BRAIN_IDS)
def test_slice_indices_min_brain_fraction(kwargs: dict, expected: list[int]) -> None:
    assert slice_indices(_foreground_with_areas(), 2, SliceSettings(**kwargs)) == expected


def test_slice_indices_min_brain_fraction_follows_the_axis_and_empty_volumes() -> None:
    foreground = np.moveaxis(_foreground_with_areas(), 2, 0)
    assert slice_indices(foreground, 0, SliceSettings(axis=0, min_brain_fraction=0.25)) == [2, 3, 4]
    empty = np.zeros((10, 10, 5), dtype=bool)
    assert slice_indices(empty, 2, SliceSettings(min_brain_fraction=0.25)) == []


def test_select_slices_min_brain_fraction(tmp_path: Path) -> None:
    foreground = _foreground_with_areas()
    loaded = LoadedImage(
        ImageRecord(tmp_path / "v.nii.gz"), foreground.astype(np.float32), foreground, None, True, 2, "extraction"
    )
    assert select_slices(loaded, SliceSettings(min_brain_fraction=0.25)) == [2, 3, 4]
    flat = LoadedImage(ImageRecord(tmp_path / "s.png"), foreground[..., :1], foreground[..., :1], None, False, 2)
    assert select_slices(flat, SliceSettings(min_brain_fraction=0.99)) == [0]


BAD_BRAIN_SETTINGS_CASES = [
    # a fraction of 1 would keep the largest slice alone, at best
    ({"min_brain_fraction": 1.0}, "min_brain_fraction"),
    # negative fraction
    ({"min_brain_fraction": -0.1}, "min_brain_fraction"),
    # an unknown extractor name
    ({"brain_extraction": "bet"}, "brain_extraction"),
    # an empty name
    ({"brain_extraction": ""}, "brain_extraction"),
]
BAD_BRAIN_SETTINGS_IDS = ["fraction-1", "fraction-negative", "extraction-unknown", "extraction-empty"]


@pytest.mark.parametrize(("kwargs", "name"), BAD_BRAIN_SETTINGS_CASES, ids=BAD_BRAIN_SETTINGS_IDS)
def test_slice_settings_brain_validation(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SliceSettings(**kwargs)


def test_slice_settings_as_dict_holds_the_brain_settings() -> None:
    assert SliceSettings().as_dict()["brain_extraction"] == "deepbet"
    settings = SliceSettings(brain_extraction=BOX_BRAIN, min_brain_fraction=0.3)
    as_dict = settings.as_dict()
    assert as_dict["brain_extraction"] == BOX_BRAIN and as_dict["min_brain_fraction"] == 0.3
    assert SliceSettings(**as_dict).as_dict() == as_dict
