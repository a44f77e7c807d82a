"""Synthetic lesions implanted in real head scans: a test set on real anatomy for raw (not skull-stripped) volumes.

:func:`implant_lesions` grows 1 to 3 hyperintense lesions inside the brain of one volume, like the lesions of the
phantoms in :mod:`tools.phantoms` (and like a tumour or oedema on FLAIR): ellipsoids with random anisotropic radii and
a random 3D orientation, cut by thresholded smooth noise for an irregular outline, with a soft edge and a heterogeneous
interior. Each lesion lies entirely inside the brain mask. The lesion mask is exactly the set of voxels whose value
changed.

:func:`write_anatomy_dataset` turns a folder of healthy volumes (``train/good`` with reference brain masks in
``brain_mask/good``, like ``DATA/ixi_t1``) into a dataset in the layout of ``docs/design.md``, split by subject:
training subjects and normal test subjects are copied unchanged; the other test subjects get lesions. No subject
appears in two splits, so a detector cannot match a lesioned test image to its own healthy scan.

Example:
    Write the IXI T1 set (16 training, 4 normal test and 4 lesioned test subjects; raw scans, no brain masks)::

        python -m tools.phantoms demo_data/ixi_t1_lesions --from-volumes DATA/ixi_t1 --n-train 16
"""

from __future__ import annotations

import gzip
import shutil
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from common.io import atomic_output
from tools.blobs import check_inputs, implant_blobs
from tools.noise import check_rng

__all__ = [
    "DEFAULT_CONTRAST",
    "check_splits_free",
    "copy_atomic",
    "implant_lesions",
    "main",
    "nifti_volumes",
    "split_subjects",
    "subject_seed",
    "write_anatomy_dataset",
    "write_lesion_twins",
    "write_like",
    "write_mask_like",
]

DEFAULT_CONTRAST = 1.3
"""Lesion target intensity as a multiple of the brain's 99th-percentile intensity.

On the IXI T1 volumes white matter, the brightest brain tissue, lies around the brain's 75th-95th percentiles and the
99th percentile is about 1.2 times the white-matter mean. A target of 1.3 times the 99th percentile (jittered by +-8 %
per lesion and +-8 % within a lesion) makes lesions clearly brighter than white matter (measured on the IXI set: mean
lesion intensity 1.4-1.5 times the white-matter mean and 1.8-1.9 times the brain mean, soft edge included) while
staying below the bright scalp fat and the top of the uint8 range (lesion voxels reach 140-170 of 255), so no lesion
voxel saturates.
"""

_MIN_INCREASE = 0.1  # minimum increase, as a fraction of the brain's 99th percentile, before the edge weight
_SUFFIXES = (".nii.gz", ".nii")


def _check_pair(name: str, value: Sequence[float], positive: bool) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        msg = f"{name}: expected a (min, max) pair of numbers, got {value!r}"
        raise ValueError(msg) from None
    if not (np.isfinite(low) and np.isfinite(high)) or low > high or (low <= 0 if positive else low < 1):
        msg = f"{name}: expected finite min <= max with min {'> 0' if positive else '>= 1'}, got {value!r}"
        raise ValueError(msg)
    return low, high


