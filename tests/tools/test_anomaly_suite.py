"""Tests for tools/anomaly_suite.py: the anomaly suite's layout, splits, masks, bad inputs, and the yardstick on IXI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from tests.tools.test_anatomy_lesions import _head, _save
from tools.anatomy_lesions import write_anatomy_dataset
from tools.anomaly_kinds import KINDS
from tools.anomaly_suite import main, write_anomaly_suite

IXI_T1 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ixi_t1"
SHAPE = (64, 64, 48)  # 2 mm voxels: a brain about 45 mm deep, room for every kind's default ranges
NAMES = [f"S{i:02d}_T1.nii.gz" for i in range(6)]
SLOPE = 2.5
INTENSITY_KINDS = ("hyperintense", "hypointense", "texture", "foreign")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("source")
    for index, name in enumerate(NAMES):
        volume, brain = _head(index, SHAPE)
        _save(volume, root / "train" / "good" / name, slope=SLOPE)
        _save(brain.astype(np.uint8), root / "brain_mask" / "good" / name)
    return root


@pytest.fixture(scope="module")
def suite(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("suite")
    return out, write_anomaly_suite(source, out, n_train=2, seed=0)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def test_layout_and_splits_by_subject(source: Path, suite: tuple[Path, object]) -> None:
    out, summary = suite
    assert summary.skipped == [] and summary.extracted == []
    assert (len(summary.train), len(summary.test_good), len(summary.anomalous)) == (2, 2, 2)
    assert sorted(summary.train + summary.test_good + summary.anomalous) == NAMES  # each subject in one split
    assert _names(out / "train" / "good") == summary.train
    assert _names(out / "test" / "good") == summary.test_good
    assert _names(out / "brain_mask" / "good") == sorted(summary.train + summary.test_good)
    assert sorted(p.name for p in (out / "test").iterdir()) == sorted(["good", *KINDS])
    for kind in KINDS:
        assert summary.written[kind] == summary.anomalous
        for folder in ("test", "ground_truth", "brain_mask"):
            assert _names(out / folder / kind) == summary.anomalous, (folder, kind)
    for name in summary.train + summary.test_good:  # healthy heads untouched
        folder = "train" if name in summary.train else "test"
        assert (out / folder / "good" / name).read_bytes() == (source / "train" / "good" / name).read_bytes()
    assert not [p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".nii.gz")]  # no temporary file


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_inside_the_brain_with_its_mask(source: Path, suite: tuple[Path, object], kind: str) -> None:
    out, summary = suite
    for name in summary.anomalous:
        original = nib.load(source / "train" / "good" / name)
        anomalous = nib.load(out / "test" / kind / name)
        np.testing.assert_array_equal(anomalous.affine, original.affine)
        assert anomalous.dataobj.slope == pytest.approx(SLOPE) and anomalous.get_data_dtype() == np.uint8
        brain = _data(source / "brain_mask" / "good" / name) > 0
        assert (out / "brain_mask" / kind / name).read_bytes() == (source / "brain_mask" / "good" / name).read_bytes()
        mask = _data(out / "ground_truth" / kind / name)
        assert set(np.unique(mask)) == {0, 1}
        mask = mask > 0
        changed = original.get_fdata() != anomalous.get_fdata()
        assert mask.sum() >= 20 and not (mask & ~brain).any() and not (changed & ~brain).any()
        if kind in INTENSITY_KINDS:
            assert not (changed & ~mask).any()  # outside the mask nothing changed


def test_reproducible_and_hyperintense_matches_the_anatomy_dataset(source: Path, suite, tmp_path: Path) -> None:
    out, summary = suite
    again = write_anomaly_suite(source, tmp_path / "again", n_train=2, seed=0, kinds=["texture", "hyperintense"])
    assert again.anomalous == summary.anomalous
    for kind in ("texture", "hyperintense"):
        for name in summary.anomalous:
            for folder in ("test", "ground_truth"):
                assert (tmp_path / "again" / folder / kind / name).read_bytes() == (
                    out / folder / kind / name
                ).read_bytes()
    other = write_anomaly_suite(source, tmp_path / "other", n_train=2, seed=0, kinds=["texture"])
    assert other.anomalous == summary.anomalous  # same split: the kinds do not change it
    lesions = write_anatomy_dataset(source, tmp_path / "lesions", n_train=2, seed=0)
    assert lesions["test_lesion"] == summary.anomalous
    for name in summary.anomalous:  # the hyperintense kind is the anatomy dataset's lesions
        assert (tmp_path / "lesions" / "test" / "lesion" / name).read_bytes() == (
            out / "test" / "hyperintense" / name
        ).read_bytes()


def test_bad_parameters_and_unplaceable_anomalies_skip_one_head_and_kind(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [str(source), str(out), "--n-train", "2", "--kinds", "texture", "deformation", "foreign"]
    status = main([*argv, "--set", "texture.noise=[0.5,0.2]", "--set", "deformation.radius_mm=[200,300]"])
    assert status == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 4  # 2 kinds x 2 anomalous heads, one line each, as they happen
    anomalous = _names(out / "test" / "foreign")
    assert len(anomalous) == 2
    for name in anomalous:
        assert any(name in line and "[texture]: noise: expected finite min <= max" in line for line in lines)
        assert any(
            name in line and "[deformation]: the anomaly does not fit inside the brain" in line for line in lines
        )
    assert "skipped 4:" in captured.out and "test/foreign: 2 files" in captured.out
    assert _names(out / "test" / "texture") == [] and _names(out / "ground_truth" / "deformation") == []


def test_a_head_without_brain_mask_is_extracted_or_skipped(source: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    for name in NAMES:
        (partial / "train" / "good").mkdir(parents=True, exist_ok=True)
        (partial / "train" / "good" / name).write_bytes((source / "train" / "good" / name).read_bytes())
        if name != NAMES[3]:
            (partial / "brain_mask" / "good").mkdir(parents=True, exist_ok=True)
            (partial / "brain_mask" / "good" / name).write_bytes((source / "brain_mask" / "good" / name).read_bytes())
    skipped = write_anomaly_suite(partial, tmp_path / "off", n_train=2, kinds=["hypointense"], brain_extraction="none")
    assert len(skipped.skipped) == 1 and skipped.skipped[0].startswith(str(partial / "train" / "good" / NAMES[3]))
    assert "brain extraction is off" in skipped.skipped[0]
    assert NAMES[3] not in skipped.train + skipped.test_good + skipped.written["hypointense"]

    out = tmp_path / "extracted"
    summary = write_anomaly_suite(
        partial, out, n_train=2, kinds=["hypointense"], brain_extraction="tests.stand_ins:threshold_brain"
    )
    assert summary.skipped == [] and summary.extracted == [NAMES[3]]
    folder = "good" if NAMES[3] in summary.train + summary.test_good else "hypointense"
    extracted = _data(out / "brain_mask" / folder / NAMES[3]) > 0
    assert extracted.sum() > (_data(source / "brain_mask" / "good" / NAMES[3]) > 0).sum()  # the stand-in: whole head
    if folder == "hypointense":
        assert not ((_data(out / "ground_truth" / folder / NAMES[3]) > 0) & ~extracted).any()


def test_command_line_errors_are_one_line(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for extra, text in (
        (["--kinds", "sparkle"], "unknown anomaly kind 'sparkle'"),
        (["--set", "texture.sharpness=[1,2]"], "texture: unknown parameter 'sharpness'"),
        (["--set", "noise=[1,2]"], "expected KIND.PARAMETER=VALUE"),
        (["--n-train", "5"], "leaves 1 of the 6 subjects"),
    ):
        assert main([str(source), str(tmp_path / "bad"), *extra]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("python -m tools.anomaly_suite: error: ") and text in error[0]
    assert not (tmp_path / "bad").exists()
    write_anomaly_suite(source, tmp_path / "used", n_train=2, seed=0, kinds=["texture"])
    with pytest.raises(ValueError, match="two splits"):
        write_anomaly_suite(source, tmp_path / "used", n_train=3, seed=0, kinds=["texture"])


# --- the yardstick on the IXI suite ------------------------------------------------------------------------------

YARDSTICK_SIGMA = 1.5
"""In-plane Gaussian width (pixels) of the yardstick's smoothing."""
BRAIN_SLICE_FRACTION = 0.5
"""Brain slices: axial slices whose brain area is at least this share of the volume's largest brain slice.

Chosen on the development heads (the training split), where with a share of 0.25 unmodified heads scored at the
slices of their (not implanted) anomalies already reached a bright AUROC of 0.65-0.75 against normal heads: anomalies
sit deep in the brain, in middle slices, whose maximum intensity is higher than that of the small top and bottom
slices. Half the largest slice keeps the comparison among middle slices (0.59-0.70 for the same control).
"""
POLARITIES = ("bright", "dark", "both")


