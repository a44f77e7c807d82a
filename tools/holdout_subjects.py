"""A development split from the training data alone: hold out subjects of ``train/`` as a small test set.

Choosing a recipe (a switch, a budget) must never look at ``test/``. For a dataset whose ``train/mixed`` holds the
normal ``train/good`` slices of the same subjects plus their abnormal slices (``brats2015_slices`` is built this way),
the abnormal slices of a subject are the ``train/mixed`` files that are not in ``train/good``. This tool writes a
dataset in the project's layout, made of links to the input files (inputs are never modified or copied)::

    out/train/good/   the normal training slices of every subject but the held-out ones
    out/test/good/    the held-out subjects' normal slices
    out/test/lesion/  the held-out subjects' abnormal slices (no masks: evaluation is at image level)

A subject is the file name up to the last ``_z<number>`` (``brats_2013_pat0006_1_z031.png`` → ``brats_2013_pat0006_1``).

Usage::

    python -m tools.holdout_subjects ../shared/data/brats2015_slices runs/dev_split --holdout brats_2013_pat0006_1
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "subject_of", "write_holdout_split"]

_SLICE_SUFFIX = re.compile(r"_z\d+$")


def subject_of(path: Path) -> str:
    """The subject a slice file belongs to: its stem without the trailing ``_z<number>``."""
    stem = path.name.split(".")[0]
    return _SLICE_SUFFIX.sub("", stem)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def write_holdout_split(dataset_dir: str | Path, out_dir: str | Path, holdout: Sequence[str]) -> dict[str, int]:
    """Write the development split (module docstring) and return how many files each folder got.

    Args:
        dataset_dir: a dataset with ``train/good`` and ``train/mixed``.
        out_dir: where the split is written (must not exist yet).
        holdout: subjects whose slices form the test folders.

    Raises:
        ValueError: when a folder is missing, ``out_dir`` exists, or a held-out subject has no normal or no
            abnormal slices.
    """
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
        "test/lesion": [p for p in abnormal if subject_of(p) in held],
    }
    for subject in sorted(held):
        for folder in ("test/good", "test/lesion"):
            if not any(subject_of(p) == subject for p in plan[folder]):
                msg = f"{root}: held-out subject {subject!r} has no slices for {folder}"
                raise ValueError(msg)
    for folder, files in plan.items():
        (out / folder).mkdir(parents=True)
        for source in files:
            (out / folder / source.name).symlink_to(source.resolve())
    return {folder: len(files) for folder, files in plan.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--holdout", nargs="+", required=True, help="subjects held out as the test set")
    args = parser.parse_args(argv)
    try:
        counts = write_holdout_split(args.dataset_dir, args.out_dir, args.holdout)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for folder, count in counts.items():
        print(f"{folder}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
