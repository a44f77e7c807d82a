"""The device's peak FLOP/s: datasheet peaks of known GPUs, a measured matmul rate on the CPU, the fraction reached.

On CUDA the peak is the datasheet dense peak of :data:`GPU_PEAK_TFLOPS` for the timed precision, matched on the GPU's
name (a GPU not in the table gets no peak: nothing is guessed). On the CPU it is the measured rate of a square
``torch.mm`` in the timed precision (:func:`measured_matmul_flops`). :func:`peak_fraction` puts the achieved rate
against it.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import torch

from tools.benchmark.checks import positive_int
from tools.benchmark.clock import synchronize

__all__ = ["GPU_PEAK_TFLOPS", "device_peak_flops", "gpu_peak_flops", "measured_matmul_flops", "peak_fraction"]

GPU_PEAK_TFLOPS: dict[str, dict[str, float | None]] = {
    # Vendor datasheet peaks in TFLOP/s, dense (without the 2:4 sparsity doubling). bf16/fp16: tensor cores with fp32
    # accumulation; fp32: the CUDA cores (not TF32). None: the GPU has no such tensor-core mode.
    "H100 SXM": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2},
    "V100 SXM2": {"bf16": None, "fp16": 125.0, "fp32": 15.7},
    "V100 PCIe": {"bf16": None, "fp16": 112.0, "fp32": 14.0},
    "RTX 4090": {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6},
    "T4": {"bf16": None, "fp16": 65.0, "fp32": 8.1},
}
"""Datasheet dense peak TFLOP/s of known GPUs by precision, looked up by :func:`gpu_peak_flops`."""

# torch.cuda.get_device_name() patterns (case-insensitive search) -> GPU_PEAK_TFLOPS key, first match wins. Variants
# with other figures (H100 NVL, H200 NVL, GH200, V100S, RTX 4090 D, laptop GPUs, A10G) match none: no peak is better
# than a wrong one.
_GPU_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\bH100\b(?!.*\bNVL\b).*\bPCIe\b", "H100 PCIe"),
    (r"\bH100\b(?!.*\bNVL\b).*\b(SXM|HBM3)", "H100 SXM"),
    (r"\bH200\b(?!.*\bNVL\b)", "H200"),
    (r"\bA100\b", "A100"),
    (r"\bL40S\b", "L40S"),
    (r"\bL4\b", "L4"),
    (r"\bA10\b", "A10"),
    (r"\bV100\b.*\bSXM", "V100 SXM2"),
    (r"\bV100\b.*\bPCIe\b", "V100 PCIe"),
    (r"\bRTX 4090\b(?!\s*D\b)(?!.*\bLaptop\b)", "RTX 4090"),
    (r"\bT4\b", "T4"),
)


def gpu_peak_flops(name: str, precision: str) -> tuple[float | None, str]:
    """The datasheet dense peak FLOP/s of a GPU from :data:`GPU_PEAK_TFLOPS`, matched on its name.

    Args:
        name: the GPU's name as :func:`torch.cuda.get_device_name` gives it (``"NVIDIA H100 80GB HBM3"``).
        precision: ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    Returns:
        ``(flops_per_s, source)``: the peak in FLOP/s and a line saying where it comes from; ``(None, reason)`` for a
        GPU the table does not hold, or one without that precision. Nothing is guessed.

    Raises:
        ValueError: for another precision.

    Example:
        >>> gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16")
        (989000000000000.0, 'datasheet dense bf16 peak of the H100 SXM (989 TFLOP/s)')
        >>> gpu_peak_flops("Mystery GPU", "fp32")
        (None, 'unknown GPU Mystery GPU: no peak in the table')
    """
    if precision not in ("bf16", "fp16", "fp32"):
        msg = f"precision: expected bf16, fp16 or fp32, got {precision!r}"
        raise ValueError(msg)
    key = next((k for pattern, k in _GPU_NAME_PATTERNS if re.search(pattern, name, flags=re.IGNORECASE)), None)
    if key is None:
        return None, f"unknown GPU {name}: no peak in the table"
    tflops = GPU_PEAK_TFLOPS[key][precision]
    if tflops is None:
        known = ", ".join(f"{p} {v:g}" for p, v in GPU_PEAK_TFLOPS[key].items() if v is not None)
        return None, f"the {key} has no {precision} tensor cores: no {precision} peak ({known} TFLOP/s)"
    kind = " (CUDA cores, not TF32)" if precision == "fp32" else ""
    return tflops * 1e12, f"datasheet dense {precision} peak of the {key}{kind} ({tflops:g} TFLOP/s)"


def measured_matmul_flops(
    device: str | torch.device = "cpu", size: int = 1024, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """The best FLOP/s of ``torch.mm`` on two square ``size`` x ``size`` matrices, after one warm-up product.

    It runs with the current ``torch.get_num_threads()``; one product counts ``2 * size**3`` FLOPs.

    Args:
        device: where the matrices live.
        size: the matrix side.
        repeats: timed products; the fastest one gives the rate.
        dtype: the matrices' dtype (``torch.float32``; ``torch.bfloat16`` for a bf16 rate).

    Returns:
        FLOP/s of the fastest product (finite and positive).

    Raises:
        ValueError: for a non-positive ``size`` or ``repeats``.
    """
    size = positive_int("size", size)
    repeats = positive_int("repeats", repeats)
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.rand(size, size, generator=generator).to(device=device, dtype=dtype)
    best = math.inf
    with torch.inference_mode():
        torch.mm(a, b)
        synchronize(device)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / max(best, 1e-9)


def device_peak_flops(
    device: str | torch.device, precision: str, name: str | None = None, matmul_size: int = 1024
) -> tuple[float | None, str]:
    """The peak FLOP/s of ``device`` in ``precision``: the datasheet table on CUDA, a measured matmul on the CPU.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"bf16"`` or ``"fp32"``, the precision the timed run used.
        name: the GPU name to look up; ``None`` asks :func:`torch.cuda.get_device_name` (ignored on the CPU).
        matmul_size: the matrix side of the CPU measurement.

    Returns:
        ``(flops_per_s, source)``; ``flops_per_s`` is ``None`` for a GPU :data:`GPU_PEAK_TFLOPS` does not hold.

    Raises:
        ValueError: for another precision or device type.
    """
    device = torch.device(device)
    if precision not in ("bf16", "fp32"):
        msg = f"precision: expected bf16 or fp32, got {precision!r}"
        raise ValueError(msg)
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device) if name is None else name, precision)
    if device.type != "cpu":
        msg = f"device: only cpu and cuda are supported, got {str(device)!r}"
        raise ValueError(msg)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    flops = measured_matmul_flops(device, matmul_size, dtype=dtype)
    threads = torch.get_num_threads()
    return flops, f"measured {precision} matmul rate: torch.mm {matmul_size}x{matmul_size}, {threads} threads"


def peak_fraction(flops_per_slice: float, slices_per_s: float, peak: float | None, source: str) -> dict[str, Any]:
    """The ``peak`` section of the results: achieved FLOP/s, the peak, their ratio and the compute-bound rate.

    Args:
        flops_per_slice: FLOPs of one slice (:class:`torch.utils.flop_counter.FlopCounterMode`).
        slices_per_s: the measured model-alone throughput.
        peak: the device's peak FLOP/s, ``None`` when unknown.
        source: where ``peak`` comes from (or why there is none).

    Returns:
        ``flops_per_s`` (``flops_per_slice * slices_per_s``), ``peak_flops_per_s``, ``peak_source``,
        ``fraction_of_peak`` (``flops_per_s / peak_flops_per_s``) and ``floor_slices_per_s`` (``peak /
        flops_per_slice``: the throughput if every counted FLOP ran at the peak); the last two are ``None`` without a
        peak or without FLOPs.

    Example:
        >>> peak_fraction(2e9, 100.0, 1e12, "table")["fraction_of_peak"]
        0.2
    """
    achieved = float(flops_per_slice) * float(slices_per_s)
    usable = peak is not None and math.isfinite(peak) and peak > 0
    return {
        "flops_per_s": achieved if math.isfinite(achieved) else None,
        "peak_flops_per_s": float(peak) if usable else None,
        "peak_source": source,
        "fraction_of_peak": achieved / peak if usable and math.isfinite(achieved) else None,
        "floor_slices_per_s": peak / flops_per_slice if usable and flops_per_slice > 0 else None,
    }
