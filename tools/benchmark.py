"""Benchmark one bundle on the current device: model throughput, peak memory, one volume end to end, FLOPs.

The network, the scorer and the slice settings are built from the bundle's own ``configs/inference.json`` (with
``--override key=value`` applied), so the numbers always describe the configuration the bundle ships. With
``--checkpoint`` the config reads the architecture from that ``model.pt`` (:mod:`common.checkpoint`), as the bundle's
inference does: a model trained with overrides is benchmarked without repeating them, and an override that
contradicts the checkpoint is a one-line error. Without it, the config's architecture is used (that of the bundle's
own ``models/model.pt`` when one exists) with random weights. The report has seven parts:

1. model-alone inference throughput (slices/s) at the network input size: inputs already on the device,
   ``torch.inference_mode()``, warm-up iterations first, then timed iterations. ``--precision`` picks fp32 or bf16
   autocast (``auto``, the default: bf16 on CUDA when the config's ``amp`` is on, else fp32; bf16 on the CPU is
   ``torch.autocast("cpu", dtype=torch.bfloat16)``), ``--channels-last/--no-channels-last`` the memory format (default:
   ``channels_last`` on CUDA only) and ``--compile`` wraps the network in ``torch.compile`` (inductor) for this part
   only: its first call, which compiles, is timed apart (``compile_first_call_s``) before the warm-up iterations. So
   one tool reports fp32 eager, bf16 + ``channels_last`` and the same with ``torch.compile``;
2. the fraction of the device's peak: achieved FLOP/s (FLOPs per slice x slices/s) over the peak FLOP/s, and the
   compute-bound rate peak / FLOPs per slice (``floor_slices_per_s``). On CUDA the peak is the datasheet dense peak of
   :data:`GPU_PEAK_TFLOPS` for the timed precision (bf16 with autocast, else fp32 without tensor cores; cuDNN may run
   fp32 convolutions in TF32, so an fp32 fraction can exceed 1); a GPU not in the table gets no peak. On the CPU it is
   the measured rate of a square ``torch.mm`` in the timed precision (:func:`measured_matmul_flops`);
3. peak memory of the timed sections: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the peak resident set
   size (``ru_maxrss``, whose high-water mark is reset before each section where Linux allows it) and its increase
   over the resident size at the start of the section;
4. brain extraction: the seconds per volume of :class:`common.brain.ExtractBrainMaskd` with the bundle's
   ``brain_extraction`` setting (``--brain-extraction`` to change it) on the benchmark volume, timed after one warm-up
   call that loads the networks (deepbet runs on CUDA when it is available, whatever ``--device`` says). A volume the
   extractor rejects as implausible (a synthetic one may be) is reported as not measured, with the reason;
5. end-to-end time for one float32 NIfTI volume, a real one (``--volume``) or a synthetic one (default
   240 x 240 x 155, the BraTS grid): read, extract the brain, strip and normalise
   (:func:`common.volumes.load_record`), maps and scores (:func:`common.inference.predict_volume`), write
   (:func:`common.volumes.write_map`), the same calls the bundle's batch inference makes (with the bundle's own
   precision: the switches of part 1 do not apply). The brain extraction of part 4 is included (in "read +
   normalise") when it was measured; when the extractor rejected the volume, the volume runs without extraction;
6. trainable and total parameter counts and the FLOPs of one slice at the network input size, counted by
   :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products; one multiply-add = 2 FLOPs);
7. the device and the software versions.

Without ``--checkpoint`` the weights are random: the timings do not depend on them. Speed is measured here, never
asserted in tests.

Example:
    The paper configuration of MS-NF on the default device, with a JSON copy of the results::

        python -m tools.benchmark ms_nf --output bench_ms_nf.json
        python -m tools.benchmark ms_nf --batch-size 32 --override n_blocks=8 --override hidden_channels=64
        python -m tools.benchmark ms_nf --image-size 128 --volume scans/sub-01_T1w.nii.gz

    fp32 eager, then bf16 with ``channels_last``, then the same through ``torch.compile``::

        python -m tools.benchmark ms_nf --precision fp32 --no-channels-last
        python -m tools.benchmark ms_nf --precision bf16 --channels-last
        python -m tools.benchmark ms_nf --precision bf16 --channels-last --compile
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from scipy import ndimage
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common.brain import BrainExtractionError, ExtractBrainMaskd, check_brain_extraction, get_extractor, voxel_volume_ml
from common.data import ImageRecord, is_nifti, load_image
from common.inference import predict_volume
from common.io import atomic_output
from common.scoring import volume_score
from common.training import load_checkpoint
from common.volumes import load_record, select_slices, write_map
from tools.arguments import OneLineArgumentParser, UsageError, parse_overrides
from tools.bundles import bundle_dir
from tools.phantoms import make_volume, volume_affine

__all__ = [
    "DEFAULT_VOLUME_SHAPE",
    "benchmark_network",
    "build_components",
    "count_parameters",
    "environment_info",
    "format_table",
    "main",
    "run_benchmark",
]

logger = logging.getLogger(__name__)

PROG = "python -m tools.benchmark"
DEFAULT_VOLUME_SHAPE: tuple[int, int, int] = (240, 240, 155)
"""The BraTS grid: 240 x 240 in-plane, 155 axial slices, 1 mm isotropic."""

PRECISIONS = ("auto", "fp32", "bf16")
"""``--precision`` values: ``auto`` is bf16 autocast on CUDA when the config's ``amp`` is on, fp32 otherwise."""

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

