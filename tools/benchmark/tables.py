"""The human-readable report of a bundle benchmark: one measurement per row, as ``uad-benchmark`` prints it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["format_table"]


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
    """The human-readable report of :func:`~tools.benchmark.bundle.run_benchmark`'s results, one measurement per row.

    Results written before a section existed (``peak``, ``compile``, the brain extraction's memory) are reported
    without its rows.

    Args:
        results: the results, as returned or as read back from their JSON copy.

    Returns:
        A title, a rule, one ``name  value`` row per measurement and a closing rule.
    """
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
