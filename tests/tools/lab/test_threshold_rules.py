"""Tests for tools/lab/threshold_rules.py: leave-one-subject-out comparison of pixel-threshold rules on lesion twins."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.inference import SCORES_HEADER
from common.metrics import dice_scores
from common.scoring import pixel_threshold
from tools.lab.threshold_rules import load_slices, main, parse_rule, threshold_rules

SHAPE = (6, 6, 4)
SUBJECTS = ("a", "b", "c")
OFFSET = {"a": 0.0, "b": 0.5, "c": 1.0}  # each subject's normal scores sit at their own level
OUTSIDE = 50.0  # map value outside the brain: any leak of non-brain pixels moves every threshold
LESION_SLICES = (1, 2)  # slices 0 and 3 of each lesioned twin have no lesion
RULES = [("pixel_quantile", 0.9), ("slice_max", 0.25)]


def _nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), path)
    return path


def _brain(subject: str) -> np.ndarray:
    brain = np.zeros(SHAPE, dtype=bool)
    rows, cols = {"a": (slice(1, 5), slice(1, 5)), "b": (slice(0, 4), slice(1, 6)), "c": (slice(2, 6), slice(0, 5))}[
        subject
    ]
    brain[rows, cols, :] = True
    return brain


def _lesion(subject: str) -> np.ndarray:
    lesion = np.zeros(SHAPE, dtype=bool)
    corner = {"a": (1, 1), "b": (1, 2), "c": (3, 1)}[subject]
    for z in LESION_SLICES:
        lesion[corner[0] : corner[0] + 2, corner[1] : corner[1] + 2, z] = True
    lesion[5, 0, 1] = True  # outside every brain: not counted by the pixel metrics
    return lesion


def _write_maps(folder: Path, dataset: Path, defect: str, volumes: dict[str, np.ndarray], scores: dict) -> None:
    rows = []
    for subject, volume in volumes.items():
        _nifti(folder / f"{subject}_anomaly.nii.gz", volume)
        _nifti(folder / f"{subject}_brain_mask.nii.gz", _brain(subject).astype(np.float32))
        for z in range(SHAPE[2]):
            rows.append(
                [str(dataset / "test" / defect / f"{subject}.nii.gz"), z, repr(scores[subject][z]), "", "", "", 1]
            )
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "scores.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SCORES_HEADER)
        writer.writerows(rows)


def _fabricate(root: Path, subjects: tuple[str, ...] = SUBJECTS, lesioned: tuple[str, ...] | None = None) -> dict:
    """Validation set and two inference folders; returns the paths and the maps, scores and masks written."""
    lesioned = subjects if lesioned is None else lesioned
    rng = np.random.default_rng(0)
    dataset = root / "dataset"
    good_maps, lesion_maps, good_scores, lesion_scores = {}, {}, {}, {}
    for subject in SUBJECTS:
        brain, lesion = _brain(subject), _lesion(subject)
        normal = (rng.random(SHAPE) + OFFSET[subject]).astype(np.float32)
        normal[~brain] = OUTSIDE
        twin = normal.copy()
        twin[lesion & brain] += np.float32(1.2) + rng.random(int((lesion & brain).sum())).astype(np.float32)
        twin[..., 3][brain[..., 3]] += np.float32(0.8)  # the lesion also shifts a lesion-free slice's scores
        good_maps[subject], lesion_maps[subject] = normal, twin
        good_scores[subject] = [float(OFFSET[subject] + rng.random()) for _ in range(SHAPE[2])]
        lesion_scores[subject] = [
            s + 1.5 if z in LESION_SLICES else s for z, s in enumerate(good_scores[subject])
        ]  # lesion-free slices of the twin score as the normal scan's
        _nifti(dataset / "test" / "good" / f"{subject}.nii.gz", rng.random(SHAPE))
        _nifti(dataset / "test" / "lesion" / f"{subject}.nii.gz", rng.random(SHAPE))
        _nifti(dataset / "ground_truth" / "lesion" / f"{subject}.nii.gz", lesion.astype(np.float32))
    runs = root / "runs"
    _write_maps(runs / "good", dataset, "good", {s: good_maps[s] for s in subjects}, good_scores)
    _write_maps(runs / "lesion", dataset, "lesion", {s: lesion_maps[s] for s in lesioned}, lesion_scores)
    return {
        "dataset": dataset,
        "maps_dirs": [runs / "good", runs / "lesion"],
        "good_maps": good_maps,
        "lesion_maps": lesion_maps,
        "good_scores": good_scores,
        "lesion_scores": lesion_scores,
    }


def _expected_threshold(data: dict, held: str, rule: str, value: float) -> float:
    """The rule computed by hand on the brain pixels of the other subjects' normal scans."""
    pixels = [
        data["good_maps"][s][..., z][_brain(s)[..., z]].astype(np.float64)
        for s in SUBJECTS
        if s != held
        for z in range(SHAPE[2])
    ]
    if rule == "pixel_quantile":
        return float(np.quantile(np.concatenate(pixels), value))
    return float(np.quantile([p.max() for p in pixels], 1.0 - value))


