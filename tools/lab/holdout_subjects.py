"""A development split from the training data alone: hold out subjects of ``train/`` as a small test set.

Choosing a recipe (a switch, a budget) must never look at ``test/``. For a dataset whose ``train/mixed`` holds the
normal ``train/good`` slices of the same subjects plus their abnormal slices (``brats2015_slices`` is built this way),
the abnormal slices of a subject are the ``train/mixed`` files that are not in ``train/good``. This tool writes a
dataset in the project's layout, made of links to the input files (inputs are never modified or copied)::

    out/train/good/   the normal training slices of every subject but the held-out ones
    out/test/good/    the held-out subjects' normal slices
    out/test/lesion/  the held-out subjects' abnormal slices (no masks: evaluation is at image level)

With ``--lesion-twins SEED`` the test set is instead the held-out subjects' normal slices against lesioned twins of
the same slices (:func:`write_lesion_twin_slices`): synthetic hyperintense lesions in the subject's own anatomy, with
masks, so pixel metrics can be computed and a normal slice cannot pass as abnormal merely for showing anatomy that
no training slice covers (on ``brats2015_slices`` every tumour slice lies higher in the brain than every normal
training slice)::

    out/test/lesion/             lesioned twins of out/test/good (written files)
    out/ground_truth/lesion/     their lesion masks, ``<stem>_mask.png``

Adding ``--twin-kinds KIND ...`` writes twins of the anomaly suite's kinds instead (:mod:`tools.anomaly_kinds`:
``hyperintense``, ``hypointense``, ``texture``, ``deformation``, ``foreign``, ``mass_effect``), one test class per
kind; a slice too small for a kind's anomaly is left out of that kind and reported::

    out/test/<kind>/             twins of out/test/good with one anomaly of the kind
    out/ground_truth/<kind>/     their masks, ``<stem>_mask.png``

With ``--hyperintensity-masks`` the held-out subjects' real abnormal slices keep their place in ``test/lesion`` and get
approximate masks, so pixel metrics can be computed on real lesions (:func:`write_hyperintensity_masks`): the
pixels of the slice's computed foreground brighter than the held-out normal slices' brain median by
``K`` robust standard deviations (1.4826 x the median absolute deviation), cleaned by a morphological opening,
components of at least :data:`MIN_MASK_PIXELS` pixels, a closing and hole filling. On FLAIR this outlines the
hyperintense tumour and oedema; lesions that are not brighter than normal tissue are missed, and slices whose mask
ends up empty are dropped from ``test/lesion``. The masks are a development instrument, not a reference
segmentation::

    out/ground_truth/lesion/     approximate masks of out/test/lesion, ``<stem>_mask.png``

A subject is the file name up to the last ``_z<number>`` (``brats_2013_pat0006_1_z031.png`` → ``brats_2013_pat0006_1``).

Usage::

    python -m tools.lab.holdout_subjects DATA/brats2015_slices runs/dev_split --holdout brats_2013_pat0006_1
    python -m tools.lab.holdout_subjects DATA/brats2015_slices runs/dev_twins --holdout brats_2013_pat0006_1 \
        --lesion-twins 7
    python -m tools.lab.holdout_subjects DATA/brats2015_slices runs/dev_kinds --holdout brats_2013_pat0006_1 \
        --lesion-twins 7 --twin-kinds hyperintense hypointense texture deformation foreign mass_effect
    python -m tools.lab.holdout_subjects DATA/brats2015_slices runs/dev_real6 --holdout brats_2013_pat0006_1 \
        --hyperintensity-masks 2.5
"""

from __future__ import annotations

import argparse
import re
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from common.data import file_stem
from common.foreground import compute_foreground
from common.io import atomic_output
from tools.anatomy_lesions import implant_lesions
from tools.anomaly_kinds import KINDS, implant_anomaly

__all__ = [
    "main",
    "subject_of",
    "write_anomaly_twin_slices",
    "write_holdout_split",
    "write_hyperintensity_masks",
    "write_lesion_twin_slices",
]

