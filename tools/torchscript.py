"""TorchScript export of a trained bundle through MONAI's ``python -m monai.bundle ckpt_export``, checked against eager.

Every detector's eval-mode ``forward`` (image ``(B, 1, H, W)`` → anomaly map) is traced: the flows' FrEIA couplings
and the data-dependent control flow of the networks cannot be scripted, and a trace of the inference path records
exactly what inference runs. The graph is fp32 and takes any batch size at the training ``image_size`` (resizing a
slice to that size, as the bundles' inference does, is the caller's step: a trace fixes the spatial size). DNFAD's
per-sample depthwise convolution is scripted inside the trace (:func:`common.attention.per_sample_depthwise_conv`),
so its batch size stays free too.

The command, from the repository root (``scripts`` of the bundle must be importable, hence ``PYTHONPATH``)::

    PYTHONPATH=bundles/ms_nf python -m monai.bundle ckpt_export network_def --filepath model.ts \
        --ckpt_file bundles/ms_nf/models/model.pt --ckpt_path bundles/ms_nf/models/model.pt \
        --config_file bundles/ms_nf/configs/inference.json --meta_file bundles/ms_nf/configs/metadata.json \
        --key_in_ckpt model --use_trace True --input_shape "[1, 1, 256, 256]"

:func:`export_torchscript` runs that command and then compares the exported graph with the eager network on random
slices (a batch size other than the trace's) before it reports success.

Usage::

    python -m tools.torchscript ms_nf bundles/ms_nf/models/model.pt model.ts
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from common.checkpoint import stored_arguments
from tools.bundles import PACKAGE_ROOT, bundle_dir
from tools.processes import run_python_module

__all__ = ["TOLERANCE", "ckpt_export_command", "eager_network", "export_torchscript", "main", "max_difference_to_eager"]

TOLERANCE = 1e-4
"""Largest absolute difference between the exported graph's maps and the eager network's (fp32, CPU)."""


def _image_size(checkpoint: Path) -> list[int]:
    size = stored_arguments(checkpoint).get("image_size")
    if size is None:
        msg = f"{checkpoint}: the checkpoint does not record image_size (trained before model.pt described itself)"
        raise ValueError(msg)
    return [int(s) for s in size]


def ckpt_export_command(bundle: str, checkpoint: Path, output: Path) -> list[str]:
    """The ``python -m monai.bundle ckpt_export`` command (module docstring) for ``bundle``'s ``checkpoint``."""
    configs = bundle_dir(bundle) / "configs"
    shape = [1, 1, *_image_size(checkpoint)]
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        str(output),
        "--ckpt_file",
        str(checkpoint),
        "--ckpt_path",
        str(checkpoint),
        "--config_file",
        str(configs / "inference.json"),
        "--meta_file",
        str(configs / "metadata.json"),
        "--key_in_ckpt",
        "model",
        "--use_trace",
        "True",
        "--input_shape",
        str(shape),
    ]


def eager_network(bundle: str, checkpoint: Path) -> torch.nn.Module:
    """The bundle's network built from ``checkpoint``'s description, its weights loaded, on the CPU in eval mode."""
    from common.training import load_checkpoint
    from tools.components import build_components

    _, network, _, _ = build_components(bundle, checkpoint=checkpoint)
    load_checkpoint(network, checkpoint)
    return network.eval()


def max_difference_to_eager(bundle: str, checkpoint: Path, exported: Path, batch_size: int = 3) -> float:
    """Largest absolute difference between ``exported`` and the eager network of ``checkpoint`` on random slices."""
    network = eager_network(bundle, checkpoint)
    graph = torch.jit.load(str(exported), map_location="cpu").eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 1, *_image_size(checkpoint), generator=generator)
    with torch.no_grad():
        return float((graph(x) - network(x)).abs().max())


def export_torchscript(bundle: str, checkpoint: str | Path, output: str | Path, timeout: float = 600) -> float:
    """Export ``checkpoint`` to TorchScript at ``output`` with ``ckpt_export``; returns the difference to eager.

    Raises:
        RuntimeError: when ``ckpt_export`` fails (its last output lines) or the graph differs from the eager network
            by more than :data:`TOLERANCE`.
    """
    checkpoint, output = Path(checkpoint).resolve(), Path(output).resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(bundle_dir(bundle)), str(PACKAGE_ROOT)]))}
    command = ckpt_export_command(bundle, checkpoint, output)
    result = run_python_module(command[2], command[3:], Path.cwd(), timeout=timeout, environ=env)
    if result.returncode != 0 or not output.is_file():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-10:])
        msg = f"ckpt_export of {checkpoint} failed (exit code {result.returncode}):\n{tail}"
        raise RuntimeError(msg)
    difference = max_difference_to_eager(bundle, checkpoint, output)
    if not difference <= TOLERANCE:
        msg = f"{output}: the exported graph differs from the eager network by {difference:.3g} (> {TOLERANCE})"
        raise RuntimeError(msg)
    return difference


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="bundle name (ms_nf, dnfad, skip_ts, anomalypro)")
    parser.add_argument("checkpoint", type=Path, help="trained model.pt")
    parser.add_argument("output", type=Path, help="TorchScript file to write (e.g. model.ts)")
    args = parser.parse_args(argv)
    try:
        difference = export_torchscript(args.bundle, args.checkpoint, args.output)
    except (RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.output}: TorchScript (traced, fp32); largest difference to the eager network {difference:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
