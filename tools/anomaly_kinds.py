"""The kinds of synthetic anomaly of the anomaly suite, each implanted in one real 3D volume (or 2D slice).

The kinds follow the synthetic-anomaly protocol of the MOOD challenge (Zimmerer et al., "MOOD 2020: A Public Benchmark
for Out-of-Distribution Detection and Localization on Medical Images", IEEE TMI 41(10), 2022): a healthy scan gets
one local anomaly, of a kind that changes one thing (intensity up or down, texture, geometry, tissue taken from
elsewhere), with an exact voxel mask. Each kind is one test class of the suite (:mod:`tools.anomaly_suite`):

``hyperintense``
    the lesions of :func:`tools.anatomy_lesions.implant_lesions` (1-3 bright, soft-edged, irregular blobs).
``hypointense``
    one such blob pulled darker, towards :data:`HYPOINTENSE_CONTRAST` times the brain's median intensity.
``texture``
    one blob whose texture changes while its mean intensity is kept: added fine grain (:data:`TEXTURE_NOISE`) or a
    blur (:data:`TEXTURE_BLUR_MM`), then the blob's mean change is removed.
``deformation``
    a local sink or source displacement field (tissue drawn towards or pushed away from a centre), no intensity
    change beyond linear resampling (:data:`DEFORMATION_RADIUS_MM`, :data:`DEFORMATION_STRAIN`).
``foreign``
    a patch of the same head from elsewhere in the brain, blended in with a soft border: Foreign Patch
    Interpolation (Tan et al., "Detecting Outliers with Foreign Patch Interpolation", MELBA 2022), in the spirit of
    CutPaste (Li et al., CVPR 2021) (:data:`FOREIGN_ALPHA`).
``mass_effect``
    a hyperintense lesion and the outward displacement of the tissue around it (:data:`MASS_LESION_RADIUS_MM`,
    :data:`MASS_REACH`, :data:`MASS_STRAIN`).

Masks: for ``hyperintense`` and ``hypointense`` the mask is exactly the set of voxels whose value changed (every
blob voxel changes, except a voxel already at the volume's darkest value); for ``texture`` and ``foreign`` it is the
blob (a blob voxel whose new value rounds to its old one stays in the mask); voxels outside the mask are unchanged
for these four kinds. For ``deformation`` the mask is the set of voxels displaced by more than
:data:`DISPLACEMENT_MASK_VOXELS` voxel (the displacement's length in voxel units along each axis), with the enclosed
centre, where a radial field is necessarily small, filled in; voxels outside the field's support (a ball inside the
brain) are unchanged, and voxels of the support displaced by less than the threshold may change a little by
resampling but are not in the mask. For ``mass_effect`` the mask is the union of the lesion's changed voxels and the
displacement mask. Every anomaly, and every voxel it reads from, lies inside the brain mask.

The parameters of each kind are ``(min, max)`` ranges drawn uniformly per anomaly; their defaults are the module
constants below and :data:`KIND_PARAMETERS` lists them by kind. :func:`implant_anomaly` implants any kind by name.

Texture and deformation are meant to be invisible to a threshold on intensity. Their ranges were checked on the
development heads (8 normal against 8 anomalous heads of the IXI training split, three seeds) with the yardstick of
``tests/tools/test_anomaly_suite.py``: image AUROC 0.53-0.66 in every polarity, close to that of unmodified heads
scored at the same slices (0.56-0.70), while the hyperintense kind reached 0.89-0.92 (bright). The first ranges
passed, so they stand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from tools.anatomy_lesions import DEFAULT_CONTRAST, implant_lesions
from tools.blobs import (
    EDGE_MM,
    accumulate,
    blob_at,
    box_around,
    brain_depth_mm,
    cast_like,
    check_inputs,
    draw_blob,
    implant_blobs,
    offsets_mm,
    paint,
    pick_centre,
    soft_edge_weight,
)
from tools.noise import check_rng, smooth_noise

__all__ = [
    "DEFORMATION_RADIUS_MM",
    "DEFORMATION_STRAIN",
    "DISPLACEMENT_MASK_VOXELS",
    "FOREIGN_ALPHA",
    "FOREIGN_RADIUS_MM",
    "HYPOINTENSE_CONTRAST",
    "HYPOINTENSE_RADIUS_MM",
    "KINDS",
    "KIND_PARAMETERS",
    "MASS_LESION_RADIUS_MM",
    "MASS_REACH",
    "MASS_STRAIN",
    "TEXTURE_BLUR_MM",
    "TEXTURE_NOISE",
    "TEXTURE_RADIUS_MM",
    "Anomaly",
    "implant_anomaly",
    "implant_deformation",
    "implant_foreign",
    "implant_hypointense",
    "implant_mass_effect",
    "implant_texture",
]

KINDS = ("hyperintense", "hypointense", "texture", "deformation", "foreign", "mass_effect")
"""The kinds, in the order the suite writes them; each is a test class folder."""

HYPOINTENSE_RADIUS_MM = (6.0, 15.0)
"""Base radius of the hypointense blob in millimetres, as for the hyperintense lesions."""
HYPOINTENSE_CONTRAST = (0.35, 0.55)
"""Target intensity of the hypointense blob as a multiple of the brain's median intensity.