TWIN_RADIUS_PIXELS = (6.0, 15.0)
"""Base lesion radius range in pixels (about millimetres on 1 mm slices such as BraTS'), as for the 3D twins."""
TWIN_LESIONS = (1, 2)
"""Inclusive range of lesions per twin slice."""
TWIN_PARAMETERS: dict[str, dict[str, tuple[float, float]]] = {
    "hyperintense": {"n_lesions": TWIN_LESIONS, "radius_mm": TWIN_RADIUS_PIXELS},
    "hypointense": {"radius_mm": (5.0, 10.0)},
    "texture": {"radius_mm": (6.0, 12.0)},
    "deformation": {"radius_mm": (10.0, 16.0)},
    "foreign": {"radius_mm": (5.0, 10.0)},
    "mass_effect": {"radius_mm": (4.0, 7.0)},
}
"""Sizes of the anomaly twins in pixels, where they differ from the heads' ranges of :mod:`tools.anomaly_kinds`.

A slice's brain is much shallower than a head's (on the held-out BraTS slices its deepest pixel lies 11-23 pixels from
the brain's edge, against about 50 mm in a head), so the twins are smaller; the other parameters keep their defaults.
"""

MIN_MASK_PIXELS = 50
"""Smallest connected component kept in a hyperintensity mask, and smallest mask that keeps its slice."""
MAD_TO_STD = 1.4826
"""Median absolute deviation to standard deviation for normally distributed intensities."""

_SLICE_SUFFIX = re.compile(r"_z\d+$")


def subject_of(path: Path) -> str:
    """The subject a slice file belongs to: its stem without the trailing ``_z<number>``."""
    stem = path.name.split(".")[0]
    return _SLICE_SUFFIX.sub("", stem)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def write_holdout_split(
    dataset_dir: str | Path,
    out_dir: str | Path,
    holdout: Sequence[str],
    lesion_twins_seed: int | None = None,
    hyperintensity_factor: float | None = None,
    twin_kinds: Sequence[str] | None = None,
) -> dict[str, int]:
    """Write the development split (module docstring) and return how many files each folder got.

    Args:
        dataset_dir: a dataset with ``train/good`` and ``train/mixed``.
        out_dir: where the split is written (must not exist yet).
        holdout: subjects whose slices form the test folders.
        lesion_twins_seed: ``None`` for the abnormal slices of ``train/mixed`` as ``test/lesion``; a seed for
            lesioned twins of the held-out normal slices instead (:func:`write_lesion_twin_slices`).
        hyperintensity_factor: with the abnormal slices of ``train/mixed``, write approximate masks with this
            factor (:func:`write_hyperintensity_masks`); ``None``: no masks (image-level evaluation only).
        twin_kinds: with ``lesion_twins_seed``, twins of these anomaly kinds, one test class each
            (:func:`write_anomaly_twin_slices`), instead of the hyperintense ``test/lesion`` twins.

    Raises:
        ValueError: when a folder is missing, ``out_dir`` exists, a held-out subject has no normal or no
            abnormal slices, both lesion twins and hyperintensity masks are asked for, or twin kinds without lesion
            twins or with an unknown kind.
    """
    if lesion_twins_seed is not None and hyperintensity_factor is not None:
        msg = "lesion twins bring their own masks: give either lesion twins or hyperintensity masks, not both"
        raise ValueError(msg)
    if twin_kinds is not None:
        if lesion_twins_seed is None:
            msg = "twin kinds need a lesion twins seed (--lesion-twins SEED)"
            raise ValueError(msg)
        unknown = [kind for kind in twin_kinds if kind not in KINDS]
        if unknown or not twin_kinds:
            msg = f"twin kinds: {'unknown kind ' + repr(unknown[0]) if unknown else 'none given'}; the kinds are "
            msg += ", ".join(KINDS)
            raise ValueError(msg)
    root, out = Path(dataset_dir), Path(out_dir)
    good_dir, mixed_dir = root / "train" / "good", root / "train" / "mixed"
    for folder in (good_dir, mixed_dir):
        if not folder.is_dir():
            msg = f"{folder}: not a folder (the split needs train/good and train/mixed)"
            raise ValueError(msg)
    if out.exists():
        msg = f"{out}: already exists"
        raise ValueError(msg)
    good = _files(good_dir)
    good_names = {p.name for p in good}
    abnormal = [p for p in _files(mixed_dir) if p.name not in good_names]
    held = set(holdout)
    plan = {
        "train/good": [p for p in good if subject_of(p) not in held],
        "test/good": [p for p in good if subject_of(p) in held],
    }
    if lesion_twins_seed is None:
        plan["test/lesion"] = [p for p in abnormal if subject_of(p) in held]
    for subject in sorted(held):
        for folder in [f for f in plan if f.startswith("test/")]:
            if not any(subject_of(p) == subject for p in plan[folder]):
                msg = f"{root}: held-out subject {subject!r} has no slices for {folder}"
                raise ValueError(msg)
    for folder, files in plan.items():
        (out / folder).mkdir(parents=True)
        for source in files:
            (out / folder / source.name).symlink_to(source.resolve())
    counts = {folder: len(files) for folder, files in plan.items()}
    if lesion_twins_seed is not None and twin_kinds is not None:
        written, skipped = write_anomaly_twin_slices(out, lesion_twins_seed, twin_kinds)
        counts.update({f"test/{kind}": n for kind, n in written.items()})
        for line in skipped:
            print(line, file=sys.stderr)
    elif lesion_twins_seed is not None:
        counts["test/lesion"] = write_lesion_twin_slices(out, lesion_twins_seed)
    if hyperintensity_factor is not None:
        counts["test/lesion"] = write_hyperintensity_masks(out, hyperintensity_factor)
    return counts


