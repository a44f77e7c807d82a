"""Tests for tools.benchmark.model: parameters, FLOPs and the model-alone timing of any network (never speed)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tools.benchmark.model import CompileError, benchmark_network, check_switches, count_flops, count_parameters

SIZE = 16
# Conv 3->4 (3x3, padding 1) then conv 4->1 (1x1) at 16x16: 2 * (3*4*9 + 4*1) * 16*16 FLOPs (multiply-add = 2).
TINY_FLOPS = 2 * (3 * 4 * 9 + 4 * 1) * SIZE * SIZE
TINY_PARAMETERS = (3 * 4 * 9 + 4) + (4 * 1 + 1)


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))


def test_count_parameters_and_flops() -> None:
    network = _tiny()
    network[2].bias.requires_grad_(False)
    assert count_parameters(network) == {"total": TINY_PARAMETERS, "trainable": TINY_PARAMETERS - 1}
    total, by_operator = count_flops(network, torch.rand(1, 3, SIZE, SIZE))
    assert total == TINY_FLOPS and sum(by_operator.values()) == total
    assert list(by_operator) == ["aten.convolution"]
    assert [p.requires_grad for p in network.parameters()] == [True, True, True, False]  # restored after the count


def test_benchmark_network_on_the_cpu() -> None:
    network = _tiny()
    bench = benchmark_network(network, SIZE, 3, batch_size=2, warmup=1, iterations=2, device="cpu", amp=True)
    assert bench["parameters"]["total"] == TINY_PARAMETERS and bench["flops_per_slice"] == TINY_FLOPS
    assert len(bench["batch_seconds"]) == 2 and all(t > 0 for t in bench["batch_seconds"])
    assert math.isfinite(bench["slices_per_s"]) and bench["slices_per_s"] > 0
    # --precision auto on the CPU: fp32 whatever amp says, default memory format, no compile
    assert bench["precision_option"] == "auto" and bench["precision"] == "fp32" and not bench["bf16_autocast"]
    assert not bench["channels_last"] and not bench["compile"] and bench["compile_first_call_s"] is None
    assert bench["memory"]["peak_mib"] > 0
    peak = bench["peak"]
    assert peak["peak_source"].startswith("measured fp32 matmul rate")
    assert peak["flops_per_s"] == pytest.approx(TINY_FLOPS * bench["slices_per_s"])
    assert not network.training


def test_bf16_channels_last_leaves_the_network_in_the_default_format() -> None:
    network = _tiny()
    bench = benchmark_network(network, (SIZE, 8), 3, 2, 0, 1, "cpu", amp=False, precision="bf16", channels_last=True)
    assert bench["precision"] == "bf16" and bench["bf16_autocast"] and bench["channels_last"]
    assert bench["flops_per_slice"] == TINY_FLOPS // 2  # 16x8: half the positions
    assert bench["peak"]["peak_source"].startswith("measured bf16 matmul rate")
    assert all(p.is_contiguous() for p in network.parameters())  # back in the default memory format
    assert all(p.dtype == torch.float32 for p in network.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup": -1}, "warmup: expected a non-negative integer, got -1"),
        ({"in_channels": 0}, "in_channels: expected a positive integer"),
        ({"image_size": (SIZE, SIZE, SIZE)}, "image_size: expected 2 positive integers"),
        ({"precision": "fp16"}, "precision: expected one of auto, fp32, bf16, got 'fp16'"),
        ({"device": "nowhere"}, "--device: not a torch device"),
    ],
)
def test_benchmark_network_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    arguments = {"image_size": SIZE, "in_channels": 3, "batch_size": 2, "warmup": 0, "iterations": 1, "device": "cpu"}
    with pytest.raises(ValueError, match=message):
        benchmark_network(_tiny(), amp=False, **{**arguments, **kwargs})


def test_check_switches() -> None:
    check_switches("auto", None, False)
    check_switches("bf16", True, True)
    with pytest.raises(ValueError, match="channels_last: expected True, False or None, got 'yes'"):
        check_switches("fp32", "yes", False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compile: expected True or False, got 1"):
        check_switches("fp32", None, 1)  # type: ignore[arg-type]


def _no_compiler(graph: torch.fx.GraphModule, example_inputs: list) -> None:
    msg = "no working C++ compiler found\n(details on a second line)"
    raise RuntimeError(msg)


def test_compile_failure_is_a_compile_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: real_compile(model, backend=_no_compiler))
    network = _tiny()
    with pytest.raises(CompileError) as caught:
        benchmark_network(network, SIZE, 3, 2, 0, 1, "cpu", amp=False, compile=True)
    assert str(caught.value) == "--compile: torch.compile failed on cpu: RuntimeError: no working C++ compiler found"
    assert isinstance(network, nn.Sequential)  # the compiled wrapper never replaces the network
