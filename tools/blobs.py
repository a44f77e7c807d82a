"""Blobs inside a brain: the shapes and the intensity painting shared by the synthetic-anomaly tools.

:mod:`tools.anatomy_lesions` (hyperintense lesions) and :mod:`tools.anomaly_kinds` (the other kinds of the anomaly
suite) draw their anomalies from the same pieces:

- :func:`draw_blob` places an irregular ellipsoid (random anisotropic semi-axes, random 3D orientation, an outline cut
  by thresholded smooth noise) on a brain voxel deep enough for the whole ellipsoid to fit, so the blob lies inside
  the brain mask; :func:`blob_at` grows the same shape at a given centre;
- :func:`soft_edge_weight` gives a blob a weight that rises from its border towards its inside (a soft edge);
- :func:`implant_blobs` and :func:`paint` pull the voxels of weighted blobs towards a target intensity, brighter or
  darker, with a smooth heterogeneity.

Volumes are 3D; a 2D slice is a ``(H, W, 1)`` volume whose through-plane spacing is so large (e.g. ``1e6`` mm) that
only the in-plane depth limits where a blob fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tools.noise import smooth_noise

__all__ = [
    "EDGE_MM",
    "Blob",
    "accumulate",
    "blob_at",
    "brain_depth_mm",
    "cast_like",
    "check_inputs",
    "draw_blob",
    "implant_blobs",
    "paint",
    "pick_centre",
    "random_rotation",
    "soft_edge_weight",
]

EDGE_MM = (3.0, 6.0)
"""Range of the soft edge's width in millimetres: a blob's weight rises to its full value over this depth."""

_HETEROGENEITY = 0.08  # relative standard deviation of the smooth texture inside painted blobs


@dataclass(frozen=True)
class Blob:
    """One blob: its bounding box in the volume, its mask inside the box, its centre voxel and its semi-axes (mm)."""

    box: tuple[slice, slice, slice]
    mask: np.ndarray
    centre: tuple[int, int, int]
    semi_mm: np.ndarray

    def full_mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """The blob's mask on the whole volume grid."""
        mask = np.zeros(shape, dtype=bool)
        mask[self.box] = self.mask
        return mask


def check_inputs(volume: np.ndarray, brain: np.ndarray, spacing_mm: Sequence[float]) -> tuple[np.ndarray, ...]:
    """Validated ``(volume, brain, spacing)``: a real 3D array, a non-empty boolean brain mask, 3 positive spacings.

    Raises:
        ValueError: naming the argument that is out of range.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3 or not np.issubdtype(volume.dtype, np.number) or np.iscomplexobj(volume):
        msg = f"volume: expected a real 3D array, got shape {volume.shape} and dtype {volume.dtype}"
        raise ValueError(msg)
    brain = np.asarray(brain)
    if brain.shape != volume.shape:
        msg = f"brain: expected the volume's shape {volume.shape}, got {brain.shape}"
        raise ValueError(msg)
    brain = brain > 0
    if not brain.any():
        msg = "brain: the brain mask is empty"
        raise ValueError(msg)
    try:
        spacing = np.array([float(s) for s in spacing_mm], dtype=np.float64)
    except (TypeError, ValueError):
        msg = f"spacing_mm: expected 3 positive numbers, got {spacing_mm!r}"
        raise ValueError(msg) from None
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        msg = f"spacing_mm: expected 3 positive numbers, got {spacing_mm!r}"
        raise ValueError(msg)
    return volume, brain, spacing


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3D rotation matrix (from a normalised Gaussian quaternion)."""
    quaternion = rng.standard_normal(4)
    w, x, y, z = quaternion / max(float(np.linalg.norm(quaternion)), 1e-12)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float values to ``dtype``: integers are rounded and clipped to the type's range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def brain_depth_mm(brain: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in millimetres from each brain voxel to the nearest voxel outside the brain or the volume."""
    return ndimage.distance_transform_edt(np.pad(brain, 1), sampling=spacing)[(slice(1, -1),) * 3]


