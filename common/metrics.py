"""Image- and pixel-level metrics for unsupervised anomaly detection.

All functions are plain numpy code (scikit-learn for the image-level ROC/PR and threshold metrics), so they run
without ignite and can be checked against scikit-learn on fixed vectors.

Pixel-level inputs (``masks``, ``maps`` and the optional ``foreground``) are given per image, either as one stacked
array whose first axis indexes the images, e.g. ``(N, H, W)``, or as a sequence of arrays whose shapes may differ
between images (2D slices of different sizes, 3D volumes). Each map must have the shape of its mask. A mask marks
anomalous pixels where it is ``> 0``; a foreground mask keeps the pixels where it is ``> 0``. Higher scores mean more
anomalous, and a pixel or an image is predicted anomalous when its score is strictly greater than the threshold
(``score > threshold``), which matches thresholds calibrated as a quantile of normal scores.

Undefined values are returned as ``nan`` rather than raising: AUROC and AP when only one class is present, AUPRO
when there is no anomalous region or no normal pixel, a ratio whose denominator is zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

__all__ = ["aupro", "dice_scores", "evaluate_anomaly_detection", "image_metrics", "pixel_auroc"]

ArrayStack = np.ndarray | Sequence[np.ndarray]

_PIXEL_KEYS = ("pixel_auroc", "aupro", "best_dice", "best_dice_threshold", "dice")


# ----------------------------------------------------------------------------------------------------------------------
# input handling


def _as_items(arrays: ArrayStack, name: str) -> list[np.ndarray]:
    """Split a stacked array ``(N, ...)`` or a sequence of arrays into a list of per-image arrays."""
    if isinstance(arrays, (list, tuple)):
        items = [np.asarray(a) for a in arrays]
    else:
        stacked = np.asarray(arrays)
        if stacked.ndim < 2:
            msg = (
                f"{name} must be a stacked array (N, ...) with at least 2 dimensions or a sequence of arrays, "
                f"got an array of shape {stacked.shape}; wrap a single image in a list: [{name}]"
            )
            raise ValueError(msg)
        items = list(stacked)
    if not items:
        msg = f"{name} is empty: expected at least one image"
        raise ValueError(msg)
    for i, item in enumerate(items):
        if item.ndim < 1:
            msg = f"{name}[{i}] is a scalar: expected an array with at least 1 dimension"
            raise ValueError(msg)
        if not (np.issubdtype(item.dtype, np.number) or item.dtype == np.bool_):
            msg = f"{name}[{i}] has dtype {item.dtype}: expected a numeric or boolean array"
            raise ValueError(msg)
    return items


def _check_same_shapes(ref: list[np.ndarray], ref_name: str, other: list[np.ndarray], other_name: str) -> None:
    """Raise ``ValueError`` unless ``other`` holds as many arrays as ``ref`` with the same shapes."""
    if len(ref) != len(other):
        msg = f"{ref_name} and {other_name} must hold the same number of images, got {len(ref)} and {len(other)}"
        raise ValueError(msg)
    for i, (a, b) in enumerate(zip(ref, other, strict=True)):
        if a.shape != b.shape:
            msg = (
                f"{ref_name}[{i}] has shape {a.shape} but {other_name}[{i}] has shape {b.shape}; "
                f"each of {other_name} must have the shape of the matching {ref_name}"
            )
            raise ValueError(msg)


@dataclass(frozen=True)
class _Pixels:
    """Pixels of a set of images, flattened and concatenated in image order.

    Attributes:
        scores: anomaly score of every pixel, float, shape ``(P,)``.
        anomalous: ground truth of every pixel (mask ``> 0``), bool, shape ``(P,)``.
        regions: connected-component id (unique over all images, from 1) of every anomalous pixel, in the order
            of ``scores[anomalous]``; ``None`` when regions were not requested.
    """

    scores: np.ndarray
    anomalous: np.ndarray
    regions: np.ndarray | None

    def subset(self, keep: np.ndarray) -> _Pixels:
        """Return the pixels where ``keep`` is true (regions keep their ids and may lose pixels)."""
        regions = None if self.regions is None else self.regions[keep[self.anomalous]]
        return _Pixels(self.scores[keep], self.anomalous[keep], regions)


def _label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a binary mask with full connectivity (8 in 2D, 26 in 3D)."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    labels, count = ndimage.label(mask, structure=structure)
    return labels, int(count)


def _collect_pixels(
    masks: ArrayStack, maps: ArrayStack, foreground: ArrayStack | None = None, with_regions: bool = False
) -> tuple[_Pixels, np.ndarray | None]:
    """Validate per-image masks, maps and foreground and flatten them into one set of pixels.

    Returns:
        The pixels and, when ``foreground`` is given, a boolean array ``(P,)`` marking the foreground pixels.

    Raises:
        ValueError: when the number of images or the shape of any image differs between the inputs, when a map holds
            NaN or infinite values, or when an input is empty.
    """
    mask_items = _as_items(masks, "masks")
    map_items = _as_items(maps, "maps")
    _check_same_shapes(mask_items, "masks", map_items, "maps")
    for i, item in enumerate(map_items):
        if not np.isfinite(item).all():
            msg = f"maps[{i}] contains NaN or infinite values: expected finite anomaly scores"
            raise ValueError(msg)
    if sum(item.size for item in mask_items) == 0:
        msg = "masks and maps hold no pixels: expected at least one pixel"
        raise ValueError(msg)

    # float16 is widened to float32 and integers to a float type that holds them exactly
    dtype = np.result_type(*(item.dtype for item in map_items), np.float32)
    scores = np.concatenate([item.ravel() for item in map_items]).astype(dtype, copy=False)
    binary = [item > 0 for item in mask_items]
    anomalous = np.concatenate([item.ravel() for item in binary])

    regions = None
    if with_regions:
        parts, offset = [], 0
        for item in binary:
            labels, count = _label_regions(item)
            parts.append(labels[item].astype(np.int64) + offset)
            offset += count
        regions = np.concatenate(parts)

    keep = None
    if foreground is not None:
        fg_items = _as_items(foreground, "foreground")
        _check_same_shapes(mask_items, "masks", fg_items, "foreground")
        keep = np.concatenate([(item > 0).ravel() for item in fg_items])
    return _Pixels(scores, anomalous, regions), keep


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        msg = f"fpr_limit must be in (0, 1], got {fpr_limit}"
        raise ValueError(msg)


# ----------------------------------------------------------------------------------------------------------------------
# exact threshold sweeps


@dataclass(frozen=True)
class _Ranking:
    """Pixels ranked once for exact sweeps over every threshold.

    Only the normal scores need a full sort: every curve used here moves along the FPR axis only where a normal
    level enters the predicted set, so each anomalous pixel is placed between normal levels by a binary search.

    Attributes:
        levels: distinct normal scores in ascending order, shape ``(m,)``.
        fp_ge: number of normal pixels with score ``>= levels[j]``, shape ``(m,)``.
        n_normal: number of normal pixels.
        below: per anomalous pixel (order of ``scores[anomalous]``), the number of levels strictly below its score.
        below_or_at: per anomalous pixel, the number of levels at or below its score.
        min_score: lowest score over all pixels (``inf`` when there is none).
    """

    levels: np.ndarray
    fp_ge: np.ndarray
    n_normal: int
    below: np.ndarray
    below_or_at: np.ndarray
    min_score: float

    @classmethod
    def build(cls, pixels: _Pixels) -> _Ranking:
        neg = np.sort(pixels.scores[~pixels.anomalous])
        starts = np.flatnonzero(np.concatenate(([True], neg[1:] != neg[:-1]))) if neg.size else np.zeros(0, int)
        levels = neg[starts]
        fp_ge = (neg.size - starts).astype(np.int64)  # pixels at or after the first occurrence of each level
        pos = pixels.scores[pixels.anomalous]
        below = np.searchsorted(levels, pos, side="left")
        below_or_at = np.searchsorted(levels, pos, side="right")
        min_score = min(float(neg[0]) if neg.size else np.inf, float(pos.min()) if pos.size else np.inf)
        return cls(levels, fp_ge, int(neg.size), below, below_or_at, min_score)

    def above(self, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Total weight of the anomalous pixels above each normal level.

        Args:
            weights: one weight per anomalous pixel, in the order of ``scores[anomalous]``; ``None`` counts pixels
                (exact integers).

        Returns:
            ``(mass_gt, mass_ge)``: the weight of the anomalous pixels with score ``> levels[j]`` and with score
            ``>= levels[j]``, each of shape ``(m,)``.
        """
        m = self.levels.size

        def suffix(index: np.ndarray) -> np.ndarray:
            # a pixel with `index` levels below it lies above levels[j] for every j < index
            hist = np.bincount(index, weights=weights, minlength=m + 1)
            return np.cumsum(hist[::-1])[::-1][1:]

        return suffix(self.below), suffix(self.below_or_at)

    def area(self, weights: np.ndarray | None, fpr_limit: float) -> float:
        """Exact area under the curve (FPR(t), weight of the anomalous pixels with score > t) up to ``fpr_limit``.

        Sweeping the threshold down, the anomalous pixels above the next normal level enter first (a vertical step,
        no area), then the normal pixels of that level together with the anomalous pixels tied with them (a straight
        segment, the linear interpolation that scikit-learn's ``roc_curve`` and the trapezoid rule also use). The
        segment crossing ``fpr_limit`` is cut there by linear interpolation. Needs at least one normal pixel.

        Args:
            weights: one weight per anomalous pixel, in the order of ``scores[anomalous]``; ``None`` counts pixels.
            fpr_limit: upper FPR bound, in ``(0, 1]``.
        """
        mass_gt, mass_ge = self.above(weights)
        # segment j (descending thresholds) runs from (fpr_lo[j], y_lo[j]) to (fpr_hi[j], y_hi[j])
        y_lo, y_hi = mass_gt[::-1], mass_ge[::-1]
        fpr_hi = self.fp_ge[::-1] / self.n_normal
        fpr_lo = np.concatenate(([0.0], fpr_hi[:-1]))
        full = int(np.searchsorted(fpr_hi, fpr_limit, side="right"))  # segments ending at or before the limit
        area = float(np.dot(fpr_hi[:full] - fpr_lo[:full], y_lo[:full] + y_hi[:full])) / 2.0
        if full < fpr_hi.size:  # fpr_lo[full] <= fpr_limit < fpr_hi[full]
            x0, x1, y0, y1 = fpr_lo[full], fpr_hi[full], y_lo[full], y_hi[full]
            y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += float((fpr_limit - x0) * (y0 + y_limit)) / 2.0
        return area


