"""``uad``: train, run, evaluate, compare and export the anomaly-detection bundles with one command.

Each subcommand is a thin wrapper: ``train``, ``infer`` and ``evaluate`` run the bundle's own config with MONAI's
bundle runner, and print the equivalent ``python -m monai.bundle run ...`` line first, so a user can move to the
runner (or a job script) at any time; ``compare``, ``brain-extract``, ``export`` and ``demo`` are the product
commands ``python -m tools.<name>`` under one name. A wrong argument is one ``uad: error: ...`` line (exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.checkpoint import read_description
from tools.arguments import OneLineArgumentParser, UsageError, parse_overrides
from tools.bundles import available_bundles, bundle_command, bundle_dir, torchrun_command

__all__ = ["DELEGATED", "bundle_of_checkpoint", "main", "printable"]

PROG = "uad"

DELEGATED: dict[str, tuple[str, str]] = {
    "compare": ("tools.compare", "train and evaluate several bundles (and anomalib peers) on one dataset"),
    "brain-extract": ("tools.brain_extract", "write brain masks for the volumes of a dataset (deepbet)"),
    "export": ("tools.export_bundle", "a trained bundle as a standalone MONAI bundle (MONAI Label)"),
    "demo": ("tools.demo", "phantoms -> train MS-NF -> inference -> evaluation, minutes"),
}
"""Subcommands that are product commands of their own: ``uad NAME ARGS`` runs ``python -m MODULE ARGS``."""

EXAMPLES = """examples:
  uad train ms_nf ~/scans --set max_epochs=20 --set image_size=[128,128]
  uad infer uad_runs/ms_nf/models/model.pt ~/new_scans ~/new_scans_maps
  uad evaluate uad_runs/ms_nf/models/model.pt ~/test_set ~/test_set_eval
  uad compare ~/scans --output-dir ~/comparison --bundles ms_nf,skip_ts
  uad brain-extract ~/scans
  uad export ms_nf exported --checkpoint uad_runs/ms_nf/models/model.pt --zip
  uad demo

every subcommand has its own --help; train, infer and evaluate print the python -m monai.bundle line they run.
"""


def printable(command: Sequence[str]) -> str:
    """``command`` as a shell line a user can paste, with ``python`` in place of this interpreter's path."""
    words = list(command)
    if words and words[0] == sys.executable:
        words[0] = "python"
    return shlex.join(words)


def bundle_of_checkpoint(checkpoint: Path) -> str:
    """The bundle that wrote ``checkpoint`` (the id ``model.pt`` stores), checked against the installed bundles.

    Raises:
        ValueError: when the file is missing or unreadable, records no bundle, or names one that is not installed.
    """
    if not checkpoint.is_file():
        msg = f"{checkpoint}: model file not found"
        raise ValueError(msg)
    description = read_description(checkpoint)  # ValueError for a file that is not a checkpoint
    bundle = ((description or {}).get("bundle") or {}).get("id")
    if not bundle:
        msg = (
            f"{checkpoint}: the checkpoint does not record its bundle; run the bundle's inference.json with "
            "python -m monai.bundle run --config_file .../configs/inference.json --ckpt_path ..."
        )
        raise ValueError(msg)
    if bundle not in available_bundles():
        msg = f"{checkpoint}: written by bundle {bundle!r}, which is not installed ({', '.join(available_bundles())})"
        raise ValueError(msg)
    return str(bundle)


def _existing_folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        msg = f"{path}: {what} not found (not a folder)"
        raise ValueError(msg)
    return path.resolve()


def _run(command: list[str]) -> int:
    """Print ``command`` as a shell line, run it with this terminal's output and return its exit status."""
    print(f"$ {printable(command)}", flush=True)
    return subprocess.run(command, check=False).returncode


def _train(args: argparse.Namespace) -> int:
    bundle_dir(args.bundle)  # an unknown bundle is a one-line error listing the installed ones
    data = _existing_folder(args.data_dir, "dataset folder")
    if not (data / "train" / "good").is_dir():
        msg = f"{data}: no train/good folder (a dataset holds train/good/ with normal scans; see docs/design.md)"
        raise ValueError(msg)
    if args.nproc < 1:
        msg = f"--nproc must be >= 1, got {args.nproc}"
        raise ValueError(msg)
    out = args.output_dir.resolve() if args.output_dir else (Path("uad_runs") / args.bundle).resolve()
    overrides = {"dataset_dir": data, "ckpt_dir": out / "models", "output_dir": out / "train", **args.overrides}
    extra = [bundle_dir(args.bundle) / "configs" / "multi_gpu_train.json"] if args.nproc > 1 else []
    command = bundle_command(args.bundle, "train.json", "training", overrides, extra_configs=extra)
    if args.nproc > 1:
        command = torchrun_command(command, args.nproc)
    status = _run(command)
    model = Path(overrides["ckpt_dir"]) / "model.pt"
    if status == 0 and not model.is_file():
        print(f"{PROG} train: error: training ended without writing {model}", file=sys.stderr)
        return 1
    if status == 0:
        print(f"model: {model}")
    return status


