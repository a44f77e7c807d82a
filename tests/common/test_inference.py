"""Tests for common.inference: batch runs over folders with bad files, outputs on the input grid, scores CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from common.data import ImageRecord
from common.inference import AnomalyInference, find_brain_mask, list_input_files, output_stems, predict_volume
from common.scoring import Calibration, MapScorer
from common.volumes import LoadedImage, SliceSettings
from tests.comparisons import assert_maps_close, assert_masks_agree_off_threshold, assert_tables_close
from tests.stand_ins import threshold_brain

VOLUME_SHAPE = (12, 10, 6)
PNG_HW = (10, 14)  # rows, columns
CSV_HEADER = ["file", "slice", "slice_score", "volume_score", "slice_anomalous", "volume_anomalous", "scored"]
PIXEL_THRESHOLD, IMAGE_THRESHOLD = 0.4, 0.47

# ----------------------------------------------------------------------------------------------------------------------
# helpers


class DistanceFromHalf(nn.Module):
    """A 'detector' whose anomaly map is |x - 0.5|, with calibration thresholds like a trained bundle network."""

    def __init__(self) -> None:
        super().__init__()
        self.calibration = Calibration()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5).abs()


def _affine() -> np.ndarray:
    angle = 0.4
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[np.cos(angle), 0.0, np.sin(angle)], [0.0, 1.0, 0.0], [-np.sin(angle), 0.0, np.cos(angle)]]
    ) @ np.diag([0.9, 1.1, 3.0])
    affine[:3, 3] = [12.0, -7.0, 40.0]
    return affine


def _settings(**kwargs) -> SliceSettings:
    """Intensities 0..255 map linearly to [0, 1] and everything is foreground, so expected maps are easy to write."""
    defaults = {
        "axis": 2,
        "intensity": {"mode": "range", "a_min": 0.0, "a_max": 255.0},
        "foreground": "none",
        "brain_extraction": "none",
    }
    return SliceSettings(**(defaults | kwargs))


def _make_inputs(folder: Path) -> dict[str, np.ndarray]:
    """A corrupt NIfTI, a 4D NIfTI, a good 3D NIfTI and a good PNG, plus files inference must ignore."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    (folder / "corrupt.nii.gz").write_bytes(rng.bytes(600))
    nib.save(nib.Nifti1Image(rng.random((6, 5, 4, 3)).astype(np.float32), np.eye(4)), str(folder / "series.nii.gz"))
    volume = np.round(rng.random(VOLUME_SHAPE) * 255).astype(np.float32)
    image = nib.Nifti1Image(volume, _affine())
    image.header["descrip"] = b"inference input"
    nib.save(image, str(folder / "brain.nii.gz"))
    photo = rng.integers(0, 256, PNG_HW, dtype=np.uint8)
    Image.fromarray(photo).save(folder / "photo.png")
    # ignored: masks next to the images, hidden files and non-image files
    (folder / "ground_truth" / "tumor").mkdir(parents=True)
    nib.save(
        nib.Nifti1Image(np.zeros(VOLUME_SHAPE, np.uint8), np.eye(4)),
        str(folder / "ground_truth" / "tumor" / "brain.nii.gz"),
    )
    (folder / "brain_mask").mkdir()
    Image.fromarray(np.zeros(PNG_HW, np.uint8)).save(folder / "brain_mask" / "photo.png")
    (folder / ".hidden.png").write_bytes(b"not an image")
    (folder / "README.txt").write_text("notes")
    return {"brain": volume, "photo": photo.T.astype(np.float32)}  # MONAI order (W, H) for the PNG


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def _run(tmp_path: Path, calibrated: bool = True, **settings):
    inputs = tmp_path / "in"
    arrays = _make_inputs(inputs)
    network = DistanceFromHalf()
    if calibrated:
        network.calibration.set_thresholds(PIXEL_THRESHOLD, IMAGE_THRESHOLD)
    before = _snapshot(inputs)
    runner = AnomalyInference(network, inputs, tmp_path / "out", _settings(**settings), MapScorer("max"), device="cpu")
    summary = runner.run()
    return inputs, tmp_path / "out", arrays, before, summary


