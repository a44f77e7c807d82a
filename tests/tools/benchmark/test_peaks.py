"""Tests for tools.benchmark.peaks: the GPU datasheet table, the measured CPU rate and the fraction of the peak."""

from __future__ import annotations

import math

import pytest
import torch

from tools.benchmark.peaks import (
    GPU_PEAK_TFLOPS,
    device_peak_flops,
    gpu_peak_flops,
    measured_matmul_flops,
    peak_fraction,
)

GPU_PEAK_CASES = [
    # torch.cuda.get_device_name() -> table entry; dense datasheet TFLOP/s for bf16 and fp32
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0, 67.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0, 51.0),
    ("NVIDIA H200", "H200", 989.0, 67.0),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0, 19.5),
    ("NVIDIA A100 80GB PCIe", "A100", 312.0, 19.5),
    ("NVIDIA L40S", "L40S", 362.0, 91.6),
    ("NVIDIA L4", "L4", 121.0, 30.3),
    ("NVIDIA A10", "A10", 125.0, 31.2),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", 165.2, 82.6),
    ("Tesla V100-SXM2-16GB", "V100 SXM2", None, 15.7),  # no bf16 tensor cores
    ("Tesla V100-PCIE-32GB", "V100 PCIe", None, 14.0),
    ("Tesla T4", "T4", None, 8.1),
]

UNKNOWN_GPUS = [
    "NVIDIA A10G",  # not the A10 (other clocks)
    "NVIDIA H100 NVL",  # other figures than SXM and PCIe
    "NVIDIA GH200 480GB",  # not the H200
    "NVIDIA GeForce RTX 4090 D",  # the China variant
    "NVIDIA L40",  # not the L40S, nor the L4
    "NVIDIA GeForce RTX 3090",  # not in the table
    "AMD Instinct MI300X",  # not in the table
]


@pytest.mark.parametrize(("name", "key", "bf16", "fp32"), GPU_PEAK_CASES, ids=[c[0] for c in GPU_PEAK_CASES])
def test_gpu_peak_flops_known(name: str, key: str, bf16: float | None, fp32: float) -> None:
    assert GPU_PEAK_TFLOPS[key]["bf16"] == bf16 and GPU_PEAK_TFLOPS[key]["fp32"] == fp32
    value, source = gpu_peak_flops(name, "fp32")
    assert value == pytest.approx(fp32 * 1e12) and f"dense fp32 peak of the {key} " in source
    value, source = device_peak_flops("cuda", "bf16", name=name)  # no GPU needed when the name is given
    if bf16 is None:
        assert value is None and f"the {key} has no bf16 tensor cores" in source
    else:
        assert value == pytest.approx(bf16 * 1e12) and f"dense bf16 peak of the {key} ({bf16:g} TFLOP/s)" in source


@pytest.mark.parametrize("name", UNKNOWN_GPUS)
def test_gpu_peak_flops_unknown_is_not_guessed(name: str) -> None:
    for precision in ("bf16", "fp32"):
        assert gpu_peak_flops(name, precision) == (None, f"unknown GPU {name}: no peak in the table")


def test_peak_arithmetic_and_bad_precision() -> None:
    peak = peak_fraction(2e9, 100.0, 1e12, "table")  # 2 GFLOP/slice at 100 slices/s on a 1 TFLOP/s device
    assert peak == {
        "flops_per_s": 2e11,
        "peak_flops_per_s": 1e12,
        "peak_source": "table",
        "fraction_of_peak": pytest.approx(0.2),
        "floor_slices_per_s": pytest.approx(500.0),
    }
    unknown = peak_fraction(2e9, 100.0, None, "unknown GPU X: no peak in the table")
    assert unknown["flops_per_s"] == 2e11 and unknown["fraction_of_peak"] is None
    assert unknown["peak_flops_per_s"] is None and unknown["floor_slices_per_s"] is None
    with pytest.raises(ValueError, match="precision: expected bf16, fp16 or fp32, got 'tf32'"):
        gpu_peak_flops("NVIDIA H200", "tf32")
    with pytest.raises(ValueError, match="precision: expected bf16 or fp32, got 'fp16'"):
        device_peak_flops("cpu", "fp16")


def test_measured_matmul_flops_is_positive_and_finite() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        rate = measured_matmul_flops("cpu", size=128, repeats=2, dtype=dtype)
        assert math.isfinite(rate) and rate > 0
    value, source = device_peak_flops("cpu", "fp32", matmul_size=128)
    assert math.isfinite(value) and value > 0 and source.startswith("measured fp32 matmul rate: torch.mm 128x128")
    with pytest.raises(ValueError, match="size"):
        measured_matmul_flops("cpu", size=0)
