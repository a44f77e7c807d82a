"""The comparison of two paths' masks (``tests/comparisons.py``): differences are allowed at the threshold only."""

from __future__ import annotations

import numpy as np
import pytest

from tests.comparisons import (
    assert_maps_close,
    assert_masks_agree_off_threshold,
    assert_tables_close,
    near_threshold,
)

THRESHOLD = 0.5


def _map_and_mask() -> tuple[np.ndarray, np.ndarray]:
    score_map = np.linspace(0.0, 1.0, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    score_map[1, 2, 3] = np.float32(THRESHOLD) + np.float32(1e-7)  # one voxel a float rounding above the threshold
    return score_map, (score_map > THRESHOLD).astype(np.uint8)


def test_masks_that_differ_only_at_a_near_threshold_voxel_agree():
    score_map, mask = _map_and_mask()
    other = mask.copy()
    other[1, 2, 3] = 0  # another path put the voxel just below the threshold (or compared with >= rather than >)
    assert assert_masks_agree_off_threshold(other, mask, score_map, THRESHOLD) == 1
    assert assert_masks_agree_off_threshold(mask, mask, score_map, THRESHOLD) == 0


def test_masks_that_differ_at_a_voxel_far_from_the_threshold_fail():
    score_map, mask = _map_and_mask()
    other = mask.copy()
    other[3, 4, 5] = 0  # map value 1.0: no float path puts it below 0.5
    with pytest.raises(AssertionError, match=r"masks differ at 1 of 120 voxels off the threshold .*\[\[3, 4, 5\]\]"):
        assert_masks_agree_off_threshold(other, mask, score_map, THRESHOLD)


def test_masks_of_other_shapes_fail():
    score_map, mask = _map_and_mask()
    with pytest.raises(AssertionError):
        assert_masks_agree_off_threshold(mask[:-1], mask[:-1], score_map, THRESHOLD)


def test_the_band_around_the_threshold_scales_with_it():
    values = np.array([1000.0, 1000.05, 1000.2, 0.0, 1e-7])
    assert near_threshold(values, 1000.0).tolist() == [True, True, False, False, False]  # 1e-4 of 1000 is 0.1
    assert near_threshold(values, 0.0).tolist() == [False, False, False, True, True]  # atol 1e-6 around zero


def test_maps_close_within_the_stated_tolerance_only():
    score_map, _ = _map_and_mask()
    assert_maps_close(score_map * np.float32(1 + 5e-5), score_map)
    with pytest.raises(AssertionError):
        assert_maps_close(score_map * np.float32(1 + 5e-4), score_map)


def test_tables_agree_to_the_tolerance_and_text_exactly():
    header = ["file", "slice", "score"]
    assert_tables_close([header, ["a.nii", "0", "0.598096"]], [header, ["a.nii", "0", "0.598095"]])
    with pytest.raises(AssertionError):
        assert_tables_close([header, ["a.nii", "0", "0.61"]], [header, ["a.nii", "0", "0.598095"]])
    with pytest.raises(AssertionError):
        assert_tables_close([header, ["b.nii", "0", "0.598095"]], [header, ["a.nii", "0", "0.598095"]])