# ----------------------------------------------------------------------------------------------------------------------
# AnomalyInference.run


def test_run_writes_maps_on_the_input_grid(tmp_path: Path) -> None:
    inputs, out, arrays, _, summary = _run(tmp_path, slice_range=(1, 5))
    expected_files = ["brain_anomaly.nii.gz", "brain_mask.nii.gz", "photo_anomaly.nii.gz", "photo_mask.nii.gz"]
    assert sorted(p.name for p in summary.written) == expected_files
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected_files, "scores.csv", "failed.csv"])

    source = nib.load(str(inputs / "brain.nii.gz"))
    anomaly = nib.load(str(out / "brain_anomaly.nii.gz"))
    assert anomaly.shape == VOLUME_SHAPE
    np.testing.assert_allclose(anomaly.affine, source.affine)
    assert anomaly.get_data_dtype() == np.float32
    expected_map = np.abs(arrays["brain"] / 255.0 - 0.5)
    expected_map[..., [0, 5]] = 0.0  # slices outside the slice range are not scored: map 0
    np.testing.assert_allclose(anomaly.get_fdata(), expected_map, atol=1e-6)
    mask = nib.load(str(out / "brain_mask.nii.gz"))
    assert mask.shape == VOLUME_SHAPE
    np.testing.assert_allclose(mask.affine, source.affine)
    np.testing.assert_array_equal(mask.get_fdata() > 0, anomaly.get_fdata(dtype=np.float32) > PIXEL_THRESHOLD)

    photo = nib.load(str(out / "photo_anomaly.nii.gz"))
    assert photo.shape == PNG_HW[::-1]
    np.testing.assert_allclose(photo.affine, np.eye(4))
    np.testing.assert_allclose(photo.get_fdata(), np.abs(arrays["photo"] / 255.0 - 0.5), atol=1e-6)


def test_run_writes_scores_csv_for_selected_slices(tmp_path: Path) -> None:
    inputs, out, arrays, _, summary = _run(tmp_path, slice_range=(1, 5))
    rows = _read_csv(out / "scores.csv")
    assert rows[0] == CSV_HEADER
    body = rows[1:]
    assert len(body) == len(summary.rows) == 6 + 1  # every slice of the volume, one row for the PNG

    all_brain_rows = [r for r in body if r[0] == str(inputs / "brain.nii.gz")]
    assert [int(r[1]) for r in all_brain_rows] == list(range(6))
    not_scored = [r for r in all_brain_rows if r[6] == "0"]
    assert [int(r[1]) for r in not_scored] == [0, 5]
    assert all(r[2] == "" and r[4] == "" and r[3] != "" for r in not_scored)
    brain_rows = [r for r in all_brain_rows if r[6] == "1"]
    assert [int(r[1]) for r in brain_rows] == [1, 2, 3, 4]
    slice_scores = np.abs(arrays["brain"] / 255.0 - 0.5).max(axis=(0, 1))
    volume = slice_scores[1:5].max()
    for row in brain_rows:
        index = int(row[1])
        assert float(row[2]) == pytest.approx(slice_scores[index], rel=1e-5)
        assert float(row[3]) == pytest.approx(volume, rel=1e-5)
        assert row[4] == str(int(slice_scores[index] > IMAGE_THRESHOLD))
        assert row[5] == str(int(volume > IMAGE_THRESHOLD))

    (photo_row,) = [r for r in body if r[0] == str(inputs / "photo.png")]
    photo_score = np.abs(arrays["photo"] / 255.0 - 0.5).max()
    assert photo_row[1] == ""
    assert float(photo_row[2]) == pytest.approx(photo_score, rel=1e-5)
    assert float(photo_row[3]) == pytest.approx(photo_score, rel=1e-5)
    assert photo_row[6] == "1"


