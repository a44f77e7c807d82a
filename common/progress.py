"""Training progress on the console: a live bar in a terminal, one line per epoch anywhere else.

ignite's :class:`~ignite.handlers.ProgressBar` (tqdm) redraws one line with carriage returns. In a terminal that is
what a user wants to watch; written to a pipe or a log file, the same bar becomes thousands of partial lines. So
:class:`EpochProgress` uses the bar only when its stream is a terminal, and otherwise prints one plain line when each
epoch completes (epoch, iterations, mean losses, seconds), which reads well in a log, a CI job or a notebook.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ignite.engine import Events
from ignite.handlers import ProgressBar

__all__ = ["EPOCH_LINE_PREFIX", "EpochProgress"]

# Every non-interactive progress line starts with this, so a caller that captures the output can pick them out.
EPOCH_LINE_PREFIX = "[progress]"


def _losses_of(output: Any) -> dict[str, float]:
    """The named losses of one iteration's output (a MONAI engine output: a dict, or a list of dicts).

    Keys ``loss`` and ``*_loss`` (AnomalyPro's ``g_loss`` and ``d_loss``) holding one number are kept.
    """
    first = output[0] if isinstance(output, list | tuple) and output else output
    if not isinstance(first, dict):
        return {}
    losses = {}
    for key, value in first.items():
        if key == "loss" or str(key).endswith("_loss"):
            try:
                losses[str(key)] = float(value)
            except (TypeError, ValueError, RuntimeError):  # not one number
                continue
    return losses


class EpochProgress:
    """Show training progress: tqdm bar in a terminal, else one line per completed epoch.

    Args:
        stream: where progress goes (default ``sys.stderr``, read when attached).
        interactive: force the bar (``True``) or the lines (``False``); ``None`` asks ``stream.isatty()``.
        persist: keep each epoch's bar on screen when it completes (terminal only).
    """

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None, persist: bool = False) -> None:
        self.stream = stream
        self.interactive = interactive
        self.persist = bool(persist)
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._started = 0.0

    def attach(self, engine: Any) -> None:
        """Attach the bar or the per-epoch lines to ``engine``."""
        stream = self.stream if self.stream is not None else sys.stderr
        self.stream = stream
        interactive = self.interactive if self.interactive is not None else bool(getattr(stream, "isatty", bool)())
        if interactive:
            ProgressBar(persist=self.persist, file=stream).attach(engine, output_transform=_losses_of)
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine: Any) -> None:
        self._sums, self._counts = {}, {}
        self._started = time.perf_counter()

    def _iteration_completed(self, engine: Any) -> None:
        for key, value in _losses_of(engine.state.output).items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1

    def _epoch_completed(self, engine: Any) -> None:
        state = engine.state
        iterations = state.epoch_length or 0
        loss = "".join(f", mean {key} {total / self._counts[key]:.4g}" for key, total in self._sums.items())
        seconds = time.perf_counter() - self._started
        line = f"{EPOCH_LINE_PREFIX} epoch {state.epoch}/{state.max_epochs}: {iterations} iterations{loss}"
        print(f"{line}, {seconds:.1f} s", file=self.stream, flush=True)
