"""Tests for common/metrics.py: scikit-learn agreement, hand-computed values and brute-force references."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from itertools import pairwise

import numpy as np
import pytest
from skimage.measure import label as sk_label
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from common.metrics import aupro, dice_scores, evaluate_anomaly_detection, image_metrics, pixel_auroc

# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _random_set(seed: int, shapes: list[tuple[int, ...]], decimals: int | None) -> tuple[list, list, list]:
    """Random masks made of a few rectangles, maps correlated with them, and foreground masks."""
    rng = np.random.default_rng(seed)
    masks, maps, foreground = [], [], []
    for shape in shapes:
        mask = np.zeros(shape, dtype=np.uint8)
        for _ in range(rng.integers(0, 3)):
            lo = [int(rng.integers(0, s - 1)) for s in shape]
            hi = [int(rng.integers(a + 1, min(a + 4, s) + 1)) for a, s in zip(lo, shape, strict=True)]
            mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = 1
        scores = rng.random(shape) + 0.6 * mask
        if decimals is not None:  # coarse scores create many ties between normal and anomalous pixels
            scores = np.round(scores, decimals)
        masks.append(mask)
        maps.append(scores)
        foreground.append(rng.random(shape) > 0.2)
    return masks, maps, foreground


def _flat(items: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a).ravel() for a in items])


def _clipped_trapezoid(points: list[tuple[float, float]], limit: float) -> float:
    """Area under a polyline of (x, y) points with non-decreasing x, for x in [0, limit]."""
    area = 0.0
    for (x0, y0), (x1, y1) in pairwise(points):
        if x0 >= limit:
            break
        x_end = min(x1, limit)
        y_end = y0 + (y1 - y0) * (x_end - x0) / (x1 - x0) if x1 > limit else y1
        area += (x_end - x0) * (y0 + y_end) / 2.0
    return area


def _aupro_brute_force(masks: list, maps: list, fpr_limit: float, foreground: list | None = None) -> float:
    """Slow reference: one PRO/FPR point per distinct score, regions labelled with scikit-image."""
    if foreground is None:
        foreground = [np.ones(np.shape(m), dtype=bool) for m in masks]
    regions = []  # (scores of the region's foreground pixels)
    normal_scores = []
    for mask, scores, fg in zip(masks, maps, foreground, strict=True):
        labels = sk_label(np.asarray(mask) > 0, connectivity=np.ndim(mask))
        for r in range(1, labels.max() + 1):
            inside = (labels == r) & fg
            if inside.any():
                regions.append(scores[inside])
        normal_scores.append(scores[(np.asarray(mask) <= 0) & fg])
    normal_scores = np.concatenate(normal_scores)
    all_scores = np.concatenate([normal_scores, *regions])
    points = [(0.0, 0.0)]
    for t in np.unique(all_scores)[::-1]:  # predicted anomalous: score >= t, i.e. score > the next lower value
        fpr = float(np.mean(normal_scores >= t))
        pro = float(np.mean([np.mean(region >= t) for region in regions]))
        points.append((fpr, pro))
    return _clipped_trapezoid(points, fpr_limit) / fpr_limit


def _best_dice_brute_force(target: np.ndarray, scores: np.ndarray) -> float:
    best = 0.0
    for t in [np.inf, *np.unique(scores)]:
        predicted = scores >= t
        best = max(best, 2.0 * np.sum(predicted & target) / (predicted.sum() + target.sum()))
    return best


# ----------------------------------------------------------------------------------------------------------------------
# image level

IMAGE_CASES = [
    # distinct scores, 4 normal / 4 anomalous
    ([0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.4, 0.35, 0.8, 0.7, 0.2, 0.9, 0.65], 0.5),
    # ties across classes, threshold equal to a score (score > threshold is strict)
    ([0, 1, 0, 1, 1, 0, 0, 1, 0], [0.3, 0.3, 0.5, 0.9, 0.5, 0.1, 0.5, 0.2, 0.3], 0.3),
    # boolean labels, integer scores
    ([False, True, True, False, True], [1, 5, 3, 2, 2], 2.0),
]


@pytest.mark.parametrize(("labels", "scores", "threshold"), IMAGE_CASES, ids=["distinct", "ties", "bool-int"])
def test_image_metrics_match_sklearn(labels: list, scores: list, threshold: float) -> None:
    out = image_metrics(np.asarray(labels), np.asarray(scores), threshold=threshold)
    y = np.asarray(labels, dtype=int)
    predicted = (np.asarray(scores) > threshold).astype(int)
    assert out["auroc"] == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert out["ap"] == pytest.approx(average_precision_score(y, scores), abs=1e-12)
    assert out["f1"] == pytest.approx(f1_score(y, predicted), abs=1e-12)
    assert out["accuracy"] == pytest.approx(accuracy_score(y, predicted), abs=1e-12)
    assert out["recall"] == pytest.approx(recall_score(y, predicted), abs=1e-12)
    assert out["precision"] == pytest.approx(precision_score(y, predicted), abs=1e-12)
    tn = np.sum((y == 0) & (predicted == 0))
    assert out["specificity"] == pytest.approx(tn / np.sum(y == 0), abs=1e-12)
    assert out["threshold"] == threshold
    assert all(type(v) is float for v in out.values())


def test_image_metrics_hand_computed() -> None:
    # labels 0 0 1 1, scores .1 .4 .35 .8: pairs (anomalous > normal) = (.35>.1) + (.8>.1) + (.8>.4) = 3 of 4
    out = image_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], threshold=0.5)
    assert out["auroc"] == pytest.approx(0.75)
    # only .8 > .5: TP 1, FN 1, FP 0, TN 2
    assert out["recall"] == pytest.approx(0.5)
    assert out["precision"] == pytest.approx(1.0)
    assert out["specificity"] == pytest.approx(1.0)
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["f1"] == pytest.approx(2 / 3)
    assert set(image_metrics([0, 1], [0.0, 1.0])) == {"auroc", "ap"}


SINGLE_CLASS_CASES = [
    # all normal: recall undefined, specificity 2/3
    ([0, 0, 0], [0.1, 0.6, 0.2], {"recall": math.nan, "specificity": 2 / 3, "accuracy": 2 / 3}),
    # all anomalous: specificity undefined, recall 1/3
    ([1, 1, 1], [0.1, 0.6, 0.2], {"recall": 1 / 3, "specificity": math.nan, "accuracy": 1 / 3}),
]


@pytest.mark.parametrize(("labels", "scores", "expected"), SINGLE_CLASS_CASES, ids=["all-normal", "all-anomalous"])
def test_image_metrics_single_class_gives_nan(labels: list, scores: list, expected: dict) -> None:
    out = image_metrics(labels, scores, threshold=0.5)
    assert math.isnan(out["auroc"])
    assert math.isnan(out["ap"])
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(out[key]), key
        else:
            assert out[key] == pytest.approx(value), key


IMAGE_ERROR_CASES = [
    # labels not binary
    ([0, 2, 1], [0.1, 0.2, 0.3], "binary"),
    # different lengths
    ([0, 1, 1], [0.1, 0.2], "3 labels"),
    # NaN score
    ([0, 1], [0.1, float("nan")], "finite"),
    # text scores
    ([0, 1], ["a", "b"], "numbers"),
    # empty
    ([], [], "empty"),
]


@pytest.mark.parametrize(
    ("labels", "scores", "match"), IMAGE_ERROR_CASES, ids=["non-binary", "length", "nan-score", "text-score", "empty"]
)
def test_image_metrics_rejects_bad_input(labels: list, scores: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        image_metrics(labels, scores)


# ----------------------------------------------------------------------------------------------------------------------
# pixel AUROC

PIXEL_AUROC_CASES = [
    # stacked 2D images, continuous scores
    (0, [(6, 7)] * 4, None, True),
    # images of different sizes, coarse scores with ties
    (1, [(5, 5), (8, 3), (4, 9)], 1, False),
    # 3D volumes
    (2, [(3, 4, 5), (2, 6, 4)], 2, False),
]


@pytest.mark.parametrize(
    ("seed", "shapes", "decimals", "stacked"), PIXEL_AUROC_CASES, ids=["stacked", "ragged-ties", "volumes"]
)
def test_pixel_auroc_matches_sklearn(seed: int, shapes: list, decimals: int | None, stacked: bool) -> None:
    masks, maps, foreground = _random_set(seed, shapes, decimals)
    masks[0][0, 0] = 1  # make sure both classes are present
    target, scores, keep = _flat(masks) > 0, _flat(maps), _flat(foreground)
    if stacked:
        masks, maps, foreground = np.stack(masks), np.stack(maps), np.stack(foreground)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(target, scores), abs=1e-12)
    expected_fg = roc_auc_score(target[keep], scores[keep])
    assert pixel_auroc(masks, maps, foreground=foreground) == pytest.approx(expected_fg, abs=1e-12)


def test_pixel_auroc_single_class_is_nan() -> None:
    assert math.isnan(pixel_auroc(np.zeros((2, 3, 3)), np.random.default_rng(0).random((2, 3, 3))))


# ----------------------------------------------------------------------------------------------------------------------
# AUPRO


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    """One 4x4 image: region A = top-left 2x2 block, region B = the bottom-right pixel, 11 normal pixels."""
    mask = np.zeros((1, 4, 4))
    mask[0, :2, :2] = 1
    mask[0, 3, 3] = 1
    scores = np.zeros((1, 4, 4))
    scores[0, 0, 0] = scores[0, 0, 1] = 0.9  # A
    scores[0, 1, 0] = 0.5  # A
    scores[0, 1, 1] = 0.1  # A
    scores[0, 3, 3] = 0.8  # B
    scores[0, 2, 0] = 0.7  # normal
    scores[0, 2, 1] = 0.3  # normal; the 9 other normal pixels score 0
    return mask, scores


# Sweeping t down, (FPR, PRO) with PRO = (overlap_A + overlap_B) / 2:
#   start (0, 0); t=.9 A 2/4 -> (0, .25); t=.8 B 1/1 -> (0, .75); t=.7 -> (1/11, .75); t=.5 A 3/4 -> (1/11, .875);
#   t=.3 -> (2/11, .875); t=.1 A 4/4 -> (2/11, 1); t=0 -> (1, 1).
# limit 1:   .75/11 + .875/11 + 1 * 9/11 = 10.625/11
# limit .3:  (.75/11 + .875/11 + (.3 - 2/11)) / .3 = 9.75/11
# limit .05: inside the flat first step at PRO .75 -> .75
AUPRO_HAND_CASES = [
    (1.0, 10.625 / 11),
    (0.3, 9.75 / 11),
    (0.05, 0.75),
]


@pytest.mark.parametrize(("fpr_limit", "expected"), AUPRO_HAND_CASES, ids=["limit-1", "limit-0.3", "limit-0.05"])
def test_aupro_hand_computed(fpr_limit: float, expected: float) -> None:
    mask, scores = _hand_case()
    assert aupro(mask, scores, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-12)


def test_aupro_interpolates_tied_segment() -> None:
    # one normal and one anomalous pixel with the same score: the curve is the diagonal (0, 0) -> (1, 1);
    # up to .3 the area is .3 * .3 / 2 = .045, normalised .15; up to 1 it is .5
    masks, maps = [np.array([0, 1])], [np.array([0.5, 0.5])]
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx(0.15, abs=1e-12)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)


def test_aupro_connectivity_2d_and_3d() -> None:
    # 2D: pixels (0,0), (0,1) and (1,2) touch diagonally -> one 8-connected region of 3 pixels; only (1,2) scores
    # above the normals, so the curve is (0,0) -> (0, 1/3) -> (1, 1/3) -> (1, 1) and the area is 1/3
    # (with 4-connectivity it would be two regions, PRO (0 + 1) / 2 and area 1/2)
    mask = np.zeros((1, 3, 3))
    mask[0, 0, 0] = mask[0, 0, 1] = mask[0, 1, 2] = 1
    scores = np.full((1, 3, 3), 0.5)
    scores[0][mask[0] > 0] = 0.0
    scores[0, 1, 2] = 1.0
    assert aupro(mask, scores, fpr_limit=1.0) == pytest.approx(1 / 3, abs=1e-12)
    # 3D: voxels (0,0,0), (0,0,1) and (1,1,0) form one 26-connected region of a volume given in a list (area 1/3),
    # while the same array given as a stack is labelled per 2D slice: regions of 2 and 1 pixels (area 1/2)
    volume = np.zeros((2, 2, 2))
    volume[0, 0, 0] = volume[0, 0, 1] = volume[1, 1, 0] = 1
    vscores = np.full((2, 2, 2), 0.5)
    vscores[volume > 0] = 0.0
    vscores[1, 1, 0] = 1.0
    assert aupro([volume], [vscores], fpr_limit=1.0) == pytest.approx(1 / 3, abs=1e-12)
    assert aupro(volume, vscores, fpr_limit=1.0) == pytest.approx(1 / 2, abs=1e-12)


AUPRO_RANDOM_CASES = [
    # continuous scores, ragged 2D images
    (3, [(9, 8), (7, 7), (6, 10)], None, 0.3),
    # many ties between normal and anomalous pixels
    (4, [(8, 8)] * 4, 1, 0.3),
    # ties, full curve
    (5, [(7, 9), (8, 8), (5, 6)], 1, 1.0),
    # small limit inside the first segments
    (6, [(10, 10), (9, 9)], 2, 0.05),
    # 3D volumes
    (7, [(3, 5, 5), (4, 4, 3)], 1, 0.3),
]


@pytest.mark.parametrize(
    ("seed", "shapes", "decimals", "fpr_limit"),
    AUPRO_RANDOM_CASES,
    ids=["continuous", "ties", "ties-full", "small-limit", "volumes"],
)
def test_aupro_matches_brute_force(seed: int, shapes: list, decimals: int | None, fpr_limit: float) -> None:
    masks, maps, foreground = _random_set(seed, shapes, decimals)
    masks[0][:2, :2] = 1  # at least one region
    expected = _aupro_brute_force(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-10)
    expected_fg = _aupro_brute_force(masks, maps, fpr_limit, foreground)
    assert aupro(masks, maps, fpr_limit=fpr_limit, foreground=foreground) == pytest.approx(expected_fg, abs=1e-10)


def test_aupro_without_regions_is_nan() -> None:
    assert math.isnan(aupro(np.zeros((2, 4, 4)), np.random.default_rng(0).random((2, 4, 4))))


@pytest.mark.parametrize("fpr_limit", [0.0, -0.1, 1.5], ids=["zero", "negative", "above-one"])
def test_aupro_rejects_bad_limit(fpr_limit: float) -> None:
    mask, scores = _hand_case()
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(mask, scores, fpr_limit=fpr_limit)


# ----------------------------------------------------------------------------------------------------------------------
# Dice


def test_dice_at_threshold_hand_computed() -> None:
    # map > .5 predicts (0,0) and (1,0): TP 2, FP 0, FN 1 (the .4 pixel) -> 2*2 / (2*2 + 0 + 1) = .8
    mask = np.array([[[1, 0], [1, 1]]])
    scores = np.array([[[0.9, 0.2], [0.6, 0.4]]])
    assert dice_scores(mask, scores, threshold=0.5)["dice"] == pytest.approx(0.8)
    # the foreground drops the missed pixel: TP 2, FP 0, FN 0 -> 1
    fg = np.array([[[1, 1], [1, 0]]])
    assert dice_scores(mask, scores, threshold=0.5, foreground=fg)["dice"] == pytest.approx(1.0)
    # a threshold equal to a score excludes it (map > threshold): map > .6 -> TP 1, FN 2 -> 2 / (2 + 2) = .5
    assert dice_scores(mask, scores, threshold=0.6)["dice"] == pytest.approx(0.5)
    # best: map > .2 predicts exactly the mask -> 1, reported threshold .2 (the highest threshold reaching it)
    best = dice_scores(mask, scores)
    assert best == pytest.approx({"best_dice": 1.0, "best_dice_threshold": 0.2})


BEST_DICE_CASES = [
    # continuous scores
    (8, [(9, 9), (8, 7)], None),
    # ties
    (9, [(8, 8)] * 3, 1),
    # 3D volumes with ties
    (10, [(3, 6, 5), (2, 4, 4)], 1),
]


@pytest.mark.parametrize(("seed", "shapes", "decimals"), BEST_DICE_CASES, ids=["continuous", "ties", "volumes"])
def test_best_dice_matches_brute_force(seed: int, shapes: list, decimals: int | None) -> None:
    masks, maps, foreground = _random_set(seed, shapes, decimals)
    masks[0][:2, :2] = 1
    target, scores, keep = _flat(masks) > 0, _flat(maps), _flat(foreground)
    for fg, sel in ((None, np.ones_like(keep)), (foreground, keep)):
        out = dice_scores(masks, maps, foreground=fg)
        assert out["best_dice"] == pytest.approx(_best_dice_brute_force(target[sel], scores[sel]), abs=1e-12)
        # the reported threshold reproduces the best Dice with map > threshold
        again = dice_scores(masks, maps, threshold=out["best_dice_threshold"], foreground=fg)["dice"]
        assert again == pytest.approx(out["best_dice"], abs=1e-12)


def test_best_dice_all_pixels() -> None:
    # all scores equal: the only non-empty prediction is every pixel, Dice 2*2 / (4 + 2) = 2/3,
    # and the threshold lies just below the common score
    mask = np.array([[1, 1, 0, 0]], dtype=np.float32)
    scores = np.full((1, 4), 0.25, dtype=np.float32)
    out = dice_scores(mask, scores)
    assert out["best_dice"] == pytest.approx(2 / 3)
    assert out["best_dice_threshold"] < 0.25
    assert bool(np.all(scores > np.float32(out["best_dice_threshold"])))


def test_dice_without_anomalies_is_nan() -> None:
    out = dice_scores(np.zeros((1, 3, 3)), np.zeros((1, 3, 3)), threshold=0.5)
    assert all(math.isnan(v) for v in out.values())


# ----------------------------------------------------------------------------------------------------------------------
# validation

SHAPE_ERROR_CASES = [
    # one map of a list with the wrong shape: the message names the index and both shapes
    (
        {"masks": [np.zeros((4, 4)), np.zeros((5, 5))], "maps": [np.zeros((4, 4)), np.zeros((5, 4))]},
        r"masks\[1\] has shape \(5, 5\) but maps\[1\] has shape \(5, 4\)",
    ),
    # stacked arrays with a channel axis on the maps only
    ({"masks": np.zeros((2, 4, 4)), "maps": np.zeros((2, 1, 4, 4))}, r"masks\[0\] has shape \(4, 4\) but maps\[0\]"),
    # different numbers of images
    ({"masks": np.zeros((3, 4, 4)), "maps": np.zeros((2, 4, 4))}, "same number of images, got 3 and 2"),
    # foreground of the wrong shape
    (
        {"masks": np.zeros((2, 4, 4)), "maps": np.zeros((2, 4, 4)), "foreground": np.zeros((2, 4, 3))},
        r"foreground\[0\] has shape \(4, 3\)",
    ),
    # a single 1D array is ambiguous
    ({"masks": np.zeros(4), "maps": np.zeros(4)}, "wrap a single image in a list"),
    # NaN in a map
    ({"masks": [np.zeros(3)], "maps": [np.array([0.0, np.nan, 1.0])]}, r"maps\[0\] contains NaN"),
]


@pytest.mark.parametrize("func", [pixel_auroc, aupro, dice_scores], ids=["pixel_auroc", "aupro", "dice_scores"])
@pytest.mark.parametrize(
    ("kwargs", "match"), SHAPE_ERROR_CASES, ids=["ragged", "channel-axis", "count", "foreground", "1d", "nan"]
)
def test_pixel_metrics_reject_bad_input(func: Callable[..., object], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        func(**kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# evaluate_anomaly_detection


def test_evaluate_anomaly_detection_combines_all_metrics() -> None:
    masks, maps, foreground = _random_set(11, [(8, 8), (9, 7), (6, 6), (7, 8)], 2)
    masks[0][:2, :2] = 1  # first image anomalous, last image normal
    masks[-1][:] = 0
    labels = [int(np.any(m > 0)) for m in masks]
    scores = [float(np.max(s)) for s in maps]
    out = evaluate_anomaly_detection(
        labels, scores, masks, maps, image_threshold=1.0, pixel_threshold=0.9, foreground=foreground, fpr_limit=0.3
    )
    image = image_metrics(labels, scores, threshold=1.0)
    assert {k: out[f"image_{k}"] for k in image} == pytest.approx(image)
    assert out["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps), abs=1e-12)
    assert out["aupro"] == pytest.approx(aupro(masks, maps, fpr_limit=0.3), abs=1e-12)
    dice = dice_scores(masks, maps, threshold=0.9)
    assert out["best_dice"] == pytest.approx(dice["best_dice"])
    assert out["dice"] == pytest.approx(dice["dice"])
    assert out["pixel_auroc_foreground"] == pytest.approx(pixel_auroc(masks, maps, foreground=foreground), abs=1e-12)
    assert out["aupro_foreground"] == pytest.approx(aupro(masks, maps, foreground=foreground), abs=1e-12)
    dice_fg = dice_scores(masks, maps, threshold=0.9, foreground=foreground)
    assert out["best_dice_foreground"] == pytest.approx(dice_fg["best_dice"])
    assert out["dice_foreground"] == pytest.approx(dice_fg["dice"])
    assert out["pixel_threshold"] == 0.9
    assert all(type(v) is float for v in out.values())
    assert json.loads(json.dumps(out)).keys() == out.keys()


def test_evaluate_anomaly_detection_image_only() -> None:
    # pairs (anomalous > normal): .7 > .2 yes, .1 > .2 no -> AUROC .5; no pixel or threshold keys
    out = evaluate_anomaly_detection([0, 1, 1], [0.2, 0.7, 0.1])
    expected_ap = average_precision_score([0, 1, 1], [0.2, 0.7, 0.1])
    assert out == pytest.approx({"image_auroc": 0.5, "image_ap": expected_ap})


EVALUATE_ERROR_CASES = [
    # masks without maps
    ({"masks": np.zeros((2, 3, 3))}, "masks and maps must be given together"),
    # foreground without masks
    ({"foreground": np.ones((2, 3, 3))}, "foreground was given without masks"),
    # bad limit
    ({"masks": np.zeros((2, 3, 3)), "maps": np.zeros((2, 3, 3)), "fpr_limit": 0.0}, "fpr_limit"),
]


@pytest.mark.parametrize(("kwargs", "match"), EVALUATE_ERROR_CASES, ids=["no-maps", "foreground-only", "limit"])
def test_evaluate_anomaly_detection_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate_anomaly_detection([0, 1], [0.1, 0.9], **kwargs)