def _pixel_auroc(pixels: _Pixels, ranking: _Ranking) -> float:
    n_pos = int(pixels.anomalous.sum())
    if n_pos == 0 or ranking.n_normal == 0:
        return float("nan")
    return ranking.area(None, 1.0) / n_pos


def _aupro(pixels: _Pixels, ranking: _Ranking, fpr_limit: float) -> float:
    if pixels.regions is None:
        msg = "internal error: AUPRO needs the connected regions of the masks"
        raise RuntimeError(msg)
    sizes = np.bincount(pixels.regions)
    n_regions = int(np.count_nonzero(sizes))
    if n_regions == 0 or ranking.n_normal == 0:
        return float("nan")
    # each anomalous pixel of region r adds 1 / (|r| * n_regions) to PRO
    weights = 1.0 / (sizes[pixels.regions] * float(n_regions))
    return ranking.area(weights, fpr_limit) / fpr_limit


def _best_dice(pixels: _Pixels, ranking: _Ranking) -> tuple[float, float]:
    n_pos = int(pixels.anomalous.sum())
    if n_pos == 0:
        return float("nan"), float("nan")
    # Adding an anomalous pixel always raises 2TP / (TP + FP + n_pos), so the best set is {score > level} for a
    # normal level (all anomalous pixels above the next normal level included), or the set of every pixel.
    tp_gt, _ = ranking.above()
    fp_gt = np.concatenate((ranking.fp_ge[1:], [0]))  # normal pixels strictly above each level
    dice = 2.0 * tp_gt / (tp_gt + fp_gt + n_pos)
    dice_all = 2.0 * n_pos / (2.0 * n_pos + ranking.n_normal)
    if dice.size:
        j = dice.size - 1 - int(np.argmax(dice[::-1]))  # on ties, the highest level (the smallest predicted set)
        if dice[j] >= dice_all:
            return float(dice[j]), float(ranking.levels[j])
    dtype = ranking.levels.dtype.type
    return float(dice_all), float(np.nextafter(dtype(ranking.min_score), dtype(-np.inf)))