_MIB = 1024.0 * 1024.0
_PHANTOM_MIN_SHAPE = (32, 32, 8)  # smallest volume tools.phantoms.make_volume renders


# --------------------------------------------------------------------------------------------------------------------
# Arguments


def _positive_ints(name: str, values: int | Sequence[int], length: int) -> tuple[int, ...]:
    """Validate ``values`` as ``length`` positive ints (a single int is repeated); ``name`` is used in errors."""
    seq = [values] * length if isinstance(values, int | np.integer) else list(values)
    if len(seq) != length or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in seq):
        msg = f"{name}: expected {length} positive integers, got {values!r}"
        raise ValueError(msg)
    if min(seq) < 1:
        msg = f"{name}: sizes must be positive, got {tuple(int(v) for v in seq)}"
        raise ValueError(msg)
    return tuple(int(v) for v in seq)


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        msg = f"{name}: expected a positive integer, got {value!r}"
        raise ValueError(msg)
    return int(value)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        msg = f"--device: not a torch device: {device!r}; use cpu, cuda or cuda:N"
        raise ValueError(msg) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        msg = f"--device: {device!r} requested but CUDA is not available; use --device cpu"
        raise ValueError(msg)
    if resolved.type not in ("cpu", "cuda"):
        msg = f"--device: only cpu and cuda are supported, got {device!r}"
        raise ValueError(msg)
    return resolved


# --------------------------------------------------------------------------------------------------------------------
# The device's peak FLOP/s


class CompileError(RuntimeError):
    """``torch.compile`` failed on this machine (e.g. inductor found no working C++ compiler)."""


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
    size = _positive_int("size", size)
    repeats = _positive_int("repeats", repeats)
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.rand(size, size, generator=generator).to(device=device, dtype=dtype)
    best = math.inf
    with torch.inference_mode():
        torch.mm(a, b)
        _sync(device)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
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


# --------------------------------------------------------------------------------------------------------------------
# The bundle's configuration


@contextmanager
def _bundle_on_path(path: Path) -> Iterator[None]:
    """Import the bundle's ``scripts`` package from ``path``; restore ``sys.path`` and ``sys.modules`` afterwards.

    Each bundle has its own top-level ``scripts`` package, so another bundle's one already imported is set aside for
    the duration and put back at the end.
    """

    def is_scripts(name: str) -> bool:
        return name == "scripts" or name.startswith("scripts.")

    saved: dict[str, ModuleType] = {k: m for k, m in sys.modules.items() if is_scripts(k)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))
        for name in [k for k in sys.modules if is_scripts(k)]:
            del sys.modules[name]
        sys.modules.update(saved)


def build_components(
    bundle: str, overrides: Mapping[str, Any] | None = None, checkpoint: str | Path | None = None
) -> tuple[ConfigParser, nn.Module, Any, Any]:
    """Build ``network_def``, ``scorer`` and ``slice_settings`` from the bundle's ``configs/inference.json``.

    Args:
        bundle: bundle folder name under ``bundles/``.
        overrides: config ids (``#`` for nesting) and their values; every id must exist in the config.
        checkpoint: the config's ``ckpt_path``: a ``model.pt`` that describes its network gives the architecture
            (overrides still apply; the weights are not loaded here).

    Returns:
        ``(parser, network, scorer, slice_settings)``; the network is on the CPU, in eval mode.

    Raises:
        ValueError: for an unknown bundle (listing the available ones), an override id the config does not have, or
            a configuration that fails to build (the message gives the config id and the cause).
    """
    root = bundle_dir(bundle).resolve()
    config_file = root / "configs" / "inference.json"
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(root)
    if checkpoint is not None:
        parser["ckpt_path"] = str(checkpoint)
    for key, value in (overrides or {}).items():
        if key not in parser:
            top = sorted(k for k in parser.get() if not k.startswith("_") and k != "imports")
            msg = f"--override {key}: no such id in {config_file}; top-level ids: {top}"
            raise ValueError(msg)
        parser[key] = value
    built = {}
    with _bundle_on_path(root):
        for key in ("network_def", "scorer", "slice_settings"):
            try:
                built[key] = parser.get_parsed_content(key, instantiate=True)
            except Exception as error:  # config errors arrive wrapped in MONAI's RuntimeError
                cause = error
                while cause.__cause__ is not None:
                    cause = cause.__cause__
                lines = [line for line in str(cause).strip().splitlines() if line.strip()] or [type(cause).__name__]
                msg = f"{config_file}: cannot build {key!r} with overrides {dict(overrides or {})}: {lines[-1]}"
                raise ValueError(msg) from error
    network = built["network_def"]
    if not isinstance(network, nn.Module):
        msg = f"{config_file}: network_def must build a torch.nn.Module, got {type(network).__name__}"
        raise ValueError(msg)
    return parser, network.eval(), built["scorer"], built["slice_settings"]


def _config_value(parser: ConfigParser, key: str, default: Any) -> Any:
    return parser.get_parsed_content(key) if key in parser else default


