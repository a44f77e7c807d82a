"""Brain-like MRI phantoms with synthetic lesions: a demo dataset that needs no download.

Each subject is an axial FLAIR-like head rendered from a random anatomy:

- an elliptical head (random size, aspect ratio, rotation and centre) whose outline is deformed by a smooth random
  periodic function of the polar angle; in 3D the cross-section tapers towards both ends of the axial axis;
- from outside in: a scalp layer, a bright skull ring of varying thickness, a dark CSF layer;
- brain parenchyma with a grey-matter cortex ribbon that follows radial gyri and sulci (dark CSF clefts), white matter
  underneath, an interhemispheric fissure, two deep grey nuclei and two lateral ventricles (dark lobes near the centre
  whose size varies between subjects and, in 3D, along the axial axis);
- partial-volume blur, a smooth multiplicative texture, a low-frequency bias field and Rician noise.

Abnormal subjects get 1 to 3 hyperintense lesions (like a tumour or oedema on FLAIR): ellipsoids cut by thresholded
smooth noise, placed inside the parenchyma, brighter than white matter, heterogeneous and with a soft edge. The lesion
mask is exactly the set of pixels whose intensity was changed, and the same subject rendered without lesions differs
from the abnormal one only there (see :func:`make_subject_pair`).

:func:`write_dataset` writes the folders of the dataset layout in ``docs/design.md`` (``train/good``, ``test/good``,
``test/lesion``, ``ground_truth/lesion`` and, for 3D, ``brain_mask/<class>``).

Example:
    Write a small 2D set and a small 3D set::

        python -m tools.phantoms demo_data/phantoms_2d --n-train 40
        python -m tools.phantoms demo_data/phantoms_3d --dims 3 --size 96 --depth 48 --n-train 10

    With ``--from-volumes`` the command writes real anatomy instead: healthy 3D volumes split by subject into training,
    normal test and lesioned test volumes, the last with synthetic lesions inside the brain
    (:func:`tools.anatomy_lesions.write_anatomy_dataset`; raw scans, brain masks only with ``--with-brain-masks``)::

        python -m tools.phantoms demo_data/ixi_t1_lesions --from-volumes DATA/ixi_t1 --n-train 16
"""

from __future__ import annotations

import argparse
import gzip
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

from common.io import atomic_output
from tools.noise import check_rng, smooth_noise

__all__ = [
    "SPACING_MM",
    "main",
    "make_slice",
    "make_subject_pair",
    "make_volume",
    "volume_affine",
    "write_dataset",
]

SPACING_MM: tuple[float, float, float] = (1.2, 1.2, 2.0)
"""Voxel size of the 3D phantoms in millimetres (in-plane, in-plane, axial)."""

_MIN_SIZE = 32
_MIN_DEPTH = 8

# FLAIR-like tissue intensities before bias field and noise (each is jittered per subject).
_INTENSITY = {
    "scalp": 0.42,
    "table": 0.12,
    "skull": 0.74,
    "csf": 0.06,
    "grey": 0.56,
    "white": 0.38,
    "deep": 0.48,
    "ventricle": 0.04,
}


@dataclass(frozen=True)
class _Grid:
    """Sampling grid of a phantom.

    ``x`` runs left to right, ``y`` posterior to anterior, both normalised so that half of the (smaller) in-plane field
    of view is 1; ``z`` runs inferior to superior in [-1, 1] over the volume, or is the level of a 2D slice.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray | float
    shape: tuple[int, ...]
    px: float  # pixels per normalised in-plane unit
    z_ratio: float | None  # axial voxels per in-plane pixel of the same physical length; None in 2D

    def sigma_px(self, pixels: float) -> tuple[float, ...]:
        """Per-axis Gaussian sigma (voxels) for an isotropic physical width of ``pixels`` in-plane pixels."""
        if self.z_ratio is None:
            return (pixels, pixels)
        return (pixels, pixels, pixels * self.z_ratio)

    def sigma(self, length: float) -> tuple[float, ...]:
        """Per-axis Gaussian sigma (voxels) for a width ``length`` in normalised in-plane units."""
        return self.sigma_px(length * self.px)


@dataclass(frozen=True)
class _Subject:
    """One rendered subject: noiseless image, tissue masks and the acquisition draws shared by its variants."""

    clean: np.ndarray  # float32 image before bias field and noise
    brain: np.ndarray  # bool brain mask (parenchyma, sulci, fissure and ventricles)
    parenchyma: np.ndarray  # bool, where lesions may grow
    depth: np.ndarray  # depth below the brain surface, normalised in-plane units
    bias: np.ndarray  # float32 multiplicative bias field
    noise: tuple[np.ndarray, np.ndarray]  # float32 real and imaginary noise, already scaled


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Validate a 2D ``(size, size)`` or 3D ``(H, W, D)`` phantom shape and return it as a tuple of ints."""
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        msg = f"shape: expected a tuple of 2 or 3 ints, got {shape!r}"
        raise ValueError(msg) from None
    if len(shape) not in (2, 3):
        msg = f"shape: expected 2 (2D) or 3 (3D) dimensions, got {len(shape)} in {shape}"
        raise ValueError(msg)
    if min(shape[:2]) < _MIN_SIZE:
        msg = f"shape: in-plane size must be >= {_MIN_SIZE}, got {shape[:2]}"
        raise ValueError(msg)
    if len(shape) == 3 and shape[2] < _MIN_DEPTH:
        msg = f"shape: depth (last axis) must be >= {_MIN_DEPTH}, got {shape[2]}"
        raise ValueError(msg)
    return shape


