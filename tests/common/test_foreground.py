"""Tests for common.foreground: Otsu threshold, hole filling and the large connected components."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.foreground import MIN_COMPONENT_FRACTION, compute_foreground, keep_large_components


def _square_with_hole() -> np.ndarray:
    image = np.zeros((32, 32), np.float32)
    image[8:24, 8:24] = 1.0
    image[14:18, 14:18] = 0.0
    return image


def _two_blobs() -> np.ndarray:
    image = np.zeros((32, 32), np.float32)
    image[2:18, 2:18] = 0.9  # large: 256 pixels
    image[24:28, 24:28] = 1.0  # small and brighter: 16 pixels
    return image


def _brain_with_lobe() -> np.ndarray:
    """A large region and a separate one of 25% of its size (a temporal lobe in a low axial slice)."""
    image = np.zeros((32, 32), np.float32)
    image[2:18, 2:18] = 0.9  # 256 pixels
    image[22:30, 22:30] = 0.8  # 64 pixels
    return image


def _volume() -> np.ndarray:
    """A 3D box with noisy intensities and an internal cavity, plus a bright speck in a corner."""
    rng = np.random.default_rng(0)
    volume = np.zeros((20, 16, 12), np.float32)
    volume[3:17, 3:13, 2:10] = 0.8 + 0.1 * rng.random((14, 10, 8))
    volume[8:12, 6:10, 4:8] = 0.0  # cavity, fully enclosed in 3D
    volume[0, 0, 0] = 1.0  # speck
    return volume


def _expected_box(shape: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[box] = True
    return mask


CASES = [
    # square with a hole: the hole is filled
    (_square_with_hole, True, _expected_box((32, 32), (slice(8, 24), slice(8, 24)))),
    # a separate region of 25% of the largest one's size is kept
    (
        _brain_with_lobe,
        True,
        _expected_box((32, 32), (slice(2, 18), slice(2, 18))) | _expected_box((32, 32), (slice(22, 30), slice(22, 30))),
    ),
    # two blobs: the small one (6% of the largest) is dropped, even though it is brighter
    (_two_blobs, True, _expected_box((32, 32), (slice(2, 18), slice(2, 18)))),
    # two blobs without the component rule: both are kept
    (
        _two_blobs,
        False,
        _expected_box((32, 32), (slice(2, 18), slice(2, 18))) | _expected_box((32, 32), (slice(24, 28), slice(24, 28))),
    ),
    # 3D volume: the cavity is filled and the corner speck dropped
    (_volume, True, _expected_box((20, 16, 12), (slice(3, 17), slice(3, 13), slice(2, 10)))),
]
CASE_IDS = ["hole-filled", "lobe-kept", "largest-blob", "both-blobs", "volume-3d"]


@pytest.mark.parametrize(("make", "largest", "expected"), CASES, ids=CASE_IDS)
def test_compute_foreground(make, largest: bool, expected: np.ndarray) -> None:
    mask = compute_foreground(make(), min_component_fraction=MIN_COMPONENT_FRACTION if largest else 0.0)
    assert mask.dtype == bool
    assert mask.shape == expected.shape
    np.testing.assert_array_equal(mask, expected)


def test_torch_input_gives_numpy_mask() -> None:
    mask = compute_foreground(torch.from_numpy(_square_with_hole()))
    assert isinstance(mask, np.ndarray)
    assert int(mask.sum()) == 256


CONSTANT_CASES = [
    # all zeros, 2D
    np.zeros((8, 8), np.float32),
    # constant non-zero, 3D
    np.full((4, 5, 6), 0.7, np.float32),
]
CONSTANT_IDS = ["zeros-2d", "constant-3d"]


@pytest.mark.parametrize("image", CONSTANT_CASES, ids=CONSTANT_IDS)
def test_constant_image_is_all_foreground(image: np.ndarray) -> None:
    mask = compute_foreground(image)
    assert mask.dtype == bool and mask.shape == image.shape
    assert mask.all()


def test_component_fraction_bounds_what_is_kept() -> None:
    image = _brain_with_lobe()
    assert int(compute_foreground(image, min_component_fraction=1.0).sum()) == 256  # the largest alone
    assert int(compute_foreground(image, min_component_fraction=0.25).sum()) == 256 + 64
    assert int(compute_foreground(image, min_component_fraction=0.26).sum()) == 256
    with pytest.raises(ValueError, match="min_fraction"):
        keep_large_components(image > 0, 1.5)
