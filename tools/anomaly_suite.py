"""An anomaly suite on real anatomy: one test class per anomaly kind, implanted in held-out healthy heads.

A detector that only finds bright blobs is no better than a threshold on intensity (``docs/design.md``, "The
yardstick"). This suite measures what else a detector finds. It follows the MOOD challenge's synthetic-anomaly
protocol (Zimmerer et al., IEEE TMI 41(10), 2022): healthy scans of held-out subjects each get one local anomaly of a
known kind with an exact mask, and results are reported per kind. The kinds and their parameter ranges are those of
:mod:`tools.anomaly_kinds`: ``hyperintense``, ``hypointense``, ``texture``, ``deformation``, ``foreign`` (Foreign
Patch Interpolation, Tan et al., MELBA 2022) and ``mass_effect``. Texture and deformation are built so that a
threshold on intensity cannot find them (``tests/tools/test_anomaly_suite.py`` measures it).

The source holds healthy 3D NIfTI heads in ``train/good`` (raw scans with skull are fine) and, optionally, their
brain masks in ``brain_mask/good``; a head without one has its brain extracted first
(:func:`tools.brain_extract.extract_brain_mask`, deepbet by default, as the bundles do). Subjects are split as
:func:`tools.anatomy_lesions.split_subjects` does (the same split as ``python -m tools.phantoms --from-volumes`` for
the same seed): training heads, normal test heads and anomalous test heads; no subject is in two splits, training and
normal test heads are byte copies, and every anomalous head gets one anomaly of each kind. Layout (``<name>`` is the
source file name)::

    out/train/good/<name>              training heads (byte copies)
    out/test/good/<name>               normal test heads (byte copies)
    out/test/<kind>/<name>             an anomalous head with one anomaly of the kind
    out/ground_truth/<kind>/<name>     its mask, uint8 0/1
    out/brain_mask/<class>/<name>      the brain masks of every head written, for ``good`` and each kind

Anomalous heads keep the source header (data type, scaling, affine): anomalies are implanted in the stored values.
A head's anomaly of a kind depends only on the seed, the file name and the kind (``hyperintense`` uses the seed of
:func:`tools.anatomy_lesions.write_anatomy_dataset`, so its lesions are those of ``--from-volumes``).

A head whose brain mask cannot be read or extracted, or a kind that cannot be placed in a head's brain (or whose
parameters are out of range), is reported on one line naming the head, and the others go on; the skipped ones are
listed again at the end and the exit status is 1. Bad arguments exit with status 2.

Example:
    The IXI T1 suite (16 training, 4 normal and 4 anomalous test heads; 24 anomalous volumes)::

        python -m tools.anomaly_suite DATA/ixi_t1 demo_data/ixi_t1_suite --n-train 16

    Other parameter ranges for a kind (``KIND.PARAMETER=JSON``; the parameters are listed in
    :data:`tools.anomaly_kinds.KIND_PARAMETERS`)::

        python -m tools.anomaly_suite DATA/ixi_t1 out --kinds texture deformation --set texture.noise=[0.2,0.4]
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tools.anatomy_lesions import (
    check_splits_free,
    copy_atomic,
    nifti_volumes,
    split_subjects,
    subject_seed,
    write_like,
    write_mask_like,
)
from tools.anomaly_kinds import KIND_PARAMETERS, KINDS, implant_anomaly

__all__ = ["SuiteSummary", "kind_seed", "main", "write_anomaly_suite"]


@dataclass
class SuiteSummary:
    """What :func:`write_anomaly_suite` wrote.

    Attributes:
        train: training heads written.
        test_good: normal test heads written.
        anomalous: the heads that get anomalies.
        written: for each kind, the heads written to ``test/<kind>``.
        extracted: heads whose brain mask was extracted (the source had none).
        skipped: ``"<head> [<kind>]: <reason>"`` for each head or anomaly left out.
    """

    train: list[str] = field(default_factory=list)
    test_good: list[str] = field(default_factory=list)
    anomalous: list[str] = field(default_factory=list)
    written: dict[str, list[str]] = field(default_factory=dict)
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def kind_seed(seed: int, name: str, kind: str) -> list[int]:
    """The seed of one head's anomaly of one kind (``hyperintense``: the lesion seed of the anatomy dataset)."""
    if kind == "hyperintense":
        return subject_seed(seed, name)
    return [*subject_seed(seed, name), zlib.crc32(kind.encode("utf-8"))]