def _grid(rng: np.random.Generator, shape: tuple[int, ...]) -> _Grid:
    """Build the sampling grid; a 2D slice draws its axial level from ``rng``."""
    half = (min(shape[:2]) - 1) / 2.0
    if len(shape) == 2:
        rows = (np.arange(shape[0], dtype=np.float32) - (shape[0] - 1) / 2.0) / half
        cols = (np.arange(shape[1], dtype=np.float32) - (shape[1] - 1) / 2.0) / half
        # Image convention: anterior at the top row, subject's left-right along the columns.
        return _Grid(
            x=cols[None, :], y=-rows[:, None], z=float(rng.uniform(-0.25, 0.2)), shape=shape, px=half, z_ratio=None
        )
    i = (np.arange(shape[0], dtype=np.float32) - (shape[0] - 1) / 2.0) / half
    j = (np.arange(shape[1], dtype=np.float32) - (shape[1] - 1) / 2.0) / half
    k = np.linspace(-1.0, 1.0, shape[2], dtype=np.float32)
    z_ratio = SPACING_MM[0] / SPACING_MM[2]
    return _Grid(x=i[:, None, None], y=j[None, :, None], z=k[None, None, :], shape=shape, px=half, z_ratio=z_ratio)


def _periodic(rng: np.random.Generator, phi: np.ndarray, z: np.ndarray | float, k_min: int, k_max: int) -> np.ndarray:
    """Smooth random function of the polar angle ``phi`` (unit standard deviation) that drifts linearly along ``z``."""
    ks = np.arange(k_min, k_max + 1)
    a0 = rng.standard_normal(ks.size) / ks
    a1 = 0.5 * rng.standard_normal(ks.size) / ks
    phase = rng.uniform(0.0, 2.0 * np.pi, ks.size)
    out = np.zeros(np.broadcast_shapes(np.shape(phi), np.shape(z)), dtype=np.float32)
    for k, c0, c1, p in zip(ks, a0, a1, phase, strict=True):
        out += (c0 + c1 * z) * np.cos(k * phi + p)
    return out / max(float(np.sqrt(0.5 * np.sum(a0**2))), 1e-6)