# --------------------------------------------------------------------------------------------------------------------
# Measurements


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _current_rss() -> int | None:
    """Resident set size of this process in bytes (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _maxrss() -> int:
    """``ru_maxrss`` in bytes (kilobytes on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024


def _reset_peak_rss() -> bool:
    """Reset the process's resident-set high-water mark (Linux >= 4.0); ``False`` where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


class _PeakMemory:
    """Peak memory of a code section: CUDA allocator peak, or peak resident set size on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result: dict[str, Any] = {}

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = _current_rss()
            self._reset = _reset_peak_rss()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            _sync(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.result = {
                "measure": "torch.cuda.max_memory_allocated",
                "peak_mib": peak / _MIB,
                "start_mib": self._start / _MIB,
                "increase_mib": (peak - self._start) / _MIB,
            }
            return
        peak = _maxrss()
        self.result = {
            "measure": "peak RSS (ru_maxrss) of this section" if self._reset else "peak RSS (ru_maxrss) of the process",
            "peak_mib": peak / _MIB,
            "start_mib": None if self._start is None else self._start / _MIB,
            "increase_mib": None if self._start is None else max(peak - self._start, 0) / _MIB,
        }


def count_parameters(network: nn.Module) -> dict[str, int]:
    """Total and trainable (``requires_grad``) parameter counts."""
    params = list(network.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def _count_flops(network: nn.Module, sample: torch.Tensor) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward pass of ``sample`` (float32, no autocast) and their split by operator.

    The parameters' ``requires_grad`` is off during the count (and restored after): the counter's module tracker hooks
    the gradient of every module input that requires one, which fails for a module called on a bare parameter (the
    ``softplus(global_scale)`` of the flow blocks in anomalib's FastFlow).
    """
    counter = FlopCounterMode(display=False)
    requires_grad = [(p, p.requires_grad) for p in network.parameters()]
    network.requires_grad_(False)
    try:
        with torch.inference_mode(), counter:
            network(sample)
    finally:
        for parameter, flag in requires_grad:
            parameter.requires_grad_(flag)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def _one_line(error: BaseException) -> str:
    """``Type: first line`` of the innermost cause of ``error`` (dynamo wraps a backend's error in ``inner_exception``).

    Dynamo's hints (``Set TORCHDYNAMO_VERBOSE=1 ...``) are left out.
    """
    seen = {id(error)}
    while True:
        inner = getattr(error, "inner_exception", None) or error.__cause__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            break
        seen.add(id(inner))
        error = inner
    lines = [
        line.strip()
        for line in str(error).splitlines()
        if line.strip() and not line.strip().startswith(("Set TORCHDYNAMO_VERBOSE", "For even more developer"))
    ]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _time_model(
    network: nn.Module,
    inputs: torch.Tensor,
    device: torch.device,
    warmup: int,
    iterations: int,
    bf16: bool,
    compile: bool = False,  # noqa: A002 - the name of the --compile switch
) -> tuple[list[float], dict[str, Any], float | None]:
    """Time forward passes of ``inputs``: bf16 autocast when ``bf16``, through ``torch.compile`` when ``compile``.

    Returns:
        ``(times, memory, first_call_s)``: the seconds of each timed iteration, the peak memory of the timed part and,
        with ``compile``, the seconds of the first call (which compiles; it comes before the warm-up iterations).

    Raises:
        CompileError: when ``torch.compile`` fails on its first call.
    """
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    forward: Any = network
    first_call_s = None
    times: list[float] = []
    with torch.inference_mode(), autocast:
        if compile:
            forward = torch.compile(network)
            _sync(device)
            start = time.perf_counter()
            try:
                forward(inputs)
                _sync(device)
            except Exception as error:  # dynamo and inductor raise many types; the first call is where they fail
                msg = f"--compile: torch.compile failed on {device}: {_one_line(error)}"
                raise CompileError(msg[:500]) from error
            first_call_s = time.perf_counter() - start
        for _ in range(warmup):
            forward(inputs)
        _sync(device)
        with _PeakMemory(device) as memory:
            for _ in range(iterations):
                start = time.perf_counter()
                forward(inputs)
                _sync(device)
                times.append(time.perf_counter() - start)
    return times, memory.result, first_call_s


def benchmark_network(
    network: nn.Module,
    image_size: int | Sequence[int],
    in_channels: int,
    batch_size: int,
    warmup: int,
    iterations: int,
    device: str | torch.device | None,
    amp: bool,
    seed: int = 0,
    precision: str = "auto",
    channels_last: bool | None = None,
    compile: bool = False,  # noqa: A002 - the name of the --compile switch
) -> dict[str, Any]:
    """The model-alone part of :func:`run_benchmark` for any network: parameters, FLOPs, throughput, peak memory.

    :func:`run_benchmark` measures a bundle's network with it, and ``tools.compare`` a network built elsewhere (the
    anomalib peers' torch models), so both go through the same code: random inputs ``(batch_size, in_channels, H,
    W)`` already on ``device``, ``torch.inference_mode()``, by default bf16 autocast on CUDA when ``amp`` is on and
    ``channels_last`` on CUDA; with ``compile``, one first call through ``torch.compile`` (timed apart: it compiles);
    ``warmup`` untimed forward passes, then ``iterations`` timed ones. The network itself is never replaced by the
    compiled one: it is left on ``device`` in eval mode and in the default memory format.

    Args:
        network: takes ``(B, in_channels, H, W)``; its outputs are not used.
        image_size: ``H W`` of the input (one int: square).
        in_channels: input channels.
        batch_size: slices per forward pass.
        warmup: untimed forward passes first.
        iterations: timed forward passes.
        device: ``cpu``, ``cuda`` or ``cuda:N``; ``None``: CUDA when available, else the CPU.
        amp: bf16 autocast on CUDA with ``precision="auto"`` (no effect on the CPU).
        seed: seed of the random inputs.
        precision: ``"fp32"``, ``"bf16"`` (autocast, on the CPU too) or ``"auto"`` (bf16 on CUDA when ``amp``).
        channels_last: ``channels_last`` network and inputs; ``None``: on CUDA only.
        compile: time the network wrapped in ``torch.compile``.

    Returns:
        ``parameters`` (:func:`count_parameters`), ``flops_per_slice`` and ``flops_by_operator`` (one slice, fp32),
        ``batch_seconds`` (one per timed iteration), ``slices_per_s``, ``memory`` (the timed part, see the module
        doc), ``precision_option`` (``precision`` as given), ``precision`` (``"bf16"`` or ``"fp32"``, as timed),
        ``bf16_autocast``, ``channels_last``, ``compile``, ``compile_first_call_s`` (``None`` without ``compile``)
        and ``peak`` (:func:`peak_fraction` with the peak of :func:`device_peak_flops` in that precision).

    Raises:
        ValueError: for non-positive sizes or counts, a negative ``warmup``, an unusable device or a ``precision``
            not in :data:`PRECISIONS`.
        CompileError: when ``compile`` is on and ``torch.compile`` fails on this machine.
    """
    size = _positive_ints("image_size", image_size, 2)
    in_channels = _positive_int("in_channels", in_channels)
    batch_size = _positive_int("batch_size", batch_size)
    iterations = _positive_int("iterations", iterations)
    if isinstance(warmup, bool) or not isinstance(warmup, int | np.integer) or warmup < 0:
        msg = f"warmup: expected a non-negative integer, got {warmup!r}"
        raise ValueError(msg)
    _check_switches(precision, channels_last, compile)
    torch_device = _resolve_device(device)
    cuda = torch_device.type == "cuda"
    bf16 = precision == "bf16" or (precision == "auto" and amp and cuda)
    channels_last = cuda if channels_last is None else channels_last
    network.to(torch_device).eval()

    generator = torch.Generator().manual_seed(seed)
    logger.info("counting parameters and FLOPs at %dx%d", *size)
    parameters = count_parameters(network)
    flops, flops_by_op = _count_flops(network, torch.rand(1, in_channels, *size, generator=generator).to(torch_device))

    logger.info(
        "timing the model on %s: batch %d, %s%s%s, %d warm-up + %d timed iterations",
        torch_device,
        batch_size,
        "bf16 autocast" if bf16 else "fp32",
        ", channels_last" if channels_last else "",
        ", torch.compile (the first call compiles)" if compile else "",
        warmup,
        iterations,
    )
    inputs = torch.rand(batch_size, in_channels, *size, generator=generator).to(torch_device)
    if channels_last:
        network.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    try:
        times, memory, first_call_s = _time_model(network, inputs, torch_device, warmup, iterations, bf16, compile)
    finally:
        del inputs
        if channels_last:  # inference runs the network in the default memory format
            network.to(memory_format=torch.contiguous_format)
    total = sum(times)
    slices_per_s = batch_size * iterations / total if total > 0 else float("inf")
    timed_precision = "bf16" if bf16 else "fp32"
    logger.info("peak FLOP/s of %s in %s", torch_device, timed_precision)
    peak, peak_source = device_peak_flops(torch_device, timed_precision)
    return {
        "parameters": parameters,
        "flops_per_slice": flops,
        "flops_by_operator": flops_by_op,
        "batch_seconds": times,
        "slices_per_s": slices_per_s,
        "memory": memory,
        "precision_option": precision,
        "precision": timed_precision,
        "bf16_autocast": bf16,
        "channels_last": channels_last,
        "compile": compile,
        "compile_first_call_s": first_call_s,
        "peak": peak_fraction(flops, slices_per_s, peak, peak_source),
    }


def _check_switches(precision: str, channels_last: bool | None, compile: bool) -> None:  # noqa: A002
    """Validate the precision, layout and compile switches of the model-alone timing (``ValueError``)."""
    if precision not in PRECISIONS:
        msg = f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}"
        raise ValueError(msg)
    if channels_last is not None and not isinstance(channels_last, bool):
        msg = f"channels_last: expected True, False or None, got {channels_last!r}"
        raise ValueError(msg)
    if not isinstance(compile, bool):
        msg = f"compile: expected True or False, got {compile!r}"
        raise ValueError(msg)


def _synthetic_volume(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A float32 test volume of ``shape``.

    A brain phantom (:func:`tools.phantoms.make_volume`) where the shape allows one, else a smoothed-noise ellipsoid
    on a dark background.
    """
    rng = np.random.default_rng(seed)
    if all(s >= m for s, m in zip(shape, _PHANTOM_MIN_SHAPE, strict=True)):
        return make_volume(rng, shape)[0].astype(np.float32)
    grids = np.meshgrid(*(np.linspace(-1.0, 1.0, s) for s in shape), indexing="ij")
    inside = sum(g**2 for g in grids) < 0.8
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    return (inside * (0.6 + 0.1 * texture) + 0.02 * rng.random(shape)).astype(np.float32)


def _volume_file_shape(path: Path) -> tuple[int, int, int]:
    """The ``(X, Y, Z)`` shape of a 3D NIfTI volume (trailing singleton axes dropped), from its header."""
    if not path.is_file():
        msg = f"{path}: --volume not found"
        raise FileNotFoundError(msg)
    if not is_nifti(path):
        msg = f"{path}: --volume must be a 3D NIfTI volume (.nii or .nii.gz)"
        raise ValueError(msg)
    try:
        shape = tuple(int(s) for s in nib.load(str(path)).shape)
    except Exception as error:  # nibabel raises several exception types for damaged files
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        msg = f"{path}: cannot be read as NIfTI ({reason[:200]})"
        raise ValueError(msg) from error
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3 or min(shape) < 2:
        msg = f"{path}: --volume must be a 3D volume, got shape {shape}"
        raise ValueError(msg)
    return shape[0], shape[1], shape[2]


def _time_brain_extraction(source: Path, slice_settings: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Seconds per volume of :class:`common.brain.ExtractBrainMaskd` on ``source``, after one warm-up call.

    Returns:
        ``(result, memory)``: ``result`` has ``method``, ``measured``, ``s_per_volume`` (``None`` when not measured),
        ``first_call_s`` (the warm-up call, which loads the networks), ``brain_volume_ml``, ``device`` and ``reason``
        (why it was not measured); ``memory`` is the peak memory of the timed call, or ``None``.
    """
    method = str(getattr(slice_settings, "brain_extraction", "none"))
    foreground = str(getattr(slice_settings, "foreground", "auto"))
    result: dict[str, Any] = {
        "method": method,
        "measured": False,
        "s_per_volume": None,
        "first_call_s": None,
        "brain_volume_ml": None,
        "device": None,
        "reason": None,
    }
    if method == "none":
        result["reason"] = "brain_extraction is 'none': the bundle does not extract brains"
        return result, None
    if foreground != "auto":
        result["reason"] = f"foreground is {foreground!r}: brain extraction runs in the 'auto' foreground mode only"
        return result, None
    extractor = get_extractor(method)
    use_gpu = bool(getattr(extractor, "use_gpu", False))
    extraction_device = torch.device("cuda" if use_gpu else "cpu")
    result["device"] = str(extraction_device)
    transform = ExtractBrainMaskd(keys="image", method=method)
    image = load_image(source)[None]
    try:
        start = time.perf_counter()
        transform({"image": image})
        result["first_call_s"] = time.perf_counter() - start
        with _PeakMemory(extraction_device) as memory:
            start = time.perf_counter()
            out = transform({"image": image})
            seconds = time.perf_counter() - start
    except BrainExtractionError as error:
        result["reason"] = str(error)
        return result, None
    if out.get("brain_mask") is None:  # not reached for 3D volumes; kept for extractors that return nothing
        result["reason"] = "the extractor returned no brain mask"
        return result, None
    mask = np.asarray(out["brain_mask"][0]) > 0
    result.update(
        measured=True,
        s_per_volume=seconds,
        brain_volume_ml=float(mask.sum()) * voxel_volume_ml(getattr(image, "affine", np.eye(4))),
    )
    return result, memory.result


def _time_volume(
    network: nn.Module,
    parser: ConfigParser,
    scorer: Any,
    slice_settings: Any,
    device: torch.device,
    batch_size: int,
    amp: bool,
    volume_shape: tuple[int, int, int],
    seed: int,
    volume: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Brain extraction alone, then read → extract → normalise → maps → write for one volume (real or synthetic).

    Returns:
        ``(end_to_end, brain_extraction, brain_extraction_memory)``; ``end_to_end`` holds its own ``memory``.
    """
    volume_method = _config_value(parser, "evaluator#volume_method", "max")
    write_masks = bool(_config_value(parser, "evaluator#write_masks", False))
    calibration = getattr(network, "calibration", None)
    calibrated = calibration is not None and bool(calibration.calibrated)
    with tempfile.TemporaryDirectory(prefix="uad-benchmark-") as tmp:
        if volume is None:
            source = Path(tmp) / "volume.nii.gz"
            nib.save(nib.Nifti1Image(_synthetic_volume(volume_shape, seed), volume_affine(volume_shape)), str(source))
        else:
            source = volume
        extraction, extraction_memory = _time_brain_extraction(source, slice_settings)
        extraction["included_in_end_to_end"] = bool(extraction["measured"])
        if not extraction["measured"] and extraction["method"] != "none" and dataclasses.is_dataclass(slice_settings):
            # the extractor rejected this volume: time the rest of the pipeline without it
            slice_settings = dataclasses.replace(slice_settings, brain_extraction="none")
        out_dir = Path(tmp) / "out"
        with _PeakMemory(device) as memory:
            start = time.perf_counter()
            loaded = load_record(ImageRecord(source), slice_settings)
            read = time.perf_counter()
            maps, scores = predict_volume(network, loaded, scorer, device, batch_size, amp)
            selected = select_slices(loaded, slice_settings) or list(range(loaded.n_slices))
            volume_score(scores[selected], volume_method)
            mapped = time.perf_counter()
            write_map(maps, source, out_dir / "volume_anomaly.nii.gz")
            if write_masks and calibrated:
                mask = (maps > float(calibration.pixel_threshold)).astype(np.float32)
                write_map(mask, source, out_dir / "volume_mask.nii.gz")
            end = time.perf_counter()
    total = end - start
    if volume is not None:
        volume_source = str(volume)
    elif all(s >= m for s, m in zip(volume_shape, _PHANTOM_MIN_SHAPE, strict=True)):
        volume_source = "tools.phantoms.make_volume"
    else:
        volume_source = "smoothed-noise ellipsoid"
    end_to_end = {
        "volume_shape": list(volume_shape),
        "volume_source": volume_source,
        "n_slices": int(loaded.n_slices),
        "n_scored_slices": len(selected),
        "read_normalise_s": read - start,
        "maps_s": mapped - read,
        "write_s": end - mapped,
        "total_s": total,
        "slices_per_s": loaded.n_slices / total if total > 0 else float("inf"),
        "masks_written": write_masks and calibrated,
        "brain_extraction": extraction["method"],
        "brain_extraction_s_per_volume": extraction["s_per_volume"],
        "brain_extraction_in_total": extraction["included_in_end_to_end"],
        "foreground_source": loaded.foreground_source,
        "memory": memory.result,
    }
    return end_to_end, extraction, extraction_memory


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_info(device: torch.device) -> dict[str, Any]:
    """The device (name, CPUs, torch threads; on CUDA the CUDA and cuDNN versions, GPU memory) and software versions."""
    env: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "monai": _version("monai"),
        "numpy": np.__version__,
        "FrEIA": _version("FrEIA"),
        "timm": _version("timm"),
        "nibabel": nib.__version__,
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu_memory_mib"] = torch.cuda.get_device_properties(device).total_memory / _MIB
    return env


# --------------------------------------------------------------------------------------------------------------------
# The benchmark


def run_benchmark(
    bundle: str,
    image_size: int | Sequence[int] | None = None,
    batch_size: int = 16,
    iterations: int = 10,
    volume_shape: Sequence[int] = DEFAULT_VOLUME_SHAPE,
    device: str | torch.device | None = None,
    overrides: Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    warmup: int = 2,
    seed: int = 0,
    volume: str | Path | None = None,
    brain_extraction: str | None = None,
    precision: str = "auto",
    channels_last: bool | None = None,
    compile: bool = False,  # noqa: A002 - the name of the --compile switch
) -> dict[str, Any]:
    """Benchmark a bundle's network on one device; see the module docstring for what is measured.

    Args:
        bundle: bundle folder name under ``bundles/`` (e.g. ``"ms_nf"``).
        image_size: network input size, one int (square) or ``(H, W)``; ``None`` keeps the config's ``image_size``.
        batch_size: slices per forward pass, for the throughput and for the volume.
        iterations: timed forward passes.
        volume_shape: ``(X, Y, Z)`` of the synthetic NIfTI volume (sliced along the config's slice axis); ignored
            with ``volume``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; ``None``: CUDA if available, else the CPU.
        overrides: ``inference.json`` ids and values (``{"n_blocks": 8}``), applied before ``image_size``.
        checkpoint: ``model.pt`` to load (:func:`common.training.load_checkpoint`); it gives the architecture when it
            describes its network. ``None``: random weights.
        warmup: untimed forward passes before the timed ones.
        seed: seed of the random inputs and of the synthetic volume.
        volume: a real 3D NIfTI volume for the brain extraction and the end-to-end time, instead of a synthetic one.
        brain_extraction: ``"deepbet"``, ``"none"`` or ``"module:function"`` in place of the bundle's
            ``slice_settings.brain_extraction``; ``None`` keeps the bundle's.
        precision: of the model-alone timing: ``"fp32"``, ``"bf16"`` (autocast, on the CPU too) or ``"auto"`` (bf16
            on CUDA when the config's ``amp`` is on, else fp32).
        channels_last: run the model-alone timing in ``channels_last``; ``None``: on CUDA only.
        compile: time the network wrapped in ``torch.compile`` (its first call, which compiles, is timed apart).

    Returns:
        A JSON-serialisable dict with ``bundle``, ``settings``, ``environment``, ``model`` (class, constructor
        arguments, parameters, FLOPs), ``throughput`` (``slices_per_s``, ``precision``, ``bf16_autocast``,
        ``channels_last``, ``compile``, ``compile_first_call_s``, ...), ``peak`` (``flops_per_s``,
        ``peak_flops_per_s``, ``peak_source``, ``fraction_of_peak``, ``floor_slices_per_s``: see
        :func:`peak_fraction`), ``memory`` (``model``, ``end_to_end`` and
        ``brain_extraction``, ``None`` when not measured), ``brain_extraction`` (``method``, ``measured``,
        ``s_per_volume``, ``first_call_s``, ``brain_volume_ml``, ``device``, ``included_in_end_to_end``, ``reason``)
        and ``end_to_end`` (with ``brain_extraction`` and ``brain_extraction_s_per_volume``).

    Raises:
        ValueError: for an unknown bundle, a bad override, non-positive sizes or counts, an unusable device, an
            unknown ``brain_extraction``, a ``volume`` that is not a 3D NIfTI volume, an unreadable checkpoint or an
            override that contradicts the checkpoint's architecture
            (:class:`common.checkpoint.ArchitectureMismatchError`), or a ``precision`` not in :data:`PRECISIONS`.
        FileNotFoundError: when ``checkpoint`` or ``volume`` does not exist.
        CompileError: when ``compile`` is on and ``torch.compile`` fails on this machine.
    """
    batch_size = _positive_int("batch_size", batch_size)
    iterations = _positive_int("iterations", iterations)
    if isinstance(warmup, bool) or not isinstance(warmup, int | np.integer) or warmup < 0:
        msg = f"warmup: expected a non-negative integer, got {warmup!r}"
        raise ValueError(msg)
    volume_shape = _positive_ints("volume_shape", volume_shape, 3)
    _check_switches(precision, channels_last, compile)
    user_overrides = dict(overrides or {})
    overrides = dict(user_overrides)
    if image_size is not None:
        overrides["image_size"] = list(_positive_ints("image_size", image_size, 2))
    torch_device = _resolve_device(device)
    if checkpoint is not None and not Path(checkpoint).is_file():
        msg = f"{checkpoint}: checkpoint not found"
        raise FileNotFoundError(msg)
    if volume is not None:
        volume = Path(volume)
        volume_shape = _volume_file_shape(volume)
    if brain_extraction is not None:
        check_brain_extraction(brain_extraction)

    logger.info("building %s from configs/inference.json (overrides %s)", bundle, overrides or "none")
    parser, network, scorer, slice_settings = build_components(bundle, overrides, checkpoint)
    if brain_extraction is not None:
        if not dataclasses.is_dataclass(slice_settings) or not hasattr(slice_settings, "brain_extraction"):
            msg = f"--brain-extraction: {bundle}'s slice_settings have no brain_extraction setting"
            raise ValueError(msg)
        slice_settings = dataclasses.replace(slice_settings, brain_extraction=brain_extraction)
    extraction_method = str(getattr(slice_settings, "brain_extraction", "none"))
    get_extractor(extraction_method)  # an unimportable "module:function" fails here, before any timing
    if checkpoint is not None:
        load_checkpoint(network, checkpoint)
        weights = f"checkpoint {checkpoint}"
    else:
        weights = "random initialisation (no --checkpoint; timings do not depend on the weights)"
    size = tuple(int(s) for s in _config_value(parser, "image_size", (256, 256)))
    if image_size is None:
        size = _positive_ints("image_size", size, 2)
    in_channels = int(_config_value(parser, "network_def#in_channels", 1))
    amp = bool(_config_value(parser, "evaluator#amp", _config_value(parser, "amp", True)))
    network.to(torch_device).eval()

    alone = benchmark_network(
        network,
        size,
        in_channels,
        batch_size,
        warmup,
        iterations,
        torch_device,
        amp,
        seed,
        precision=precision,
        channels_last=channels_last,
        compile=compile,
    )
    parameters, times, model_memory = alone["parameters"], alone["batch_seconds"], alone["memory"]
    flops, flops_by_op = alone["flops_per_slice"], alone["flops_by_operator"]

    logger.info(
        "timing brain extraction (%s) and one %s volume end to end", extraction_method, "x".join(map(str, volume_shape))
    )
    end_to_end, extraction, extraction_memory = _time_volume(
        network, parser, scorer, slice_settings, torch_device, batch_size, amp, volume_shape, seed, volume
    )
    if not extraction["measured"]:
        logger.info("brain extraction not measured: %s", extraction["reason"])

    return {
        "bundle": bundle,
        "settings": {
            "config": f"bundles/{bundle}/configs/inference.json",
            "overrides": user_overrides,
            "image_size": list(size),
            "in_channels": in_channels,
            "batch_size": batch_size,
            "warmup": warmup,
            "iterations": iterations,
            "volume_shape": list(volume_shape),
            "volume": None if volume is None else str(volume),
            "slice_axis": int(getattr(slice_settings, "axis", 2)),
            "brain_extraction": extraction_method,
            "weights": weights,
            "seed": seed,
        },
        "environment": environment_info(torch_device),
        "model": {
            "class": f"{type(network).__module__}.{type(network).__qualname__}",
            "arguments": getattr(network, "constructor_arguments", None),
            "parameters_total": parameters["total"],
            "parameters_trainable": parameters["trainable"],
            "flops_per_slice": flops,
            "flops_by_operator": flops_by_op,
            "flops_note": "torch.utils.flop_counter.FlopCounterMode, fp32, one slice; one multiply-add = 2 FLOPs; "
            "element-wise operations are not counted",
        },
        "throughput": {
            "slices_per_s": alone["slices_per_s"],
            "batch_seconds": times,
            "batch_seconds_median": statistics.median(times),
            "batch_seconds_min": min(times),
            "precision_option": alone["precision_option"],
            "precision": alone["precision"],
            "bf16_autocast": alone["bf16_autocast"],
            "channels_last": alone["channels_last"],
            "compile": alone["compile"],
            "compile_first_call_s": alone["compile_first_call_s"],
            "inference_mode": True,
        },
        "peak": alone["peak"],
        "memory": {
            "model": model_memory,
            "end_to_end": end_to_end.pop("memory"),
            "brain_extraction": extraction_memory,
        },
        "brain_extraction": extraction,
        "end_to_end": end_to_end,
    }


# --------------------------------------------------------------------------------------------------------------------
# Report


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def _flops(value: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} FLOP"


def _precision_text(thr: Mapping[str, Any]) -> str:
    """``bf16 autocast, channels_last, torch.compile`` or part of it; ``--precision auto`` is named as such."""
    text = "bf16 autocast" if thr["bf16_autocast"] else "fp32"
    if thr.get("precision_option", "auto") == "auto":
        text += " (--precision auto)"
    if thr["channels_last"]:
        text += ", channels_last"
    if thr.get("compile"):
        text += ", torch.compile"
    return text


def _peak_rows(peak: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The report rows of the ``peak`` section (none for results written before it existed)."""
    if not peak:
        return []
    achieved = "n/a" if peak["flops_per_s"] is None else f"{_flops(peak['flops_per_s'])}/s"
    if peak["peak_flops_per_s"] is None:
        return [
            ("achieved FLOP/s", f"{achieved} (FLOPs / slice x slices/s)"),
            ("peak FLOP/s", f"n/a: {peak['peak_source']}"),
            ("fraction of peak", "n/a"),
        ]
    fraction = peak["fraction_of_peak"]
    floor = peak["floor_slices_per_s"]
    return [
        ("achieved FLOP/s", f"{achieved} (FLOPs / slice x slices/s)"),
        ("peak FLOP/s", f"{_flops(peak['peak_flops_per_s'])}/s ({peak['peak_source']})"),
        ("fraction of peak", "n/a" if fraction is None else f"{100.0 * fraction:.2f} %"),
        (
            "compute floor",
            "n/a" if floor is None else f"{floor:,.1f} slices/s (peak / FLOPs per slice: every counted FLOP at peak)",
        ),
    ]


def _memory_line(memory: Mapping[str, Any]) -> str:
    return f"peak {_mib(memory['peak_mib'])}, +{_mib(memory['increase_mib'])} over the start ({memory['measure']})"


def _extraction_line(extraction: Mapping[str, Any]) -> str:
    if not extraction["measured"]:
        return f"not measured ({extraction['method']}): {extraction['reason']}"
    return (
        f"{extraction['s_per_volume']:.2f} s / volume ({extraction['method']} on {extraction['device']}, after a "
        f"{extraction['first_call_s']:.2f} s warm-up call; {extraction['brain_volume_ml']:,.0f} ml of brain; "
        + ("included in read + normalise)" if extraction["included_in_end_to_end"] else "not in the end-to-end time)")
    )


def format_table(results: Mapping[str, Any]) -> str:
    """The human-readable report of :func:`run_benchmark`'s results, one measurement per row."""
    s, env, model = results["settings"], results["environment"], results["model"]
    thr, e2e = results["throughput"], results["end_to_end"]
    extraction = results["brain_extraction"]
    size = "x".join(map(str, s["image_size"]))
    precision = _precision_text(thr)
    versions = f"python {env['python']}, torch {env['torch']}, monai {env['monai']}, numpy {env['numpy']}"
    if env.get("cuda"):
        versions += f", CUDA {env['cuda']}"
    rows = [
        ("bundle", f"{results['bundle']} ({s['config']})"),
        ("overrides", json.dumps(s["overrides"]) if s["overrides"] else "none"),
        ("device", f"{env['device']}: {env['device_name']} ({env['cpu_count']} CPUs, {env['torch_threads']} threads)"),
        ("versions", versions),
        ("network", f"{model['class']}, {s['in_channels']} x {size} input"),
        ("weights", s["weights"]),
        ("parameters", f"{model['parameters_total']:,} total, {model['parameters_trainable']:,} trainable"),
        ("FLOPs / slice", f"{_flops(model['flops_per_slice'])} at {size} (FlopCounterMode, multiply-add = 2)"),
        (
            "throughput",
            f"{thr['slices_per_s']:.2f} slices/s (batch {s['batch_size']}, {s['warmup']} warm-up + "
            f"{s['iterations']} timed iterations, {precision})",
        ),
        (
            "batch latency",
            f"median {thr['batch_seconds_median']:.3f} s, min {thr['batch_seconds_min']:.3f} s",
        ),
        *(
            [("compile", f"first call {thr['compile_first_call_s']:.2f} s (torch.compile; before the warm-up)")]
            if thr.get("compile")
            else []
        ),
        *_peak_rows(results.get("peak")),
        ("memory (model)", _memory_line(results["memory"]["model"])),
        (
            "volume",
            f"{'x'.join(map(str, e2e['volume_shape']))} float32 NIfTI ({e2e['volume_source']}), "
            f"{e2e['n_slices']} slices along axis {s['slice_axis']}",
        ),
        ("brain extraction", _extraction_line(extraction)),
        (
            "read + normalise",
            f"{e2e['read_normalise_s']:.2f} s"
            + (f" (with {extraction['method']} brain extraction)" if e2e["brain_extraction_in_total"] else ""),
        ),
        ("maps + scores", f"{e2e['maps_s']:.2f} s"),
        ("write", f"{e2e['write_s']:.2f} s"),
        ("end to end", f"{e2e['total_s']:.2f} s ({e2e['slices_per_s']:.2f} slices/s)"),
        ("memory (volume)", _memory_line(results["memory"]["end_to_end"])),
    ]
    if results["memory"].get("brain_extraction"):
        rows.append(("memory (extraction)", _memory_line(results["memory"]["brain_extraction"])))
    width = max(len(name) for name, _ in rows)
    title = f"Benchmark: {results['bundle']} on {env['device']}"
    rule = "-" * max(len(title), max(width + 2 + len(value) for _, value in rows))
    return "\n".join([title, rule, *(f"{name:<{width}}  {value}" for name, value in rows), rule])


# --------------------------------------------------------------------------------------------------------------------
# Command line


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


if __name__ == "__main__":
    sys.exit(main())
