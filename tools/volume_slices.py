"""Write the slices of a 3D dataset as a 2D dataset: the brain-stripped, normalised slices the bundles would use.

Detectors that read 2D pictures only (anomalib's ``Folder`` datasets, hence the peers of :mod:`tools.compare`) cannot
be trained or tested on NIfTI volumes. This tool cuts every volume of a dataset in the DESIGN.md layout with the
bundles' own loading (:func:`common.volumes.load_slices`: brain mask from ``brain_mask/`` or extraction, stripping,
per-volume intensity normalisation, slice selection) and writes each selected slice as an 8-bit PNG, with its
ground truth as ``<stem>_mask.png`` (0/255), so a 2D detector and a bundle see the same pixels::

    out/train/good/<volume stem>_z<index>.png
    out/test/<class>/<volume stem>_z<index>.png
    out/ground_truth/<class>/<volume stem>_z<index>_mask.png

A slice is named after its volume and its index along the slicing axis (``_z<index>`` whatever the axis), so
:func:`tools.holdout_subjects.subject_of` finds the subject of each slice. The slices are stripped (zero outside the
brain), so the bundles' computed foreground of a written slice is the brain again. ``train/mixed`` is not written
(its volumes have no ground truth to split them by). Inputs are never modified; every file is written atomically.

Usage::

    python -m tools.volume_slices runs/ixi_bet runs/ixi_bet_2d
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from common.data import ImageRecord, discover_dataset
from common.io import atomic_output
from common.volumes import SliceSettings, load_slices
from tools.arguments import OneLineArgumentParser, UsageError

__all__ = ["main", "write_slice_dataset"]

DEFAULT_SETTINGS = SliceSettings(min_foreground=0.05, min_brain_fraction=0.25)
"""The bundles' evaluation slicing (``configs/evaluate.json``): brain slices with at least a quarter of the largest."""


def _write_png(array: np.ndarray, destination: Path) -> None:
    with atomic_output(destination) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _write_records(
    records: Sequence[ImageRecord], out_dir: Path, folder: str, defect: str, settings: SliceSettings
) -> int:
    written = 0
    for item in load_slices(records, settings):
        stem = Path(item["source"]).name.split(".")[0]
        name = f"{stem}_z{item['slice']:03d}"
        _write_png(_to_uint8(item["image"][0]), out_dir / folder / defect / f"{name}.png")
        if "mask" in item:
            _write_png(_to_uint8(item["mask"][0]), out_dir / "ground_truth" / defect / f"{name}_mask.png")
        written += 1
    return written


def write_slice_dataset(
    dataset_dir: str | Path, out_dir: str | Path, settings: SliceSettings | None = None
) -> dict[str, int]:
    """Write the selected slices of ``dataset_dir``'s ``train/good`` and ``test/<class>`` volumes as a 2D dataset.

    Args:
        dataset_dir: a dataset of 3D NIfTI volumes in the DESIGN.md layout.
        out_dir: the 2D dataset root to write (must not hold files already).
        settings: slicing, foreground and normalisation; default :data:`DEFAULT_SETTINGS`.

    Returns:
        slices written per folder, e.g. ``{"train/good": 800, "test/good": 300, "test/lesion": 280}``.

    Raises:
        ValueError: ``"<file>: ..."`` for a file that is not a 3D volume or cannot be read, or when ``out_dir`` is
            not empty.
    """
    settings = settings or DEFAULT_SETTINGS
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        msg = f"{out_dir}: output folder is not empty"
        raise ValueError(msg)
    index = discover_dataset(dataset_dir)
    for record in [*index.train_good, *index.test]:
        if not str(record.image).endswith((".nii", ".nii.gz")):
            msg = f"{record.image}: not a NIfTI volume (this tool slices 3D datasets)"
            raise ValueError(msg)
    counts = {"train/good": _write_records(index.train_good, out_dir, "train", "good", settings)}
    by_class: dict[str, list[ImageRecord]] = {}
    for record in index.test:
        by_class.setdefault(record.defect, []).append(record)
    for defect, records in sorted(by_class.items()):
        counts[f"test/{defect}"] = _write_records(records, out_dir, "test", defect, settings)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = OneLineArgumentParser(prog="python -m tools.volume_slices", description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", type=Path, help="3D dataset (NIfTI volumes) to slice")
    parser.add_argument("out_dir", type=Path, help="2D dataset root to write")
    parser.add_argument("--axis", type=int, default=DEFAULT_SETTINGS.axis, help="slicing axis (default 2)")
    parser.add_argument(
        "--min-brain-fraction",
        type=float,
        default=DEFAULT_SETTINGS.min_brain_fraction,
        help="keep slices whose brain area is at least this fraction of the volume's largest (default 0.25)",
    )
    try:
        args = parser.parse_args(argv)
        settings = SliceSettings(
            axis=args.axis, min_foreground=DEFAULT_SETTINGS.min_foreground, min_brain_fraction=args.min_brain_fraction
        )
        counts = write_slice_dataset(args.dataset_dir, args.out_dir, settings)
    except (UsageError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(", ".join(f"{folder}: {n} slices" for folder, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
