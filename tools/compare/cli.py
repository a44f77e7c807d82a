r"""Command line of the detector comparison: ``python -m tools.compare`` (console script ``uad-compare``).

Example:
    Every bundle (the intensity yardstick first) on the BraTS slices, three seeds, a reduced CPU budget::

        python -m tools.compare DATA/brats2015_slices --output-dir /tmp/compare_brats \
            --image-size 128 --epochs 3 --device cpu

    Trained on the 2D slices, evaluated on the 3D volumes of other patients::

        python -m tools.compare DATA/brats2015_volumes --train-dataset DATA/brats2015_slices \
            --bundles skip_ts,dnfad --image-size 128 --epochs 3 --output-dir /tmp/compare_volumes
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.io import atomic_output
from tools.arguments import OneLineArgumentParser, UsageError, parse_overrides
from tools.compare.report import COST_COLUMNS, DETECTION_COLUMNS, kind_matrix, markdown_table
from tools.compare.runner import compare
from tools.compare.settings import CompareSettings

__all__ = ["ALL_BUNDLES", "build_parser", "main", "parse_checkpoints", "parse_scoped_overrides", "settings_from_args"]

PROG = "python -m tools.compare"
ALL_BUNDLES = ("intensity", "ms_nf", "dnfad", "skip_ts", "anomalypro")
"""The default ``--bundles``: the intensity yardstick first, the baseline every table shows (docs/design.md)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m tools.compare``."""
    parser = OneLineArgumentParser(
        prog=PROG,
        description="Train, run and evaluate several detectors on one dataset over several seeds; write "
        "results.json, results.md and comparison figures.",
    )
    parser.add_argument("dataset", type=Path, help="dataset with test/ and ground_truth/ (docs/design.md layout)")
    parser.add_argument("--output-dir", type=Path, required=True, help="where results and runs are written")
    parser.add_argument(
        "--bundles", default=",".join(ALL_BUNDLES), help=f"comma-separated bundles (default {','.join(ALL_BUNDLES)})"
    )
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="seeds to run (default 0 1 2)")
    seeds.add_argument("--n-seeds", type=int, metavar="N", help="run seeds 0 .. N-1")
    parser.add_argument("--train-dataset", type=Path, help="dataset to train on (default: the dataset)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: each config's)")
    parser.add_argument("--batch-size", type=int, help="training batch size (default: each config's)")
    parser.add_argument("--image-size", type=int, nargs="+", metavar="N", help="network input N or H W")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="[BUNDLE:]KEY=VALUE",
        help="config override with a JSON value for every bundle, or one bundle with BUNDLE: (repeatable)",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="BUNDLE=PATH",
        help="evaluate this model.pt, no training (its architecture comes from the file)",
    )
    parser.add_argument(
        "--peers",
        default="",
        help="anomalib models to add: padim,fastflow,reverse_distillation,patchcore,cflow (efficient_ad: reported "
        "as unavailable offline)",
    )
    parser.add_argument("--bench-batch-size", type=int, default=8, help="benchmark batch (default 8)")
    parser.add_argument("--bench-iterations", type=int, default=3, help="benchmark timed passes (default 3)")
    parser.add_argument(
        "--volume-shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="benchmark volume (default: see docs)"
    )
    parser.add_argument("--n-overlays", type=int, default=6, help="slices in the overlay grid (default 6)")
    parser.add_argument("--timeout", type=float, help="seconds before one bundle command is stopped")
    parser.add_argument("--report", type=Path, help="also copy results.md here (e.g. docs/benchmarks.md)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_scoped_overrides(items: Sequence[str], bundles: Sequence[str]) -> tuple[dict, dict[str, dict]]:
    """Split ``--override`` items into overrides for every bundle and per-bundle ones (``BUNDLE:KEY=VALUE``).

    Example:
        >>> parse_scoped_overrides(["seed_offset=1", "ms_nf:n_blocks=4"], ["ms_nf"])
        ({'seed_offset': 1}, {'ms_nf': {'n_blocks': 4}})

    Raises:
        ValueError: for an item without ``=`` or scoped to a bundle that is not compared.
    """
    shared: list[str] = []
    scoped: dict[str, list[str]] = {}
    for item in items:
        key = item.partition("=")[0]
        if ":" in key:
            bundle, _, rest = item.partition(":")
            if bundle not in bundles:
                msg = f"--override {item!r}: bundle {bundle!r} is not among the compared bundles {list(bundles)}"
                raise ValueError(msg)
            scoped.setdefault(bundle, []).append(rest)
        else:
            shared.append(item)
    return parse_overrides(shared), {b: parse_overrides(v) for b, v in scoped.items()}


def parse_checkpoints(items: Sequence[str], bundles: Sequence[str]) -> dict[str, Path]:
    """``BUNDLE=PATH`` items as ``{bundle: path}``.

    Raises:
        ValueError: for a malformed item, a bundle that is not compared or a file that does not exist.
    """
    out: dict[str, Path] = {}
    for item in items:
        bundle, sep, path = item.partition("=")
        if not sep or not path:
            msg = f"--checkpoint: expected BUNDLE=PATH, got {item!r}"
            raise ValueError(msg)
        if bundle not in bundles:
            msg = f"--checkpoint {item!r}: bundle {bundle!r} is not among the compared bundles {list(bundles)}"
            raise ValueError(msg)
        if not Path(path).is_file():
            msg = f"--checkpoint {item!r}: {path} not found"
            raise ValueError(msg)
        out[bundle] = Path(path).resolve()
    return out


def _positive(name: str, value: int | float | None) -> None:
    if value is not None and value <= 0:
        msg = f"{name}: expected a positive number, got {value}"
        raise ValueError(msg)


def settings_from_args(args: argparse.Namespace, command: str = "") -> CompareSettings:
    """:class:`~tools.compare.settings.CompareSettings` from parsed arguments (validated; paths made absolute).

    Raises:
        ValueError: for an empty bundle list, a missing dataset, bad sizes, overrides or checkpoints.
    """
    bundles = [b.strip() for b in args.bundles.split(",") if b.strip()]
    if not bundles:
        msg = "--bundles: expected at least one bundle name"
        raise ValueError(msg)
    if len(set(bundles)) != len(bundles):
        msg = f"--bundles: a bundle is listed twice: {bundles}"
        raise ValueError(msg)
    for name, folder in (("dataset", args.dataset), ("--train-dataset", args.train_dataset)):
        if folder is not None and not folder.is_dir():
            msg = f"{name}: {folder} is not a folder"
            raise ValueError(msg)
    for name in ("epochs", "batch_size", "bench_batch_size", "bench_iterations", "n_seeds", "timeout"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    size = args.image_size
    if size is not None:
        if len(size) not in (1, 2) or min(size) < 1:
            msg = f"--image-size: expected N or H W (positive), got {size}"
            raise ValueError(msg)
        size = size * 2 if len(size) == 1 else size
    if args.volume_shape is not None and min(args.volume_shape) < 1:
        msg = f"--volume-shape: sizes must be positive, got {args.volume_shape}"
        raise ValueError(msg)
    seeds = list(range(args.n_seeds)) if args.n_seeds else (args.seeds or [0, 1, 2])
    checkpoints = parse_checkpoints(args.checkpoint, bundles)
    if len(checkpoints) == len(bundles) and not args.peers:
        seeds = seeds[:1]  # nothing is trained: one evaluation per model
    overrides, bundle_overrides = parse_scoped_overrides(args.override, bundles)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    return CompareSettings(
        dataset=args.dataset.resolve(),
        bundles=bundles,
        output_dir=args.output_dir.resolve(),
        seeds=seeds,
        train_dataset=args.train_dataset.resolve() if args.train_dataset else None,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=size,
        device=args.device,
        overrides=overrides,
        bundle_overrides=bundle_overrides,
        checkpoints=checkpoints,
        peers=peers,
        bench_batch_size=args.bench_batch_size,
        bench_iterations=args.bench_iterations,
        volume_shape=tuple(args.volume_shape) if args.volume_shape else None,
        n_overlays=args.n_overlays,
        timeout_s=args.timeout,
        command=command,
    )


def _summary(results: dict[str, Any]) -> str:
    rows = results["rows"]
    out = results["settings"]["output_dir"]
    lines = [
        "",
        f"Comparison on {results['settings']['dataset']} (seeds {results['settings']['seeds']}, "
        f"{results['wall_s'] / 60:.1f} min)",
        "",
        markdown_table(rows, DETECTION_COLUMNS[:8], "metrics"),
        "",
        markdown_table(rows, COST_COLUMNS, "cost"),
        "",
    ]
    kinds = sorted({kind for row in rows for kind in row.get("kinds") or {}})
    if kinds:
        lines += ["image AUROC per kind (test/good + test/<kind>):", "", kind_matrix(rows, kinds, "image_auroc"), ""]
    lines += [f"FAILED {row['name']}: {row['error']}" for row in rows if row["status"] != "ok"]
    lines.append(f"results: {out}/results.json, {out}/results.md; figures: {', '.join(results.get('figures', []))}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 when every detector completed, 1 when one failed (its row says why), 2 for bad arguments.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        settings = settings_from_args(args, shlex.join([*PROG.split(), *argv]))
        results = compare(settings, progress=not args.no_progress)
    except (UsageError, ValueError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    if args.report is not None:
        with atomic_output(args.report) as tmp:
            tmp.write_text((settings.output_dir / "results.md").read_text())
    print(_summary(results))
    return 0 if all(row["status"] == "ok" for row in results["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
