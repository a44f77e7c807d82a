"""Session hooks: one thread per pytest-xdist worker, and the MONAI Label environment's build started early.

The README's test command runs two workers (``-n 2 --dist loadfile``): each test file runs whole in one worker, so
its module-scoped fixtures (trained checkpoints) are built once. Each worker, and every process it starts (bundle
runs, ``torchrun``), uses one intra-op thread, so two workers fill two cores without oversubscribing them.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.integration import monailabel_build

XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
"""The worker's name (``gw0``, ``gw1``, ...) under pytest-xdist; ``None`` in a single-process run."""

if XDIST_WORKER is not None:
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the subprocesses the tests start
    torch.set_num_threads(1)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the MONAI Label environment's build in the background when a ``monailabel`` test will run.

    Under pytest-xdist every worker collects every test, so none of them knows whether it will run the MONAI Label
    tests; there the tests' fixture starts the build itself, in the worker that runs them.
    """
    if XDIST_WORKER is not None or session.config.option.collectonly:
        return
    if any(item.get_closest_marker("monailabel") for item in session.items):
        monailabel_build.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop a build still running when the session ends early (interrupted, ``-x``)."""
    monailabel_build.stop()