On the IXI T1 heads the brain median lies between grey and white matter and the ventricles' CSF at about 0.3-0.5 of
it; a target of 0.35-0.55 times the median makes a blob as dark as CSF (a T1 "black hole", a cyst, necrosis), clearly
darker than any parenchyma, while every voxel darkens by at least 10 % of the median before the soft-edge weight.
"""

TEXTURE_RADIUS_MM = (8.0, 16.0)
"""Base radius of the texture blob in millimetres: larger than a lesion, so the texture spans a region."""
TEXTURE_NOISE = (0.3, 0.6)
"""Standard deviation of the added grain as a multiple of the brain's robust standard deviation (IQR / 1.349).

The grain is white noise smoothed over :data:`TEXTURE_GRAIN_MM`: finer than the tissue's own texture, zero-mean at any
scale above a couple of voxels, and weaker than the spread of brain intensities, so the blob's local mean and range
stay those of brain tissue while its texture (local variance at the voxel scale) changes.
"""
TEXTURE_GRAIN_MM = 1.5
"""Gaussian width of the grain in millimetres (0.75 voxel on 2 mm volumes)."""
TEXTURE_BLUR_MM = (2.0, 4.0)
"""Gaussian width of the blur in millimetres: the blob loses its fine texture (grey-white contrast, sulci)."""

DEFORMATION_RADIUS_MM = (16.0, 28.0)
"""Radius of the displacement field's support (a ball inside the brain) in millimetres."""
DEFORMATION_STRAIN = (0.35, 0.6)
"""Strength of the field: the relative stretch (source) or squeeze (sink) of the tissue at the centre.

The field is ``u(d) = +-s (1 - |d|^2 / R^2)^2 d`` for offsets ``|d| < R`` from the centre, zero outside: smooth
(continuous first derivatives at the support's edge), largest (``0.286 s R``, 1.6-4.8 mm with the defaults) at
``|d| = R / sqrt(5)``, and folding-free for ``s < 1`` (the Jacobian's eigenvalues stay above ``1 - s``).
"""
DISPLACEMENT_MASK_VOXELS = 0.5
"""A voxel is in a deformation's mask when its displacement exceeds this many voxels (holes filled)."""

FOREIGN_RADIUS_MM = (6.0, 15.0)
"""Base radius of the foreign patch in millimetres, as for the lesions."""
FOREIGN_ALPHA = (0.5, 1.0)
"""FPI's interpolation factor: the patch's share in the blend inside the blob (1: the patch replaces the tissue).

Towards the blob's border the share falls to a fifth of it (a soft border over :data:`tools.blobs.EDGE_MM`).
"""

