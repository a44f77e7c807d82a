"""Tests for tools/anomaly_kinds.py: each kind lies in the brain, has its documented mask and follows its seed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tests.tools.test_anatomy_lesions import _head
from tools.anomaly_kinds import (
    DISPLACEMENT_MASK_VOXELS,
    KIND_PARAMETERS,
    KINDS,
    implant_anomaly,
    implant_deformation,
    implant_texture,
)

SHAPE = (64, 64, 48)
SPACING = (2.0, 2.0, 2.0)
INTENSITY_KINDS = ("hyperintense", "hypointense", "texture", "foreign")


@pytest.fixture(scope="module")
def head() -> tuple[np.ndarray, np.ndarray]:
    return _head(0, SHAPE)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_inside_the_brain_with_an_exact_mask(head, kind: str, seed: int) -> None:
    volume, brain = head
    before = volume.copy()
    anomaly = implant_anomaly(kind, volume, brain, np.random.default_rng(seed), SPACING)
    np.testing.assert_array_equal(volume, before)  # input untouched
    assert anomaly.volume.dtype == volume.dtype and anomaly.volume.shape == SHAPE
    mask, region = anomaly.mask, anomaly.region
    changed = anomaly.volume != volume
    assert mask.sum() >= 20
    assert not (region & ~brain).any() and not (mask & ~region).any()  # everything inside the brain
    assert not (changed & ~region).any()  # outside the region nothing changed
    if kind in INTENSITY_KINDS:
        np.testing.assert_array_equal(region, mask)
        assert changed.sum() >= 0.8 * mask.sum()
    if kind in ("hyperintense", "hypointense"):
        np.testing.assert_array_equal(mask, changed)  # every blob voxel moved
    if kind == "hypointense":
        assert (anomaly.volume[mask] < volume[mask]).all()
        assert anomaly.volume[mask].mean() < volume[brain].mean() - 20
    if kind == "texture":  # the mean is kept, up to rounding to uint8
        assert abs(anomaly.volume[mask].astype(float).mean() - volume[mask].mean()) < 1.0
    if kind in ("deformation", "mass_effect"):
        assert changed.sum() > 0.5 * mask.sum()
    if kind == "deformation":  # resampling only: no value outside the range of the region's tissue
        assert volume[region].min() <= anomaly.volume[region].min() <= anomaly.volume[region].max()
        assert anomaly.volume[region].max() <= volume[region].max()
    if kind == "mass_effect":
        assert ((anomaly.volume.astype(int) - volume)[mask] > 30).sum() >= 20  # with a bright lesion


@pytest.mark.parametrize("kind", KINDS)
def test_reproducible_from_the_seed(head, kind: str) -> None:
    volume, brain = head
    first = implant_anomaly(kind, volume, brain, np.random.default_rng(7), SPACING)
    again = implant_anomaly(kind, volume, brain, np.random.default_rng(7), SPACING)
    other = implant_anomaly(kind, volume, brain, np.random.default_rng(8), SPACING)
    assert first.volume.tobytes() == again.volume.tobytes() and first.mask.tobytes() == again.mask.tobytes()
    assert first.volume.tobytes() != other.volume.tobytes() and first.mask.tobytes() != other.mask.tobytes()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_deformation_mask_is_the_displacement_above_half_a_voxel(head, seed: int) -> None:
    """On ramps (linear resampling is exact there), ``x - out(x)`` is the displacement field along each axis."""
    _, brain = head
    grid = np.indices(SHAPE, dtype=np.float32)
    results = [implant_deformation(grid[axis], brain, np.random.default_rng(seed), SPACING) for axis in range(3)]
    displacement = np.stack([grid[axis] - result.volume for axis, result in enumerate(results)])
    length = np.linalg.norm(displacement, axis=0)
    expected = ndimage.binary_fill_holes(length > DISPLACEMENT_MASK_VOXELS)
    borderline = np.abs(length - DISPLACEMENT_MASK_VOXELS) < 1e-3
    for result in results:
        np.testing.assert_array_equal(result.mask & ~borderline, expected & ~borderline)
        np.testing.assert_array_equal(result.region, results[0].region)
        assert (length[~result.region] == 0).all()
    assert length.max() > DISPLACEMENT_MASK_VOXELS  # a field that moves tissue, smoothly: neighbours move alike
    assert np.abs(np.diff(displacement, axis=1)).max() < 1.0


def test_texture_float_volume_keeps_the_blob_mean() -> None:
    volume, brain = _head(3, SHAPE)
    values = volume.astype(np.float32) * np.float32(3.7)
    for seed in range(4):
        anomaly = implant_texture(values, brain, np.random.default_rng(seed), SPACING)
        assert anomaly.volume.dtype == np.float32
        assert anomaly.volume[anomaly.mask].mean() == pytest.approx(values[anomaly.mask].mean(), abs=1e-3)
        assert (anomaly.volume[anomaly.mask] != values[anomaly.mask]).mean() > 0.99


def test_a_slice_twin_in_two_dimensions(head) -> None:
    volume, brain = head
    for kind in KINDS:
        rng = np.random.default_rng(0)
        anomaly = implant_anomaly(kind, volume[..., 24:25], brain[..., 24:25], rng, (1, 1, 1e6), radius_mm=(4.0, 6.0))
        assert anomaly.mask.any() and not (anomaly.region & ~brain[..., 24:25]).any(), kind


@pytest.mark.parametrize(
    ("kind", "parameters", "match"),
    [
        ("hypointense", {"contrast": (0.6, 0.4)}, "contrast: expected finite min <= max"),
        ("hypointense", {"contrast": (0.4, 1.5)}, "contrast: .*max <= 1"),
        ("texture", {"noise": (0.0, 0.5)}, "noise: .*min > 0"),
        ("texture", {"blur_mm": "wide"}, "blur_mm: expected a .min, max. pair"),
        ("deformation", {"strain": (0.5, 1.0)}, "strain: .*max < 1"),
        ("deformation", {"radius_mm": (60.0, 80.0)}, "does not fit inside the brain"),
        ("foreign", {"alpha": (0.5, 1.2)}, "alpha"),
        ("foreign", {"radius_mm": (40.0, 50.0)}, "does not fit inside the brain"),
        ("mass_effect", {"reach": (0.5, 2.0)}, "reach: .*min > 1"),
        ("texture", {"sharpness": (1, 2)}, "texture: unknown parameter 'sharpness'"),
        ("sparkle", {}, "unknown anomaly kind 'sparkle'"),
    ],
)
def test_parameters_out_of_range_and_unplaceable_anomalies(head, kind: str, parameters: dict, match: str) -> None:
    volume, brain = head
    with pytest.raises(ValueError, match=match):
        implant_anomaly(kind, volume, brain, np.random.default_rng(0), SPACING, **parameters)


def test_every_kind_lists_its_parameters() -> None:
    assert tuple(KIND_PARAMETERS) == KINDS
