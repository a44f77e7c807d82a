"""The whole benchmark of one bundle: its network, scorer and slice settings built from its own inference config.

:func:`run_benchmark` builds the components from ``configs/inference.json``
(:func:`tools.components.build_components`), times the network alone (:func:`tools.benchmark.model.benchmark_network`),
then one volume end to end (:func:`tools.benchmark.volume.time_volume`), and describes the environment
(:func:`tools.benchmark.environment.environment_info`); :mod:`tools.benchmark` lists the parts of the report.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from common.brain import check_brain_extraction, get_extractor
from common.training import load_checkpoint
from tools.benchmark.checks import non_negative_int, positive_int, positive_ints
from tools.benchmark.environment import environment_info
from tools.benchmark.model import benchmark_network, check_switches
from tools.benchmark.volume import DEFAULT_VOLUME_SHAPE, time_volume, volume_file_shape
from tools.components import build_components, resolve_device

__all__ = ["run_benchmark"]

logger = logging.getLogger(__name__)


def _config_value(parser: ConfigParser, key: str, default: Any) -> Any:
    return parser.get_parsed_content(key) if key in parser else default


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
    """Benchmark a bundle's network on one device; :mod:`tools.benchmark` says what is measured.

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
        :func:`~tools.benchmark.peaks.peak_fraction`), ``memory`` (``model``, ``end_to_end`` and
        ``brain_extraction``, ``None`` when not measured), ``brain_extraction`` (``method``, ``measured``,
        ``s_per_volume``, ``first_call_s``, ``brain_volume_ml``, ``device``, ``included_in_end_to_end``, ``reason``)
        and ``end_to_end`` (with ``brain_extraction`` and ``brain_extraction_s_per_volume``).

    Raises:
        ValueError: for an unknown bundle, a bad override, non-positive sizes or counts, an unusable device, an
            unknown ``brain_extraction``, a ``volume`` that is not a 3D NIfTI volume, an unreadable checkpoint or an
            override that contradicts the checkpoint's architecture
            (:class:`common.checkpoint.ArchitectureMismatchError`), or a ``precision`` not in
            :data:`~tools.benchmark.model.PRECISIONS`.
        FileNotFoundError: when ``checkpoint`` or ``volume`` does not exist.
        CompileError: when ``compile`` is on and ``torch.compile`` fails on this machine.
    """
    batch_size = positive_int("batch_size", batch_size)
    iterations = positive_int("iterations", iterations)
    warmup = non_negative_int("warmup", warmup)
    volume_shape = positive_ints("volume_shape", volume_shape, 3)
    check_switches(precision, channels_last, compile)
    user_overrides = dict(overrides or {})
    overrides = dict(user_overrides)
    if image_size is not None:
        overrides["image_size"] = list(positive_ints("image_size", image_size, 2))
    torch_device = resolve_device(device)
    if checkpoint is not None and not Path(checkpoint).is_file():
        msg = f"{checkpoint}: checkpoint not found"
        raise FileNotFoundError(msg)
    if volume is not None:
        volume = Path(volume)
        volume_shape = volume_file_shape(volume)
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
        size = positive_ints("image_size", size, 2)
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
    end_to_end, extraction, extraction_memory = time_volume(
        network,
        scorer,
        slice_settings,
        torch_device,
        batch_size,
        amp,
        volume_shape,
        seed,
        volume,
        volume_method=_config_value(parser, "evaluator#volume_method", "max"),
        write_masks=bool(_config_value(parser, "evaluator#write_masks", False)),
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