def _slice_with_foreground(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An 8-bit grayscale slice and its computed foreground (the bundles' rule without a ``brain_mask/``)."""
    image = np.asarray(Image.open(path))
    if image.ndim != 2 or image.dtype != np.uint8:
        msg = f"{path}: expected a 2D 8-bit grayscale slice, got shape {image.shape} and dtype {image.dtype}"
        raise ValueError(msg)
    return image, compute_foreground(image.astype(np.float32) / 255.0)


def write_hyperintensity_masks(split_dir: str | Path, factor: float = 2.5) -> int:
    """Write approximate masks of the hyperintense lesions in ``split_dir/test/lesion``; returns the slices kept.

    The threshold is the brain median of the normal slices in ``test/good`` (the same subjects) plus ``factor``
    robust standard deviations; a slice's mask is its computed foreground above the threshold after a two-pixel
    opening, components of at least :data:`MIN_MASK_PIXELS` pixels, a three-pixel closing and hole filling (see the
    module docstring for what it misses). Slices with a smaller mask are dropped from ``test/lesion`` (a link, so
    the input file is untouched).

    Args:
        split_dir: a split written by :func:`write_holdout_split` with real abnormal slices.
        factor: robust standard deviations above the normal brain median.

    Raises:
        ValueError: when a slice is not a 2D 8-bit image or ``test/good`` has no foreground pixels.
    """
    root = Path(split_dir)
    normal = [image[foreground] for image, foreground in map(_slice_with_foreground, _files(root / "test" / "good"))]
    values = np.concatenate(normal) if normal else np.empty(0)
    if values.size == 0:
        msg = f"{root / 'test' / 'good'}: no foreground pixels to measure normal brain intensity on"
        raise ValueError(msg)
    median = float(np.median(values))
    threshold = median + factor * MAD_TO_STD * float(np.median(np.abs(values - median)))
    kept = 0
    for source in _files(root / "test" / "lesion"):
        image, foreground = _slice_with_foreground(source)
        mask = ndimage.binary_opening((image > threshold) & foreground, iterations=2)
        labels, count = ndimage.label(mask)
        sizes = ndimage.sum(mask, labels, range(1, count + 1))
        mask = np.isin(labels, 1 + np.flatnonzero(np.asarray(sizes) >= MIN_MASK_PIXELS))
        mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=3)) & foreground
        if mask.sum() < MIN_MASK_PIXELS:
            source.unlink()
            continue
        with atomic_output(root / "ground_truth" / "lesion" / f"{file_stem(source)}_mask.png") as tmp:
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
        kept += 1
    return kept


def write_lesion_twin_slices(split_dir: str | Path, seed: int) -> int:
    """Write a lesioned twin of every 2D slice in ``split_dir/test/good``; returns how many were written.

    Each slice gets :data:`TWIN_LESIONS` lesions from :func:`tools.anatomy_lesions.implant_lesions` (hyperintense,
    soft-edged, irregular; radius :data:`TWIN_RADIUS_PIXELS`, target 1.3 times the slice's 99th brain percentile),
    placed inside the slice's computed foreground (:func:`common.foreground.compute_foreground`, the rule the bundles
    use without a ``brain_mask/``). A slice is treated as a one-voxel-thick volume whose through-plane spacing is
    so large that only the in-plane depth limits where a lesion fits. Twins keep the file name, so a twin and its
    normal slice are scored in the same anatomy; masks go to ``ground_truth/lesion/<stem>_mask.png`` (0/255).

    Args:
        split_dir: a dataset root whose ``test/good`` holds 8-bit grayscale PNG slices.
        seed: lesion seed (a generator seeded with it draws every slice's lesions in file-name order).

    Raises:
        ValueError: when a slice is not a 2D 8-bit image or has an empty foreground.
    """
    root = Path(split_dir)
    rng = np.random.default_rng(seed)
    sources = _files(root / "test" / "good")
    for source in sources:
        image, foreground = _slice_with_foreground(source)
        if not foreground.any():
            msg = f"{source}: empty foreground, nowhere to place a lesion"
            raise ValueError(msg)
        lesioned, mask = implant_lesions(
            image[..., None], foreground[..., None], rng, (1.0, 1.0, 1e6), TWIN_LESIONS, TWIN_RADIUS_PIXELS
        )
        with atomic_output(root / "test" / "lesion" / source.name) as tmp:
            Image.fromarray(lesioned[..., 0]).save(tmp, format="PNG")
        with atomic_output(root / "ground_truth" / "lesion" / f"{file_stem(source)}_mask.png") as tmp:
            Image.fromarray(mask[..., 0].astype(np.uint8) * 255).save(tmp, format="PNG")
    return len(sources)