def _render(rng: np.random.Generator, g: _Grid) -> _Subject:
    """Draw one subject's anatomy and acquisition (bias field, noise) and render its noiseless image."""
    x, y, z, shape = g.x, g.y, g.z, g.shape

    # Head pose, size and outline.
    cx, cy = np.clip(rng.normal(0.0, 0.02, 2), -0.04, 0.04)
    a = rng.uniform(0.7, 0.78)  # left-right semi-axis
    b = a * rng.uniform(1.08, 1.18)  # anterior-posterior semi-axis
    theta = rng.normal(0.0, np.deg2rad(6.0))
    u = np.cos(theta) * (x - cx) + np.sin(theta) * (y - cy)  # head frame, left-right
    v = -np.sin(theta) * (x - cx) + np.cos(theta) * (y - cy)  # head frame, posterior-anterior
    z_centre = rng.uniform(-0.1, 0.1)
    z_radius = np.where(z > z_centre, rng.uniform(1.12, 1.3), rng.uniform(1.3, 1.6))
    taper = np.sqrt(np.clip(1.0 - ((z - z_centre) / z_radius) ** 2, 0.04, 1.0)).astype(np.float32)
    oblique = np.minimum(1.0 / taper, 2.0)  # layers look thicker where the section cuts the skull obliquely
    phi = np.arctan2(v / b, u / a)
    ray = np.hypot(a * np.cos(phi), b * np.sin(phi))  # centre-to-outline distance of the unit ellipse along phi
    outline = taper * (1.0 + 0.03 * _periodic(rng, phi, z, 2, 7)) * ray
    dist = np.hypot(u / a, v / b) * ray
    depth_head = outline - dist  # depth below the scalp surface along the ray

    # Scalp, skull ring of varying thickness and CSF layer.
    t_scalp = (0.035 + 0.006 * _periodic(rng, phi, z, 1, 5)) * oblique
    t_skull = np.clip(0.05 + 0.015 * _periodic(rng, phi, z, 1, 5), 0.025, None) * oblique
    t_csf = np.clip(0.02 + 0.008 * _periodic(rng, phi, z, 1, 6), 0.008, None) * oblique
    surface = smooth_noise(rng, shape, g.sigma(0.08))
    depth = depth_head - t_scalp - t_skull - t_csf - 0.006 * surface  # depth below the brain surface
    head = depth_head > 0
    scalp = head & (depth_head < t_scalp)
    skull = head & ~scalp & (depth_head < t_scalp + t_skull)
    table = skull & (depth_head < t_scalp + 0.012 * oblique)  # dark outer table of the bone
    brain = depth > 0

    # Gyri: radial sulci (CSF clefts) from the surface; white matter follows the folds below a cortex ribbon.
    n_gyri = rng.integers(18, 27)
    gyral = np.cos(n_gyri * phi + 1.2 * _periodic(rng, phi, z, 1, 4) + 1.5 * smooth_noise(rng, shape, g.sigma(0.06)))
    sulcus_depth = np.clip(0.09 + 0.03 * _periodic(rng, phi, z, 1, 6), 0.04, None)
    sulcus = brain & (depth < sulcus_depth) & (gyral > 0.86 + 0.12 * np.clip(depth / sulcus_depth, 0.0, 1.0))
    t_cortex = rng.uniform(0.035, 0.045)
    white_noise = smooth_noise(rng, shape, g.sigma(0.05))
    white = brain & (depth > t_cortex + sulcus_depth * (1.0 + gyral) / 2.0 + 0.008 * white_noise)

    # Interhemispheric fissure, interrupted by the corpus callosum except near the vertex.
    half_length = np.abs(v) / (b * taper)
    callosum = 0.3 * np.clip((taper - 0.55) / 0.4, 0.0, 1.0)
    fissure_width = rng.uniform(0.008, 0.014)
    fissure = brain & (np.abs(u) < fissure_width) & (half_length > callosum)
    white &= ~((np.abs(u) < fissure_width + t_cortex) & (half_length > callosum - 0.04))

    # Lateral ventricles (two lobes near the centre) and deep grey nuclei, fading along the axial axis.
    un, vn = u / a, v / b
    scale = rng.uniform(0.7, 1.4)
    ax = 0.07 * scale + 0.02
    ay = rng.uniform(0.26, 0.34) * (0.8 + 0.2 * scale)
    dx = ax + rng.uniform(0.015, 0.03)
    vy = rng.uniform(-0.08, 0.02)
    angle = np.deg2rad(rng.uniform(5.0, 14.0))
    bend = rng.uniform(0.3, 0.8)
    z_vent = rng.uniform(-0.15, 0.15)
    level = np.exp(-(((z - z_vent) / rng.uniform(0.3, 0.45)) ** 2))
    level_deep = np.exp(-(((z - z_vent + 0.15) / 0.3) ** 2))
    deep_x, deep_y = dx + ax + rng.uniform(0.12, 0.18), vy + rng.uniform(0.0, 0.1)  # lentiform nuclei
    wobble = smooth_noise(rng, shape, g.sigma(0.04))
    ventricle = np.zeros(shape, dtype=bool)
    deep = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        p, q = un - side * dx, vn - vy
        pr = np.cos(side * angle) * p + np.sin(side * angle) * q  # frontal horns close, atria apart
        qr = -np.sin(side * angle) * p + np.cos(side * angle) * q
        pr = pr - side * bend * ax * (qr / ay) ** 2  # the caudate indents the lateral wall
        ventricle |= (pr / ax) ** 2 + (qr / ay) ** 2 + 0.15 * wobble < level
        deep |= ((un - side * deep_x) / 0.08) ** 2 + ((vn - deep_y) / 0.16) ** 2 + 0.1 * wobble < level_deep
    ventricle &= brain & (depth > t_cortex + 0.02)
    deep &= white
    csf = sulcus | fissure | ventricle

    # Tissue intensities, partial-volume blur and smooth texture.
    jitter = dict(zip(_INTENSITY, rng.uniform(0.93, 1.07, len(_INTENSITY)), strict=True))
    level_of = {name: np.float32(_INTENSITY[name] * jitter[name]) for name in _INTENSITY}
    img = np.zeros(shape, dtype=np.float32)
    img[scalp] = level_of["scalp"]
    img[skull] = level_of["skull"]
    img[table] = level_of["table"]
    img[head & ~scalp & ~skull] = level_of["csf"]
    img[brain] = level_of["grey"]
    img[white] = level_of["white"]
    img[deep] = level_of["deep"]
    img[sulcus | fissure] = level_of["csf"]
    img[ventricle] = level_of["ventricle"]
    img = ndimage.gaussian_filter(img, g.sigma_px(0.6), mode="constant")
    texture = 1.0 + 0.035 * smooth_noise(rng, shape, g.sigma_px(0.9)) + 0.04 * smooth_noise(rng, shape, g.sigma(0.06))
    img *= texture

    # Acquisition: low-frequency bias field (normalised to mean 1 over the head) and Rician noise.
    terms = [x, y, x * x, y * y, x * y]
    if g.z_ratio is not None:
        terms += [z, z * z, x * z, y * z]
    coeff = rng.normal(0.0, 0.08, len(terms))
    log_bias = np.zeros(shape, dtype=np.float32)
    for c, term in zip(coeff, terms, strict=True):
        log_bias += np.float32(c) * term
    bias = np.exp(log_bias)
    bias /= bias[head].mean()
    sigma_noise = np.float32(rng.uniform(0.015, 0.03))
    noise = (
        sigma_noise * rng.standard_normal(shape, dtype=np.float32),
        sigma_noise * rng.standard_normal(shape, dtype=np.float32),
    )
    parenchyma = brain & ~csf
    return _Subject(
        clean=img.astype(np.float32),
        brain=brain,
        parenchyma=parenchyma,
        depth=depth.astype(np.float32),
        bias=bias.astype(np.float32),
        noise=noise,
    )


