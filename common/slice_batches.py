"""Run a 2D detector over the slices of many files in full batches that cross file boundaries.

MONAI's :class:`~monai.inferers.SliceInferer` runs one volume at a time, so every volume ends in a partial batch and
a folder of 2D images runs one image per forward pass. A batch run over a folder instead wants the device busy with
full batches: :class:`CrossFileSliceBatcher` takes the loaded files in order, cuts their slices along each file's
slicing axis into batches of ``batch_size`` slices (a batch may hold the last slices of one file and the first of
the next, when their in-plane shapes agree), runs the network once per batch and hands every file back with its
raw outputs stitched onto its grid, in input order, as soon as all of its slices are done. Batches are staged in
pinned host memory and copied to CUDA without blocking, in ``channels_last`` when asked, under bf16 autocast when
``amp`` is on.

Each output is what the network returns for the file's slices, stacked back along the slicing axis: the same tensor
as ``SliceInferer`` with the whole slice as its window (the network sees every slice alone or in any batch; eval-mode
networks treat the samples of a batch independently).

A file that fails (unreadable, or the network fails on it) comes back with its exception and does not stop the
others: when a batch that mixes files fails, each file's share is run again on its own, so only the file at fault
is reported.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch

__all__ = ["CrossFileSliceBatcher", "FileOutputs", "stack_slices", "unstack_slices"]

logger = logging.getLogger(__name__)

Key = TypeVar("Key")
NetworkOutput = torch.Tensor | dict[str, torch.Tensor]


def stack_slices(volume: np.ndarray, axis: int) -> torch.Tensor:
    """The slices of a ``(X, Y, Z)`` volume along ``axis`` as a ``(N, 1, H, W)`` batch (a view where possible).

    The in-plane axes keep their order, as in MONAI's ``SliceInferer``: along axis 2 a slice is ``(X, Y)``, along
    axis 0 it is ``(Y, Z)``.
    """
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, axis, 0)))[:, None]


def unstack_slices(batch: torch.Tensor, axis: int) -> torch.Tensor:
    """Inverse of :func:`stack_slices` for network outputs: ``(N, C, H, W)`` slices to a ``(C, X, Y, Z)`` volume."""
    return batch.movedim(0, axis + 1)


@dataclass
class FileOutputs(Generic[Key]):
    """One file handed back by :class:`CrossFileSliceBatcher`.

    Attributes:
        key: what the caller passed with the file.
        item: the loaded file (or the exception its loading raised).
        outputs: the network's output on the file's grid, ``(C, X, Y, Z)`` (a dict of them for networks that return
            dicts), or ``None`` when the file failed.
        error: why the file failed, or ``None``.
    """

    key: Key
    item: Any
    outputs: NetworkOutput | None = None
    error: BaseException | None = None
    _slices: torch.Tensor | None = field(default=None, repr=False)
    _axis: int = field(default=2, repr=False)
    _parts: list[NetworkOutput] = field(default_factory=list, repr=False)
    _pending: int = field(default=0, repr=False)

    @property
    def done(self) -> bool:
        """Whether the file has failed or all of its slices have been run."""
        return self.error is not None or (self._slices is not None and self._pending == 0)


class CrossFileSliceBatcher:
    """Feeds the slices of a stream of files to a 2D network in full batches (see the module doc).

    Args:
        network: maps ``(B, 1, H, W)`` slices to a ``(B, C, H, W)`` tensor or a dict of them (e.g. a network's
            ``forward_outputs``); called under ``torch.inference_mode``.
        device: where the network runs.
        batch_size: slices per forward pass.
        amp: bf16 autocast on CUDA.
        channels_last: give the network ``channels_last`` inputs on CUDA (the network itself should be converted
            with ``network.to(memory_format=torch.channels_last)``).
        slices_of: ``item -> (volume (X, Y, Z) array, slicing axis)``; by default ``item.image`` and ``item.axis``
            (a :class:`common.volumes.LoadedImage`).
    """

    def __init__(
        self,
        network: Callable[[torch.Tensor], NetworkOutput],
        device: torch.device | str,
        batch_size: int = 16,
        amp: bool = True,
        channels_last: bool = False,
        slices_of: Callable[[Any], tuple[np.ndarray, int]] | None = None,
    ) -> None:
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ValueError(msg)
        self.network = network
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.amp = amp
        self.channels_last = channels_last
        self.slices_of = slices_of or (lambda item: (item.image, item.axis))

    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    def run(self, items: Iterable[tuple[Key, Any]]) -> Iterator[FileOutputs[Key]]:
        """Yield every ``(key, item)`` of ``items`` back as a :class:`FileOutputs`, in input order.

        An ``item`` that is an exception (a file that could not be loaded) is handed back with that exception.
        At most one batch of slices is waiting for the network at any time, plus the outputs of files not yet
        complete.
        """
        waiting: deque[FileOutputs[Key]] = deque()
        batch: list[tuple[FileOutputs[Key], int, int]] = []
        filled = 0
        for key, item in items:
            entry: FileOutputs[Key] = FileOutputs(key, item)
            waiting.append(entry)
            if isinstance(item, BaseException):
                entry.error = item
            else:
                try:
                    volume, axis = self.slices_of(item)
                    entry._slices, entry._axis = stack_slices(np.asarray(volume, dtype=np.float32), axis), axis
                    if len(entry._slices) == 0:
                        msg = f"no slices along axis {axis} (shape {np.shape(volume)})"
                        raise ValueError(msg)
                except Exception as error:  # reported with the file; the others go on
                    entry.error = error
            if entry.error is None:
                slices = entry._slices
                if batch and batch[-1][0]._slices.shape[1:] != slices.shape[1:]:
                    self._run_batch(batch)  # a batch holds one in-plane shape
                    batch, filled = [], 0
                entry._pending = len(slices)
                start = 0
                while start < len(slices):
                    stop = min(len(slices), start + self.batch_size - filled)
                    batch.append((entry, start, stop))
                    filled += stop - start
                    start = stop
                    if filled == self.batch_size:
                        self._run_batch(batch)
                        batch, filled = [], 0
            yield from self._finished(waiting)
        if batch:
            self._run_batch(batch)
        yield from self._finished(waiting)

    def _finished(self, waiting: deque[FileOutputs[Key]]) -> Iterator[FileOutputs[Key]]:
        """Hand back the files at the head of the queue that are done, stitching their outputs."""
        while waiting and waiting[0].done:
            entry = waiting.popleft()
            if entry.error is None:
                entry.outputs = _concatenate(entry._parts, entry._axis)
            entry._slices, entry._parts = None, []
            yield entry

    def _forward(self, slices: torch.Tensor) -> NetworkOutput:
        """One forward pass of a host batch: staged in pinned memory, copied without blocking, autocast."""
        if self._cuda:
            slices = slices.pin_memory().to(self.device, non_blocking=True)
            if self.channels_last:
                slices = slices.contiguous(memory_format=torch.channels_last)
        else:
            slices = slices.to(self.device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp and self._cuda else nullcontext()
        with torch.inference_mode(), autocast:
            return self.network(slices)

    def _run_batch(self, batch: list[tuple[FileOutputs[Key], int, int]]) -> None:
        """Run one batch and give every file its share; on failure retry each file's share alone."""
        live = [(entry, start, stop) for entry, start, stop in batch if entry.error is None]
        if not live:
            return
        try:
            outputs = self._forward(torch.cat([entry._slices[start:stop] for entry, start, stop in live]))
        except Exception as error:
            if len({id(entry) for entry, _, _ in live}) == 1:
                live[0][0].error = error
                return
            logger.debug("a batch of several files failed (%s); running each file's share alone", error)
            for part in live:
                self._run_batch([part])
            return
        offset = 0
        for entry, start, stop in live:
            entry._parts.append(_take(outputs, offset, offset + stop - start))
            entry._pending -= stop - start
            offset += stop - start


def _take(outputs: NetworkOutput, start: int, stop: int) -> NetworkOutput:
    if isinstance(outputs, dict):
        return {name: value[start:stop] for name, value in outputs.items()}
    return outputs[start:stop]


def _concatenate(parts: list[NetworkOutput], axis: int) -> NetworkOutput:
    """A file's output pieces, in slice order, as ``(C, X, Y, Z)`` (per name for dict outputs)."""
    if isinstance(parts[0], dict):
        return {name: unstack_slices(torch.cat([part[name] for part in parts]), axis) for name in parts[0]}
    return unstack_slices(torch.cat(parts), axis)
