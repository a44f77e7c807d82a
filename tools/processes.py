"""Run ``python -m <module> ...`` in a new process, through a replaceable runner.

The commands run bundle configs and exports the way a user does, as ``python -m monai.bundle ...`` in a process of
its own. By default that process is a new Python (:mod:`subprocess`). A caller that runs hundreds of short commands
(the test suite) may install another runner with :func:`use_module_runner`, one that starts the same module faster
(e.g. forked from a process that has already imported PyTorch and MONAI); the runner must behave as ``python -m``
does: the module runs as ``__main__`` with ``args``, in ``cwd`` and ``environ``, and its exit status is returned.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

__all__ = ["ModuleRunner", "installed_module_runner", "run_python_module", "use_module_runner"]


class ModuleRunner(Protocol):
    """Runs ``python -m module *args`` and waits for it (the signature of :func:`run_python_module`'s runner).

    Returns a :class:`subprocess.CompletedProcess` whose ``stdout`` holds stdout and stderr interleaved as written
    (``stderr`` may be empty); with ``output_file`` the output is also written there as the run goes, and
    ``on_line`` is called with each complete output line.
    """

    def __call__(
        self,
        module: str,
        args: Sequence[str],
        cwd: str | Path,
        timeout: float | None = None,
        environ: Mapping[str, str] | None = None,
        output_file: str | Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run ``python -m module *args`` in ``cwd`` with ``environ`` and return the finished run."""
        ...


_runner: ModuleRunner | None = None


def use_module_runner(runner: ModuleRunner | None) -> None:
    """Run later ``python -m`` commands of this process with ``runner`` (``None``: a new Python each time)."""
    global _runner
    _runner = runner


def installed_module_runner() -> ModuleRunner | None:
    """The runner installed with :func:`use_module_runner`, or ``None`` when commands start a new Python."""
    return _runner


def run_python_module(
    module: str,
    args: Sequence[str],
    cwd: str | Path,
    timeout: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``python -m module *args`` in ``cwd``: through the installed runner, else in a new Python.

    Args:
        module: the module run as ``__main__`` (``"monai.bundle"``).
        args: its command-line arguments.
        cwd: working directory of the run.
        timeout: seconds before the run is killed and :class:`subprocess.TimeoutExpired` raised.
        environ: the run's environment (default: this process's).

    Returns:
        The finished run; its output is in ``stdout + stderr``.
    """
    if _runner is not None:
        return _runner(module, args, cwd, timeout=timeout, environ=environ)
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)