def _dice_at(pixels: _Pixels, threshold: float) -> float:
    predicted = pixels.scores > threshold
    tp = int(np.count_nonzero(predicted & pixels.anomalous))
    denominator = int(np.count_nonzero(predicted)) + int(np.count_nonzero(pixels.anomalous))
    return 2.0 * tp / denominator if denominator else float("nan")


def _pixel_metrics(
    pixels: _Pixels, threshold: float | None, fpr_limit: float, keys: Sequence[str] = _PIXEL_KEYS
) -> dict[str, float]:
    ranking = _Ranking.build(pixels)
    out: dict[str, float] = {}
    if "pixel_auroc" in keys:
        out["pixel_auroc"] = _pixel_auroc(pixels, ranking)
    if "aupro" in keys:
        out["aupro"] = _aupro(pixels, ranking, fpr_limit)
    if "best_dice" in keys:
        out["best_dice"], out["best_dice_threshold"] = _best_dice(pixels, ranking)
    if "dice" in keys and threshold is not None:
        out["dice"] = _dice_at(pixels, threshold)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# public API


def image_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """Image-level (slice- or volume-level) detection metrics.

    ``auroc`` is the area under the ROC curve and ``ap`` the average precision, both from scikit-learn
    (``roc_auc_score``, ``average_precision_score``). When ``threshold`` is given, an image is predicted anomalous
    when ``score > threshold`` and the confusion counts give ``f1``, ``accuracy``, ``recall`` (TP / (TP + FN)),
    ``precision`` (TP / (TP + FP)) and ``specificity`` (TN / (TN + FP)), again from scikit-learn.

    Args:
        labels: ground truth per image, 0 (normal) or 1 (anomalous), any shape, flattened.
        scores: anomaly score per image (higher = more anomalous), as many as ``labels``.
        threshold: decision threshold, e.g. the one calibrated on normal data; ``None`` skips the threshold metrics.

    Returns:
        ``{"auroc", "ap"}`` plus, with a threshold, ``{"f1", "accuracy", "recall", "precision", "specificity",
        "threshold"}``, as Python floats. ``auroc`` and ``ap`` are ``nan`` when only one class is present; a ratio
        whose denominator is zero (e.g. recall without anomalous images) is ``nan``.

    Raises:
        ValueError: when the labels are not binary, the lengths differ, the inputs are empty or a score is not finite.

    Example:
        >>> image_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], threshold=0.5)["recall"]
        0.5
    """
    y = np.asarray(labels).ravel()
    s = np.asarray(scores).ravel()
    if y.size != s.size:
        msg = (
            f"labels and scores must have one value per image, got {y.size} labels (shape {np.shape(labels)}) "
            f"and {s.size} scores (shape {np.shape(scores)})"
        )
        raise ValueError(msg)
    if y.size == 0:
        msg = "labels and scores are empty: expected at least one image"
        raise ValueError(msg)
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number) or not np.isin(y, (0, 1)).all():
        msg = f"labels must be binary (0 = normal, 1 = anomalous), got values {np.unique(y)[:10].tolist()}"
        raise ValueError(msg)
    y = y.astype(np.int64)
    if s.dtype == np.bool_:
        s = s.astype(np.float64)
    if not np.issubdtype(s.dtype, np.number):
        msg = f"scores must be numbers, got an array of dtype {s.dtype}"
        raise ValueError(msg)
    if not np.isfinite(s).all():
        msg = f"scores must be finite, got non-finite values {s[~np.isfinite(s)][:5].tolist()}"
        raise ValueError(msg)

    both_classes = 0 < int(y.sum()) < y.size
    out = {
        "auroc": float(roc_auc_score(y, s)) if both_classes else float("nan"),
        "ap": float(average_precision_score(y, s)) if both_classes else float("nan"),
    }
    if threshold is not None:
        predicted = (s > threshold).astype(np.int64)
        out["f1"] = float(f1_score(y, predicted, zero_division=np.nan))
        out["accuracy"] = float(accuracy_score(y, predicted))
        out["recall"] = float(recall_score(y, predicted, zero_division=np.nan))
        out["precision"] = float(precision_score(y, predicted, zero_division=np.nan))
        out["specificity"] = float(recall_score(y, predicted, pos_label=0, zero_division=np.nan))
        out["threshold"] = float(threshold)
    return out


