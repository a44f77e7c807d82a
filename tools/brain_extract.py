"""Write the brain masks of a dataset's 3D volumes: ``python -m tools.brain_extract DATASET_DIR``.

Every bundle extracts the brain of a 3D volume that has no ``brain_mask/`` file (:mod:`common.brain`), on every run:
training, calibration, inference and evaluation each pay deepbet's few seconds per volume again. This command does it
once and writes the masks where the bundles look for them, so later runs read them instead:

- every 3D NIfTI volume in ``train/good/``, ``train/mixed/`` and ``test/<class>/`` gets
  ``DATASET_DIR/brain_mask/<class>/<same file name>``: a uint8 0/1 NIfTI on the volume's exact grid (shape, affine and
  header), written under a temporary name and renamed, so no half-written mask is ever left;
- the mask comes from the same transform the bundles run (:class:`common.brain.ExtractBrainMaskd`), so it is what
  they would have computed themselves;
- masks already there are kept (``--overwrite`` recomputes them); 2D files (PNG, 2D NIfTI) are skipped, since
  extraction needs a volume; a file that cannot be read or whose extracted brain is implausible is reported as
  ``<file>: <reason>`` and the run goes on with the others.

The last line is ``written N, skipped M (mask exists), not 3D K, failed F``; the exit status is 1 when a file failed,
2 for a bad argument or dataset folder, 0 otherwise. The input files are never modified.

Example::

    python -m tools.brain_extract data/ixi_t1 --classes good
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from common.brain import ExtractBrainMaskd, check_brain_extraction, get_extractor, voxel_volume_ml
from common.data import DatasetLayoutError, ImageRecord, discover_dataset, is_nifti, load_image
from common.volumes import write_map
from tools.arguments import OneLineArgumentParser, UsageError

__all__ = ["ExtractionSummary", "extract_brain_mask", "extract_brain_masks", "main", "mask_path", "write_mask"]

logger = logging.getLogger(__name__)

MASK_FOLDER = "brain_mask"


@dataclass
class ExtractionSummary:
    """What one run did with each file.

    Attributes:
        written: masks written.
        skipped: images left alone because their mask exists (without ``--overwrite``).
        not_3d: 2D images (extraction needs a volume).
        failed: ``"<file>: <reason>"`` for each file that failed.
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    not_3d: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The one-line summary, ``written N, skipped M (mask exists), not 3D K, failed F``."""
        return (
            f"written {len(self.written)}, skipped {len(self.skipped)} (mask exists), not 3D {len(self.not_3d)}, "
            f"failed {len(self.failed)}"
        )


def mask_path(root: str | Path, record: ImageRecord) -> Path:
    """Where the bundles look for the brain mask of ``record``: ``<root>/brain_mask/<class>/<file name>``."""
    return Path(root) / MASK_FOLDER / record.defect / record.image.name


def write_mask(mask: np.ndarray, reference: str | Path, out_path: str | Path) -> Path:
    """Write a boolean mask atomically as a uint8 0/1 NIfTI on the grid of the NIfTI file ``reference``.

    The reference's shape (including singleton trailing axes), affine and header are kept; the data type becomes
    uint8, the intensity scaling is cleared and the display range set to 0..1.

    Args:
        mask: the mask, with the reference's array shape (singleton trailing axes may be left out).
        reference: the image the mask belongs to.
        out_path: the destination ``.nii`` or ``.nii.gz`` path.

    Returns:
        ``out_path``.

    Raises:
        ValueError: when the mask's shape differs from the reference's.
    """
    return write_map(np.asarray(mask, dtype=bool), reference, out_path, dtype=np.uint8)


def _one_line(error: Exception, path: Path) -> str:
    """``"<file>: <reason>"`` on one line, whether or not the message already names the file."""
    text = " ".join(str(error).split()) or type(error).__name__
    if not isinstance(error, ValueError):  # ValueErrors of common.data and common.brain already name the file
        text = f"{type(error).__name__}: {text}"
    return text if text.startswith(f"{path}: ") else f"{path}: {text}"


def extract_brain_mask(image: Any, method: str | ExtractBrainMaskd = "deepbet") -> np.ndarray:
    """The brain mask the bundles compute for one loaded 3D volume (:class:`common.brain.ExtractBrainMaskd`).

    Args:
        image: a volume ``(X, Y, Z)`` from :func:`common.data.load_image` (a ``MetaTensor`` with its affine and file
            name).
        method: the extractor (``"deepbet"`` or ``"module:function"``), or a transform to reuse.

    Returns:
        The boolean mask on the volume's grid.

    Raises:
        BrainExtractionError: ``"<file>: ..."`` when the extraction fails or finds an implausibly small brain.
    """
    transform = method if isinstance(method, ExtractBrainMaskd) else ExtractBrainMaskd(keys="image", method=method)
    out = transform({"image": image[None]})
    return np.asarray(out["brain_mask"][0]) > 0


def extract_brain_masks(
    records: Sequence[ImageRecord], root: str | Path, method: str = "deepbet", overwrite: bool = False
) -> ExtractionSummary:
    """Extract and write the brain mask of each 3D volume in ``records``.

    Each file that is not written is reported on stderr as it happens (``<file>: <reason>`` when it failed), above a
    progress bar over the files (shown when stderr is a terminal).

    Args:
        records: the dataset's files (as :func:`common.data.discover_dataset` finds them).
        root: the dataset root; masks go to ``<root>/brain_mask/<class>/``.
        method: the extractor, as the bundles' ``brain_extraction`` setting (``"deepbet"`` or ``"module:function"``).
        overwrite: recompute masks that already exist.

    Returns:
        The :class:`ExtractionSummary`.
    """
    transform = ExtractBrainMaskd(keys="image", method=method)
    summary = ExtractionSummary()
    claimed: dict[Path, Path] = {}
    # disable=None: a bar on a terminal, none in a log file (the per-file lines and the summary still go there)
    with tqdm(records, desc="brain extraction", unit="file", file=sys.stderr, dynamic_ncols=True, disable=None) as bar:
        for record in bar:
            path = record.image
            out_path = mask_path(root, record)
            bar.set_postfix_str(path.name, refresh=False)
            if not is_nifti(path):  # PNG, JPEG, TIFF, BMP: always 2D
                summary.not_3d.append(path)
                tqdm.write(f"{path}: skipped, brain extraction needs a 3D volume", file=sys.stderr)
                continue
            if out_path in claimed:  # train/good/x and test/good/x share brain_mask/good/x
                summary.failed.append(
                    f"{path}: has the same mask file {out_path} as {claimed[out_path]} (one file name in two folders "
                    f"of class {record.defect!r}); rename one of them"
                )
                tqdm.write(summary.failed[-1], file=sys.stderr)
                continue
            claimed[out_path] = path
            if out_path.exists() and not overwrite:
                summary.skipped.append(path)
                continue
            try:
                image = load_image(path)
                if image.ndim != 3 or min(image.shape) == 1:  # 2D, or a one-slice volume (as the bundles see it)
                    summary.not_3d.append(path)
                    tqdm.write(f"{path}: skipped, brain extraction needs a 3D volume", file=sys.stderr)
                    continue
                mask = extract_brain_mask(image, transform)
                write_mask(mask, path, out_path)
            except Exception as error:  # one bad file must not stop the others; KeyboardInterrupt still does
                summary.failed.append(_one_line(error, path))
                tqdm.write(summary.failed[-1], file=sys.stderr)
                continue
            summary.written.append(out_path)
            logger.info("%s: %.0f ml of brain -> %s", path, mask.sum() * voxel_volume_ml(image.affine), out_path)
    return summary


def _discover(dataset_dir: Path) -> list[ImageRecord]:
    """All files of ``train/good``, ``train/mixed`` and ``test/<class>``; a dataset of test files alone is fine."""
    try:
        index = discover_dataset(dataset_dir)
    except DatasetLayoutError as error:
        try:
            index = discover_dataset(dataset_dir, require_test=True)
        except DatasetLayoutError:
            raise error from None
    return [*index.train_good, *index.train_mixed, *index.test]


def _writable(root: Path) -> bool:
    """Whether masks can be written under ``root`` (its ``brain_mask/`` folder, or the root to create it in)."""
    folder = root / MASK_FOLDER
    return os.access(folder if folder.exists() else root, os.W_OK)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``python -m tools.brain_extract DATASET_DIR [options]``.

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 when every 3D volume has its mask, 1 when a file failed, 2 on a bad argument or dataset folder (one
        ``error:`` line on stderr).
    """
    prog = "python -m tools.brain_extract"
    parser = OneLineArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", type=Path, help="dataset root in the docs/design.md layout")
    parser.add_argument(
        "--method",
        default="deepbet",
        help="brain extractor: deepbet (default) or package.module:function, as the bundles' brain_extraction",
    )
    parser.add_argument("--overwrite", action="store_true", help="recompute masks that already exist")
    parser.add_argument(
        "--classes", nargs="+", metavar="CLASS", help="only these class folders (good, mixed, a defect name)"
    )
    # The library logs a bad dataset before raising; the error line below says it once.
    common_logger = logging.getLogger("common")
    if not any(isinstance(handler, logging.NullHandler) for handler in common_logger.handlers):
        common_logger.addHandler(logging.NullHandler())
    try:
        args = parser.parse_args(argv)
        if check_brain_extraction(args.method) == "none":
            msg = "--method none extracts nothing; use deepbet or package.module:function"
            raise UsageError(msg)
        get_extractor(args.method)  # an import error is a bad argument, before any file is read
        records = _discover(args.dataset_dir)
        if args.classes:
            found = sorted({record.defect for record in records})
            records = [record for record in records if record.defect in args.classes]
            if not records:
                wanted = " ".join(args.classes)
                msg = f"{args.dataset_dir}: no files of class {wanted}; classes found: {' '.join(found)}"
                raise UsageError(msg)
        pending = any(
            is_nifti(r.image) and (args.overwrite or not mask_path(args.dataset_dir, r).exists()) for r in records
        )
        if pending and not _writable(args.dataset_dir):  # say it once, not once per file after its extraction
            msg = f"{args.dataset_dir}: masks cannot be written to {args.dataset_dir / MASK_FOLDER} (not writable)"
            raise UsageError(msg)
    except (UsageError, ValueError) as error:  # DatasetLayoutError is a ValueError
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    summary = extract_brain_masks(records, args.dataset_dir, args.method, args.overwrite)
    print(summary.line())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
