"""The MONAI Label environment for the integration tests, built in the background while the other tests run.

Building it (``tools/monailabel_env.sh``: a second PyTorch and MONAI Label 0.8.5) takes minutes, mostly unpacking
wheels on one core. ``tests/conftest.py`` starts the build as soon as collection shows that a ``monailabel`` test
will run, so it overlaps with the CPU-bound tests before it; the tests' fixture then waits for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tools.bundles import REPO_ROOT

__all__ = ["VENV", "BuildResult", "is_complete", "start", "stop", "wait"]

VENV = Path(os.environ.get("UAD_MONAILABEL_VENV", REPO_ROOT / ".venv-monailabel"))
"""The environment's folder (``UAD_MONAILABEL_VENV`` names an existing one, which is never built)."""

_build: tuple[subprocess.Popen, Path] | None = None


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

    Returns:
        Whether a build is running.
    """
    global _build
    if _build is not None:
        return True
    if is_complete() or "UAD_MONAILABEL_VENV" in os.environ:
        return False
    handle, name = tempfile.mkstemp(prefix="monailabel_env_", suffix=".log")
    log = Path(name)
    with os.fdopen(handle, "w") as output:
        process = subprocess.Popen(
            ["bash", str(REPO_ROOT / "tools" / "monailabel_env.sh"), str(VENV)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _build = (process, log)
    return True


def wait(timeout: float) -> BuildResult | None:
    """Wait for the build :func:`start` began; ``None`` when none was started.

    Raises:
        subprocess.TimeoutExpired: when it is still running after ``timeout`` seconds (it is stopped).
    """
    if _build is None:
        return None
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
