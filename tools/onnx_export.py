"""ONNX export of a trained bundle's network, checked with onnxruntime against eager.

The export is ``torch.onnx.export`` through ``torch.export``. The graph is the eval-mode network in fp32: slices
``(B, 1, H, W)`` at the training ``image_size`` → anomaly maps.
MS-NF, Skip-TS and AnomalyPro export with a free batch size. DNFAD's dynamic spatial attention convolves each sample
with its own kernels through a grouped convolution whose ``groups`` is ``batch x channels``; ``torch.export`` cannot
keep that symbolic, so DNFAD's graph has the fixed batch size it was exported with (``--batch-size``).

The check runs onnxruntime on random slices and compares with the eager network: the largest absolute difference,
relative to the largest eager value (DNFAD's maps are negative log-likelihoods in the hundreds), must stay within
:data:`RELATIVE_TOLERANCE`. Needs the optional ``export`` extra (``pip install -e '.[export]'``).

Usage::

    python -m tools.onnx_export ms_nf bundles/ms_nf/models/model.pt model.onnx
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tools.torchscript import eager_network

__all__ = ["FIXED_BATCH_BUNDLES", "RELATIVE_TOLERANCE", "export_onnx", "main"]

RELATIVE_TOLERANCE = 1e-4
FIXED_BATCH_BUNDLES = ("dnfad",)
"""Bundles whose graph has a fixed batch size (module docstring)."""


def export_onnx(bundle: str, checkpoint: str | Path, output: str | Path, batch_size: int = 1) -> float:
    """Export ``checkpoint``'s network to ONNX at ``output`` and return its relative difference to eager.

    Args:
        bundle: bundle name.
        checkpoint: a trained ``model.pt`` (it describes its network).
        output: the ``.onnx`` file to write.
        batch_size: the example batch; the graph keeps it only for :data:`FIXED_BATCH_BUNDLES`.

    Raises:
        RuntimeError: when the export fails or onnxruntime's maps differ from eager beyond the tolerance.
        ImportError: without onnx, onnxscript and onnxruntime (the ``export`` extra).
    """
    import onnxruntime

    checkpoint, output = Path(checkpoint).resolve(), Path(output).resolve()
    network = eager_network(bundle, checkpoint)
    size = [int(v) for v in network.image_size]
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(batch_size, 1, *size, generator=generator)
    fixed = bundle in FIXED_BATCH_BUNDLES
    dynamic = None if fixed else ({0: torch.export.Dim("batch", min=1, max=1024)},)
    try:
        torch.onnx.export(
            network,
            (example,),
            str(output),
            dynamo=True,
            input_names=["image"],
            output_names=["anomaly"],
            dynamic_shapes=dynamic,
        )
    except Exception as error:  # torch.export reports several error types; one line names the bundle and cause
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        msg = f"ONNX export of {bundle} ({checkpoint}) failed: {first}"
        raise RuntimeError(msg) from error
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    check = example if fixed else torch.rand(batch_size + 2, 1, *size, generator=generator)
    (maps,) = session.run(None, {"image": check.numpy()})
    with torch.no_grad():
        reference = network(check).numpy()
    scale = max(1.0, float(np.abs(reference).max()))
    difference = float(np.abs(maps - reference).max()) / scale
    if not difference <= RELATIVE_TOLERANCE:
        msg = (
            f"{output}: onnxruntime's maps differ from eager by {difference:.3g} of their scale "
            f"(> {RELATIVE_TOLERANCE})"
        )
        raise RuntimeError(msg)
    return difference


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="bundle name (ms_nf, dnfad, skip_ts, anomalypro)")
    parser.add_argument("checkpoint", type=Path, help="trained model.pt")
    parser.add_argument("output", type=Path, help="ONNX file to write (e.g. model.onnx)")
    parser.add_argument("--batch-size", type=int, default=1, help="example batch (DNFAD's graph keeps it)")
    args = parser.parse_args(argv)
    try:
        difference = export_onnx(args.bundle, args.checkpoint, args.output, args.batch_size)
    except (RuntimeError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    batch = f"batch {args.batch_size}" if args.bundle in FIXED_BATCH_BUNDLES else "any batch size"
    print(f"{args.output}: ONNX (fp32, {batch}); largest difference to eager {difference:.2g} of the maps' scale")
    return 0


if __name__ == "__main__":
    sys.exit(main())