def _all_slices() -> list[tuple[str, bool, int]]:
    """(subject, normal scan, slice) of every slice."""
    return [(s, normal, z) for s in SUBJECTS for normal in (True, False) for z in range(SHAPE[2])]


def _slice_arrays(data: dict, subject: str, normal: bool, z: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(map, ground truth, brain) of one slice, float64 / bool."""
    volume = data["good_maps" if normal else "lesion_maps"][subject]
    truth = np.zeros(SHAPE[:2], dtype=bool) if normal else _lesion(subject)[..., z]
    return volume[..., z].astype(np.float64), truth, _brain(subject)[..., z]


def test_load_slices_pairs_scans_maps_truth_and_brains(tmp_path: Path) -> None:
    data = _fabricate(tmp_path)
    slices = load_slices(data["dataset"], data["maps_dirs"])
    assert len(slices.maps) == len(slices.masks) == len(slices.brains) == 24
    assert sorted(set(slices.subjects)) == [f"{s}.nii.gz" for s in SUBJECTS]
    assert sum(slices.normal_scan) == 12
    assert slices.labels.tolist() == [0] * 12 + [int(z in LESION_SLICES) for s in SUBJECTS for z in range(4)]
    for i, (name, normal) in enumerate(zip(slices.subjects, slices.normal_scan, strict=True)):
        subject, z = name.split(".")[0], i % SHAPE[2]
        expected_map, truth, brain = _slice_arrays(data, subject, normal, z)
        np.testing.assert_array_equal(slices.maps[i], expected_map)
        np.testing.assert_array_equal(slices.masks[i], truth)
        np.testing.assert_array_equal(slices.brains[i], brain)
        scores = data["good_scores" if normal else "lesion_scores"][subject]
        assert slices.scores[i] == pytest.approx(scores[z])


def test_leave_one_subject_out_thresholds_use_only_the_other_normal_scans(tmp_path: Path) -> None:
    data = _fabricate(tmp_path)
    result = threshold_rules(load_slices(data["dataset"], data["maps_dirs"]), RULES)
    assert result["subjects"] == [f"{s}.nii.gz" for s in SUBJECTS]
    assert set(result["rules"]) == {"pixel_quantile=0.9", "slice_max=0.25"}
    for name, value in RULES:
        thresholds = result["rules"][f"{name}={value:g}"]["thresholds"]
        assert list(thresholds) == result["subjects"]
        for subject in SUBJECTS:
            expected = _expected_threshold(data, subject, name, value)
            assert thresholds[f"{subject}.nii.gz"] == pytest.approx(expected, rel=1e-6)
            # the same through pixel_threshold
            others = [
                data["good_maps"][s][..., z][_brain(s)[..., z]] for s in SUBJECTS if s != subject for z in range(4)
            ]
            assert thresholds[f"{subject}.nii.gz"] == pytest.approx(pixel_threshold(others, name, value), rel=1e-6)
            # the test can tell: with the subject's own normal scan or any lesioned scan the threshold would differ
            own = [data["good_maps"][subject][..., z][_brain(subject)[..., z]] for z in range(4)]
            lesioned = [
                data["lesion_maps"][s][..., z][_brain(s)[..., z]] for s in SUBJECTS if s != subject for z in (1, 2)
            ]
            assert pixel_threshold(others + own, name, value) != pytest.approx(expected, rel=1e-6)
            assert pixel_threshold(others + lesioned, name, value) != pytest.approx(expected, rel=1e-6)


def test_dice_flagged_slices_and_best_dice_by_hand(tmp_path: Path) -> None:
    data = _fabricate(tmp_path)
    slices = load_slices(data["dataset"], data["maps_dirs"])
    result = threshold_rules(slices, RULES)
    assert result["n_slices"] == 24 and result["n_lesion_slices"] == 6

    all_maps, all_truth, all_brains = [], [], []
    for subject, normal, z in _all_slices():
        slice_map, truth, brain = _slice_arrays(data, subject, normal, z)
        all_maps.append(slice_map)
        all_truth.append(truth)
        all_brains.append(brain)
    # best Dice: exhaustive sweep over every distinct brain pixel score
    values = np.concatenate([m[b] for m, b in zip(all_maps, all_brains, strict=True)])
    truth_values = np.concatenate([t[b] for t, b in zip(all_truth, all_brains, strict=True)])
    sweep = [2 * (truth_values & (values > t)).sum() / (truth_values.sum() + (values > t).sum()) for t in values]
    assert result["best_dice"] == pytest.approx(max(sweep))
    assert result["best_dice"] == pytest.approx(dice_scores(all_truth, all_maps, foreground=all_brains)["best_dice"])
    best_threshold = result["best_dice_threshold"]
    assert 2 * (truth_values & (values > best_threshold)).sum() / (
        truth_values.sum() + (values > best_threshold).sum()
    ) == pytest.approx(max(sweep))

    for name, value in RULES:
        row = result["rules"][f"{name}={value:g}"]
        tp = fp = fn = flagged = n_normal = 0
        for (subject, _normal, _z), slice_map, truth, brain in zip(
            _all_slices(), all_maps, all_truth, all_brains, strict=True
        ):
            threshold = _expected_threshold(data, subject, name, value)
            predicted = slice_map[brain] > threshold
            inside = truth[brain]
            tp += int((predicted & inside).sum())
            fp += int((predicted & ~inside).sum())
            fn += int((~predicted & inside).sum())
            if not truth.any():  # normal slices: every slice of a normal scan and lesion-free slices of a twin
                n_normal += 1
                flagged += int(predicted.any())
        assert n_normal == 18
        assert 0 < tp and 0 < fp  # a non-trivial case: hits and false alarms
        assert row["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert row["dice_over_best"] == pytest.approx(row["dice"] / result["best_dice"])
        assert row["normal_slices_flagged"] == pytest.approx(flagged / n_normal)
        assert 0 < flagged < n_normal
    assert result["rules"]["pixel_quantile=0.9"]["dice"] != pytest.approx(result["rules"]["slice_max=0.25"]["dice"])


@pytest.mark.parametrize("image_fpr", [0.05, 0.3])
def test_image_threshold_left_out_specificity_and_recall(tmp_path: Path, image_fpr: float) -> None:
    data = _fabricate(tmp_path)
    result = threshold_rules(load_slices(data["dataset"], data["maps_dirs"]), RULES[:1], image_fpr=image_fpr)
    tn = fp = tp = fn = 0
    for subject in SUBJECTS:
        fit = [x for s in SUBJECTS if s != subject for x in data["good_scores"][s]]
        threshold = float(np.quantile(fit, 1.0 - image_fpr))
        for z in range(SHAPE[2]):
            for score, label in (
                (data["good_scores"][subject][z], 0),
                (data["lesion_scores"][subject][z], z in (1, 2)),
            ):
                flagged = score > threshold
                tn, fp = tn + int(not flagged and not label), fp + int(flagged and not label)
                tp, fn = tp + int(flagged and label), fn + int(not flagged and label)
    assert tn + fp == 18 and tp + fn == 6
    assert result["image"] == {
        "image_fpr": image_fpr,
        "specificity": pytest.approx(tn / (tn + fp)),
        "recall": pytest.approx(tp / (tp + fn)),
    }
    assert 0 < fp  # subject c's normal slices sit above a threshold fitted on a and b


def test_parse_rule() -> None:
    assert parse_rule("slice_max=0.05") == ("slice_max", 0.05)
    assert parse_rule("pixel_quantile=0.999") == ("pixel_quantile", 0.999)
    with pytest.raises(
        ValueError, match=r"rule 'foo=1': expected NAME=VALUE with NAME one of pixel_quantile, slice_max"
    ):
        parse_rule("foo=1")
    with pytest.raises(ValueError, match=r"rule 'slice_max=x': 'x' is not a number"):
        parse_rule("slice_max=x")
    for text in ("slice_max", "slice_max=", "=0.1"):
        with pytest.raises(ValueError, match="expected NAME=VALUE"):
            parse_rule(text)


def test_load_slices_needs_normal_twins_and_two_subjects(tmp_path: Path) -> None:
    data = _fabricate(tmp_path / "no_twin", subjects=("a", "b"), lesioned=SUBJECTS)
    with pytest.raises(ValueError, match=r"no normal scan for \['c\.nii\.gz'\]: twins must share a file name"):
        load_slices(data["dataset"], data["maps_dirs"])
    data = _fabricate(tmp_path / "one", subjects=("a",))
    with pytest.raises(ValueError, match="at least 2 subjects with a normal scan, got 1"):
        load_slices(data["dataset"], data["maps_dirs"])


def test_cli_prints_one_row_per_rule_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _fabricate(tmp_path)
    maps = [str(p) for p in data["maps_dirs"]]
    out = tmp_path / "result.json"
    argv = [str(data["dataset"]), "--maps", *maps, "--rule", "pixel_quantile=0.9", "--rule", "slice_max=0.25"]
    assert main([*argv, "--image-fpr", "0.3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = threshold_rules(load_slices(data["dataset"], data["maps_dirs"]), RULES, image_fpr=0.3)
    assert json.loads(out.read_text()) == expected
    assert printed[0].startswith("3 subjects left out in turn, 24 slices (6 with lesion); best Dice ")
    table = [line for line in printed if line.startswith("|")]
    assert table[0].startswith("| rule | Dice @thr |") and table[1].startswith("|---|")
    assert len(table) == 2 + len(RULES)
    for line, key in zip(table[2:], ("pixel_quantile=0.9", "slice_max=0.25"), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = expected["rules"][key]
        assert cells[0] == key
        assert cells[1] == f"{row['dice']:.3f}" and cells[3] == f"{row['normal_slices_flagged']:.3f}"
        assert cells[4] == ", ".join(f"{t:.4g}" for t in row["thresholds"].values())

    assert main([str(data["dataset"]), "--maps", *maps]) == 0  # default rule
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| pixel")]
    assert len(rows) == 1 and rows[0].startswith("| pixel_quantile=0.999 |")


@pytest.mark.parametrize(("rule", "message"), [("foo=1", "expected NAME=VALUE"), ("slice_max=1.5", r"in \(0, 1\)")])
def test_cli_rejects_a_bad_rule_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rule: str, message: str
) -> None:
    data = _fabricate(tmp_path)
    out = tmp_path / "result.json"
    argv = [str(data["dataset"]), "--maps", *map(str, data["maps_dirs"]), "--rule", rule, "--json", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("python -m tools.lab.threshold_rules: error: ")
    assert re.search(message, lines[0])
    assert not out.exists()
