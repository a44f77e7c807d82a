"""Peak memory of a timed section: the CUDA allocator's peak on CUDA, the peak resident set size on the CPU."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from tools.benchmark.clock import synchronize

__all__ = ["MIB", "PeakMemory"]

MIB = 1024.0 * 1024.0
"""Bytes in a mebibyte: memory figures are reported in MiB."""


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


class PeakMemory:
    """Peak memory of a code section: CUDA allocator peak, or peak resident set size on the CPU.

    Used as ``with PeakMemory(device) as memory: ...``; afterwards ``memory.result`` holds ``measure`` (what was
    read), ``peak_mib``, ``start_mib`` and ``increase_mib`` (peak over the start; the last two ``None`` where the
    resident size cannot be read). On the CPU the process's high-water mark is reset on entry where Linux allows it
    (``measure`` says whether the peak is that of the section or of the whole process).

    Args:
        device: the device whose memory is measured.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result: dict[str, Any] = {}

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = _current_rss()
            self._reset = _reset_peak_rss()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.result = {
                "measure": "torch.cuda.max_memory_allocated",
                "peak_mib": peak / MIB,
                "start_mib": self._start / MIB,
                "increase_mib": (peak - self._start) / MIB,
            }
            return
        peak = _maxrss()
        self.result = {
            "measure": "peak RSS (ru_maxrss) of this section" if self._reset else "peak RSS (ru_maxrss) of the process",
            "peak_mib": peak / MIB,
            "start_mib": None if self._start is None else self._start / MIB,
            "increase_mib": None if self._start is None else max(peak - self._start, 0) / MIB,
        }