def _check_lesion_parameters(
    n_lesions: Sequence[int], radius_mm: Sequence[float], contrast: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Validated ``(n_lesions, radius_mm)`` pairs; ``ValueError`` for any argument out of range."""
    count = _check_pair("n_lesions", n_lesions, positive=False)
    if count[0] != int(count[0]) or count[1] != int(count[1]):
        msg = f"n_lesions: expected a (min, max) pair of ints, got {n_lesions!r}"
        raise ValueError(msg)
    radius = _check_pair("radius_mm", radius_mm, positive=True)
    if (
        isinstance(contrast, bool)
        or not isinstance(contrast, int | float | np.integer | np.floating)
        or not 0 < contrast < np.inf
    ):
        msg = f"contrast: expected a positive finite number, got {contrast!r}"
        raise ValueError(msg)
    return count, radius


def implant_lesions(
    volume: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: tuple[float, float, float],
    n_lesions: tuple[int, int] = (1, 3),
    radius_mm: tuple[float, float] = (6.0, 15.0),
    contrast: float = DEFAULT_CONTRAST,
) -> tuple[np.ndarray, np.ndarray]:
    """Grow hyperintense lesions inside the brain of a real 3D volume.

    Each lesion is an ellipsoid with a base radius drawn from ``radius_mm`` and semi-axes of 0.7-1.3 times it in a
    random orientation, centred on a voxel deep enough in the brain (distance transform of ``brain``) for the whole
    ellipsoid to fit; thresholded smooth noise cuts its outline, and it is intersected with ``brain``
    (:func:`tools.blobs.draw_blob`). Lesion voxels are blended towards ``contrast`` times the brain's 99th-percentile
    intensity, with a weight that rises from 0.45 at the lesion border to 1 a few millimetres inside (soft edge) and a
    smooth +-8 % texture (heterogeneity); every lesion voxel gets at least a small increase, so lesions are
    hyperintense even where the tissue is already bright (:func:`tools.blobs.paint`).

    Args:
        volume: 3D image (any real dtype); not modified.
        brain: boolean-like brain mask of the same shape; lesions lie inside it.
        rng: random generator; it is advanced.
        spacing_mm: voxel size along the three axes in millimetres.
        n_lesions: inclusive ``(min, max)`` number of lesions (min >= 1).
        radius_mm: ``(min, max)`` base radius of a lesion in millimetres (min > 0). A lesion that does not fit in the
            brain is shrunk to the deepest brain point's depth.
        contrast: lesion target intensity as a multiple of the brain's 99th-percentile intensity (> 0); see
            :data:`DEFAULT_CONTRAST` for the choice of the default.

    Returns:
        ``(lesioned, mask)``: the lesioned volume with the dtype of ``volume`` (integer types are rounded and clipped
        to the type's range) and the boolean lesion mask, ``True`` exactly where the lesioned volume differs from
        ``volume``.

    Raises:
        TypeError: if ``rng`` is not a ``numpy.random.Generator``.
        ValueError: if the volume is not 3D, the mask's shape differs, the brain mask is empty, or an argument is out
            of range.
    """
    check_rng(rng)
    volume, brain, spacing = check_inputs(volume, brain, spacing_mm)
    count, radius = _check_lesion_parameters(n_lesions, radius_mm, contrast)
    brain_values = volume[brain].astype(np.float32)
    reference = float(np.percentile(brain_values, 99.0))
    scale = reference if reference > 0 else max(float(np.abs(brain_values).max()), 1.0)
    return implant_blobs(volume, brain, rng, spacing, count, radius, contrast * scale, _MIN_INCREASE * scale)


def nifti_volumes(folder: Path) -> list[Path]:
    """The NIfTI volumes (``*.nii.gz``, ``*.nii``) of ``folder``, sorted; none when it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.endswith(_SUFFIXES)
    )


def copy_atomic(source: Path, destination: Path) -> None:
    """Copy a file under a temporary name next to ``destination``, then rename it."""
    with atomic_output(destination) as tmp:
        shutil.copyfile(source, tmp)


def _write_nifti(image: nib.spatialimages.SpatialImage, destination: Path) -> None:
    data = image.to_bytes()
    if destination.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with atomic_output(destination) as tmp:
        tmp.write_bytes(data)


def write_like(image: nib.spatialimages.SpatialImage, stored: np.ndarray, destination: Path) -> None:
    """Write stored (unscaled) values with ``image``'s header: data type, scaling, affine, qform/sform codes."""
    out_image = type(image)(stored, None, header=image.header.copy())
    # Keep the source's scaling: with slope and intercept set, nibabel writes the stored values unchanged.
    out_image.header.set_slope_inter(float(image.dataobj.slope), float(image.dataobj.inter))
    _write_nifti(out_image, destination)


def write_mask_like(image: nib.spatialimages.SpatialImage, mask: np.ndarray, destination: Path) -> None:
    """Write a boolean mask as uint8 0/1 with ``image``'s header (no scaling, display range 0..1)."""
    mask_image = type(image)(np.asarray(mask).astype(np.uint8), None, header=image.header.copy())
    mask_image.header.set_data_dtype(np.uint8)
    mask_image.header.set_slope_inter(1.0, 0.0)
    mask_image.header["cal_min"], mask_image.header["cal_max"] = 0.0, 1.0
    _write_nifti(mask_image, destination)


def subject_seed(seed: int, name: str) -> list[int]:
    """The lesion seed of one subject: ``seed`` and a checksum of its file name."""
    return [int(seed), zlib.crc32(name.encode("utf-8"))]


def _write_lesioned(
    image_dir: Path,
    mask_dir: Path,
    name: str,
    out: Path,
    seed: int,
    n_lesions: tuple[int, int],
    radius_mm: tuple[float, float],
    contrast: float,
    with_brain_mask: bool,
) -> float:
    """Write ``out/test/lesion/<name>`` and ``out/ground_truth/lesion/<name>``; return the lesion volume in ml."""
    image = nib.load(image_dir / name)
    brain_image = nib.load(mask_dir / name)
    if brain_image.shape != image.shape or len(image.shape) != 3:
        msg = f"{mask_dir / name}: shape {brain_image.shape} does not match the 3D volume's {image.shape}"
        raise ValueError(msg)
    brain = np.asanyarray(brain_image.dataobj) > 0
    if not brain.any():
        msg = f"{mask_dir / name}: the brain mask is empty"
        raise ValueError(msg)
    stored = np.asanyarray(image.dataobj.get_unscaled())
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    rng = np.random.default_rng(subject_seed(seed, name))
    lesioned, mask = implant_lesions(stored, brain, rng, spacing, n_lesions, radius_mm, contrast)

    write_like(image, lesioned, out / "test" / "lesion" / name)
    write_mask_like(image, mask, out / "ground_truth" / "lesion" / name)
    if with_brain_mask:
        copy_atomic(mask_dir / name, out / "brain_mask" / "lesion" / name)
    return float(mask.sum() * np.prod(spacing) / 1000.0)


def split_subjects(names: Sequence[str], n_train: int, seed: int, source: Path) -> dict[str, list[str]]:
    """Split subjects (file names) into ``train``, ``test_good`` and ``test_lesion``, each sorted.

    The names, sorted, are shuffled with ``seed``; the first ``n_train`` train, of the rest the first half (rounded
    down) are normal test subjects and the others abnormal ones.

    Raises:
        ValueError: when ``n_train`` leaves fewer than 2 test subjects (``source`` names the folder).
    """
    names = sorted(names)
    n_test = len(names) - int(n_train)
    if n_test < 2:
        msg = (
            f"n_train={n_train} leaves {max(n_test, 0)} of the {len(names)} subjects in {source} for testing; "
            "at least 2 are needed (one normal, one lesioned)"
        )
        raise ValueError(msg)
    order = [names[i] for i in np.random.default_rng(int(seed)).permutation(len(names))]
    n_good = n_test // 2
    return {
        "train": sorted(order[: int(n_train)]),
        "test_good": sorted(order[int(n_train) : int(n_train) + n_good]),
        "test_lesion": sorted(order[int(n_train) + n_good :]),
    }


def check_splits_free(names: Sequence[str], planned: dict[Path, list[str]]) -> None:
    """Refuse to write when an output folder already holds one of ``names`` that the plan puts in another folder.

    Args:
        names: every subject of the source.
        planned: each output folder and the subjects it will hold.

    Raises:
        ValueError: naming the folder and the subjects that would end up in two splits.
    """
    for folder, subjects in planned.items():
        stale = sorted(set(names) & {p.name for p in nifti_volumes(folder)} - set(subjects))
        if stale:
            msg = (
                f"{folder} already holds {', '.join(stale[:5])}, which this split puts elsewhere: a subject would be "
                "in two splits; write to an empty folder"
            )
            raise ValueError(msg)


def write_anatomy_dataset(
    source_dir: str | Path,
    out_dir: str | Path,
    n_train: int,
    seed: int = 0,
    with_brain_masks: bool = False,
    n_lesions: tuple[int, int] = (1, 3),
    radius_mm: tuple[float, float] = (6.0, 15.0),
    contrast: float = DEFAULT_CONTRAST,
) -> dict[str, Any]:
    """Write a dataset of real healthy volumes and the same kind of volumes with implanted lesions, split by subject.

    The source holds healthy 3D NIfTI volumes in ``train/good`` and their brain masks (0/1, same grid) under the same
    file names in ``brain_mask/good``. Its subjects (file names, sorted, then shuffled with ``seed``) are split: the
    first ``n_train`` are training subjects; of the rest, the first half (rounded down) are normal test subjects and
    the others get lesions (:func:`implant_lesions`). Layout (``<name>`` is the source file name)::

        out_dir/train/good/<name>                   training volumes, byte copies of the source files
        out_dir/test/good/<name>                    normal test volumes, byte copies
        out_dir/test/lesion/<name>                  lesioned test volumes
        out_dir/ground_truth/lesion/<name>          lesion masks, uint8 0/1
        out_dir/brain_mask/{good,lesion}/<name>     only with ``with_brain_masks``: byte copies of the source masks

    Lesioned volumes keep the source header (data type, scaling, affine, qform/sform codes): lesions are implanted in
    the stored (unscaled) values, so the scaled intensities of untouched voxels are unchanged. Masks share the header
    but store plain 0/1. Every file is written to a temporary name and then renamed; the lesions of a subject depend
    only on ``seed`` and its file name.

    Args:
        source_dir: dataset with ``train/good`` volumes and ``brain_mask/good`` masks.
        out_dir: dataset root, created if needed; files of the same names are replaced.
        n_train: number of training subjects (>= 1); at least 2 subjects must remain for the test splits.
        seed: non-negative seed of the split and of the lesions.
        with_brain_masks: also copy the reference brain masks; by default none are written (raw scans, as users
            have them).
        n_lesions: inclusive ``(min, max)`` number of lesions per lesioned volume.
        radius_mm: ``(min, max)`` base lesion radius in millimetres.
        contrast: lesion target intensity as a multiple of the brain's 99th-percentile intensity.

    Returns:
        Summary: ``n_train``, ``n_test_good``, ``n_test_lesion`` (counts), ``train``, ``test_good``, ``test_lesion``
        (sorted file names per split), ``lesion_ml`` (lesion volume in millilitres per lesioned file) and
        ``brain_masks`` (whether brain masks were written).

    Raises:
        ValueError: if an argument is out of range, the source has no volumes, a brain mask is missing or does not
            match its volume, ``n_train`` leaves fewer than 2 test subjects, or ``out_dir`` already holds a subject
            in another split (a leftover of a run with another seed or ``n_train``).
    """
    source, out = Path(source_dir), Path(out_dir)
    for name, value, minimum in (("n_train", n_train, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
            msg = f"{name}: expected an int >= {minimum}, got {value!r}"
            raise ValueError(msg)
    image_dir, mask_dir = source / "train" / "good", source / "brain_mask" / "good"
    volumes = nifti_volumes(image_dir)
    if not volumes:
        msg = f"no NIfTI volumes (*.nii.gz, *.nii) in {image_dir}"
        raise ValueError(msg)
    missing = [p.name for p in volumes if not (mask_dir / p.name).is_file()]
    if missing:
        msg = f"brain masks missing in {mask_dir} for {len(missing)} volume(s): {', '.join(missing[:5])}"
        raise ValueError(msg)
    names = [p.name for p in volumes]
    splits = split_subjects(names, int(n_train), int(seed), image_dir)
    folders = {
        "train": out / "train" / "good",
        "test_good": out / "test" / "good",
        "test_lesion": out / "test" / "lesion",
    }
    check_splits_free(names, {folders[split]: splits[split] for split in folders})

    lesion_ml: dict[str, float] = {}
    for split in ("train", "test_good"):
        for name in splits[split]:
            copy_atomic(image_dir / name, folders[split] / name)
            if with_brain_masks:
                copy_atomic(mask_dir / name, out / "brain_mask" / "good" / name)
    for name in splits["test_lesion"]:
        lesion_ml[name] = _write_lesioned(
            image_dir, mask_dir, name, out, int(seed), n_lesions, radius_mm, contrast, with_brain_masks
        )

    return {
        "n_train": len(splits["train"]),
        "n_test_good": len(splits["test_good"]),
        "n_test_lesion": len(splits["test_lesion"]),
        **splits,
        "lesion_ml": lesion_ml,
        "brain_masks": bool(with_brain_masks),
    }


def write_lesion_twins(
    source_dir: str | Path,
    out_dir: str | Path,
    names: Sequence[str],
    seed: int = 1,
    n_lesions: tuple[int, int] = (1, 3),
    radius_mm: tuple[float, float] = (6.0, 15.0),
    contrast: float = DEFAULT_CONTRAST,
) -> dict[str, float]:
    """Write healthy volumes next to lesioned twins of themselves: a validation set for choosing threshold rules.

    Each named volume of ``source_dir/train/good`` goes to ``out_dir/test/good/<name>`` unchanged and, with lesions
    implanted (:func:`implant_lesions`, seeded by ``seed`` and the file name), to ``out_dir/test/lesion/<name>`` with
    its mask in ``out_dir/ground_truth/lesion/<name>``; the brain masks of ``source_dir/brain_mask/good`` are copied
    to ``out_dir/brain_mask/{good,lesion}``. The twins share a file name, which is how
    :mod:`tools.threshold_rules` pairs a subject's normal and lesioned scans. Meant for the held-out calibration
    volumes of a training set (normal data the model never trained on), never for test data.

    Args:
        source_dir: dataset with ``train/good`` volumes and ``brain_mask/good`` masks.
        out_dir: dataset root, created if needed; files of the same names are replaced.
        names: file names in ``source_dir/train/good``.
        seed: non-negative lesion seed; use another one than the test set's.
        n_lesions: inclusive ``(min, max)`` number of lesions per volume.
        radius_mm: ``(min, max)`` base lesion radius in millimetres.
        contrast: lesion target intensity as a multiple of the brain's 99th-percentile intensity.

    Returns:
        Lesion volume in millilitres per file name.

    Raises:
        ValueError: if a named volume or its brain mask is missing, or an argument is out of range.
    """
    source, out = Path(source_dir), Path(out_dir)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        msg = f"seed: expected an int >= 0, got {seed!r}"
        raise ValueError(msg)
    image_dir, mask_dir = source / "train" / "good", source / "brain_mask" / "good"
    if not names:
        msg = "names: no volume named"
        raise ValueError(msg)
    _check_lesion_parameters(n_lesions, radius_mm, contrast)
    for name in names:
        for folder in (image_dir, mask_dir):
            if not (folder / name).is_file():
                msg = f"{folder / name}: not found"
                raise ValueError(msg)
        image_shape, mask_shape = nib.load(image_dir / name).shape, nib.load(mask_dir / name).shape
        if image_shape != mask_shape or len(image_shape) != 3:
            msg = f"{mask_dir / name}: shape {mask_shape} does not match the 3D volume's {image_shape}"
            raise ValueError(msg)
    lesion_ml = {}
    for name in names:
        copy_atomic(image_dir / name, out / "test" / "good" / name)
        copy_atomic(mask_dir / name, out / "brain_mask" / "good" / name)
        lesion_ml[name] = _write_lesioned(
            image_dir, mask_dir, name, out, int(seed), n_lesions, radius_mm, contrast, True
        )
    return lesion_ml


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m tools.anatomy_lesions SOURCE OUT --names A B C [--seed 1]`` (lesion twins)."""
    from tools.arguments import OneLineArgumentParser, UsageError

    prog = "python -m tools.anatomy_lesions"
    parser = OneLineArgumentParser(
        prog=prog,
        description="Copy healthy volumes to OUT/test/good and write lesioned twins of them to OUT/test/lesion "
        "(validation set for threshold rules; see tools.threshold_rules).",
    )
    parser.add_argument("source_dir", type=Path, help="dataset with train/good volumes and brain_mask/good masks")
    parser.add_argument("out_dir", type=Path, help="validation dataset root to write")
    parser.add_argument("--names", nargs="+", required=True, help="file names in SOURCE/train/good")
    parser.add_argument("--seed", type=int, default=1, help="lesion seed (default 1; use another than the test set's)")
    try:
        args = parser.parse_args(argv)
        lesion_ml = write_lesion_twins(args.source_dir, args.out_dir, args.names, seed=args.seed)
    except (UsageError, ValueError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    for name, ml in lesion_ml.items():
        print(f"{name}: {ml:.1f} ml of lesion")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
