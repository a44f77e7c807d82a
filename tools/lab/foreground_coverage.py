"""How well a dataset's foreground covers its anomalies: ``python -m tools.lab.foreground_coverage DATASET_DIR``.

Maps are zero outside the foreground (docs/preprocessing.md#foreground), so an anomalous pixel outside it ties with the
background and can never be found. This command loads every file of a dataset in the docs/design.md layout the way the
bundles do (:func:`common.volumes.load_record`) and reports, per component fraction (``foreground_min_component`` in
the bundles' configs):

- ``foreground``: the mean fraction of each file covered by the foreground;
- ``anomaly outside``: the fraction of ground-truth anomaly pixels (test files with masks) outside the foreground;
- ``reference covered``: where the dataset ships ``brain_mask/`` files, the fraction of their pixels inside the
  computed foreground (only with ``--foreground compute``).

Example::

    python -m tools.lab.foreground_coverage DATA/brats2015_slices --min-component 1 0.1
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.data import ImageRecord, discover_dataset
from common.foreground import MIN_COMPONENT_FRACTION
from common.io import atomic_output
from common.volumes import SliceSettings, load_record
from tools.arguments import OneLineArgumentParser, UsageError

__all__ = ["Coverage", "foreground_coverage", "main"]


@dataclass
class Coverage:
    """Foreground coverage of one set of files at one component fraction.

    Attributes:
        split: ``"train/good"`` or ``"test"``.
        min_component: the component fraction used.
        files: files loaded.
        foreground_fraction: mean over files of the fraction of pixels in the foreground.
        anomaly_pixels: ground-truth anomaly pixels over all files.
        anomaly_outside: fraction of those outside the foreground (``None`` without any).
        reference_covered: fraction of the dataset's ``brain_mask/`` pixels inside the computed foreground
            (``None`` when no file has one or the foreground is read from those files).
        skipped: files that could not be read, as ``"<file>: <reason>"``.
    """

    split: str
    min_component: float
    files: int
    foreground_fraction: float
    anomaly_pixels: int
    anomaly_outside: float | None
    reference_covered: float | None
    skipped: list[str]


def foreground_coverage(records: Sequence[ImageRecord], split: str, settings: SliceSettings) -> Coverage:
    """Coverage of ``records`` by the foreground ``settings`` give.

    Args:
        records: the files (with their masks and foreground files, as :func:`common.data.discover_dataset` finds).
        split: a name for the report.
        settings: how files are normalised and their foreground made (as in the bundles' ``slice_settings``).

    Returns:
        The :class:`Coverage`; unreadable files are listed in ``skipped`` and left out of the figures.
    """
    fractions: list[float] = []
    anomaly_total = anomaly_outside = reference_total = reference_inside = 0
    skipped: list[str] = []
    for record in records:
        reference = None
        try:
            loaded = load_record(record, settings)
            if record.foreground is not None and settings.foreground == "compute":
                reference = load_record(record, SliceSettings(foreground="file", intensity=settings.intensity))
        except ValueError as error:
            skipped.append(str(error))
            continue
        foreground = loaded.foreground
        fractions.append(float(foreground.mean()))
        if loaded.mask is not None:
            anomaly_total += int(loaded.mask.sum())
            anomaly_outside += int((loaded.mask & ~foreground).sum())
        if reference is not None:
            reference_total += int(reference.foreground.sum())
            reference_inside += int((reference.foreground & foreground).sum())
    return Coverage(
        split=split,
        min_component=settings.foreground_min_component,
        files=len(fractions),
        foreground_fraction=float(np.mean(fractions)) if fractions else 0.0,
        anomaly_pixels=anomaly_total,
        anomaly_outside=anomaly_outside / anomaly_total if anomaly_total else None,
        reference_covered=reference_inside / reference_total if reference_total else None,
        skipped=skipped,
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _table(rows: Sequence[Coverage]) -> str:
    header = f"{'split':<11} {'min_component':>13} {'files':>6} {'foreground':>10} {'anomaly outside':>15}"
    header += f" {'reference covered':>17}"
    lines = [header]
    for row in rows:
        lines.append(
            f"{row.split:<11} {row.min_component:>13g} {row.files:>6d} {_percent(row.foreground_fraction):>10}"
            f" {_percent(row.anomaly_outside):>15} {_percent(row.reference_covered):>17}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``python -m tools.lab.foreground_coverage DATASET_DIR [options]``.

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 2 on a bad argument or dataset (one ``error:`` line on stderr).
    """
    prog = "python -m tools.lab.foreground_coverage"
    parser = OneLineArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", type=Path, help="dataset root in the docs/design.md layout")
    parser.add_argument(
        "--min-component",
        type=float,
        nargs="+",
        default=[MIN_COMPONENT_FRACTION],
        help=f"component fractions to compare (default {MIN_COMPONENT_FRACTION}; 1 keeps the largest alone)",
    )
    parser.add_argument(
        "--foreground",
        choices=("auto", "compute"),
        default="compute",
        help="compute (default: always from the image, compared with brain_mask/ files when present) or auto "
        "(brain_mask/ files when present, as the bundles do)",
    )
    parser.add_argument("--output", type=Path, help="also write the rows to this JSON file")
    # The library logs a bad dataset before raising; the error line below says it once.
    logging.getLogger("common").addHandler(logging.NullHandler())
    try:
        args = parser.parse_args(argv)
        settings_list = [
            SliceSettings(foreground=args.foreground, foreground_min_component=fraction)
            for fraction in args.min_component
        ]
        index = discover_dataset(args.dataset_dir)
        rows = []
        for settings in settings_list:
            rows.append(foreground_coverage(index.train_good, "train/good", settings))
            if index.test:
                rows.append(foreground_coverage(index.test, "test", settings))
    except (UsageError, ValueError) as error:  # DatasetLayoutError is a ValueError
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print(_table(rows))
    for row in rows:
        for message in row.skipped:
            print(f"skipped ({row.split}): {message}", file=sys.stderr)
    if args.output is not None:
        with atomic_output(args.output) as tmp:
            tmp.write_text(json.dumps([asdict(row) for row in rows], indent=2))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
