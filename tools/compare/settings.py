"""What a comparison runs: the settings shared by the runner, the command line and the anomalib peers.

:func:`tools.compare.cli.settings_from_args` builds a :class:`CompareSettings`, :func:`tools.compare.runner.compare`
runs it and :mod:`tools.compare.peers` reads it; all three import it from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.bundles import bundle_dir

__all__ = ["CONFIGS", "CompareSettings", "config_ids", "config_overrides"]

CONFIGS = ("train.json", "inference.json", "evaluate.json")


def config_ids(bundle: str, config: str) -> set[str]:
    """The top-level ids of ``bundles/<bundle>/configs/<config>``."""
    return set(json.loads((bundle_dir(bundle) / "configs" / config).read_text()))


def config_overrides(bundle: str, overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Split overrides by config: each goes to the configs of ``bundle`` that define its top-level id.

    Args:
        bundle: bundle name.
        overrides: ids (``#`` for nesting) and values.

    Returns:
        ``{config file name: {id: value}}`` for :data:`CONFIGS`.

    Raises:
        ValueError: for an id that none of the bundle's configs defines (the message names the bundle and the id).
    """
    ids = {config: config_ids(bundle, config) for config in CONFIGS}
    unknown = [key for key in overrides if not any(key.split("#")[0] in ids[c] for c in CONFIGS)]
    if unknown:
        msg = f"override {unknown[0]!r}: no such id in bundles/{bundle}/configs/{{{','.join(CONFIGS)}}}"
        raise ValueError(msg)
    return {c: {k: v for k, v in overrides.items() if k.split("#")[0] in ids[c]} for c in CONFIGS}


@dataclass
class CompareSettings:
    """What to compare and how.

    Attributes:
        dataset: the test dataset (docs/design.md layout with ``test/`` and ``ground_truth/``).
        bundles: bundle names under ``bundles/``.
        output_dir: where everything is written.
        seeds: one training (and evaluation) per seed.
        train_dataset: the dataset to train on; ``None``: ``dataset``.
        max_epochs: training epochs; ``None``: each config's default.
        batch_size: training batch size; ``None``: each config's default.
        image_size: network input ``[H, W]``; ``None``: each config's default.
        device: ``cpu``, ``cuda`` or ``cuda:N``; ``None``: CUDA when available, else the CPU.
        overrides: config ids and values for every bundle (each goes to the configs that define its top-level id).
        bundle_overrides: per bundle, more overrides (after ``overrides``).
        checkpoints: per bundle, a ``model.pt`` to evaluate instead of training (one run, no seeds); one that
            describes its network (:mod:`common.checkpoint`) gives the architecture, so no override repeats it.
        peers: anomalib reference models to add (:mod:`tools.compare.peers`).
        bench_batch_size: slices per forward pass in the benchmark.
        bench_iterations: timed forward passes in the benchmark.
        bench_warmup: untimed forward passes before them (bundles and peers alike).
        volume_shape: the benchmark's synthetic volume; ``None``: the first test volume's shape for a 3D test set,
            else 240 x 240 x 155.
        n_overlays: test slices in the overlay grid.
        timeout_s: seconds before one bundle command is stopped (``None``: no limit).
        command: the command line, recorded in the report.
    """

    dataset: Path
    bundles: list[str]
    output_dir: Path
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train_dataset: Path | None = None
    max_epochs: int | None = None
    batch_size: int | None = None
    image_size: list[int] | None = None
    device: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    bundle_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoints: dict[str, Path] = field(default_factory=dict)
    peers: list[str] = field(default_factory=list)
    bench_batch_size: int = 8
    bench_iterations: int = 3
    bench_warmup: int = 1
    volume_shape: tuple[int, int, int] | None = None
    n_overlays: int = 6
    timeout_s: float | None = None
    command: str = ""
