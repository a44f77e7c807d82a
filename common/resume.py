"""Resumable training: a killed run continues from its last checkpoint and ends where an uninterrupted run would.

Two handlers, attached to the trainer the way MONAI bundles attach ``CheckpointSaver`` and ``CheckpointLoader``:

- :class:`ResumableTraining` saves everything a run needs every ``interval`` epochs (the networks, optimizers,
  schedulers, the trainer's epoch and iteration, and any handler with a ``state_dict``, such as AnomalyPro's model
  selection) to ``<ckpt_dir>/checkpoint_epoch=<N>.pt``, keeping the latest only; with ``resume`` (or a ``resume_from``
  path) it loads that state before the first epoch, with MONAI's ``CheckpointLoader``. A corrupt or mismatched file is a
  one-line error before training starts.
- :class:`ReproducibleSteps` makes the run's randomness a function of the seed and the position in the run: the
  global ``torch``/``numpy``/``random`` generators are re-seeded before every iteration's step from ``(seed,
  iteration)``, and the random transforms of the training data from ``(seed, epoch)`` when an epoch starts. With the
  shuffling of :func:`shuffling_sampler` (its order depends on ``(seed, epoch)`` only), a resumed run draws the same
  numbers as an uninterrupted one: on the CPU, with ``num_workers: 0``, its final weights are identical. (With loader
  workers the workers' seeds are drawn when their iterator starts, so a resumed run's augmentation differs.)

The checkpoint holds plain tensors and numbers and loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data.utils import set_rnd
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from common.checkpoint import check_arguments

__all__ = ["ResumableTraining", "ReproducibleSteps", "ResumeError", "latest_checkpoint", "shuffling_sampler"]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
_EPOCH_PATTERN = re.compile(r"epoch=(\d+)\.pt$")


class ResumeError(ValueError):
    """A resume checkpoint cannot be used (missing, unreadable, or from another run's configuration)."""


def _engine_event(name: str) -> Any:
    from ignite.engine import Events

    return getattr(Events, name)


def derive_seed(seed: int, *position: int) -> int:
    """A 32-bit seed from the run's seed and a position in the run (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(seed) % 2**32, *(int(p) for p in position)]).generate_state(1)[0])


def shuffling_sampler(dataset: Dataset, seed: int = 0) -> DistributedSampler:
    """A shuffling sampler whose order depends on ``(seed, epoch)`` only, for this process's share of the data.

    PyTorch's ``DistributedSampler``: MONAI's trainers call its ``set_epoch`` when an epoch starts. In a single
    process it covers the whole dataset; under ``torch.distributed`` each rank gets its own share.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    replicas = torch.distributed.get_world_size() if distributed else 1
    rank = torch.distributed.get_rank() if distributed else 0
    return DistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=int(seed))


def _seed_global(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class ReproducibleSteps:
    """Seed every epoch's data augmentation and every iteration's step from the run's seed (module docstring).

    Args:
        seed: the run's seed.
        loader: the training data loader; the random transforms of its dataset are re-seeded at each epoch.
    """

    def __init__(self, seed: int, loader: Any) -> None:
        self.seed = int(seed)
        self.loader = loader

    def attach(self, engine: Any) -> None:
        """Re-seed at ``EPOCH_STARTED`` (data) and ``ITERATION_STARTED`` (the step, after its batch is loaded)."""
        engine.add_event_handler(_engine_event("EPOCH_STARTED"), self.epoch_started)
        engine.add_event_handler(_engine_event("ITERATION_STARTED"), self.iteration_started)

    def epoch_started(self, engine: Any) -> None:
        """Seed the dataset's random transforms and the global generators (for the first batch) from the epoch."""
        epoch = int(engine.state.epoch)
        set_rnd(self.loader.dataset, derive_seed(self.seed, 0, epoch))
        _seed_global(derive_seed(self.seed, 2, epoch))

    def iteration_started(self, engine: Any) -> None:
        """Seed ``torch``, ``numpy`` and ``random`` from ``(seed, iteration)``."""
        _seed_global(derive_seed(self.seed, 1, int(engine.state.iteration)))


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The ``checkpoint_epoch=<N>.pt`` with the highest ``N`` in ``ckpt_dir``, or ``None``."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in folder.glob(f"{CHECKPOINT_PREFIX}*epoch=*.pt")
        if (m := _EPOCH_PATTERN.search(p.name))
    ]
    return max(found)[1] if found else None


