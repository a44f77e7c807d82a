"""The demo: generated brain phantoms → train MS-NF → NIfTI batch inference → evaluation, on the CPU.

Nothing is downloaded. The dataset is made by :mod:`tools.phantoms`: 3D brain-like volumes (skull, CSF, grey and
white matter, ventricles, bias field, noise) with synthetic hyperintense lesions in the abnormal test volumes. MS-NF
is trained briefly on the normal volumes with a reduced flow (fewer coupling blocks, narrower subnets, smaller slices)
so the whole demo runs in a few minutes on two CPU cores; the full paper configuration is the bundle's default.

Usage::

    python -m tools.demo [--output-dir demo_output] [--epochs 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from common.progress import EPOCH_LINE_PREFIX
from tools.bundles import run_bundle
from tools.phantoms import write_dataset

__all__ = ["DEMO_DATA", "DEMO_NETWORK", "DemoData", "main", "run_demo"]

BUNDLE = "ms_nf"
# Reduced flow for a CPU demo (paper: 15 blocks, hidden width 128, 256 x 256).
DEMO_NETWORK = {"image_size": [96, 96], "n_blocks": 4, "hidden_channels": 64}
# The 4-block flow trains stably without the learning-rate warm-up the 15-block default uses.
DEMO_TRAINING = {"warmup_iterations": 0}


@dataclass(frozen=True)
class DemoData:
    """Size of the generated phantom dataset (:func:`tools.phantoms.write_dataset`, 3D volumes)."""

    n_train: int = 14
    n_test_good: int = 3
    n_test_lesion: int = 5
    size: int = 96
    depth: int = 40


DEMO_DATA = DemoData()
TABLE_KEYS = (
    ("image_auroc", "image AUROC (slices)"),
    ("image_ap", "image AP (slices)"),
    ("image_f1", "F1 at calibrated threshold"),
    ("pixel_auroc", "pixel AUROC"),
    ("pixel_auroc_foreground", "pixel AUROC (inside brain)"),
    ("aupro", "AUPRO (FPR <= 0.3)"),
    ("best_dice", "best Dice"),
    ("volume_auroc", "volume AUROC"),
)


def _step(message: str) -> float:
    print(f"==> {message}", flush=True)
    return time.perf_counter()


def run_demo(
    output_dir: str | Path = "demo_output",
    epochs: int = 3,
    seed: int = 0,
    data_size: DemoData = DEMO_DATA,
    network: Mapping[str, object] | None = None,
) -> dict:
    """Run the whole demo and return the evaluation metrics.

    Args:
        output_dir: where data, model, maps and reports go (created).
        epochs: training epochs.
        seed: data and training seed.
        data_size: how many phantom volumes of which size (the test runs a smaller set).
        network: MS-NF architecture overrides (default :data:`DEMO_NETWORK`).
    """
    out = Path(output_dir).resolve()
    logs = out / "logs"
    start = _step(f"writing phantom dataset to {out / 'data'}")
    data = write_dataset(out / "data", dims=3, seed=seed, **asdict(data_size))
    # Inference and evaluation below take the architecture from model.pt: only training names it.
    common = {**(DEMO_NETWORK if network is None else network), "seed": seed}

    t = _step(f"training MS-NF for {epochs} epochs on {len(list((data / 'train' / 'good').iterdir()))} normal volumes")
    run_bundle(
        BUNDLE,
        "train.json",
        "training",
        {
            **common,
            **DEMO_TRAINING,
            "dataset_dir": data,
            "max_epochs": epochs,
            "batch_size": 16,
            "ckpt_dir": out / "model",
            "output_dir": out / "train",
        },
        log_file=logs / "train.log",
        echo_prefix=EPOCH_LINE_PREFIX,
    )
    print(f"    done in {time.perf_counter() - t:.0f} s; log: {logs / 'train.log'}")

    model = out / "model" / "model.pt"
    t = _step("NIfTI batch inference over test/lesion")
    run_bundle(
        BUNDLE,
        "inference.json",
        "run",
        {"dataset_dir": data / "test" / "lesion", "output_dir": out / "inference", "ckpt_path": model},
        log_file=logs / "inference.log",
    )
    print(f"    done in {time.perf_counter() - t:.0f} s")

    t = _step("evaluation against ground truth")
    run_bundle(
        BUNDLE,
        "evaluate.json",
        "run",
        {"dataset_dir": data, "output_dir": out / "eval", "ckpt_path": model},
        log_file=logs / "evaluate.log",
    )
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    print(f"    done in {time.perf_counter() - t:.0f} s\n")

    print("MS-NF on the phantom test set (thresholds calibrated on held-out normal training volumes)")
    print(f"{'metric':32s} value")
    for key, label in TABLE_KEYS:
        if key in metrics and metrics[key] is not None:
            print(f"{label:32s} {metrics[key]:.3f}")
    print(f"\nanomaly maps (NIfTI, on the input grid): {out / 'inference'}")
    print(f"scores per slice and volume:             {out / 'inference' / 'scores.csv'}")
    print(f"overlay PNG:                             {out / 'eval' / 'overlays.png'}")
    print(f"metrics:                                 {out / 'eval' / 'metrics.json'}")
    print(f"total time: {time.perf_counter() - start:.0f} s")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``uad-demo``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="demo_output", help="where everything is written (default demo_output)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    run_demo(args.output_dir, args.epochs, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