def box_around(centre: Sequence[int], half: Sequence[int], shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """The box of ``centre +- half`` voxels along each axis, clipped to the volume."""
    return tuple(
        slice(max(int(c) - int(h), 0), min(int(c) + int(h) + 1, int(n)))
        for c, h, n in zip(centre, half, shape, strict=True)
    )


def offsets_mm(box: tuple[slice, ...], centre: Sequence[int], spacing: np.ndarray) -> np.ndarray:
    """``(*box_shape, 3)`` offsets in millimetres of the box's voxels from ``centre``."""
    grids = np.meshgrid(
        *[(np.arange(s.start, s.stop) - c) * d for s, c, d in zip(box, centre, spacing, strict=True)], indexing="ij"
    )
    return np.stack(grids, axis=-1)


def pick_centre(rng: np.random.Generator, allowed: np.ndarray) -> tuple[int, int, int]:
    """A voxel drawn uniformly from the ``True`` voxels of ``allowed`` (which must have one)."""
    candidates = np.flatnonzero(allowed)
    return tuple(int(i) for i in np.unravel_index(candidates[rng.integers(candidates.size)], allowed.shape))


def blob_at(
    rng: np.random.Generator,
    brain: np.ndarray,
    spacing: np.ndarray,
    centre: tuple[int, int, int],
    semi_mm: np.ndarray,
) -> Blob:
    """Grow an irregular ellipsoid with semi-axes ``semi_mm`` in a random orientation at ``centre``.

    Thresholded smooth noise cuts its outline; the core (a third of the semi-axes) is always kept. The blob is
    intersected with ``brain`` and reduced to its component that holds the centre.
    """
    half = np.ceil(semi_mm.max() / spacing).astype(int) + 1
    box = box_around(centre, half, brain.shape)
    offsets = offsets_mm(box, centre, spacing) @ random_rotation(rng)  # mm, in the blob's own frame
    radial = np.sqrt(np.sum((offsets / semi_mm) ** 2, axis=-1))
    sigma = np.maximum(semi_mm.mean() / 3.0 / spacing, 1.0)
    rough = smooth_noise(rng, radial.shape, tuple(sigma))
    mask = ((radial < 1.0) & (radial + 0.25 * rough < 0.9)) | (radial < 0.35)
    mask &= brain[box]
    labels, _ = ndimage.label(mask)
    mask = labels == labels[tuple(int(c) - s.start for c, s in zip(centre, box, strict=True))]
    return Blob(box=box, mask=mask, centre=centre, semi_mm=semi_mm)


def draw_blob(
    rng: np.random.Generator,
    brain: np.ndarray,
    depth_mm: np.ndarray,
    spacing: np.ndarray,
    radius_mm: tuple[float, float],
    shrink: bool = True,
) -> Blob:
    """Draw a blob (:func:`blob_at`) whose base radius lies in ``radius_mm``, entirely inside the brain.

    The semi-axes are 0.7-1.3 times the base radius; the centre is a voxel deeper in the brain (``depth_mm``, from
    :func:`brain_depth_mm`) than the longest semi-axis.

    Args:
        rng: random generator; it is advanced.
        brain: boolean brain mask.
        depth_mm: the brain's depth map.
        spacing: voxel size in millimetres.
        radius_mm: ``(min, max)`` base radius.
        shrink: when no voxel is deep enough, shrink the blob to fit at the deepest voxel; ``False`` raises instead.

    Raises:
        ValueError: with ``shrink=False``, when the blob fits nowhere in the brain.
    """
    semi_mm = rng.uniform(*radius_mm) * rng.uniform(0.7, 1.3, 3)
    allowed = depth_mm > semi_mm.max()  # voxels deep enough for the whole ellipsoid to fit
    if not allowed.any():
        deepest = float(depth_mm.max())
        if not shrink:
            msg = (
                f"the anomaly does not fit inside the brain: it needs a brain voxel {semi_mm.max():.1f} mm from the "
                f"brain's edge, the deepest is {deepest:.1f} mm"
            )
            raise ValueError(msg)
        semi_mm *= 0.9 * deepest / semi_mm.max()
        allowed = depth_mm >= deepest
    return blob_at(rng, brain, spacing, pick_centre(rng, allowed), semi_mm)


def soft_edge_weight(mask: np.ndarray, spacing: np.ndarray, edge_mm: float, floor: float = 0.45) -> np.ndarray:
    """Weight in ``(0, 1]`` inside ``mask``, 0 outside: ``floor`` at the border, rising to 1 at ``edge_mm`` deep."""
    inside = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[(slice(1, -1),) * 3]
    rise = round(1.0 - floor, 12)  # 0.55, not 0.5499999999999999, for floor 0.45
    return np.where(mask, floor + rise * np.clip(inside / edge_mm, 0.0, 1.0), 0.0).astype(np.float32)


def accumulate(weight: np.ndarray, target: np.ndarray, box: tuple[slice, ...], w: np.ndarray, value: float) -> None:
    """Add a blob's weight ``w`` (over ``box``) and target ``value`` where it is stronger than the blobs so far."""
    stronger = w > weight[box]
    weight[box] = np.where(stronger, w, weight[box])
    target[box] = np.where(stronger, np.float32(value), target[box])


def paint(
    volume: np.ndarray,
    values: np.ndarray,
    weight: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    spacing: np.ndarray,
    min_step: float,
    bright: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Pull the voxels of ``values`` where ``weight > 0`` towards ``target`` (times a smooth +-8 % heterogeneity).

    Each voxel moves by ``weight`` times the distance to its target, and by at least ``weight * min_step``, up
    (``bright``) or down; a darkened voxel stops at the volume's darkest value.

    Args:
        volume: the array the result is cast like (its dtype; voxels outside the blobs are copied from it).
        values: ``volume`` as float32 (or another float image on its grid) to paint on.
        weight: float32 blend weight, 0 outside the blobs.
        target: float32 target intensity of each blob voxel.
        rng: random generator for the heterogeneity; it is advanced.
        spacing: voxel size in millimetres.
        min_step: smallest change before the weight, in intensity units.
        bright: brighten (``True``) or darken.

    Returns:
        ``(painted, mask)``: the result with ``volume``'s dtype and the boolean mask of voxels that differ from
        ``volume``.
    """
    region = weight > 0
    heterogeneity = 1.0 + _HETEROGENEITY * smooth_noise(rng, values.shape, tuple(np.maximum(3.0 / spacing, 0.5)))
    painted_values = values.copy()
    if bright:
        increase = np.maximum(target * heterogeneity - values, np.float32(min_step))
        painted_values[region] += (weight * increase)[region]
    else:
        decrease = np.maximum(values - target * heterogeneity, np.float32(min_step))
        painted_values[region] -= (weight * decrease)[region]
        painted_values = np.maximum(painted_values, np.float32(values.min()))
    painted = volume.copy()
    painted[region] = cast_like(painted_values[region], volume.dtype)
    return painted, painted != volume


def implant_blobs(
    volume: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    spacing: np.ndarray,
    n_blobs: tuple[float, float],
    radius_mm: tuple[float, float],
    level: float,
    min_step: float,
    bright: bool = True,
    shrink: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``n_blobs`` (inclusive range) soft-edged blobs inside the brain towards ``level`` (jittered +-8 %).

    Inputs are validated by the caller (:func:`check_inputs`). Returns :func:`paint`'s ``(painted, mask)``.
    """
    shape = volume.shape
    values = volume.astype(np.float32)
    depth_mm = brain_depth_mm(brain, spacing)
    weight = np.zeros(shape, dtype=np.float32)  # in (0, 1] inside a blob: soft edge
    target = np.zeros(shape, dtype=np.float32)  # intensity each blob voxel is pulled towards
    for _ in range(int(rng.integers(int(n_blobs[0]), int(n_blobs[1]) + 1))):
        blob = draw_blob(rng, brain, depth_mm, spacing, radius_mm, shrink=shrink)
        w = soft_edge_weight(blob.mask, spacing, rng.uniform(*EDGE_MM))
        accumulate(weight, target, blob.box, w, level * rng.uniform(0.92, 1.08))
    return paint(volume, values, weight, target, rng, spacing, min_step, bright=bright)
