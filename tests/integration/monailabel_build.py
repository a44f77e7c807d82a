"""The MONAI Label environment for the integration tests, built in the background while the other tests run.

Building it (``tools/lab/monailabel_env.sh``: MONAI Label 0.8.5 and its pinned packages, with this environment's PyTorch
hard-linked by ``tools/lab/link_torch.py`` rather than unpacked again) takes minutes on one core. ``tests/conftest.py``
starts the build as soon as collection shows that a ``monailabel`` test will run, so it overlaps with the CPU-bound
tests before it; the tests' fixture then waits for it.

Under pytest-xdist every worker collects the MONAI Label tests and asks for the build: an exclusive ``flock`` on
``<venv>.lock``, held by the build process itself, lets one of them build while the others (and the fixture of the
worker that runs the tests) wait for the lock and then find the environment complete.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VENV", "BuildResult", "is_complete", "start", "stop", "wait"]

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("UAD_MONAILABEL_VENV", REPO_ROOT / ".venv-monailabel"))
"""The environment's folder (``UAD_MONAILABEL_VENV`` names an existing one, which is never built)."""

BUILD_SCRIPT = REPO_ROOT / "tools" / "lab" / "monailabel_env.sh"
LOCK = VENV.with_name(VENV.name + ".lock")
"""Held (``flock``) by the process building :data:`VENV`, for as long as the build runs."""

_build: tuple[subprocess.Popen, Path] | None = None
_other_builder = False


@dataclass(frozen=True)
class BuildResult:
    """How a build ended: ``returncode`` and the tail of its output."""

    returncode: int
    output: str


def is_complete() -> bool:
    """Whether the environment has been built completely (the build script's marker file)."""
    return (VENV / ".complete").is_file()


def start() -> bool:
    """Start the build in the background unless the environment is complete, given, or already being built.

    Another process's build (under pytest-xdist) counts as being built: :func:`wait` then waits for its lock.

    Returns:
        Whether a build is running.
    """
    global _build, _other_builder
    if _build is not None or _other_builder:
        return True
    if is_complete() or "UAD_MONAILABEL_VENV" in os.environ:
        return False
    lock = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        _other_builder = True
        return True
    try:
        if is_complete():  # finished by another process between the first check and the lock
            return False
        handle, name = tempfile.mkstemp(prefix="monailabel_env_", suffix=".log")
        log = Path(name)
        with os.fdopen(handle, "w") as output:
            process = subprocess.Popen(
                ["bash", str(BUILD_SCRIPT), str(VENV)],
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "UAD_TORCH_FROM": sys.executable},  # PyTorch hard-linked, not unpacked again
                pass_fds=(lock,),  # the build holds the lock until it ends, whoever started it
            )
        _build = (process, log)
        return True
    finally:
        os.close(lock)


def _wait_for_other_builder(timeout: float) -> BuildResult:
    """Wait until no process holds :data:`LOCK` (another process's build has ended)."""
    deadline = time.monotonic() + timeout
    lock = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    msg = "tools/lab/monailabel_env.sh (another process)"
                    raise subprocess.TimeoutExpired(msg, timeout) from None
                time.sleep(2.0)
    finally:
        os.close(lock)
    if is_complete():
        return BuildResult(0, "built by another test process")
    return BuildResult(1, "another test process's build ended without completing the environment")


def wait(timeout: float) -> BuildResult | None:
    """Wait for the build :func:`start` began (or another process's); ``None`` when none was started.

    When another process's build ended without completing the environment (its session was stopped), it is built
    here.

    Raises:
        subprocess.TimeoutExpired: when it is still running after ``timeout`` seconds (it is stopped).
    """
    global _other_builder
    if _build is None:
        if not _other_builder:
            return None
        result = _wait_for_other_builder(timeout)
        if result.returncode == 0:
            return result
        _other_builder = False  # that build was stopped before it completed: build here
        if not start() or _build is None:
            return result
    process, log = _build
    try:
        returncode = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop()
        raise
    output = log.read_text(errors="replace")[-2000:]
    log.unlink(missing_ok=True)
    return BuildResult(returncode, output)


def stop() -> None:
    """Stop a build still running (the build script starts over from scratch the next time)."""
    if _build is not None and _build[0].poll() is None:
        os.killpg(_build[0].pid, signal.SIGTERM)
        _build[0].wait(timeout=60)