def test_run_reports_bad_files_and_completes(tmp_path: Path) -> None:
    inputs, out, _, _, summary = _run(tmp_path)
    failed = dict(summary.failed)
    assert sorted(failed) == [str(inputs / "corrupt.nii.gz"), str(inputs / "series.nii.gz")]
    corrupt_message = failed[str(inputs / "corrupt.nii.gz")]
    assert corrupt_message.startswith(str(inputs / "corrupt.nii.gz"))
    assert "cannot be read" in corrupt_message
    series_message = failed[str(inputs / "series.nii.gz")]
    assert series_message.startswith(str(inputs / "series.nii.gz"))
    assert "expected a 2D image or a 3D volume" in series_message and "(6, 5, 4, 3)" in series_message
    rows = _read_csv(out / "failed.csv")
    assert rows[0] == ["file", "error"]
    assert sorted(tuple(r) for r in rows[1:]) == sorted(summary.failed)
    # no output for the bad files
    assert not list(out.glob("corrupt*")) and not list(out.glob("series*"))


def test_run_leaves_inputs_unchanged_and_no_temporary_files(tmp_path: Path) -> None:
    inputs, out, _, before, summary = _run(tmp_path)
    assert _snapshot(inputs) == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    # ignored files were neither processed nor reported
    processed = {r[0] for r in summary.rows} | {f for f, _ in summary.failed}
    assert all("ground_truth" not in p and "brain_mask" not in p and ".hidden" not in p for p in processed)
    assert len(processed) == 4


def test_run_without_calibration_writes_no_masks(tmp_path: Path) -> None:
    _, out, _, _, summary = _run(tmp_path, calibrated=False)
    assert sorted(p.name for p in summary.written) == ["brain_anomaly.nii.gz", "photo_anomaly.nii.gz"]
    assert not list(out.glob("*_mask.nii.gz"))
    rows = _read_csv(out / "scores.csv")[1:]
    assert len(rows) == VOLUME_SHAPE[2] + 1
    assert all(r[4] == "" and r[5] == "" for r in rows)


def test_run_duplicate_stems_get_distinct_outputs(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    for site in ("site_a", "site_b"):
        (inputs / site).mkdir(parents=True)
        Image.fromarray(np.full(PNG_HW, 40 if site == "site_a" else 200, np.uint8)).save(inputs / site / "scan.png")
    summary = AnomalyInference(DistanceFromHalf(), inputs, tmp_path / "out", _settings(), MapScorer()).run()
    assert sorted(p.name for p in summary.written) == ["site_a_scan_anomaly.nii.gz", "site_b_scan_anomaly.nii.gz"]
    a = nib.load(str(tmp_path / "out" / "site_a_scan_anomaly.nii.gz")).get_fdata()
    np.testing.assert_allclose(a, abs(40 / 255 - 0.5), atol=1e-6)


def test_run_same_stem_different_suffix_gets_distinct_outputs(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.zeros(PNG_HW, np.uint8)).save(inputs / "scan.png")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), str(inputs / "scan.nii.gz"))
    summary = AnomalyInference(DistanceFromHalf(), inputs, tmp_path / "out", _settings(), MapScorer()).run()
    assert summary.failed == []
    assert len(set(summary.written)) == 2


def test_run_on_empty_folder_writes_empty_scores(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    summary = AnomalyInference(DistanceFromHalf(), tmp_path / "in", tmp_path / "out", _settings(), MapScorer()).run()
    assert summary.written == [] and summary.failed == []
    assert _read_csv(tmp_path / "out" / "scores.csv") == [CSV_HEADER]
    assert not (tmp_path / "out" / "failed.csv").exists()


def test_invalid_volume_method_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="median"):
        AnomalyInference(
            DistanceFromHalf(), tmp_path, tmp_path / "out", _settings(), MapScorer(), volume_method="median"
        )


# ----------------------------------------------------------------------------------------------------------------------
# list_input_files


