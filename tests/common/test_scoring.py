"""Tests for common.scoring: image scores on hand-made maps, smoothing, volume scores and calibration."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.scoring import PIXEL_RULES, Calibration, MapScorer, calibrate_thresholds, pixel_threshold, volume_score

# one 2x3 map: [[1, 2, 3], [4, 5, 6]], foreground [[1, 1, 0], [0, 1, 0]] (pixels 1, 2 and 5 inside)
MAP = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]])
FOREGROUND = torch.tensor([[[[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]]])

SCORE_CASES = [
    # max over all pixels
    ("max", 0.01, False, 6.0),
    # max inside the foreground
    ("max", 0.01, True, 5.0),
    # mean over all pixels: 21 / 6
    ("mean", 0.01, False, 3.5),
    # mean inside the foreground: (1 + 2 + 5) / 3
    ("mean", 0.01, True, 8.0 / 3.0),
    # top-k, k = ceil(0.5 * 6) = 3: (6 + 5 + 4) / 3
    ("topk_mean", 0.5, False, 5.0),
    # top-k inside the foreground, k = ceil(0.5 * 3) = 2: (5 + 2) / 2
    ("topk_mean", 0.5, True, 3.5),
    # a tiny fraction still averages one pixel: the max
    ("topk_mean", 0.01, True, 5.0),
    # fraction 1 equals the mean
    ("topk_mean", 1.0, True, 8.0 / 3.0),
    # top-k in probability space, k = 2 of the foreground: -log((e^-5 + e^-2) / 2)
    ("topk_probability", 0.5, True, -math.log((math.exp(-5.0) + math.exp(-2.0)) / 2.0)),
    # top-k in probability space over all pixels, k = 3: -log((e^-6 + e^-5 + e^-4) / 3)
    ("topk_probability", 0.5, False, -math.log((math.exp(-6.0) + math.exp(-5.0) + math.exp(-4.0)) / 3.0)),
]
SCORE_IDS = [
    "max-all",
    "max-fg",
    "mean-all",
    "mean-fg",
    "topk-half-all",
    "topk-half-fg",
    "topk-tiny-fg",
    "topk-one-fg",
    "topk-probability-fg",
    "topk-probability-all",
]


@pytest.mark.parametrize(("method", "fraction", "use_fg", "expected"), SCORE_CASES, ids=SCORE_IDS)
def test_image_scores_by_hand(method: str, fraction: float, use_fg: bool, expected: float) -> None:
    scorer = MapScorer(method, topk_fraction=fraction)
    scores = scorer.image_scores(MAP, FOREGROUND if use_fg else None)
    assert scores.shape == (1,)
    assert scores.item() == pytest.approx(expected)


@pytest.mark.parametrize("method", ["max", "mean", "topk_mean"], ids=["max", "mean", "topk"])
def test_empty_foreground_falls_back_to_all_pixels(method: str) -> None:
    maps = torch.cat([MAP, MAP + 10.0])
    foreground = torch.cat([torch.zeros_like(FOREGROUND), FOREGROUND])
    scorer = MapScorer(method, topk_fraction=0.5)
    scores = scorer.image_scores(maps, foreground)
    all_pixels = scorer.image_scores(MAP).item()
    assert scores[0].item() == pytest.approx(all_pixels)
    assert scores[1].item() == pytest.approx(scorer.image_scores(MAP, FOREGROUND).item() + 10.0)
    assert torch.isfinite(scores).all()


def test_maps_are_zero_outside_foreground() -> None:
    maps = MapScorer().maps(MAP, FOREGROUND)
    assert maps.shape == MAP.shape and maps.dtype == torch.float32
    torch.testing.assert_close(maps, torch.tensor([[[[1.0, 2.0, 0.0], [0.0, 5.0, 0.0]]]]))
    torch.testing.assert_close(MapScorer().maps(MAP), MAP)


def test_smoothing_changes_maps_keeps_shape_and_batch_items_apart() -> None:
    maps = torch.zeros(2, 1, 15, 17)
    maps[0, 0, 7, 8] = 1.0
    smoothed = MapScorer(smoothing_sigma=1.5).maps(maps)
    assert smoothed.shape == maps.shape
    assert smoothed[0, 0, 7, 8] < 1.0
    assert smoothed[0, 0, 7, 9] > 0.0 and smoothed[0, 0, 8, 8] > 0.0
    # the peak stays where it was and the mass is (nearly) kept far from the border
    assert int(smoothed[0, 0].argmax()) == 7 * 17 + 8
    assert smoothed[0].sum().item() == pytest.approx(1.0, abs=1e-3)
    # smoothing is per map: nothing leaks into the second item of the batch
    assert smoothed[1].abs().max() == 0.0


def test_smoothing_then_foreground() -> None:
    maps = torch.zeros(1, 1, 9, 9)
    maps[0, 0, 4, 4] = 1.0
    foreground = torch.zeros(1, 1, 9, 9)
    foreground[..., 2:7, 2:7] = 1.0
    smoothed = MapScorer(smoothing_sigma=1.0).maps(maps, foreground)
    assert (smoothed[foreground == 0] == 0).all()
    assert (smoothed[foreground > 0] > 0).all()


BAD_ARG_CASES = [
    # unknown method
    ({"method": "median"}, "method"),
    # zero fraction
    ({"topk_fraction": 0.0}, "topk_fraction"),
    # fraction above one
    ({"topk_fraction": 1.5}, "topk_fraction"),
    # negative smoothing
    ({"smoothing_sigma": -1.0}, "smoothing_sigma"),
]
BAD_ARG_IDS = ["method", "topk-0", "topk-1.5", "sigma-negative"]


@pytest.mark.parametrize(("kwargs", "name"), BAD_ARG_CASES, ids=BAD_ARG_IDS)
def test_map_scorer_invalid_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        MapScorer(**kwargs)


def test_map_scorer_as_dict_round_trip() -> None:
    scorer = MapScorer("topk_mean", topk_fraction=0.03, smoothing_sigma=4.0)
    assert MapScorer(**scorer.as_dict()).as_dict() == scorer.as_dict()


VOLUME_CASES = [
    # max over slices
    ([0.1, 0.7, 0.3], "max", 0.7),
    # mean over slices
    ([0.1, 0.7, 0.4], "mean", 0.4),
    # numpy input
    (np.array([2.0, -1.0]), "max", 2.0),
]
VOLUME_IDS = ["max", "mean", "numpy"]


@pytest.mark.parametrize(("scores", "method", "expected"), VOLUME_CASES, ids=VOLUME_IDS)
def test_volume_score(scores, method: str, expected: float) -> None:
    assert volume_score(scores, method) == pytest.approx(expected)


def test_volume_score_empty_and_invalid() -> None:
    assert math.isnan(volume_score([], "max"))
    with pytest.raises(ValueError, match="median"):
        volume_score([1.0], "median")


CALIBRATE_CASES = [
    # defaults
    (0.999, 0.05),
    # lower pixel quantile, 10% false positives
    (0.9, 0.1),
]
CALIBRATE_IDS = ["defaults", "q0.9-fpr0.1"]


@pytest.mark.parametrize(("quantile", "fpr"), CALIBRATE_CASES, ids=CALIBRATE_IDS)
def test_calibrate_thresholds_equals_numpy_quantiles(quantile: float, fpr: float) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random((10, 8, 8))
    images = rng.normal(size=37)
    pixel_threshold, image_threshold = calibrate_thresholds(pixels, images, quantile, fpr)
    assert pixel_threshold == pytest.approx(float(np.quantile(pixels.ravel(), quantile)))
    assert image_threshold == pytest.approx(float(np.quantile(images, 1.0 - fpr)))
    # the image threshold gives the target false-positive rate on the normal images, up to one image
    assert abs(np.mean(images > image_threshold) - fpr) <= 1.0 / images.size


BAD_CALIBRATE_CASES = [
    # quantile 0
    ({"pixel_quantile": 0.0}, "pixel_quantile"),
    # quantile 1
    ({"pixel_quantile": 1.0}, "pixel_quantile"),
    # fpr 0
    ({"image_fpr": 0.0}, "image_fpr"),
    # fpr above 1
    ({"image_fpr": 1.2}, "image_fpr"),
    # no normal pixels
    ({"normal_pixel_scores": np.array([])}, "calibration needs normal images"),
    # no normal images
    ({"normal_image_scores": []}, "calibration needs normal images"),
]
BAD_CALIBRATE_IDS = ["quantile-0", "quantile-1", "fpr-0", "fpr-1.2", "no-pixels", "no-images"]


@pytest.mark.parametrize(("kwargs", "expected"), BAD_CALIBRATE_CASES, ids=BAD_CALIBRATE_IDS)
def test_calibrate_thresholds_validation(kwargs: dict, expected: str) -> None:
    arguments = {"normal_pixel_scores": np.ones(4), "normal_image_scores": np.ones(2)} | kwargs
    with pytest.raises(ValueError, match=expected):
        calibrate_thresholds(**arguments)


def test_calibration_is_uncalibrated_until_set() -> None:
    calibration = Calibration()
    assert not calibration.calibrated
    assert math.isnan(float(calibration.pixel_threshold))
    calibration.pixel_threshold.fill_(0.5)
    assert not calibration.calibrated  # both thresholds are needed
    calibration.set_thresholds(0.5, 0.8, scorer={"method": "max"})
    assert calibration.calibrated
    assert float(calibration.image_threshold) == pytest.approx(0.8)


def test_calibration_state_dict_round_trip(tmp_path: Path) -> None:
    settings = {"scorer": {"method": "topk_mean", "topk_fraction": 0.03}, "preprocessing": {"slices": {"axis": 2}}}
    parent = torch.nn.Module()
    parent.calibration = Calibration()
    parent.calibration.set_thresholds(0.25, 1.75, **settings)
    path = tmp_path / "model.pt"
    torch.save(parent.state_dict(), path)

    restored = torch.nn.Module()
    restored.calibration = Calibration()
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.calibration.calibrated
    assert float(restored.calibration.pixel_threshold) == pytest.approx(0.25)
    assert float(restored.calibration.image_threshold) == pytest.approx(1.75)
    assert restored.calibration.settings == settings
    # settings are a copy: changing the restored one leaves the original intact
    restored.calibration.settings["scorer"] = {}
    assert parent.calibration.settings == settings


def test_topk_probability_does_not_underflow_and_ranks_like_the_probability_score() -> None:
    # negative log-probabilities of hundreds: exp(-m) is 0 in float32, the score must still order the maps
    scorer = MapScorer("topk_probability", topk_fraction=0.5)
    maps = torch.tensor([[[[300.0, 400.0]]], [[[300.0, 500.0]]], [[[200.0, 250.0]]]])
    assert torch.exp(-maps).eq(0).all()
    scores = scorer.image_scores(maps)
    assert torch.isfinite(scores).all()
    # k = 1: the score is the largest negative log-probability, i.e. the smallest probability
    assert torch.allclose(scores, torch.tensor([400.0, 500.0, 250.0]))
    # the paper's score "mean of the top k of (max P - P)" in float64 ranks the same way on mild maps
    mild = maps / 100.0
    paper = [float((1.0 - torch.exp(-m.double())).flatten().topk(1).values.mean()) for m in mild]
    ours = scorer.image_scores(mild).tolist()
    assert np.argsort(paper).tolist() == np.argsort(ours).tolist()


# --- pixel_threshold -----------------------------------------------------------------------------------------------


def _normal_slices(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(size) * (1.0 + i) for i, size in enumerate((7, 30, 1, 12, 25))]


def test_pixel_rules() -> None:
    assert PIXEL_RULES == ("pixel_quantile", "slice_max")


@pytest.mark.parametrize("value", [0.5, 0.9, 0.999])
def test_pixel_quantile_is_the_quantile_of_all_pixels(value: float) -> None:
    slices = _normal_slices()
    expected = float(np.quantile(np.concatenate(slices), value))
    assert pixel_threshold(slices, "pixel_quantile", value) == pytest.approx(expected)
    # 2D slices are flattened the same way
    assert pixel_threshold([s.reshape(1, -1) for s in slices], "pixel_quantile", value) == pytest.approx(expected)
    assert pixel_threshold(slices) == pytest.approx(float(np.quantile(np.concatenate(slices), 0.999)))  # defaults


@pytest.mark.parametrize("value", [0.05, 0.2, 0.5])
def test_slice_max_is_the_quantile_of_slice_maxima(value: float) -> None:
    slices = _normal_slices(1)
    expected = float(np.quantile([s.max() for s in slices], 1.0 - value))
    assert pixel_threshold(slices, "slice_max", value) == pytest.approx(expected)
    assert expected != pytest.approx(float(np.quantile(np.concatenate(slices), 1.0 - value)))


def test_slice_max_flags_the_target_fraction_of_normal_slices() -> None:
    # 20 slices, slice i holds (0, i - 0.5, i) for i = 1..20: maxima 1..20; the 0.9 quantile is 1 + 0.9 * 19 = 18.1
    slices = [np.array([[0.0, i - 0.5], [i, 0.25]]) for i in range(1, 21)]
    threshold = pixel_threshold(slices, "slice_max", 0.1)
    assert threshold == pytest.approx(18.1)
    flagged = [bool((s > threshold).any()) for s in slices]
    assert sum(flagged) == 2 and flagged[-2:] == [True, True]  # exactly 10 % of the slices get a non-empty mask
    # the 0.9 pixel quantile over the same 80 pixels is lower (index 71.1 of the sorted pixels) and flags 4 slices
    pixel = pixel_threshold(slices, "pixel_quantile", 0.9)
    assert pixel == pytest.approx(16.05)
    assert sum(bool((s > pixel).any()) for s in slices) == 4


@pytest.mark.parametrize("rule", PIXEL_RULES)
def test_empty_slices_are_ignored(rule: str) -> None:
    slices = _normal_slices(2)
    with_empty = [np.zeros(0), *slices[:2], np.zeros((0, 3)), *slices[2:], []]
    assert pixel_threshold(with_empty, rule, 0.2) == pytest.approx(pixel_threshold(slices, rule, 0.2))


def test_calibrate_thresholds_uses_the_pixel_rule() -> None:
    slices = _normal_slices(3)
    images = np.arange(10.0)
    pixel, image = calibrate_thresholds(slices, images, image_fpr=0.1, pixel_rule="slice_max", pixel_slice_fpr=0.25)
    assert pixel == pytest.approx(float(np.quantile([s.max() for s in slices], 0.75)))
    assert image == pytest.approx(float(np.quantile(images, 0.9)))
    pixel, _ = calibrate_thresholds(slices, images, pixel_quantile=0.8)
    assert pixel == pytest.approx(float(np.quantile(np.concatenate(slices), 0.8)))


BAD_PIXEL_THRESHOLD_CASES = [
    # unknown rule
    ({"rule": "median"}, r"pixel threshold rule must be one of \('pixel_quantile', 'slice_max'\), got 'median'"),
    # value 0
    ({"value": 0.0}, r"the pixel_quantile value must be in \(0, 1\), got 0.0"),
    # value 1
    ({"rule": "slice_max", "value": 1.0}, r"the slice_max value must be in \(0, 1\), got 1.0"),
    # negative value
    ({"rule": "slice_max", "value": -0.1}, r"the slice_max value must be in \(0, 1\)"),
    # value above 1
    ({"value": 1.5}, r"the pixel_quantile value must be in \(0, 1\)"),
    # no slice
    ({"normal_slice_pixels": []}, "calibration needs normal foreground pixels, got none"),
    # only empty slices
    ({"normal_slice_pixels": [np.zeros(0), np.zeros((2, 0))]}, "calibration needs normal foreground pixels"),
    # only empty slices, slice_max
    ({"normal_slice_pixels": [np.zeros(0)], "rule": "slice_max"}, "calibration needs normal foreground pixels"),
]
BAD_PIXEL_THRESHOLD_IDS = ["rule", "value-0", "value-1", "value-negative", "value-1.5", "none", "empty", "empty-max"]


@pytest.mark.parametrize(("kwargs", "match"), BAD_PIXEL_THRESHOLD_CASES, ids=BAD_PIXEL_THRESHOLD_IDS)
def test_pixel_threshold_errors(kwargs: dict, match: str) -> None:
    arguments = {"normal_slice_pixels": [np.ones(4)], "rule": "pixel_quantile", "value": 0.5} | kwargs
    with pytest.raises(ValueError, match=match):
        pixel_threshold(**arguments)
