"""Write the slices of a 3D dataset as a 2D dataset: the brain-stripped, normalised slices the bundles would use.

Detectors that read 2D pictures only (anomalib's ``Folder`` datasets, hence the peers of :mod:`tools.compare`) cannot
be trained or tested on NIfTI volumes. This tool cuts every volume of a dataset in the docs/design.md layout with the
bundles' own loading (:func:`common.volumes.load_slices`: brain mask from ``brain_mask/`` or extraction, stripping,
per-volume intensity normalisation, slice selection) and writes each selected slice as an 8-bit PNG, with its
ground truth as ``<stem>_mask.png`` (0/255), so a 2D detector and a bundle see the same pixels::

    out/train/good/<volume stem>_z<index>.png
    out/test/<class>/<volume stem>_z<index>.png
    out/ground_truth/<class>/<volume stem>_z<index>_mask.png

A slice is named after its volume and its index along the slicing axis (``_z<index>`` whatever the axis), so
:func:`tools.lab.holdout_subjects.subject_of` finds the subject of each slice. The slices are stripped (zero outside the
brain), so the bundles' computed foreground of a written slice is the brain again. ``train/mixed`` is not written
(its volumes have no ground truth to split them by). Inputs are never modified; every file is written atomically. A
volume that cannot be read is skipped and reported on one line, the rest is written, and the exit status is 1.

Usage::

    python -m tools.lab.volume_slices runs/ixi_bet runs/ixi_bet_2d
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from common.data import ImageRecord, discover_dataset, file_stem, is_nifti
from common.io import atomic_output
from common.volumes import SliceSettings, load_slices
from tools.arguments import OneLineArgumentParser, UsageError
from tools.bundles import bundle_slice_settings

__all__ = ["main", "write_slice_dataset"]


def _write_png(array: np.ndarray, destination: Path) -> None:
    with atomic_output(destination) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _write_records(
    records: Sequence[ImageRecord],
    out_dir: Path,
    folder: str,
    defect: str,
    settings: SliceSettings,
    skipped: list[str],
) -> int:
    """Write the slices of ``records``; an unreadable volume is skipped and its one-line error added to ``skipped``."""
    written = 0
    for record in records:
        try:
            items = load_slices([record], settings)  # one volume at a time: a bad file stops only itself
        except ValueError as error:
            skipped.append(str(error))
            continue
        for item in items:
            name = f"{file_stem(record.image)}_z{item['slice']:03d}"
            _write_png(_to_uint8(item["image"][0]), out_dir / folder / defect / f"{name}.png")
            if "mask" in item:
                _write_png(_to_uint8(item["mask"][0]), out_dir / "ground_truth" / defect / f"{name}_mask.png")
            written += 1
    return written


def write_slice_dataset(
    dataset_dir: str | Path, out_dir: str | Path, settings: SliceSettings | None = None
) -> tuple[dict[str, int], list[str]]:
    """Write the selected slices of ``dataset_dir``'s ``train/good`` and ``test/<class>`` volumes as a 2D dataset.

    Args:
        dataset_dir: a dataset of 3D NIfTI volumes in the docs/design.md layout.
        out_dir: the 2D dataset root to write (must not hold files already).
        settings: slicing, foreground and normalisation; default: the bundles' evaluation settings
            (:func:`tools.bundles.bundle_slice_settings`).

    Returns:
        ``(counts, skipped)``: slices written per folder, e.g. ``{"train/good": 800, "test/good": 300,
        "test/lesion": 280}``, and the one-line errors (``"<file>: ..."``) of the volumes that could not be read,
        which are left out while the rest is written.

    Raises:
        ValueError: ``"<file>: ..."`` for a file that is not a NIfTI file (checked before anything is written), or
            when ``out_dir`` is not empty.
    """
    settings = settings or bundle_slice_settings()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        msg = f"{out_dir}: output folder is not empty"
        raise ValueError(msg)
    index = discover_dataset(dataset_dir)
    for record in [*index.train_good, *index.test]:
        if not is_nifti(record.image):
            msg = f"{record.image}: not a NIfTI volume (this tool slices 3D datasets)"
            raise ValueError(msg)
    skipped: list[str] = []
    counts = {"train/good": _write_records(index.train_good, out_dir, "train", "good", settings, skipped)}
    by_class: dict[str, list[ImageRecord]] = {}
    for record in index.test:
        by_class.setdefault(record.defect, []).append(record)
    for defect, records in sorted(by_class.items()):
        counts[f"test/{defect}"] = _write_records(records, out_dir, "test", defect, settings, skipped)
    return counts, skipped


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = OneLineArgumentParser(prog="python -m tools.lab.volume_slices", description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", type=Path, help="3D dataset (NIfTI volumes) to slice")
    parser.add_argument("out_dir", type=Path, help="2D dataset root to write")
    parser.add_argument("--axis", type=int, default=None, help="slicing axis (default: the bundles' slice_axis, 2)")
    parser.add_argument(
        "--min-brain-fraction",
        type=float,
        default=None,
        help="keep slices whose brain area is at least this fraction of the volume's largest (default: the bundles' "
        "evaluation setting, 0.25)",
    )
    try:
        args = parser.parse_args(argv)
        overrides = {"slice_axis": args.axis, "min_brain_fraction": args.min_brain_fraction}
        settings = bundle_slice_settings(overrides={k: v for k, v in overrides.items() if v is not None})
        counts, skipped = write_slice_dataset(args.dataset_dir, args.out_dir, settings)
    except (UsageError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(", ".join(f"{folder}: {n} slices" for folder, n in counts.items()))
    for error in skipped:
        print(f"{parser.prog}: skipped {error}", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