def yardstick_slice_scores(volume: np.ndarray, brain: np.ndarray, polarity: str) -> np.ndarray:
    """Intensity-threshold scores of every axial slice (axis 2) of a volume.

    Per volume, the intensity is standardised by the brain's median and interquartile range, set to zero outside the
    brain, smoothed in-plane with a Gaussian and set to zero outside the brain again; a slice scores the maximum of
    ``+z`` (bright), ``-z`` (dark) or ``|z|`` (both) over its pixels.
    """
    values = volume.astype(np.float32)
    inside = values[brain]
    q1, median, q3 = np.percentile(inside, [25.0, 50.0, 75.0])
    z = (values - median) / max(float(q3 - q1), 1e-6)
    z[~brain] = 0.0
    z = ndimage.gaussian_filter(z, (YARDSTICK_SIGMA, YARDSTICK_SIGMA, 0.0))
    z[~brain] = 0.0
    signed = {"bright": z, "dark": -z, "both": np.abs(z)}[polarity]
    return signed.max(axis=(0, 1))


def brain_slices(brain: np.ndarray) -> np.ndarray:
    area = brain.sum(axis=(0, 1))
    return area >= BRAIN_SLICE_FRACTION * area.max()


def yardstick_auroc(root: Path, kind: str, polarity: str) -> float:
    """Image AUROC of the yardstick: brain slices of the normal test heads against the anomalous slices of a kind."""
    negatives, positives = [], []
    for path in sorted((root / "test" / "good").iterdir()):
        brain = _data(root / "brain_mask" / "good" / path.name) > 0
        negatives.append(yardstick_slice_scores(nib.load(path).get_fdata(), brain, polarity)[brain_slices(brain)])
    for path in sorted((root / "test" / kind).iterdir()):
        brain = _data(root / "brain_mask" / kind / path.name) > 0
        anomalous = (_data(root / "ground_truth" / kind / path.name) > 0).any(axis=(0, 1)) & brain_slices(brain)
        positives.append(yardstick_slice_scores(nib.load(path).get_fdata(), brain, polarity)[anomalous])
    scores = np.concatenate(negatives + positives)
    labels = np.r_[np.zeros(sum(map(len, negatives))), np.ones(sum(map(len, positives)))]
    return float(roc_auc_score(labels, scores))