def test_list_input_files_skips_mask_folders_hidden_and_other_files(tmp_path: Path) -> None:
    _make_inputs(tmp_path / "in")
    nested = tmp_path / "in" / "patient_1"
    nested.mkdir()
    (nested / "t1.nii").write_bytes(b"")
    (tmp_path / "in" / ".cache").mkdir()
    (tmp_path / "in" / ".cache" / "x.png").write_bytes(b"")
    names = [str(p.relative_to(tmp_path / "in")) for p in list_input_files(tmp_path / "in")]
    assert names == ["brain.nii.gz", "corrupt.nii.gz", "patient_1/t1.nii", "photo.png", "series.nii.gz"]


def test_list_input_files_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        list_input_files(tmp_path / "missing")
    assert str(info.value).startswith(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------------------------------------------------
# predict_volume

PREDICT_CASES = [
    # slices along the first axis
    0,
    # slices along the second axis
    1,
    # axial slices
    2,
]
PREDICT_IDS = ["axis0", "axis1", "axis2"]


@pytest.mark.parametrize("axis", PREDICT_CASES, ids=PREDICT_IDS)
def test_predict_volume_maps_and_slice_scores(axis: int) -> None:
    rng = np.random.default_rng(axis)
    image = rng.random(VOLUME_SHAPE).astype(np.float32)
    foreground = np.zeros(VOLUME_SHAPE, bool)
    foreground[2:10, 1:8, 1:5] = True
    loaded = LoadedImage(ImageRecord(Path("v.nii.gz")), image, foreground, None, True, axis)
    maps, scores = predict_volume(DistanceFromHalf().eval(), loaded, MapScorer("max"), "cpu", sw_batch_size=3)
    assert maps.shape == VOLUME_SHAPE
    assert scores.shape == (VOLUME_SHAPE[axis],)
    expected = np.abs(image - 0.5) * foreground
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    others = tuple(a for a in range(3) if a != axis)
    assert not foreground.any(axis=others).all()  # some slices have no foreground
    # maps are zero outside the foreground, so slices without foreground score 0 and the others their foreground max
    np.testing.assert_allclose(scores, expected.max(axis=others), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# extra outputs (forward_outputs protocol)


class WithExtras(DistanceFromHalf):
    """Anomaly map |x - 0.5| plus named extra images: ``healthy`` = 1 - x, and a two-channel ``pair`` (x, 2x)."""

    def __init__(self, outputs: tuple[str, ...] = ("healthy",)) -> None:
        super().__init__()
        self.outputs = outputs

    def forward_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        values = {"anomaly": self(x), "healthy": 1.0 - x, "pair": torch.cat([x, 2 * x], dim=1), "mask": x}
        return {name: values[name] for name in ("anomaly", *self.outputs)}


def _run_extras(tmp_path: Path, network: nn.Module, **kwargs):
    inputs = tmp_path / "in"
    arrays = _make_inputs(inputs)
    network.calibration.set_thresholds(PIXEL_THRESHOLD, IMAGE_THRESHOLD)
    runner = AnomalyInference(
        network, inputs, tmp_path / "out", _settings(), MapScorer("max"), device="cpu", sw_batch_size=4, **kwargs
    )
    return inputs, tmp_path / "out", arrays, runner.run()


def test_extra_outputs_are_written_on_the_input_grid(tmp_path: Path) -> None:
    inputs, out, arrays, summary = _run_extras(tmp_path, WithExtras(("healthy", "pair")))
    names = sorted(p.name for p in summary.written)
    assert names == sorted(
        f"{stem}_{suffix}.nii.gz"
        for stem in ("brain", "photo")
        for suffix in ("anomaly", "mask", "healthy", "pair_c0", "pair_c1")
    )
    source = nib.load(str(inputs / "brain.nii.gz"))
    healthy = nib.load(str(out / "brain_healthy.nii.gz"))
    assert healthy.shape == VOLUME_SHAPE
    np.testing.assert_allclose(healthy.affine, source.affine)
    np.testing.assert_allclose(healthy.get_fdata(), 1.0 - arrays["brain"] / 255.0, atol=1e-6)
    np.testing.assert_allclose(nib.load(str(out / "brain_pair_c1.nii.gz")).get_fdata(), 2 * arrays["brain"] / 255.0)
    photo = nib.load(str(out / "photo_healthy.nii.gz"))
    assert photo.shape == PNG_HW[::-1]
    np.testing.assert_allclose(photo.get_fdata(), 1.0 - arrays["photo"] / 255.0, atol=1e-6)
    # the anomaly map and the scores are those of the plain forward pass
    np.testing.assert_allclose(
        nib.load(str(out / "brain_anomaly.nii.gz")).get_fdata(), np.abs(arrays["brain"] / 255.0 - 0.5), atol=1e-6
    )


def test_extra_outputs_can_be_switched_off(tmp_path: Path) -> None:
    _, out, _, summary = _run_extras(tmp_path, WithExtras(), write_extra_outputs=False)
    assert sorted(p.name for p in summary.written) == [
        "brain_anomaly.nii.gz",
        "brain_mask.nii.gz",
        "photo_anomaly.nii.gz",
        "photo_mask.nii.gz",
    ]


def test_reserved_extra_output_name_fails_the_file_with_a_message(tmp_path: Path) -> None:
    _, _, _, summary = _run_extras(tmp_path, WithExtras(("mask",)))
    failed = dict(summary.failed)
    assert any(path.endswith("brain.nii.gz") for path in failed)
    assert all("reserved" in message for path, message in failed.items() if path.endswith(("brain.nii.gz", ".png")))


def test_predict_volume_ignores_extra_outputs() -> None:
    image = np.random.default_rng(0).random(VOLUME_SHAPE).astype(np.float32)
    loaded = LoadedImage(ImageRecord(Path("v.nii.gz")), image, np.ones(VOLUME_SHAPE, bool), None, True, 2)
    maps, scores = predict_volume(WithExtras().eval(), loaded, MapScorer("max"), "cpu")
    np.testing.assert_allclose(maps, np.abs(image - 0.5), atol=1e-6)
    assert scores.shape == (VOLUME_SHAPE[2],)


SETTINGS_MISMATCH_CASES = [
    # a checkpoint written before a settings key existed: the shared keys match, nothing to report
    ({"drop": "foreground_min_component"}, None),
    # a real difference is reported with the key's two values
    ({"set": {"min_foreground": 0.2}}, "min_foreground"),
    # trained on extracted brains, run without extraction (or the other way round)
    ({"set": {"brain_extraction": "deepbet"}}, "brain_extraction"),
    # a checkpoint from before brain extraction existed
    ({"drop": "brain_extraction"}, None),
]
SETTINGS_MISMATCH_IDS = ["older-checkpoint", "changed-key", "brain-extraction", "before-brain-extraction"]


@pytest.mark.parametrize(("change", "reported"), SETTINGS_MISMATCH_CASES, ids=SETTINGS_MISMATCH_IDS)
def test_prepare_reports_settings_that_differ_from_training(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: dict, reported: str | None
) -> None:
    settings = _settings()
    trained = settings.as_dict()
    trained.pop(change.get("drop", ""), None)
    trained.update(change.get("set", {}))
    network = DistanceFromHalf()
    network.calibration.set_thresholds(PIXEL_THRESHOLD, IMAGE_THRESHOLD, preprocessing={"slices": trained})
    runner = AnomalyInference(network, tmp_path, tmp_path / "out", settings, MapScorer())
    with caplog.at_level("WARNING", logger="common.inference"):
        runner.prepare()
    warnings = [r.getMessage() for r in caplog.records if "differ from training" in r.getMessage()]
    if reported is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and reported in warnings[0]
        assert repr(trained[reported]) in warnings[0] and repr(getattr(settings, reported)) in warnings[0]


# ----------------------------------------------------------------------------------------------------------------------
# brain masks: found beside the inputs, extracted, written, and implausible extractions reported

FIND_BRAIN_MASK_ROOTS = ["data", "data/test", "data/test/lesion"]


@pytest.mark.parametrize("root", FIND_BRAIN_MASK_ROOTS)
def test_find_brain_mask_follows_the_dataset_layout(tmp_path: Path, root: str) -> None:
    image = tmp_path / "data" / "test" / "lesion" / "s1.nii.gz"
    mask = tmp_path / "data" / "brain_mask" / "lesion" / "s1.nii.gz"
    for path in (image, mask):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert find_brain_mask(image, tmp_path / root) == mask
    assert find_brain_mask(image.with_name("s2.nii.gz"), tmp_path / root) is None


def test_find_brain_mask_beside_a_plain_folder(tmp_path: Path) -> None:
    (tmp_path / "scans" / "brain_mask").mkdir(parents=True)
    (tmp_path / "scans" / "brain_mask" / "a.nii.gz").write_bytes(b"")
    assert find_brain_mask(tmp_path / "scans" / "a.nii.gz", tmp_path / "scans") == (
        tmp_path / "scans" / "brain_mask" / "a.nii.gz"
    )


def _head(voxel_mm: float) -> nib.Nifti1Image:
    """A bright ellipsoid 'brain' in a dim 'head' in air, 24x24x12 voxels of ``voxel_mm``."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (24, 24, 12)), indexing="ij")
    radius = x**2 + y**2 + z**2
    volume = np.where(radius < 0.5, 200.0, np.where(radius < 0.9, 60.0, 0.0)).astype(np.float32)
    volume += np.random.default_rng(1).normal(0.0, 2.0, volume.shape).astype(np.float32)
    return nib.Nifti1Image(volume, np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0]))


def test_run_extracts_writes_brain_masks_and_reports_implausible_brains(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(_head(10.0), inputs / "head.nii.gz")
    nib.save(_head(1.0), inputs / "tiny.nii.gz")  # the same head at 1 mm: a brain of a few ml
    network = DistanceFromHalf()
    network.calibration.set_thresholds(PIXEL_THRESHOLD, IMAGE_THRESHOLD)
    settings = _settings(foreground="auto", brain_extraction="tests.stand_ins:threshold_brain", min_brain_fraction=0.5)
    before = _snapshot(inputs)
    summary = AnomalyInference(network, inputs, tmp_path / "out", settings, MapScorer("max")).run()

    (failed,) = summary.failed
    assert failed[0] == str(inputs / "tiny.nii.gz")
    assert failed[1].startswith(str(inputs / "tiny.nii.gz")) and "ml of brain" in failed[1]
    assert "\n" not in failed[1]
    assert not list((tmp_path / "out").glob("tiny*"))
    brain = nib.load(tmp_path / "out" / "head_brain_mask.nii.gz")
    np.testing.assert_allclose(brain.affine, np.diag([10.0, 10.0, 10.0, 1.0]))
    inside = np.asarray(brain.dataobj) > 0
    expected = threshold_brain(np.asarray(_head(10.0).dataobj), np.eye(4))
    np.testing.assert_array_equal(inside, expected)
    maps = nib.load(tmp_path / "out" / "head_anomaly.nii.gz").get_fdata()
    assert not maps[~inside].any()
    # slices with under half the largest brain slice's area: map 0 and no score
    areas = inside.sum(axis=(0, 1))
    dropped = np.flatnonzero(areas < 0.5 * areas.max())
    assert dropped.size and not maps[..., dropped].any()
    rows = [r for r in _read_csv(tmp_path / "out" / "scores.csv")[1:] if r[0].endswith("head.nii.gz")]
    assert sorted(int(r[1]) for r in rows if r[6] == "0") == dropped.tolist()
    assert _snapshot(inputs) == before


# ----------------------------------------------------------------------------------------------------------------------
# batching across files, loader threads and the writer thread


class LocalFilter(nn.Module):
    """A per-sample convolution, so a batch-size or batch-composition error would change the maps."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.calibration = Calibration()
        self.calibration.set_thresholds(0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


def _folder_of_volumes(folder: Path) -> None:
    _make_inputs(folder)
    rng = np.random.default_rng(1)
    for k, depth in enumerate((3, 9, 1, 6)):
        shape = (*VOLUME_SHAPE[:2], depth)
        nib.save(
            nib.Nifti1Image(np.round(rng.random(shape) * 255).astype(np.float32), _affine()), str(folder / f"v{k}.nii")
        )


def test_batching_across_files_gives_the_outputs_of_one_slice_at_a_time(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    _folder_of_volumes(inputs)
    runs = {}
    for name, options in {
        "one": {"sw_batch_size": 1, "loader_workers": 1},
        "many": {"sw_batch_size": 16, "loader_workers": 3, "prefetch": 2},
    }.items():
        out = tmp_path / name
        AnomalyInference(LocalFilter(), inputs, out, _settings(), MapScorer("max"), device="cpu", **options).run()
        runs[name] = out
    # another batch size may pick other kernels (e.g. with oneDNN off): scores agree to the maps' tolerance
    assert_tables_close(_read_csv(runs["many"] / "scores.csv"), _read_csv(runs["one"] / "scores.csv"))
    assert _read_csv(runs["one"] / "failed.csv") == _read_csv(runs["many"] / "failed.csv")
    names = sorted(p.name for p in runs["one"].glob("*.nii.gz"))
    assert names == sorted(p.name for p in runs["many"].glob("*.nii.gz"))
    assert {"v0_anomaly.nii.gz", "v3_anomaly.nii.gz", "brain_anomaly.nii.gz", "photo_anomaly.nii.gz"} <= set(names)
    for name in names:
        one = nib.load(str(runs["one"] / name)).get_fdata()
        many = nib.load(str(runs["many"] / name)).get_fdata()
        if name.endswith("_anomaly.nii.gz"):
            assert_maps_close(many, one)
        else:  # a mask: it may differ only where the map lies at the pixel threshold
            score_map = nib.load(str(runs["one"] / name.replace("_mask.nii.gz", "_anomaly.nii.gz"))).get_fdata()
            assert_masks_agree_off_threshold(many, one, score_map, float(LocalFilter().calibration.pixel_threshold))


def test_a_file_whose_output_cannot_be_written_is_reported_and_the_rest_complete(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    _folder_of_volumes(inputs)
    out = tmp_path / "out"
    (out / "v1_anomaly.nii.gz").mkdir(parents=True)  # a folder where the map should go
    summary = AnomalyInference(
        LocalFilter(), inputs, out, _settings(), MapScorer("max"), device="cpu", sw_batch_size=8
    ).run()
    failed = dict(summary.failed)
    assert str(inputs / "v1.nii") in failed and failed[str(inputs / "v1.nii")].startswith(str(inputs / "v1.nii"))
    assert (out / "v2_anomaly.nii.gz").is_file() and (out / "v3_anomaly.nii.gz").is_file()
    scored = {row[0] for row in _read_csv(out / "scores.csv")[1:]}
    assert str(inputs / "v1.nii") not in scored and str(inputs / "v2.nii") in scored


@pytest.mark.parametrize(("option", "value"), [("loader_workers", 0), ("prefetch", 0)])
def test_loader_options_must_be_positive(tmp_path: Path, option: str, value: int) -> None:
    with pytest.raises(ValueError, match=option):
        AnomalyInference(LocalFilter(), tmp_path, tmp_path / "out", _settings(), MapScorer("max"), **{option: value})


def test_output_stems_keep_unique_stems_and_disambiguate_clashes(tmp_path):
    files = [
        tmp_path / "good" / "000.png",
        tmp_path / "crack" / "000.png",
        tmp_path / "x.nii",
        tmp_path / "x.nii.gz",
        tmp_path / "only.png",
    ]
    assert output_stems(files, tmp_path) == ["good_000", "crack_000", "x_nii", "x_nii_gz", "only"]
    assert output_stems([tmp_path / "a.png", tmp_path / "b" / "a.png"], tmp_path) == ["a", "b_a"]
