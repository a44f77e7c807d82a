"""Session hooks: one thread per pytest-xdist worker, and the MONAI Label environment's build started early.

The README's test command runs two workers (``-n 2 --dist loadfile``): each test file runs whole in one worker, so
its module-scoped fixtures (trained checkpoints) are built once. Each worker, and every process it starts (bundle
runs, ``torchrun``), uses one intra-op thread, so two workers fill two cores without oversubscribing them.

Bundle commands run in forks of a server that has already imported PyTorch and MONAI (:mod:`tools.lab.forked_runs`,
installed as :mod:`tools.processes`' runner), which saves about 15 s of imports per command; ``UAD_FORKED_RUNS=0``
runs each in a new Python instead.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.integration import monailabel_build
from tools import processes
from tools.lab import forked_runs

XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
"""The worker's name (``gw0``, ``gw1``, ...) under pytest-xdist; ``None`` in a single-process run."""

if XDIST_WORKER is not None:
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the subprocesses the tests start
    torch.set_num_threads(1)
os.environ.setdefault(forked_runs.ENV_SWITCH, "1")
if forked_runs.enabled():
    processes.use_module_runner(forked_runs.run_module)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the test files holding ``slow`` or ``monailabel`` tests first, each file's tests in their order.

    pytest-xdist hands whole files to the workers in collection order; starting the long files first lets both
    workers finish together instead of one running a long file alone at the end.
    """
    heavy = {item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("monailabel")}
    items.sort(key=lambda item: item.path not in heavy)  # a stable sort keeps the order inside each group


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the MONAI Label environment's build in the background when a ``monailabel`` test will run.

    Under pytest-xdist every worker asks; one builds (:mod:`tests.integration.monailabel_build` locks the build).
    """
    if not session.config.option.collectonly and any(item.get_closest_marker("monailabel") for item in session.items):
        monailabel_build.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop a build still running when the session ends early (interrupted, ``-x``).

    A pytest-xdist worker that ends normally leaves its build running: another worker may still be waiting for it.
    """
    if XDIST_WORKER is not None and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return
    monailabel_build.stop()