MASS_LESION_RADIUS_MM = (5.0, 10.0)
"""Base radius of the mass effect's lesion in millimetres."""
MASS_REACH = (2.0, 2.5)
"""Radius of the mass effect's displacement field as a multiple of its lesion's base radius (the field is largest
at 0.45 times its radius: about the lesion's border)."""
MASS_STRAIN = (0.35, 0.6)
"""Strength of the mass effect's outward field (see :data:`DEFORMATION_STRAIN`)."""

_HYPO_MIN_DECREASE = 0.1  # smallest darkening, as a fraction of the brain median, before the edge weight
_FOREIGN_BORDER = 0.2  # the patch's share at the blob's border, as a fraction of alpha
_FIELD_PEAK = 0.2862  # max of t (1 - t^2)^2 over [0, 1] (at t = 1 / sqrt(5))
_MAD_IQR = 1.349  # IQR of a standard normal distribution

KIND_PARAMETERS: dict[str, dict[str, Any]] = {
    "hyperintense": {"n_lesions": (1, 3), "radius_mm": (6.0, 15.0), "contrast": DEFAULT_CONTRAST},
    "hypointense": {"radius_mm": HYPOINTENSE_RADIUS_MM, "contrast": HYPOINTENSE_CONTRAST},
    "texture": {"radius_mm": TEXTURE_RADIUS_MM, "noise": TEXTURE_NOISE, "blur_mm": TEXTURE_BLUR_MM},
    "deformation": {"radius_mm": DEFORMATION_RADIUS_MM, "strain": DEFORMATION_STRAIN},
    "foreign": {"radius_mm": FOREIGN_RADIUS_MM, "alpha": FOREIGN_ALPHA},
    "mass_effect": {"radius_mm": MASS_LESION_RADIUS_MM, "reach": MASS_REACH, "strain": MASS_STRAIN},
}
"""Each kind's parameters and their defaults (the keyword arguments of its ``implant_*`` function)."""


class Anomaly(NamedTuple):
    """One implanted anomaly.

    Attributes:
        volume: the volume with the anomaly, with the input's dtype.
        mask: boolean mask of the anomalous voxels (the module docstring says which, per kind).
        region: boolean mask of every voxel the anomaly may change (the mask for the intensity kinds; the support of
            the displacement field for ``deformation`` and ``mass_effect``); voxels outside it are unchanged.
    """

    volume: np.ndarray
    mask: np.ndarray
    region: np.ndarray