def pixel_auroc(masks: ArrayStack, maps: ArrayStack, foreground: ArrayStack | None = None) -> float:
    """Pixel-level AUROC over all pixels of all images (or over the foreground pixels).

    The ROC curve is swept exactly over every distinct score with ties counted together and integrated with the
    trapezoid rule, which gives the same value as ``sklearn.metrics.roc_auc_score`` on the flattened arrays while
    sorting only the normal scores (several times faster on the ~10^7 pixels of a test set).

    Args:
        masks: ground-truth masks, ``(N, ...)`` or a sequence of arrays; anomalous where ``> 0``.
        maps: anomaly maps with the shape of their masks; higher = more anomalous.
        foreground: optional masks with the same shapes; only pixels where ``> 0`` are evaluated.

    Returns:
        The AUROC, ``nan`` when the evaluated pixels hold only one class.

    Raises:
        ValueError: when shapes or image counts differ (the message names the image index and both shapes), or when
            a map is not finite.
    """
    pixels, keep = _collect_pixels(masks, maps, foreground)
    if keep is not None:
        pixels = pixels.subset(keep)
    return _pixel_metrics(pixels, None, 1.0, keys=("pixel_auroc",))["pixel_auroc"]


def aupro(masks: ArrayStack, maps: ArrayStack, fpr_limit: float = 0.3, foreground: ArrayStack | None = None) -> float:
    """Normalised area under the per-region overlap (PRO) curve up to a false-positive rate.

    Bergmann, Batzner, Fauser, Sattlegger, Steger, "The MVTec Anomaly Detection Dataset: A Comprehensive Real-World
    Dataset for Unsupervised Anomaly Detection", IJCV 129, 2021 (https://doi.org/10.1007/s11263-020-01400-4), with
    PRO as introduced in Bergmann et al., "Uninformed Students", CVPR 2020 (https://arxiv.org/abs/1911.02357).

    The anomalous regions are the connected components of each mask, labelled per image with full connectivity:
    8-connectivity for 2D images and 26-connectivity for 3D volumes (pass volumes as a sequence of 3D arrays; a
    stacked ``(N, H, W)`` array is labelled slice by slice). For a threshold ``t`` (pixel predicted anomalous when
    ``score > t``)::

        PRO(t) = 1 / R * sum_r |{p in r : score(p) > t}| / |r|      (mean over all R regions of all images)
        FPR(t) = |{p normal : score(p) > t}| / |{p normal}|          (over all normal pixels of all images)

    The curve ``(FPR(t), PRO(t))`` is computed exactly over every distinct score (ties enter together, joined by a
    straight segment), integrated with the trapezoid rule from FPR 0 to ``fpr_limit`` (the curve is interpolated at
    exactly ``fpr_limit``) and divided by ``fpr_limit``, so a perfect detector scores 1.

    With ``foreground``, only foreground pixels count: the regions are still the components of the full mask, their
    sizes count their foreground pixels, and a region with no foreground pixel is dropped.

    Args:
        masks: ground-truth masks, ``(N, ...)`` or a sequence of arrays; anomalous where ``> 0``.
        maps: anomaly maps with the shape of their masks; higher = more anomalous.
        fpr_limit: upper FPR bound of the integration, in ``(0, 1]``; 0.3 as in Bergmann et al.
        foreground: optional masks with the same shapes; only pixels where ``> 0`` are evaluated.

    Returns:
        The normalised AUPRO in ``[0, 1]``, ``nan`` when there is no anomalous region or no normal pixel.

    Raises:
        ValueError: when ``fpr_limit`` is outside ``(0, 1]``, shapes or image counts differ, or a map is not finite.
    """
    _check_fpr_limit(fpr_limit)
    pixels, keep = _collect_pixels(masks, maps, foreground, with_regions=True)
    if keep is not None:
        pixels = pixels.subset(keep)
    return _pixel_metrics(pixels, None, fpr_limit, keys=("aupro",))["aupro"]


