"""Comparisons between two computation paths that need not agree to the last bit.

Two paths that compute the same anomaly map (batch inference and the MONAI Label server, one process and two,
eager and exported networks, one and several threads, a CPU with other vector kernels) add the same numbers in
another order and so differ in the last bits of float32. Maps are compared to a stated tolerance
(:func:`assert_maps_close`); masks thresholded from such maps may then differ where the map lies within that
tolerance of the threshold, and only there (:func:`assert_masks_agree_off_threshold`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "MAP_ATOL",
    "MAP_RTOL",
    "assert_maps_close",
    "assert_masks_agree_off_threshold",
    "assert_tables_close",
    "near_threshold",
]

MAP_RTOL = 1e-4
"""Relative tolerance between two paths' anomaly maps (float32 maps through deep networks, summed in another order)."""
MAP_ATOL = 1e-6
"""Absolute tolerance between two paths' anomaly maps, for values near zero."""


def assert_maps_close(actual: ArrayLike, expected: ArrayLike, rtol: float = MAP_RTOL, atol: float = MAP_ATOL) -> None:
    """Two paths' anomaly maps agree within ``atol + rtol * |expected|`` at every voxel (same shape)."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


def near_threshold(
    score_map: ArrayLike, threshold: float, rtol: float = MAP_RTOL, atol: float = MAP_ATOL
) -> np.ndarray:
    """Where ``score_map`` lies within ``atol + rtol * |threshold|`` of ``threshold``: the voxels whose side of the
    threshold another float path may flip."""
    values = np.asarray(score_map, dtype=np.float64)
    return np.abs(values - float(threshold)) <= atol + rtol * abs(float(threshold))


def assert_masks_agree_off_threshold(
    actual: ArrayLike,
    expected: ArrayLike,
    score_map: ArrayLike,
    threshold: float,
    rtol: float = MAP_RTOL,
    atol: float = MAP_ATOL,
) -> int:
    """Two masks of the same map at ``threshold`` agree at every voxel where the map is not within the tolerance of
    the threshold.

    Args:
        actual: one path's mask (nonzero: labelled).
        expected: the other path's mask, same shape.
        score_map: the map one of the masks was thresholded from (either path's: they agree within the tolerance).
        threshold: the pixel threshold both masks were taken at (``>`` or ``>=``: equality is near the threshold).
        rtol: relative tolerance around the threshold.
        atol: absolute tolerance around the threshold.

    Returns:
        The number of voxels where the masks differ (all of them near the threshold).

    Raises:
        AssertionError: when the shapes differ, or the masks differ at a voxel whose map value is off the threshold.
    """
    actual, expected, score_map = (np.asarray(a) for a in (actual, expected, score_map))
    assert actual.shape == expected.shape == score_map.shape, (actual.shape, expected.shape, score_map.shape)
    differ = (actual != 0) != (expected != 0)
    far = differ & ~near_threshold(score_map, threshold, rtol=rtol, atol=atol)
    if far.any():
        where = np.argwhere(far)[:5]
        values = [float(score_map[tuple(index)]) for index in where]
        msg = (
            f"masks differ at {int(far.sum())} of {far.size} voxels off the threshold {threshold!r} "
            f"(rtol {rtol}, atol {atol}); first at {where.tolist()} with map values {values}"
        )
        raise AssertionError(msg)
    return int(differ.sum())


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def assert_tables_close(
    actual: list[list[str]], expected: list[list[str]], rtol: float = MAP_RTOL, atol: float = MAP_ATOL
) -> None:
    """Two paths' CSV tables (e.g. ``scores.csv``) agree: same shape, text cells equal, numeric cells within
    ``atol + rtol * |expected|`` (scores are written to 6 significant digits from maps that agree to the tolerance)."""
    assert len(actual) == len(expected), f"{len(actual)} rows != {len(expected)} rows"
    for index, (got_row, want_row) in enumerate(zip(actual, expected, strict=True)):
        assert len(got_row) == len(want_row), f"row {index}: {got_row} != {want_row}"
        for got, want in zip(got_row, want_row, strict=True):
            got_value, want_value = _number(got), _number(want)
            if got_value is None or want_value is None:
                assert got == want, f"row {index}: {got_row} != {want_row}"
            else:
                assert abs(got_value - want_value) <= atol + rtol * abs(want_value), (
                    f"row {index}: {got_row} != {want_row}"
                )