def _range(name: str, value: Sequence[float], lowest: float, highest: float = np.inf) -> tuple[float, float]:
    """A validated ``(min, max)`` pair with ``lowest < min <= max < highest`` (``max <= 1`` when ``highest`` is 1)."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        msg = f"{name}: expected a (min, max) pair of numbers, got {value!r}"
        raise ValueError(msg) from None
    top_ok = high <= highest if highest == 1.0 else high < highest
    if not (np.isfinite(low) and np.isfinite(high)) or not lowest < low <= high or not top_ok:
        upper = f" and max {'<=' if highest == 1.0 else '<'} {highest:g}" if np.isfinite(highest) else ""
        msg = f"{name}: expected finite min <= max with min > {lowest:g}{upper}, got {value!r}"
        raise ValueError(msg)
    return low, high


def _robust_std(values: np.ndarray) -> float:
    q1, q3 = np.percentile(values, [25.0, 75.0])
    return max(float(q3 - q1) / _MAD_IQR, 1e-6)


def implant_hypointense(
    volume: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: Sequence[float],
    radius_mm: Sequence[float] = HYPOINTENSE_RADIUS_MM,
    contrast: Sequence[float] = HYPOINTENSE_CONTRAST,
) -> Anomaly:
    """One dark, soft-edged, irregular blob inside the brain (the hyperintense lesions' shape, darkened).

    Args:
        volume: 3D image (any real dtype); not modified.
        brain: brain mask of the same shape.
        rng: random generator; it is advanced.
        spacing_mm: voxel size in millimetres.
        radius_mm: ``(min, max)`` base radius.
        contrast: ``(min, max)`` target as a multiple of the brain's median (:data:`HYPOINTENSE_CONTRAST`).

    Raises:
        ValueError: for bad inputs, a parameter out of range, or a blob that fits nowhere in the brain.
    """
    check_rng(rng)
    volume, brain, spacing = check_inputs(volume, brain, spacing_mm)
    radius = _range("radius_mm", radius_mm, 0.0)
    low, high = _range("contrast", contrast, 0.0, 1.0)
    median = float(np.median(volume[brain].astype(np.float32)))
    if median <= 0:
        msg = f"the brain's median intensity is {median:g}: nothing to darken"
        raise ValueError(msg)
    level = median * rng.uniform(low, high)
    out, mask = implant_blobs(
        volume, brain, rng, spacing, (1, 1), radius, level, _HYPO_MIN_DECREASE * median, bright=False, shrink=False
    )
    return Anomaly(out, mask, mask)


def implant_texture(
    volume: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: Sequence[float],
    radius_mm: Sequence[float] = TEXTURE_RADIUS_MM,
    noise: Sequence[float] = TEXTURE_NOISE,
    blur_mm: Sequence[float] = TEXTURE_BLUR_MM,
) -> Anomaly:
    """One blob whose texture changes and whose mean intensity is kept: added grain or a blur, chosen at random.

    The change is weighted by a soft edge (0.45 at the border, 1 inside), then its weighted mean over the blob is
    removed, so the blob's mean intensity is the original's (up to rounding to the volume's dtype).

    Args:
        volume: 3D image (any real dtype); not modified.
        brain: brain mask of the same shape.
        rng: random generator; it is advanced.
        spacing_mm: voxel size in millimetres.
        radius_mm: ``(min, max)`` base radius.
        noise: ``(min, max)`` grain strength (:data:`TEXTURE_NOISE`).
        blur_mm: ``(min, max)`` blur width (:data:`TEXTURE_BLUR_MM`).

    Raises:
        ValueError: for bad inputs, a parameter out of range, or a blob that fits nowhere in the brain.
    """
    check_rng(rng)
    volume, brain, spacing = check_inputs(volume, brain, spacing_mm)
    radius = _range("radius_mm", radius_mm, 0.0)
    noise_range = _range("noise", noise, 0.0)
    blur_range = _range("blur_mm", blur_mm, 0.0)
    values = volume.astype(np.float32)
    blob = draw_blob(rng, brain, brain_depth_mm(brain, spacing), spacing, radius, shrink=False)
    weight = soft_edge_weight(blob.mask, spacing, rng.uniform(*EDGE_MM))
    local = values[blob.box]
    if rng.random() < 0.5:
        grain = smooth_noise(rng, local.shape, tuple(TEXTURE_GRAIN_MM / spacing))
        change = np.float32(rng.uniform(*noise_range) * _robust_std(values[brain])) * grain
    else:
        sigma = rng.uniform(*blur_range) / spacing
        pad = np.ceil(3.0 * sigma).astype(int)  # the blur reads this far around the blob
        outer = tuple(
            slice(max(b.start - p, 0), min(b.stop + p, n)) for b, p, n in zip(blob.box, pad, volume.shape, strict=True)
        )
        blurred = ndimage.gaussian_filter(values[outer], sigma, mode="nearest")
        inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(blob.box, outer, strict=True))
        change = blurred[inner] - local
    change = change * weight
    inside = blob.mask
    change[inside] -= weight[inside] * (change[inside].sum() / weight[inside].sum())
    out = volume.copy()
    box_out = out[blob.box]
    box_out[inside] = cast_like(local[inside] + change[inside], volume.dtype)
    mask = blob.full_mask(volume.shape)
    return Anomaly(out, mask, mask)


def _radial_field(
    box: tuple[slice, ...], centre: tuple[int, int, int], spacing: np.ndarray, radius: float, strain: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(u, support)`` over ``box``: the displacement in voxels ``(*box_shape, 3)`` and the ball where it acts."""
    offsets = offsets_mm(box, centre, spacing)
    t2 = np.sum(offsets**2, axis=-1) / radius**2
    support = t2 < 1.0
    profile = np.where(support, strain * (1.0 - t2) ** 2, 0.0)
    return (profile[..., None] * offsets) / spacing, support


def _warp(
    values: np.ndarray, box: tuple[slice, ...], u: np.ndarray, support: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``values`` at ``x - u(x)`` (linear) on the support; returns ``(warped values, displacement mask)``."""
    index = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"), axis=-1)
    coords = (index - u)[support].T
    warped = values.copy()
    box_values = warped[box]
    box_values[support] = ndimage.map_coordinates(values, coords, order=1, mode="nearest")
    displaced = ndimage.binary_fill_holes(np.linalg.norm(u, axis=-1) > DISPLACEMENT_MASK_VOXELS)
    return warped, displaced


def _field_centre(
    rng: np.random.Generator, brain: np.ndarray, spacing: np.ndarray, radius: float
) -> tuple[int, int, int]:
    """A brain voxel deep enough for a field of ``radius`` mm and its interpolation neighbours to lie in the brain."""
    depth_mm = brain_depth_mm(brain, spacing)
    margin = float(np.max(spacing[np.asarray(brain.shape) > 1]))
    allowed = depth_mm > radius + margin
    if not allowed.any():
        msg = (
            f"the anomaly does not fit inside the brain: a {radius:.1f} mm displacement field needs a brain voxel "
            f"{radius + margin:.1f} mm from the brain's edge, the deepest is {float(depth_mm.max()):.1f} mm"
        )
        raise ValueError(msg)
    return pick_centre(rng, allowed)


def _deform(
    volume: np.ndarray,
    values: np.ndarray,
    spacing: np.ndarray,
    centre: tuple[int, int, int],
    radius: float,
    strain: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply a radial field (``strain`` > 0: source, < 0: sink); ``(warped float values, mask, support)``."""
    half = np.ceil(radius / spacing).astype(int) + 1
    box = box_around(centre, half, volume.shape)
    u, support = _radial_field(box, centre, spacing, radius, strain)
    warped, displaced = _warp(values, box, u, support)
    shape = volume.shape
    mask, region = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    mask[box], region[box] = displaced & support, support
    if not mask.any():
        msg = (
            f"the displacement stays under {DISPLACEMENT_MASK_VOXELS} voxel everywhere (radius {radius:.1f} mm, "
            f"strain {abs(strain):.2f}): too weak for this voxel size"
        )
        raise ValueError(msg)
    return warped, mask, region


def implant_deformation(
    volume: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: Sequence[float],
    radius_mm: Sequence[float] = DEFORMATION_RADIUS_MM,
    strain: Sequence[float] = DEFORMATION_STRAIN,
) -> Anomaly:
    """A local sink or source displacement field (MOOD's sink/source deformations), resampled linearly.

    A source (``out(x) = in(x - u(x))`` with ``u`` pointing away from the centre) stretches the tissue near the centre
    and pushes it outward; a sink draws it inward. Sink or source is drawn with equal odds; the field is the one of
    :data:`DEFORMATION_STRAIN`, inside a ball of radius :data:`DEFORMATION_RADIUS_MM` that lies in the brain.

    Args:
        volume: 3D image (any real dtype); not modified.
        brain: brain mask of the same shape.
        rng: random generator; it is advanced.
        spacing_mm: voxel size in millimetres.
        radius_mm: ``(min, max)`` radius of the field's support.
        strain: ``(min, max)`` strength, ``0 < min <= max < 1``.

    Raises:
        ValueError: for bad inputs, a parameter out of range, a field that fits nowhere in the brain or one too weak
            to displace any voxel by :data:`DISPLACEMENT_MASK_VOXELS`.
    """
    check_rng(rng)
    volume, brain, spacing = check_inputs(volume, brain, spacing_mm)
    radius_range = _range("radius_mm", radius_mm, 0.0)
    strain_range = _range("strain", strain, 0.0, 1.0 - 1e-9)
    radius = rng.uniform(*radius_range)
    signed = rng.uniform(*strain_range) * (1.0 if rng.random() < 0.5 else -1.0)
    centre = _field_centre(rng, brain, spacing, radius)
    warped, mask, region = _deform(volume, volume.astype(np.float32), spacing, centre, radius, signed)
    out = volume.copy()
    out[region] = cast_like(warped[region], volume.dtype)
    return Anomaly(out, mask, region)


def implant_foreign(
    volume: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: Sequence[float],
    radius_mm: Sequence[float] = FOREIGN_RADIUS_MM,
    alpha: Sequence[float] = FOREIGN_ALPHA,
) -> Anomaly:
    """Foreign Patch Interpolation with a patch of the same head: ``x' = x + w (x_source - x)`` inside a blob.

    The blob is drawn as the lesions' (:func:`tools.blobs.draw_blob`); the patch comes from a second brain voxel at
    least two blob sizes away, deep enough for the shifted blob to lie in the brain too. ``w`` is FPI's factor
    ``alpha`` (:data:`FOREIGN_ALPHA`) times a soft border that rises from a fifth at the blob's edge to 1.

    Args:
        volume: 3D image (any real dtype); not modified.
        brain: brain mask of the same shape.
        rng: random generator; it is advanced.
        spacing_mm: voxel size in millimetres.
        radius_mm: ``(min, max)`` base radius of the patch.
        alpha: ``(min, max)`` interpolation factor, ``0 < min <= max <= 1``.

    Raises:
        ValueError: for bad inputs, a parameter out of range, or no room for the blob and its source in the brain.
    """
    check_rng(rng)
    volume, brain, spacing = check_inputs(volume, brain, spacing_mm)
    radius = _range("radius_mm", radius_mm, 0.0)
    alpha_range = _range("alpha", alpha, 0.0, 1.0)
    values = volume.astype(np.float32)
    depth_mm = brain_depth_mm(brain, spacing)
    blob = draw_blob(rng, brain, depth_mm, spacing, radius, shrink=False)
    reach = float(blob.semi_mm.max())
    grid = np.indices(volume.shape, dtype=np.float32)
    distance = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, blob.centre, spacing, strict=True)))
    allowed = (depth_mm > reach) & (distance >= 2.0 * reach)
    if not allowed.any():
        msg = f"no brain voxel {2.0 * reach:.1f} mm away from the foreign patch is deep enough to take it from"
        raise ValueError(msg)
    source = pick_centre(rng, allowed)
    shifted = tuple(
        slice(b.start + s - c, b.stop + s - c) for b, s, c in zip(blob.box, source, blob.centre, strict=True)
    )
    weight = rng.uniform(*alpha_range) * soft_edge_weight(
        blob.mask, spacing, rng.uniform(*EDGE_MM), floor=_FOREIGN_BORDER
    )
    inside = blob.mask
    local = values[blob.box]
    patch = values[shifted]
    out = volume.copy()
    box_out = out[blob.box]
    box_out[inside] = cast_like(local[inside] + weight[inside] * (patch[inside] - local[inside]), volume.dtype)
    mask = blob.full_mask(volume.shape)
    return Anomaly(out, mask, mask)


