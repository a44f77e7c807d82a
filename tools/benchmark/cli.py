"""The command line of the benchmark: ``python -m tools.benchmark BUNDLE [options]`` (console script ``uad-benchmark``).

Every bad argument is one ``error:`` line and exit status 2; the report is printed as :func:`format_table` writes it,
and with ``--output`` the results are also written as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from common.io import atomic_output
from tools.arguments import OneLineArgumentParser, UsageError, parse_overrides
from tools.benchmark.bundle import run_benchmark
from tools.benchmark.model import PRECISIONS, CompileError
from tools.benchmark.tables import format_table
from tools.benchmark.volume import DEFAULT_VOLUME_SHAPE

__all__ = ["PROG", "main"]

PROG = "python -m tools.benchmark"
"""The program name of usage and error lines."""


def _build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description="Benchmark a bundle's network on this device: throughput, peak memory, one NIfTI volume end to "
        "end, parameters and FLOPs.",
    )
    parser.add_argument("bundle", help="bundle name under bundles/ (e.g. ms_nf)")
    parser.add_argument(
        "--image-size", type=int, nargs="+", metavar="N", help="network input size: N (square) or H W (default: config)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default 16)")
    parser.add_argument("--iterations", type=int, default=10, help="timed forward passes (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forward passes first (default 2)")
    parser.add_argument(
        "--volume-shape",
        type=int,
        nargs=3,
        default=list(DEFAULT_VOLUME_SHAPE),
        metavar=("X", "Y", "Z"),
        help="synthetic NIfTI volume shape (default 240 240 155; ignored with --volume)",
    )
    parser.add_argument(
        "--volume",
        type=Path,
        metavar="PATH",
        help="a real 3D NIfTI volume for the brain extraction and the end-to-end time (default: a synthetic one)",
    )
    parser.add_argument(
        "--brain-extraction",
        metavar="METHOD",
        help="deepbet, none or module:function in place of the bundle's slice_settings brain_extraction",
    )
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="model-alone timing: fp32, bf16 autocast (CPU too) or auto (bf16 on CUDA when the config's amp is on)",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="model-alone timing in channels_last (default: on CUDA only)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="model-alone timing through torch.compile; its first call (compilation) is reported apart",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="inference.json override with a JSON value, repeatable (e.g. --override n_blocks=8)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="model.pt to load; it gives the architecture (default: random weights)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and volume (default 0)")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m tools.benchmark BUNDLE [options]`` (console script ``uad-benchmark``).

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 2 for bad arguments, 1 when ``--compile`` fails on this machine (one ``error:`` line on
        stderr).
    """
    try:
        args = _build_parser().parse_args(None if argv is None else list(argv))
        image_size = (
            None if args.image_size is None else (args.image_size * 2 if len(args.image_size) == 1 else args.image_size)
        )
        overrides = parse_overrides(args.override)
    except (UsageError, ValueError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        results = run_benchmark(
            args.bundle,
            image_size=image_size,
            batch_size=args.batch_size,
            iterations=args.iterations,
            volume_shape=args.volume_shape,
            device=args.device,
            overrides=overrides,
            checkpoint=args.checkpoint,
            warmup=args.warmup,
            seed=args.seed,
            volume=args.volume,
            brain_extraction=args.brain_extraction,
            precision=args.precision,
            channels_last=args.channels_last,
            compile=args.compile,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except CompileError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    if args.output is not None:
        with atomic_output(args.output) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    if args.output is not None:
        print(f"results written to {args.output}")
    return 0