@pytest.fixture(scope="module")
def ixi_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not IXI_T1.is_dir():
        pytest.skip(f"{IXI_T1} is absent (development data lives beside the repository)")
    out = tmp_path_factory.mktemp("ixi") / "suite"
    assert main([str(IXI_T1), str(out), "--n-train", "16", "--seed", "0"]) == 0
    return out


@pytest.mark.realdata
@pytest.mark.slow
def test_ixi_suite_builds_with_one_command(ixi_suite: Path) -> None:
    assert len(_names(ixi_suite / "train" / "good")) == 16 and len(_names(ixi_suite / "test" / "good")) == 4
    anomalous = _names(ixi_suite / "test" / "hyperintense")
    assert len(anomalous) == 4 and not set(anomalous) & set(_names(ixi_suite / "test" / "good"))
    for kind in KINDS:
        assert _names(ixi_suite / "test" / kind) == _names(ixi_suite / "ground_truth" / kind) == anomalous
        for name in anomalous:
            brain = _data(ixi_suite / "brain_mask" / kind / name) > 0
            mask = _data(ixi_suite / "ground_truth" / kind / name) > 0
            assert mask.sum() >= 50 and not (mask & ~brain).any()


@pytest.mark.realdata
@pytest.mark.slow
def test_yardstick_cannot_find_texture_or_deformation_but_finds_hyperintense(ixi_suite: Path) -> None:
    auroc = {(kind, p): yardstick_auroc(ixi_suite, kind, p) for kind in KINDS for p in POLARITIES}
    print({f"{kind}/{p}": round(value, 3) for (kind, p), value in auroc.items()})
    for kind in ("texture", "deformation"):
        for polarity in POLARITIES:
            assert auroc[kind, polarity] < 0.75, (kind, polarity, auroc[kind, polarity])
    assert auroc["hyperintense", "bright"] > 0.85