class ResumableTraining:
    """Save the whole training state every ``interval`` epochs; load it back when resuming (module docstring).

    Attach it FIRST among the trainer's handlers, so the state is loaded before any other handler starts (e.g. the
    feature statistics, which a resumed run finds already fitted). Its saver is registered when the run starts, after
    every other handler, so the state it saves includes what the others did at the end of the epoch.

    Args:
        ckpt_dir: where ``checkpoint_epoch=<N>.pt`` is written (and looked for with ``resume``).
        save_dict: the objects to save besides the trainer (added as ``"trainer"``): anything with ``state_dict``
            and ``load_state_dict``.
        interval: epochs between saves; 0 saves nothing.
        resume: continue from the latest checkpoint in ``ckpt_dir``; without one the run starts from epoch 0 (and
            says so).
        resume_from: continue from this checkpoint (overrides ``resume``).
        map_location: passed to ``torch.load``.
        save: write the interval checkpoints (``False`` on every process but the first under ``torchrun``: they
            load the checkpoint when resuming, only rank 0 writes).
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        save_dict: Mapping[str, Any],
        interval: int = 1,
        resume: bool | str = False,
        resume_from: str | Path | None = None,
        map_location: Any = "cpu",
        save: bool = True,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
            msg = f"checkpoint_interval must be an int >= 0, got {interval!r}"
            raise ValueError(msg)
        if isinstance(resume, str) and resume.strip().lower() in ("true", "false"):
            resume = resume.strip().lower() == "true"  # `--resume true` arrives as a string from the command line
        if not isinstance(resume, bool):
            msg = f"resume must be true or false, got {resume!r}"
            raise ValueError(msg)
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict = dict(save_dict)
        self.interval = interval
        self.resume = resume
        self.resume_from = Path(resume_from) if resume_from else None
        self.map_location = map_location
        self.resumed_from: Path | None = None
        self.save = bool(save)

    def resume_path(self) -> Path | None:
        """The checkpoint this run continues from, or ``None`` for a fresh start.

        Raises:
            ResumeError: when ``resume_from`` does not exist.
        """
        if self.resume_from is not None:
            if not self.resume_from.is_file():
                msg = f"{self.resume_from}: resume checkpoint not found"
                raise ResumeError(msg)
            return self.resume_from
        if not self.resume:
            return None
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            logger.warning("resume: no %s_epoch=<N>.pt in %s; starting from epoch 0", CHECKPOINT_PREFIX, self.ckpt_dir)
        return path

    def attach(self, engine: Any) -> None:
        """Load at ``STARTED`` when resuming; register the saver then, after the other handlers."""
        self.objects = {**self.save_dict, "trainer": engine}
        engine.add_event_handler(_engine_event("STARTED"), self.started)

    def started(self, engine: Any) -> None:
        """Load the resume checkpoint (if any), then register the interval saver."""
        path = self.resume_path()
        if path is not None:
            self.load(path, engine)
        if self.save and self.interval > 0 and not getattr(self, "_saver_attached", False):
            from monai.handlers import CheckpointSaver

            CheckpointSaver(
                save_dir=str(self.ckpt_dir),
                save_dict=self.objects,
                file_prefix="",
                save_interval=self.interval,
                n_saved=1,
            ).attach(engine)
            self._saver_attached = True

    def load(self, path: Path, engine: Any) -> None:
        """Load ``path`` into the run's objects with MONAI's ``CheckpointLoader``.

        Raises:
            ResumeError: one line naming the file when it is unreadable, lacks an object of this run, or does not
                fit it (another architecture, another optimizer).
        """
        from monai.handlers import CheckpointLoader

        try:
            checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
        except Exception as error:  # torch raises several types for a damaged or foreign file
            self._fail(f"{path}: not a readable training checkpoint ({type(error).__name__})")
        if not isinstance(checkpoint, dict):
            self._fail(f"{path}: not a training checkpoint (expected a dictionary of saved objects)")
        missing = sorted(set(self.objects) - set(checkpoint))
        if missing:
            self._fail(f"{path}: not a checkpoint of this training run; it lacks {', '.join(missing)}")
        model = self.objects.get("model")
        if model is not None:
            try:
                check_arguments(model, path)
            except ValueError as error:
                self._fail(str(error))
        try:
            CheckpointLoader(load_path=str(path), load_dict=self.objects, map_location=self.map_location)(engine)
        except (RuntimeError, KeyError, ValueError, TypeError) as error:
            lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
            detail = next(
                (line for line in lines if "size mismatch" in line), lines[0] if lines else type(error).__name__
            )
            self._fail(f"{path}: does not fit this training run ({detail})")
        loader = getattr(engine.state, "dataloader", None)
        saved_length = getattr(engine.state, "epoch_length", None)
        if (
            loader is not None
            and saved_length is not None
            and hasattr(loader, "__len__")
            and len(loader) != saved_length
        ):
            self._fail(
                f"{path}: its run had {saved_length} iterations per epoch, this one has {len(loader)} "
                "(the training data or batch size changed); resume with the same data and settings"
            )
        self.resumed_from = path
        logger.info("resumed from %s at epoch %d (iteration %d)", path, engine.state.epoch, engine.state.iteration)

    @staticmethod
    def _fail(message: str) -> None:
        logger.error(message)  # one clear line before MONAI's config machinery wraps the exception
        raise ResumeError(message)