def _bundle_run(config: str, args: argparse.Namespace) -> int:
    checkpoint = args.model.resolve()
    bundle = bundle_of_checkpoint(checkpoint)
    data = _existing_folder(args.input_dir, "input folder")
    output = args.output_dir.resolve()
    overrides = {"ckpt_path": checkpoint, "dataset_dir": data, "output_dir": output, **args.overrides}
    status = _run(bundle_command(bundle, config, "run", overrides))
    if status == 0:
        print(f"outputs: {output}")
    return status


def _infer(args: argparse.Namespace) -> int:
    return _bundle_run("inference.json", args)


def _evaluate(args: argparse.Namespace) -> int:
    return _bundle_run("evaluate.json", args)


def _delegate(name: str, argv: Sequence[str]) -> int:
    """``uad NAME ARGS``: print ``python -m MODULE ARGS`` and run the module's ``main`` in this process."""
    module = DELEGATED[name][0]
    print(f"$ {printable([sys.executable, '-m', module, *argv])}", flush=True)
    entry: Callable[[Sequence[str]], int | None] = importlib.import_module(module).main
    return int(entry(list(argv)) or 0)


def _overrides_action() -> dict[str, Any]:
    return {
        "dest": "set",
        "action": "append",
        "default": [],
        "metavar": "KEY=VALUE",
        "help": "config override, repeatable; VALUE is JSON when it parses (20, [128,128], true), else a string",
    }


def build_parser() -> OneLineArgumentParser:
    """The ``uad`` argument parser (its subcommands and their options)."""
    parser = OneLineArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0].replace("``", ""),
        epilog=EXAMPLES,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineArgumentParser)
    commands.required = True

    train = commands.add_parser(
        "train",
        help="train a bundle on DATA_DIR/train/good (writes OUTPUT_DIR/models/model.pt)",
        description="Train BUNDLE on the normal scans of DATA_DIR/train/good; thresholds are calibrated on a "
        "held-out part of them. Runs the bundle's train.json with MONAI's bundle runner.",
        epilog="example:\n  uad train ms_nf ~/scans --output-dir runs/ms_nf --set max_epochs=20",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    train.add_argument("bundle", metavar="BUNDLE", help=f"one of: {', '.join(available_bundles())}")
    train.add_argument(
        "data_dir", type=Path, metavar="DATA_DIR", help="dataset folder with train/good/ (and optionally test/)"
    )
    train.add_argument("--output-dir", type=Path, help="where models/ and train/ go (default uad_runs/BUNDLE)")
    train.add_argument("--nproc", type=int, default=1, help="processes under torchrun (multi_gpu_train.json)")
    train.add_argument("--set", **_overrides_action())
    train.set_defaults(run=_train)

    for name, config, run, what in (
        ("infer", "inference.json", _infer, "anomaly maps, masks and scores.csv for every image in INPUT_DIR"),
        ("evaluate", "evaluate.json", _evaluate, "metrics.json and plots for a dataset with test/ and ground_truth/"),
    ):
        sub = commands.add_parser(
            name,
            help=what,
            description=f"Write {what}, with the bundle that trained MODEL_PT (its {config}).",
            epilog=f"example:\n  uad {name} uad_runs/ms_nf/models/model.pt ~/scans_in ~/scans_out",
            formatter_class=argparse.RawTextHelpFormatter,
        )
        sub.add_argument("model", type=Path, metavar="MODEL_PT", help="model.pt written by uad train")
        sub.add_argument("input_dir", type=Path, metavar="INPUT_DIR" if name == "infer" else "DATA_DIR")
        sub.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR")
        sub.add_argument("--set", **_overrides_action())
        sub.set_defaults(run=run)

    for name, (module, what) in DELEGATED.items():
        commands.add_parser(name, help=f"{what} (python -m {module})", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``uad``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.overrides = parse_overrides(args.set, option="--set")
        return args.run(args)
    except (UsageError, ValueError) as error:
        print(f"{PROG}: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