def dice_scores(
    masks: ArrayStack, maps: ArrayStack, threshold: float | None = None, foreground: ArrayStack | None = None
) -> dict[str, float]:
    """Dice similarity coefficient of the thresholded maps, best over all thresholds and at a given threshold.

    ``Dice = 2 TP / (2 TP + FP + FN)`` over all (foreground) pixels of all images, a pixel being predicted anomalous
    when ``map > threshold``. The best Dice over every threshold (the ``[DSC]`` of Baur et al., "Autoencoders for
    Unsupervised Anomaly Segmentation in Brain MR Images: A Comparative Study", MedIA 2021,
    https://arxiv.org/abs/2004.03271) is found exactly by sweeping every distinct score. It is an upper bound that
    uses the ground truth, reported next to the Dice at a threshold calibrated on normal data.

    Args:
        masks: ground-truth masks, ``(N, ...)`` or a sequence of arrays; anomalous where ``> 0``.
        maps: anomaly maps with the shape of their masks; higher = more anomalous.
        threshold: optional calibrated pixel threshold for ``"dice"``.
        foreground: optional masks with the same shapes; only pixels where ``> 0`` are evaluated.

    Returns:
        ``{"best_dice", "best_dice_threshold"}`` plus ``"dice"`` when ``threshold`` is given. ``map >
        best_dice_threshold`` reproduces the best Dice; when several thresholds tie, the highest is returned. Values
        are ``nan`` when there is no anomalous pixel (``dice`` is 0 there if some pixel is predicted anomalous).

    Raises:
        ValueError: when shapes or image counts differ, or a map is not finite.
    """
    pixels, keep = _collect_pixels(masks, maps, foreground)
    if keep is not None:
        pixels = pixels.subset(keep)
    return _pixel_metrics(pixels, threshold, 1.0, keys=("best_dice", "dice"))