def implant_mass_effect(
    volume: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: Sequence[float],
    radius_mm: Sequence[float] = MASS_LESION_RADIUS_MM,
    reach: Sequence[float] = MASS_REACH,
    strain: Sequence[float] = MASS_STRAIN,
) -> Anomaly:
    """A hyperintense lesion and the tissue around it pushed outward (a source field centred on the lesion).

    The tissue is displaced first (:func:`implant_deformation`'s field, always a source, of radius ``reach`` times the
    lesion's base radius); then the lesion, shaped and painted like :func:`tools.anatomy_lesions.implant_lesions`'
    (target :data:`tools.anatomy_lesions.DEFAULT_CONTRAST` times the brain's 99th percentile), fills its centre.

    Args:
        volume: 3D image (any real dtype); not modified.
        brain: brain mask of the same shape.
        rng: random generator; it is advanced.
        spacing_mm: voxel size in millimetres.
        radius_mm: ``(min, max)`` base radius of the lesion.
        reach: ``(min, max)`` field radius as a multiple of the lesion's base radius, ``min > 1``.
        strain: ``(min, max)`` strength of the field, ``0 < min <= max < 1``.

    Raises:
        ValueError: for bad inputs, a parameter out of range or a field that fits nowhere in the brain.
    """
    check_rng(rng)
    volume, brain, spacing = check_inputs(volume, brain, spacing_mm)
    radius_range = _range("radius_mm", radius_mm, 0.0)
    reach_range = _range("reach", reach, 1.0)
    strain_range = _range("strain", strain, 0.0, 1.0 - 1e-9)
    lesion_radius = rng.uniform(*radius_range)
    semi_mm = lesion_radius * rng.uniform(0.7, 1.3, 3)
    field_radius = max(lesion_radius * rng.uniform(*reach_range), float(semi_mm.max()) * 1.05)
    signed = rng.uniform(*strain_range)
    centre = _field_centre(rng, brain, spacing, field_radius)
    values = volume.astype(np.float32)
    warped, displaced, region = _deform(volume, values, spacing, centre, field_radius, signed)
    blob = blob_at(rng, brain, spacing, centre, semi_mm)
    weight = np.zeros(volume.shape, dtype=np.float32)
    target = np.zeros(volume.shape, dtype=np.float32)
    scale = max(float(np.percentile(values[brain], 99.0)), 1e-6)
    accumulate(
        weight,
        target,
        blob.box,
        soft_edge_weight(blob.mask, spacing, rng.uniform(*EDGE_MM)),
        DEFAULT_CONTRAST * scale * rng.uniform(0.92, 1.08),
    )
    warped_volume = volume.copy()
    warped_volume[region] = cast_like(warped[region], volume.dtype)
    out, lesion = paint(warped_volume, warped_volume.astype(np.float32), weight, target, rng, spacing, 0.1 * scale)
    return Anomaly(out, displaced | lesion, region | lesion)