def _brain_mask(image_path: Path, mask_path: Path, brain_extraction: str) -> tuple[np.ndarray, bool]:
    """``(brain mask, extracted)``: the source's mask, or the extracted one when the source has none."""
    shape = nib.load(image_path).shape
    if mask_path.is_file():
        mask_image = nib.load(mask_path)
        if mask_image.shape != shape or len(shape) != 3:
            msg = f"{mask_path}: shape {mask_image.shape} does not match the 3D volume's {shape}"
            raise ValueError(msg)
        brain = np.asanyarray(mask_image.dataobj) > 0
        if not brain.any():
            msg = f"{mask_path}: the brain mask is empty"
            raise ValueError(msg)
        return brain, False
    if brain_extraction == "none":
        msg = f"no brain mask ({mask_path} is missing) and brain extraction is off"
        raise ValueError(msg)
    from common.data import load_image  # torch and MONAI: imported only when a mask is missing
    from tools.brain_extract import extract_brain_mask

    image = load_image(image_path)
    if image.ndim != 3 or min(image.shape) == 1:
        msg = f"{image_path}: brain extraction needs a 3D volume, got shape {tuple(image.shape)}"
        raise ValueError(msg)
    return extract_brain_mask(image, brain_extraction), True


def _write_brain(
    image: nib.spatialimages.SpatialImage, brain: np.ndarray, extracted: bool, mask_path: Path, destination: Path
) -> None:
    if extracted:
        write_mask_like(image, brain, destination)
    else:
        copy_atomic(mask_path, destination)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def write_anomaly_suite(
    source_dir: str | Path,
    out_dir: str | Path,
    n_train: int = 16,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    parameters: Mapping[str, Mapping[str, Any]] | None = None,
    brain_extraction: str = "deepbet",
    report: Any = None,
) -> SuiteSummary:
    """Write the anomaly suite of ``source_dir`` to ``out_dir`` (module docstring).

    Args:
        source_dir: dataset with healthy 3D heads in ``train/good``, optionally brain masks in ``brain_mask/good``.
        out_dir: the suite's root, created if needed; files of the same names are replaced.
        n_train: training heads (>= 1); at least 2 heads must remain for the test splits.
        seed: non-negative seed of the split and of the anomalies.
        kinds: the kinds to write, a subset of :data:`tools.anomaly_kinds.KINDS`.
        parameters: per kind, parameter ranges that replace the defaults (``{"texture": {"noise": (0.2, 0.4)}}``).
        brain_extraction: extractor for heads without a brain mask: ``"deepbet"``, ``"module:function"`` or
            ``"none"`` (such heads are then skipped).
        report: called with each skipped item's line as it happens (e.g. ``print`` to stderr); ``None``: silent.

    Returns:
        The :class:`SuiteSummary`.

    Raises:
        ValueError: for a bad argument (unknown kind or parameter name, ``n_train`` or ``seed`` out of range), a source
            without volumes, or an output folder that holds a subject of another split.
    """
    source, out = Path(source_dir), Path(out_dir)
    for name, value, minimum in (("n_train", n_train, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
            msg = f"{name}: expected an int >= {minimum}, got {value!r}"
            raise ValueError(msg)
    kinds = list(dict.fromkeys(kinds))
    unknown = [kind for kind in [*kinds, *(parameters or {})] if kind not in KIND_PARAMETERS]
    if unknown or not kinds:
        problem = f"unknown anomaly kind {unknown[0]!r}" if unknown else "no anomaly kind given"
        msg = f"{problem}; the kinds are {', '.join(KINDS)}"
        raise ValueError(msg)
    for kind, values in (parameters or {}).items():
        for key in values:
            if key not in KIND_PARAMETERS[kind]:
                msg = f"{kind}: unknown parameter {key!r} (its parameters: {', '.join(KIND_PARAMETERS[kind])})"
                raise ValueError(msg)
    image_dir, mask_dir = source / "train" / "good", source / "brain_mask" / "good"
    names = [p.name for p in nifti_volumes(image_dir)]
    if not names:
        msg = f"no NIfTI volumes (*.nii.gz, *.nii) in {image_dir}"
        raise ValueError(msg)
    splits = split_subjects(names, int(n_train), int(seed), image_dir)
    planned = {out / "train" / "good": splits["train"], out / "test" / "good": splits["test_good"]}
    planned.update({out / "test" / kind: splits["test_lesion"] for kind in kinds})
    check_splits_free(names, planned)

    summary = SuiteSummary(anomalous=list(splits["test_lesion"]), written={kind: [] for kind in kinds})

    def skip(line: str) -> None:
        summary.skipped.append(_one_line(line))
        if report is not None:
            report(summary.skipped[-1])

    for split in ("train", "test_good", "test_lesion"):
        for name in splits[split]:
            image_path = image_dir / name
            try:
                brain, extracted = _brain_mask(image_path, mask_dir / name, brain_extraction)
                image = nib.load(image_path)
            except Exception as error:  # one bad head must not stop the others
                text = str(error) or type(error).__name__
                skip(text if text.startswith(str(image_path)) else f"{image_path}: {text}")
                continue
            if extracted:
                summary.extracted.append(name)
            if split != "test_lesion":
                folder = out / "train" / "good" if split == "train" else out / "test" / "good"
                copy_atomic(image_path, folder / name)
                _write_brain(image, brain, extracted, mask_dir / name, out / "brain_mask" / "good" / name)
                (summary.train if split == "train" else summary.test_good).append(name)
                continue
            stored = np.asanyarray(image.dataobj.get_unscaled())
            spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
            for kind in kinds:
                rng = np.random.default_rng(kind_seed(int(seed), name, kind))
                try:
                    chosen = dict((parameters or {}).get(kind, {}))
                    anomaly = implant_anomaly(kind, stored, brain, rng, spacing, **chosen)
                except ValueError as error:
                    skip(f"{image_path} [{kind}]: {error}")
                    continue
                write_like(image, anomaly.volume, out / "test" / kind / name)
                write_mask_like(image, anomaly.mask, out / "ground_truth" / kind / name)
                _write_brain(image, brain, extracted, mask_dir / name, out / "brain_mask" / kind / name)
                summary.written[kind].append(name)
    return summary


def _parameters(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``KIND.PARAMETER=JSON`` items as ``{kind: {parameter: value}}``."""
    from tools.arguments import parse_overrides

    parameters: dict[str, dict[str, Any]] = {}
    for key, value in parse_overrides(items, option="--set").items():
        kind, dot, name = key.partition(".")
        if not dot or not name:
            msg = f"--set: expected KIND.PARAMETER=VALUE (e.g. texture.noise=[0.2,0.4]), got {key!r}"
            raise ValueError(msg)
        parameters.setdefault(kind, {})[name] = value
    return parameters


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m tools.anomaly_suite SOURCE OUT [options]``.

    Returns:
        0 when everything was written, 1 when a head or an anomaly was skipped, 2 for a bad argument.
    """
    from tools.arguments import OneLineArgumentParser, UsageError

    prog = "python -m tools.anomaly_suite"
    parser = OneLineArgumentParser(
        prog=prog,
        description="Write an anomaly suite: healthy heads split by subject, and one test class per anomaly kind "
        f"({', '.join(KINDS)}) with exact masks in the held-out heads.",
    )
    parser.add_argument("source_dir", type=Path, help="dataset with healthy 3D heads in train/good")
    parser.add_argument("out_dir", type=Path, help="suite root to write")
    parser.add_argument("--n-train", type=int, default=16, help="training heads (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the anomalies (default 0)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), metavar="KIND", help="kinds to write (default all)")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KIND.PARAMETER=VALUE",
        help="a parameter range of a kind, JSON (e.g. deformation.strain=[0.3,0.5]); repeatable",
    )
    parser.add_argument(
        "--brain-extraction",
        default="deepbet",
        help="extractor for heads without brain_mask/good: deepbet (default), package.module:function or none",
    )
    try:
        args = parser.parse_args(argv)
        summary = write_anomaly_suite(
            args.source_dir,
            args.out_dir,
            n_train=args.n_train,
            seed=args.seed,
            kinds=args.kinds,
            parameters=_parameters(args.set),
            brain_extraction=args.brain_extraction,
            report=lambda line: print(line, file=sys.stderr),
        )
    except (UsageError, ValueError) as error:
        print(f"{prog}: error: {_one_line(str(error))}", file=sys.stderr)
        return 2
    out = args.out_dir
    print(f"Wrote the anomaly suite of {args.source_dir} (seed {args.seed}) to {out}:")
    print(f"  {out / 'train' / 'good'}: {len(summary.train)} files")
    print(f"  {out / 'test' / 'good'}: {len(summary.test_good)} files")
    for kind, heads in summary.written.items():
        print(f"  {out / 'test' / kind}: {len(heads)} files")
    if summary.extracted:
        print(f"  brain masks extracted for {len(summary.extracted)} head(s): {', '.join(summary.extracted)}")
    if summary.skipped:
        print(f"skipped {len(summary.skipped)}:")
        for line in summary.skipped:
            print(f"  {line}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
