"""Tests for tools.benchmark.memory: the peak memory of a section on the CPU (peak resident set size)."""

from __future__ import annotations

import numpy as np
import torch

from tools.benchmark.memory import MIB, PeakMemory


def test_peak_memory_of_a_cpu_section_covers_what_it_allocates() -> None:
    size_mib = 64
    with PeakMemory(torch.device("cpu")) as memory:
        assert memory.result == {}  # filled on exit
        block = np.ones(int(size_mib * MIB) // 8)  # every page written: resident
        del block
    result = memory.result
    assert set(result) == {"measure", "peak_mib", "start_mib", "increase_mib"}
    assert result["measure"].startswith("peak RSS (ru_maxrss) of ")  # "this section", or "the process" without reset
    assert result["start_mib"] > 0 and result["peak_mib"] >= result["start_mib"]
    assert result["increase_mib"] >= 0.9 * size_mib