def _acquire(subject: _Subject, clean: np.ndarray) -> np.ndarray:
    """Apply the subject's bias field and Rician noise to a noiseless image; float32 in [0, 1]."""
    real = clean * subject.bias + subject.noise[0]
    out = np.sqrt(real * real + subject.noise[1] * subject.noise[1])
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _add_lesions(rng: np.random.Generator, g: _Grid, subject: _Subject) -> tuple[np.ndarray, np.ndarray]:
    """Grow 1 to 3 hyperintense lesions in the parenchyma; returns (noiseless image with lesions, uint8 mask)."""
    shape = g.shape
    candidates = subject.parenchyma & (subject.depth > 0.05)
    if not candidates.any():
        candidates = subject.parenchyma
    flat = np.flatnonzero(candidates)
    weight = np.zeros(shape, dtype=np.float32)  # in (0, 1] inside a lesion: soft edge
    target = np.zeros(shape, dtype=np.float32)  # lesion intensity each pixel is pulled towards
    sampling = (1.0, 1.0) if g.z_ratio is None else (1.0, 1.0, 1.0 / g.z_ratio)
    for _ in range(int(rng.integers(1, 4))):
        centre = np.unravel_index(flat[rng.integers(flat.size)], shape)
        radius = rng.uniform(0.06, 0.16) * g.px
        semi = [radius * rng.uniform(0.7, 1.3), radius * rng.uniform(0.7, 1.3)]
        if g.z_ratio is not None:
            semi.append(max(radius * rng.uniform(0.8, 1.25) * g.z_ratio, 1.5))
        box = tuple(
            slice(max(int(c - np.ceil(1.2 * s)), 0), min(int(c + np.ceil(1.2 * s)) + 1, n))
            for c, s, n in zip(centre, semi, shape, strict=True)
        )
        coords = np.ogrid[box]
        offsets = [(co - c).astype(np.float32) for co, c in zip(coords, centre, strict=True)]
        rot = rng.uniform(0.0, np.pi)
        p0 = np.cos(rot) * offsets[0] + np.sin(rot) * offsets[1]
        p1 = -np.sin(rot) * offsets[0] + np.cos(rot) * offsets[1]
        radial_sq = (p0 / semi[0]) ** 2 + (p1 / semi[1]) ** 2
        if g.z_ratio is not None:
            radial_sq = radial_sq + (offsets[2] / semi[2]) ** 2
        radial = np.sqrt(radial_sq)
        box_shape = radial.shape
        rough = smooth_noise(rng, box_shape, g.sigma_px(max(radius / 3.0, 1.0)))
        blob = ((radial < 1.0) & (radial + 0.3 * rough < 0.8)) | (radial < 0.3)
        blob &= subject.parenchyma[box]
        labels, _ = ndimage.label(blob)
        blob = labels == labels[tuple(c - s.start for c, s in zip(centre, box, strict=True))]
        edge = rng.uniform(1.5, 3.0)
        inside = ndimage.distance_transform_edt(np.pad(blob, 1), sampling=sampling)[(slice(1, -1),) * len(shape)]
        w = np.where(blob, 0.45 + 0.55 * np.clip(inside / edge, 0.0, 1.0), 0.0).astype(np.float32)
        stronger = w > weight[box]
        weight[box] = np.where(stronger, w, weight[box])
        target[box] = np.where(stronger, np.float32(rng.uniform(0.74, 0.86)), target[box])
    mask = weight > 0
    heterogeneity = 1.0 + 0.08 * smooth_noise(rng, shape, g.sigma_px(1.2))
    increase = np.maximum(target * heterogeneity - subject.clean, 0.12)
    img = subject.clean.copy()
    img[mask] += (weight * increase)[mask]
    return img, mask.astype(np.uint8)