def write_anomaly_twin_slices(
    split_dir: str | Path, seed: int, kinds: Sequence[str] = KINDS
) -> tuple[dict[str, int], list[str]]:
    """Write a twin of every 2D slice in ``split_dir/test/good`` for each anomaly kind, one test class per kind.

    Each slice is a one-voxel-thick volume (as in :func:`write_lesion_twin_slices`) whose computed foreground is the
    brain; :func:`tools.anomaly_kinds.implant_anomaly` implants one anomaly of the kind with its default ranges, read
    in pixels (about millimetres on 1 mm slices), except for the sizes of :data:`TWIN_PARAMETERS`. Each kind draws
    from a generator seeded with ``seed`` and the kind's name, slices in file-name order. Twins go to
    ``test/<kind>/<name>`` and masks to ``ground_truth/<kind>/<stem>_mask.png`` (0/255).

    Args:
        split_dir: a dataset root whose ``test/good`` holds 8-bit grayscale PNG slices.
        seed: anomaly seed.
        kinds: kinds of :data:`tools.anomaly_kinds.KINDS`.

    Returns:
        ``(written, skipped)``: twins written per kind, and ``"<slice> [<kind>]: <reason>"`` for each anomaly that
        could not be placed (a slice whose brain is too small for it).

    Raises:
        ValueError: when a slice is not a 2D 8-bit image.
    """
    root = Path(split_dir)
    sources = [(source, *_slice_with_foreground(source)) for source in _files(root / "test" / "good")]
    written: dict[str, int] = {}
    skipped: list[str] = []
    for kind in kinds:
        rng = np.random.default_rng([seed, zlib.crc32(kind.encode("utf-8"))])
        extra = TWIN_PARAMETERS.get(kind, {})
        written[kind] = 0
        for source, image, foreground in sources:
            try:
                anomaly = implant_anomaly(kind, image[..., None], foreground[..., None], rng, (1.0, 1.0, 1e6), **extra)
            except ValueError as error:
                skipped.append(f"{source} [{kind}]: {error}")
                continue
            with atomic_output(root / "test" / kind / source.name) as tmp:
                Image.fromarray(anomaly.volume[..., 0]).save(tmp, format="PNG")
            with atomic_output(root / "ground_truth" / kind / f"{file_stem(source)}_mask.png") as tmp:
                Image.fromarray(anomaly.mask[..., 0].astype(np.uint8) * 255).save(tmp, format="PNG")
            written[kind] += 1
    return written, skipped


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--holdout", nargs="+", required=True, help="subjects held out as the test set")
    parser.add_argument(
        "--lesion-twins",
        type=int,
        metavar="SEED",
        help="test on lesioned twins of the held-out normal slices (with masks) instead of train/mixed's slices",
    )
    parser.add_argument(
        "--twin-kinds",
        nargs="+",
        metavar="KIND",
        help=f"with --lesion-twins: twins of these anomaly kinds, one test class each ({', '.join(KINDS)})",
    )
    parser.add_argument(
        "--hyperintensity-masks",
        type=float,
        metavar="K",
        help="approximate masks of train/mixed's abnormal slices: brighter than the normal brain median by K robust "
        "standard deviations (e.g. 2.5); slices left without a mask are dropped",
    )
    args = parser.parse_args(argv)
    try:
        counts = write_holdout_split(
            args.dataset_dir, args.out_dir, args.holdout, args.lesion_twins, args.hyperintensity_masks, args.twin_kinds
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for folder, count in counts.items():
        print(f"{folder}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
