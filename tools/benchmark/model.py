"""Model-alone timing of any network: parameters, FLOPs, throughput, peak memory and the fraction of the device's peak.

:func:`benchmark_network` is the model-alone part of :func:`tools.benchmark.bundle.run_benchmark`, and the code
``tools.compare`` times a network built elsewhere with (the anomalib peers' torch models), so both are measured the
same way: random inputs already on the device, ``torch.inference_mode()``, warm-up iterations, then timed ones, in the
precision, memory format and compile mode the switches pick (:func:`check_switches`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tools.benchmark.checks import non_negative_int, positive_int, positive_ints
from tools.benchmark.clock import synchronize
from tools.benchmark.memory import PeakMemory
from tools.benchmark.peaks import device_peak_flops, peak_fraction
from tools.components import resolve_device

__all__ = [
    "PRECISIONS",
    "CompileError",
    "benchmark_network",
    "check_switches",
    "count_flops",
    "count_parameters",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
"""``--precision`` values: ``auto`` is bf16 autocast on CUDA when the config's ``amp`` is on, fp32 otherwise."""


class CompileError(RuntimeError):
    """``torch.compile`` failed on this machine (e.g. inductor found no working C++ compiler)."""


def check_switches(precision: str, channels_last: bool | None, compile: bool) -> None:  # noqa: A002
    """Validate the precision, layout and compile switches of the model-alone timing.

    Args:
        precision: one of :data:`PRECISIONS`.
        channels_last: ``True``, ``False`` or ``None`` (on CUDA only).
        compile: ``True`` or ``False``.

    Raises:
        ValueError: for a value outside those.
    """
    if precision not in PRECISIONS:
        msg = f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}"
        raise ValueError(msg)
    if channels_last is not None and not isinstance(channels_last, bool):
        msg = f"channels_last: expected True, False or None, got {channels_last!r}"
        raise ValueError(msg)
    if not isinstance(compile, bool):
        msg = f"compile: expected True or False, got {compile!r}"
        raise ValueError(msg)


def count_parameters(network: nn.Module) -> dict[str, int]:
    """Total and trainable (``requires_grad``) parameter counts.

    Args:
        network: the module whose parameters are counted.

    Returns:
        ``{"total": n, "trainable": m}``.
    """
    params = list(network.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def count_flops(network: nn.Module, sample: torch.Tensor) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward pass of ``sample`` (float32, no autocast) and their split by operator.

    The parameters' ``requires_grad`` is off during the count (and restored after): the counter's module tracker hooks
    the gradient of every module input that requires one, which fails for a module called on a bare parameter (the
    ``softplus(global_scale)`` of the flow blocks in anomalib's FastFlow).

    Args:
        network: the module to run once.
        sample: its input, on the network's device.

    Returns:
        ``(total, by_operator)``: FLOPs counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions
        and matrix products; one multiply-add = 2 FLOPs) and ``{operator: FLOPs}``, largest first.
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
            synchronize(device)
            start = time.perf_counter()
            try:
                forward(inputs)
                synchronize(device)
            except Exception as error:  # dynamo and inductor raise many types; the first call is where they fail
                msg = f"--compile: torch.compile failed on {device}: {_one_line(error)}"
                raise CompileError(msg[:500]) from error
            first_call_s = time.perf_counter() - start
        for _ in range(warmup):
            forward(inputs)
        synchronize(device)
        with PeakMemory(device) as memory:
            for _ in range(iterations):
                start = time.perf_counter()
                forward(inputs)
                synchronize(device)
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
    """The model-alone part of :func:`~tools.benchmark.bundle.run_benchmark` for any network: FLOPs, speed, memory.

    :func:`~tools.benchmark.bundle.run_benchmark` measures a bundle's network with it, and ``tools.compare`` a
    network built elsewhere (the anomalib peers' torch models), so both go through the same code: random inputs
    ``(batch_size, in_channels, H, W)`` already on ``device``, ``torch.inference_mode()``, by default bf16 autocast on
    CUDA when ``amp`` is on and ``channels_last`` on CUDA; with ``compile``, one first call through ``torch.compile``
    (timed apart: it compiles); ``warmup`` untimed forward passes, then ``iterations`` timed ones. The network itself
    is never replaced by the compiled one: it is left on ``device`` in eval mode and in the default memory format.

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
        ``batch_seconds`` (one per timed iteration), ``slices_per_s``, ``memory`` (the timed part:
        :class:`~tools.benchmark.memory.PeakMemory`), ``precision_option`` (``precision`` as given), ``precision``
        (``"bf16"`` or ``"fp32"``, as timed), ``bf16_autocast``, ``channels_last``, ``compile``,
        ``compile_first_call_s`` (``None`` without ``compile``) and ``peak``
        (:func:`~tools.benchmark.peaks.peak_fraction` with the peak of :func:`~tools.benchmark.peaks.device_peak_flops`
        in that precision).

    Raises:
        ValueError: for non-positive sizes or counts, a negative ``warmup``, an unusable device or a ``precision``
            not in :data:`PRECISIONS`.
        CompileError: when ``compile`` is on and ``torch.compile`` fails on this machine.
    """
    size = positive_ints("image_size", image_size, 2)
    in_channels = positive_int("in_channels", in_channels)
    batch_size = positive_int("batch_size", batch_size)
    iterations = positive_int("iterations", iterations)
    warmup = non_negative_int("warmup", warmup)
    check_switches(precision, channels_last, compile)
    torch_device = resolve_device(device)
    cuda = torch_device.type == "cuda"
    bf16 = precision == "bf16" or (precision == "auto" and amp and cuda)
    channels_last = cuda if channels_last is None else channels_last
    network.to(torch_device).eval()

    generator = torch.Generator().manual_seed(seed)
    logger.info("counting parameters and FLOPs at %dx%d", *size)
    parameters = count_parameters(network)
    flops, flops_by_op = count_flops(network, torch.rand(1, in_channels, *size, generator=generator).to(torch_device))

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