def make_subject_pair(
    rng: np.random.Generator, shape: Sequence[int] = (128, 128)
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render one subject twice, without and with lesions, with the same anatomy, bias field and noise.

    The two images differ exactly where the lesion mask is 1. With a generator in the same state,
    :func:`make_slice` / :func:`make_volume` return the same images as this function (``lesion=False`` gives the
    first, ``lesion=True`` the second).

    Args:
        rng: random generator; it is advanced.
        shape: ``(size, size)`` for a 2D slice or ``(H, W, D)`` for a volume (axial axis last).

    Returns:
        ``(normal, abnormal, lesion_mask, brain_mask)``: two float32 images in [0, 1] and two uint8 {0, 1} masks, all of
        shape ``shape``.

    Raises:
        TypeError: if ``rng`` is not a ``numpy.random.Generator``.
        ValueError: if ``shape`` is not 2D or 3D, the in-plane size is below 32 or the depth below 8.
    """
    check_rng(rng)
    g = _grid(rng, _check_shape(shape))
    subject = _render(rng, g)
    with_lesion, mask = _add_lesions(rng, g, subject)
    return _acquire(subject, subject.clean), _acquire(subject, with_lesion), mask, subject.brain.astype(np.uint8)


def _make(rng: np.random.Generator, shape: tuple[int, ...], lesion: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one subject (validated ``shape``) with or without lesions: (image, lesion mask, brain mask)."""
    g = _grid(rng, shape)
    subject = _render(rng, g)
    if lesion:
        clean, mask = _add_lesions(rng, g, subject)
    else:
        clean, mask = subject.clean, np.zeros(shape, dtype=np.uint8)
    return _acquire(subject, clean), mask, subject.brain.astype(np.uint8)


def make_slice(
    rng: np.random.Generator, size: int = 128, lesion: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one axial 2D phantom slice.

    Rows run anterior (top) to posterior, columns left to right.

    Args:
        rng: random generator; it is advanced.
        size: height and width in pixels (>= 32).
        lesion: add 1 to 3 hyperintense lesions inside the brain.

    Returns:
        ``(image, lesion_mask, brain_mask)`` of shape ``(size, size)``: float32 in [0, 1], uint8 {0, 1} (all zero when
        ``lesion`` is False) and uint8 {0, 1}.

    Raises:
        TypeError: if ``rng`` is not a ``numpy.random.Generator``.
        ValueError: if ``size`` is below 32.

    Example:
        >>> image, mask, brain = make_slice(np.random.default_rng(0), size=64, lesion=True)
        >>> image.shape, image.dtype, int(mask.max())
        ((64, 64), dtype('float32'), 1)
    """
    check_rng(rng)
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < _MIN_SIZE:
        msg = f"size: expected an int >= {_MIN_SIZE}, got {size!r}"
        raise ValueError(msg)
    return _make(rng, (int(size), int(size)), lesion)


def make_volume(
    rng: np.random.Generator, shape: tuple[int, int, int] = (96, 96, 48), lesion: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one 3D phantom volume, axial axis last.

    Axes run left to right, posterior to anterior and inferior to superior (RAS voxel order, see
    :func:`volume_affine`). The anatomy varies smoothly along the axial axis: the head tapers towards both ends and the
    ventricles appear in the middle slices; lesions are 3D blobs spanning several slices.

    Args:
        rng: random generator; it is advanced.
        shape: ``(H, W, D)`` with ``H, W >= 32`` and ``D >= 8``.
        lesion: add 1 to 3 hyperintense lesions inside the brain.

    Returns:
        ``(volume, lesion_mask, brain_mask)`` of shape ``shape``: float32 in [0, 1], uint8 {0, 1} (all zero when
        ``lesion`` is False) and uint8 {0, 1}.

    Raises:
        TypeError: if ``rng`` is not a ``numpy.random.Generator``.
        ValueError: if ``shape`` is not 3D or is too small.
    """
    check_rng(rng)
    checked = _check_shape(shape)
    if len(checked) != 3:
        msg = f"shape: expected 3 dimensions (H, W, D), got {len(checked)} in {checked}"
        raise ValueError(msg)
    return _make(rng, checked, lesion)


def volume_affine(shape: Sequence[int]) -> np.ndarray:
    """Voxel-to-world (RAS, mm) affine of the 3D phantoms: :data:`SPACING_MM` voxels, origin near the volume centre.

    Args:
        shape: ``(H, W, D)`` of the volume.

    Returns:
        ``(4, 4)`` float64 affine.
    """
    affine = np.diag([*SPACING_MM, 1.0])
    centre = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = -centre * np.asarray(SPACING_MM) + np.array([0.0, -17.5, 12.0])
    return affine


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name next to ``path``, then rename it over ``path``."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), mtime=0)


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        msg = f"{name}: expected an int >= {minimum}, got {value!r}"
        raise ValueError(msg)


def write_dataset(
    out_dir: str | Path,
    dims: int = 2,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_lesion: int = 10,
    size: int = 128,
    depth: int = 48,
    seed: int = 0,
    n_mixed_good: int = 0,
    n_mixed_lesion: int = 0,
) -> Path:
    """Write a phantom dataset in the layout of ``docs/design.md``.

    Layout (``<stem>`` is ``train_0000``, ``good_0000`` or ``lesion_0000``, ...)::

        out_dir/train/good/<stem>.png|.nii.gz            normal training images
        out_dir/test/good/<stem>.png|.nii.gz             normal test images
        out_dir/test/lesion/<stem>.png|.nii.gz           abnormal test images
        out_dir/ground_truth/lesion/<stem>_mask.png      2D masks, 0/255
        out_dir/ground_truth/lesion/<stem>.nii.gz        3D masks, uint8 0/1
        out_dir/brain_mask/{good,lesion}/<stem>.nii.gz   3D only: brain masks, uint8 0/1
        out_dir/train/mixed/<stem>.png|.nii.gz           optional unlabelled mix (``mixed_0000``, ...): healthy and
                                                         lesioned images in a fixed random order, no masks
        out_dir/brain_mask/mixed/<stem>.nii.gz           3D only, with ``train/mixed``: its brain masks

    2D images are 8-bit grayscale PNGs. 3D images are float32 NIfTI volumes with the affine of
    :func:`volume_affine`; masks share it. Every file is written to a temporary name and then renamed. Each file's
    subject depends only on ``seed``, its split and its index, so the output is identical for the same arguments.

    Args:
        out_dir: dataset root, created if needed; existing files of the same names are replaced.
        dims: 2 for PNG slices, 3 for NIfTI volumes.
        n_train: number of normal training images (>= 1).
        n_test_good: number of normal test images (>= 0).
        n_test_lesion: number of abnormal test images (>= 0).
        size: in-plane size in pixels (>= 32).
        depth: number of axial slices of a 3D volume (>= 8; ignored in 2D).
        seed: non-negative base seed.
        n_mixed_good: healthy images in the unlabelled ``train/mixed`` folder (>= 0).
        n_mixed_lesion: lesioned images in ``train/mixed`` (>= 0); the folder is written only when the two sum
            to more than 0, and the files of the other splits do not depend on these two arguments.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ValueError: if an argument is out of range.
    """
    if dims not in (2, 3) or isinstance(dims, bool):
        msg = f"dims: expected 2 (PNG slices) or 3 (NIfTI volumes), got {dims!r}"
        raise ValueError(msg)
    _check_count("n_train", n_train, 1)
    _check_count("n_test_good", n_test_good, 0)
    _check_count("n_test_lesion", n_test_lesion, 0)
    _check_count("size", size, _MIN_SIZE)
    if dims == 3:
        _check_count("depth", depth, _MIN_DEPTH)
    _check_count("seed", seed, 0)
    _check_count("n_mixed_good", n_mixed_good, 0)
    _check_count("n_mixed_lesion", n_mixed_lesion, 0)

    out = Path(out_dir)
    splits = (
        ("train/good", "train", int(n_train), False, "good"),
        ("test/good", "good", int(n_test_good), False, "good"),
        ("test/lesion", "lesion", int(n_test_lesion), True, "lesion"),
    )
    folders = [out / folder for folder, *_ in splits] + [out / "ground_truth" / "lesion"]
    if dims == 3:
        folders += [out / "brain_mask" / "good", out / "brain_mask" / "lesion"]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)

    shape = (int(size), int(size), int(depth))
    affine = volume_affine(shape)
    for code, (folder, prefix, count, lesion, label) in enumerate(splits):
        for index in range(count):
            rng = np.random.default_rng([int(seed), code, index])
            stem = f"{prefix}_{index:04d}"
            if dims == 2:
                image, mask, _ = make_slice(rng, int(size), lesion=lesion)
                pixels = np.round(image * 255.0).astype(np.uint8)
                _write_atomic(out / folder / f"{stem}.png", _png_bytes(pixels))
                if lesion:
                    _write_atomic(out / "ground_truth" / "lesion" / f"{stem}_mask.png", _png_bytes(mask * 255))
            else:
                image, mask, brain = make_volume(rng, shape, lesion=lesion)
                _write_atomic(out / folder / f"{stem}.nii.gz", _nifti_bytes(image, affine))
                _write_atomic(out / "brain_mask" / label / f"{stem}.nii.gz", _nifti_bytes(brain, affine))
                if lesion:
                    _write_atomic(out / "ground_truth" / "lesion" / f"{stem}.nii.gz", _nifti_bytes(mask, affine))
    _write_mixed(out, dims, int(n_mixed_good), int(n_mixed_lesion), shape, affine, int(seed))
    return out


def _write_mixed(
    out: Path, dims: int, n_good: int, n_lesion: int, shape: tuple[int, int, int], affine: np.ndarray, seed: int
) -> None:
    """Write ``train/mixed``: ``n_good`` healthy and ``n_lesion`` lesioned images, shuffled, without labels."""
    total = n_good + n_lesion
    if total == 0:
        return
    lesions = np.zeros(total, dtype=bool)
    lesions[:n_lesion] = True
    np.random.default_rng([seed, 3]).shuffle(lesions)
    (out / "train" / "mixed").mkdir(parents=True, exist_ok=True)
    if dims == 3:
        (out / "brain_mask" / "mixed").mkdir(parents=True, exist_ok=True)
    for index, lesion in enumerate(lesions):
        rng = np.random.default_rng([seed, 4, index])
        stem = f"mixed_{index:04d}"
        if dims == 2:
            image, _, _ = make_slice(rng, shape[0], lesion=bool(lesion))
            _write_atomic(out / "train" / "mixed" / f"{stem}.png", _png_bytes(np.round(image * 255.0).astype(np.uint8)))
        else:
            image, _, brain = make_volume(rng, shape, lesion=bool(lesion))
            _write_atomic(out / "train" / "mixed" / f"{stem}.nii.gz", _nifti_bytes(image, affine))
            _write_atomic(out / "brain_mask" / "mixed" / f"{stem}.nii.gz", _nifti_bytes(brain, affine))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``python -m tools.phantoms OUT_DIR [options]``.

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        Exit status 0 (argument errors exit with status 2 through ``argparse``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m tools.phantoms",
        description="Write a brain-like phantom dataset with synthetic hyperintense lesions (no download needed), or, "
        "with --from-volumes, a dataset of real healthy volumes with synthetic lesions implanted in the brain of the "
        "test subjects.",
    )
    parser.add_argument("out_dir", type=Path, help="dataset root to write")
    parser.add_argument(
        "--from-volumes",
        type=Path,
        metavar="SOURCE",
        help="use the real 3D volumes of SOURCE/train/good (brain masks in SOURCE/brain_mask/good) instead of "
        "phantoms: --n-train subjects train, the others are split in half into normal and lesioned test subjects; only "
        "--n-train, --seed and --with-brain-masks apply",
    )
    parser.add_argument(
        "--with-brain-masks",
        action="store_true",
        help="with --from-volumes: also copy the reference brain masks to brain_mask/<class> (default: raw scans only)",
    )
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2: PNG slices, 3: NIfTI volumes")
    parser.add_argument(
        "--n-train", type=int, default=40, help="normal training images (default 40); with --from-volumes: subjects"
    )
    parser.add_argument("--n-test-good", type=int, default=10, help="normal test images (default 10)")
    parser.add_argument("--n-test-lesion", type=int, default=10, help="abnormal test images (default 10)")
    parser.add_argument("--size", type=int, default=128, help="in-plane size in pixels (default 128)")
    parser.add_argument("--depth", type=int, default=48, help="axial slices per volume, 3D only (default 48)")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (default 0)")
    parser.add_argument(
        "--n-mixed-good", type=int, default=0, help="healthy images in the unlabelled train/mixed folder (default 0)"
    )
    parser.add_argument(
        "--n-mixed-lesion", type=int, default=0, help="lesioned images in the unlabelled train/mixed folder (default 0)"
    )
    args = parser.parse_args(argv)
    if args.from_volumes is not None:
        return _main_from_volumes(parser, args)
    if args.with_brain_masks:
        parser.error("--with-brain-masks applies only with --from-volumes")
    try:
        out = write_dataset(
            args.out_dir,
            dims=args.dims,
            n_train=args.n_train,
            n_test_good=args.n_test_good,
            n_test_lesion=args.n_test_lesion,
            size=args.size,
            depth=args.depth,
            seed=args.seed,
            n_mixed_good=args.n_mixed_good,
            n_mixed_lesion=args.n_mixed_lesion,
        )
    except ValueError as err:
        parser.error(str(err))
    if args.dims == 2:
        kind, grid = "PNG slices", f"{args.size}x{args.size}"
        counts = {"train/good": args.n_train, "test/good": args.n_test_good, "test/lesion": args.n_test_lesion}
        counts["ground_truth/lesion"] = args.n_test_lesion
    else:
        kind, grid = "NIfTI volumes", f"{args.size}x{args.size}x{args.depth}"
        counts = {"train/good": args.n_train, "test/good": args.n_test_good, "test/lesion": args.n_test_lesion}
        counts["ground_truth/lesion"] = args.n_test_lesion
        counts["brain_mask/good"] = args.n_train + args.n_test_good
        counts["brain_mask/lesion"] = args.n_test_lesion
    n_mixed = args.n_mixed_good + args.n_mixed_lesion
    if n_mixed:
        counts["train/mixed"] = n_mixed
        if args.dims == 3:
            counts["brain_mask/mixed"] = n_mixed
    print(f"Wrote {grid} phantom {kind} (seed {args.seed}) to {out}:")
    for folder, count in counts.items():
        print(f"  {out / folder}: {count} files")
    return 0


def _main_from_volumes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Write the real-anatomy dataset of ``--from-volumes`` and print where its files went."""
    from tools.anatomy_lesions import write_anatomy_dataset  # imports this module: import it only when needed

    try:
        summary = write_anatomy_dataset(
            args.from_volumes, args.out_dir, args.n_train, seed=args.seed, with_brain_masks=args.with_brain_masks
        )
    except ValueError as err:
        parser.error(str(err))
    counts = {"train/good": summary["n_train"], "test/good": summary["n_test_good"]}
    counts["test/lesion"] = counts["ground_truth/lesion"] = summary["n_test_lesion"]
    if args.with_brain_masks:
        counts["brain_mask/good"] = summary["n_train"] + summary["n_test_good"]
        counts["brain_mask/lesion"] = summary["n_test_lesion"]
    print(f"Wrote volumes of {args.from_volumes} with synthetic lesions (seed {args.seed}) to {args.out_dir}:")
    for folder, count in counts.items():
        print(f"  {args.out_dir / folder}: {count} files")
    ml = ", ".join(f"{name} {volume:.1f} ml" for name, volume in summary["lesion_ml"].items())
    print(f"  lesion volumes: {ml}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
