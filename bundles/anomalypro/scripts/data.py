"""AnomalyPro training data: set A (``train/mixed``, unlabelled) and set B (``train/good``, healthy), paired.

The translation GAN trains on two sets (Brainomaly, Siddiquee et al., WACV 2024, Sec. 3): set A is a mix of healthy
and diseased images without labels, set B healthy images only. In the dataset layout set B is ``train/good/`` and
set A the optional ``train/mixed/``; without it set A is set B (the GAN then learns the identity on healthy images
and detects what it cannot reproduce).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from monai.data.utils import set_rnd
from torch.utils.data import Dataset

from common.data import DatasetIndex, ImageRecord, split_training_records

from .engine import SET_A_KEY, SET_B_KEY

__all__ = ["PairedSliceDataset", "TrainingSets", "resolve_training_sets"]

logger = logging.getLogger(__name__)


class TrainingSets(NamedTuple):
    """The record lists of one training run.

    Attributes:
        set_a: the images to translate (``train/mixed`` without the held-out normal files, else ``set_b``).
        set_b: healthy training images (``train/good`` without the held-out part).
        held_out: held-out healthy images (threshold calibration and pseudo-AUC), never trained on.
        mixed: whether set A comes from ``train/mixed``.
    """

    set_a: list[ImageRecord]
    set_b: list[ImageRecord]
    held_out: list[ImageRecord]
    mixed: bool


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve_training_sets(index: DatasetIndex, calibration_fraction: float = 0.15, seed: int = 0) -> TrainingSets:
    """Split ``train/good`` into set B and a held-out part, and choose set A.

    A mixed folder may contain copies of the ``train/good`` files (the BraTS development slices do: ``train/mixed``
    holds the same patients' healthy and tumour slices). Files of set A whose content equals a held-out file are
    dropped, so the held-out images stay unseen by both networks.

    Args:
        index: the dataset, from :func:`common.data.discover_dataset`.
        calibration_fraction: fraction of ``train/good`` files held out.
        seed: split seed.

    Returns:
        The sets.
    """
    set_b, held_out = split_training_records(index.train_good, calibration_fraction, seed)
    if not index.train_mixed:
        logger.info("no train/mixed folder: set A = set B (%d healthy files)", len(set_b))
        return TrainingSets(list(set_b), list(set_b), held_out, False)
    held = {_digest(r.image) for r in held_out}
    set_a = [r for r in index.train_mixed if _digest(r.image) not in held]
    logger.info(
        "set A: %d train/mixed files (%d copies of held-out normal files left out); set B: %d; held out: %d",
        len(set_a),
        len(index.train_mixed) - len(set_a),
        len(set_b),
        len(held_out),
    )
    return TrainingSets(set_a, list(set_b), held_out, True)


class PairedSliceDataset(Dataset):
    """Each item pairs a set-A slice with a random set-B slice: ``{"image": A, "image_b": B, ...}``.

    One epoch visits every set-A slice once; the set-B partner is drawn with the dataset's own generator once
    :meth:`set_random_state` has seeded it (MONAI's data loaders and :class:`common.resume.ReproducibleSteps` do,
    through ``monai.data.utils.set_rnd``), else with ``torch``'s global generator (seeded by ``set_determinism``).
    Both go through ``transform`` separately (a chain over the ``image``/``foreground`` keys).

    Args:
        data: set-A slice dictionaries (from :func:`common.volumes.load_slices`).
        reference: set-B slice dictionaries.
        transform: the training transform chain (applied to each dictionary).

    Raises:
        ValueError: when either set is empty.
    """

    def __init__(
        self,
        data: Sequence[dict[str, Any]],
        reference: Sequence[dict[str, Any]],
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        if not data or not reference:
            msg = f"set A and set B need slices, got {len(data)} and {len(reference)} (check train/good, train/mixed)"
            raise ValueError(msg)
        self.data = list(data)
        self.reference = list(reference)
        self.transform = transform
        self.generator: torch.Generator | None = None

    def set_random_state(self, seed: int) -> None:
        """Seed the partner draws and the transforms' random states (the ``monai.data.utils.set_rnd`` protocol)."""
        self.generator = torch.Generator().manual_seed(int(seed))
        if self.transform is not None:
            set_rnd(self.transform, int(seed) + 1)

    def __len__(self) -> int:
        return len(self.data)

    def _load(self, item: dict[str, Any]) -> dict[str, Any]:
        item = {k: v for k, v in item.items() if k in ("image", "foreground")}
        return self.transform(item) if self.transform is not None else item

    def __getitem__(self, index: int) -> dict[str, Any]:
        partner = int(torch.randint(len(self.reference), (1,), generator=self.generator))
        a = self._load(self.data[index])
        b = self._load(self.reference[partner])
        return {SET_A_KEY: a["image"], SET_B_KEY: b["image"]}