def evaluate_anomaly_detection(
    image_labels: np.ndarray,
    image_scores: np.ndarray,
    masks: ArrayStack | None = None,
    maps: ArrayStack | None = None,
    image_threshold: float | None = None,
    pixel_threshold: float | None = None,
    foreground: ArrayStack | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """All detection and segmentation metrics in one flat, JSON-serialisable dictionary.

    Image level: the keys of :func:`image_metrics` prefixed with ``"image_"`` (``image_auroc``, ``image_ap`` and,
    with ``image_threshold``, ``image_f1``, ``image_accuracy``, ``image_recall``, ``image_precision``,
    ``image_specificity``, ``image_threshold``).

    Pixel level, when ``masks`` and ``maps`` are given, over all pixels (as anomalib and most papers report):
    ``pixel_auroc`` (:func:`pixel_auroc`), ``aupro`` (:func:`aupro` up to ``fpr_limit``), ``best_dice`` and
    ``best_dice_threshold`` (:func:`dice_scores`) and, with ``pixel_threshold``, ``dice`` and ``pixel_threshold``.
    When ``foreground`` is given, the same pixel metrics restricted to the foreground follow with the suffix
    ``"_foreground"`` (``pixel_auroc_foreground``, ``aupro_foreground``, ...). The pixels are flattened, labelled
    and validated once for all of them.

    Args:
        image_labels: 0/1 label per image (slice or volume).
        image_scores: anomaly score per image.
        masks: ground-truth masks, ``(N, ...)`` or a sequence of arrays; anomalous where ``> 0``.
        maps: anomaly maps with the shape of their masks.
        image_threshold: calibrated image threshold (image anomalous when ``score > image_threshold``).
        pixel_threshold: calibrated pixel threshold (pixel anomalous when ``map > pixel_threshold``).
        foreground: optional foreground masks with the shapes of ``masks``.
        fpr_limit: FPR bound for AUPRO, in ``(0, 1]``.

    Returns:
        A flat ``dict[str, float]`` of Python floats (``nan`` where a metric is undefined).

    Raises:
        ValueError: when only one of ``masks`` and ``maps`` is given, ``foreground`` comes without them, or any input
            fails the checks of the functions above.
    """
    _check_fpr_limit(fpr_limit)
    if (masks is None) != (maps is None):
        given, missing = ("masks", "maps") if maps is None else ("maps", "masks")
        msg = f"masks and maps must be given together for pixel metrics, got {given} but {missing}=None"
        raise ValueError(msg)
    if foreground is not None and masks is None:
        msg = "foreground was given without masks and maps: pixel metrics need masks and maps"
        raise ValueError(msg)

    out = {f"image_{k}": v for k, v in image_metrics(image_labels, image_scores, image_threshold).items()}
    if masks is None:
        return out
    pixels, keep = _collect_pixels(masks, maps, foreground, with_regions=True)
    pixel_out = _pixel_metrics(pixels, pixel_threshold, fpr_limit)
    if keep is not None:
        inside = _pixel_metrics(pixels.subset(keep), pixel_threshold, fpr_limit)
        pixel_out |= {f"{k}_foreground": v for k, v in inside.items()}
    if pixel_threshold is not None:
        pixel_out["pixel_threshold"] = float(pixel_threshold)
    out |= {k: float(v) for k, v in pixel_out.items()}
    return out