_IMPLANTERS = {
    "hypointense": implant_hypointense,
    "texture": implant_texture,
    "deformation": implant_deformation,
    "foreign": implant_foreign,
    "mass_effect": implant_mass_effect,
}


def implant_anomaly(
    kind: str,
    volume: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: Sequence[float],
    **parameters: Any,
) -> Anomaly:
    """Implant one anomaly of ``kind`` (one of :data:`KINDS`) with its parameters (:data:`KIND_PARAMETERS`).

    ``hyperintense`` runs :func:`tools.anatomy_lesions.implant_lesions`; its mask is also its region.

    Raises:
        ValueError: for an unknown kind or parameter, or any error of the kind's function.
    """
    if kind not in KIND_PARAMETERS:
        msg = f"unknown anomaly kind {kind!r}; the kinds are {', '.join(KINDS)}"
        raise ValueError(msg)
    unknown = sorted(set(parameters) - set(KIND_PARAMETERS[kind]))
    if unknown:
        msg = f"{kind}: unknown parameter {unknown[0]!r} (its parameters: {', '.join(KIND_PARAMETERS[kind])})"
        raise ValueError(msg)
    if kind == "hyperintense":
        out, mask = implant_lesions(volume, brain, rng, spacing_mm, **parameters)
        return Anomaly(out, mask, mask)
    return _IMPLANTERS[kind](volume, brain, rng, spacing_mm, **parameters)
