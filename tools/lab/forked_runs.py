"""Run ``python -m <module> ...`` in a process forked from a server that has already imported the heavy packages.

Every bundle command starts a new Python that imports PyTorch, MONAI (which imports ignite, SciPy, matplotlib and
pandas eagerly), FrEIA and scikit-learn before it reads its config: about 15 s of one CPU core on a small machine,
longer than a short test run itself. A test suite that runs hundreds of short commands spends most of its time
there. Here a server process imports those packages once (:data:`PRELOAD`) and each command runs in a fresh fork of
it: a new process, with its own copy of the interpreter state and nothing left behind by earlier runs, that executes
the module as ``python -m`` would (``runpy``, ``sys.argv``, the caller's working directory and environment), with
stdout and stderr going to one file.

The server is single-threaded, so forking it is safe, and it preloads third-party packages only: each run imports
the project's code as it is on disk. It serves one process (the one that started it), one run at a time, and ends
when that process closes its pipe. Commands that need a process of their own (``torchrun`` launchers, a process that
must not import this repository) keep using :mod:`subprocess`. :func:`enabled` says whether bundle commands go
through the server (``UAD_FORKED_RUNS=1``; the test suite sets it), and :func:`run_module` is the runner the test
suite installs with :func:`tools.processes.use_module_runner`.

Protocol (JSON lines on the server's stdin and stdout): a request ``{"module", "args", "cwd", "environ", "output"}``
is answered by ``{"pid": N}`` when the run starts and ``{"returncode": N}`` when it ends.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["ENV_SWITCH", "PRELOAD", "ForkServer", "enabled", "run_module"]

ENV_SWITCH = "UAD_FORKED_RUNS"
"""Environment variable that routes bundle commands through the fork server when set to ``1``."""

PRELOAD = (
    "torch",
    "monai",
    "monai.bundle",
    "ignite.engine",
    "ignite.handlers",
    "FrEIA.framework",
    "timm",
    "sklearn.metrics",
    "nibabel",
    "fire",
    "jsonschema",
)
"""Third-party packages the server imports once (the project's own code is imported by each run)."""

_REPO_ROOT = Path(__file__).resolve().parents[2]
_POLL_S = 0.5


def enabled() -> bool:
    """Whether bundle commands run through the fork server (``UAD_FORKED_RUNS=1``)."""
    return os.environ.get(ENV_SWITCH) == "1"


def _run_as_main(request: Mapping[str, Any]) -> int:
    """In the forked child: ``python -m module args`` in the request's directory and environment.

    Returns the module's exit status (``SystemExit``), or 1 after printing the traceback of an uncaught error, once
    the ``atexit`` handlers the module registered have run, as at the end of an interpreter.
    """
    descriptor = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    os.close(null)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the server ignores it; a run starts as Python does
    code = 0
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["environ"])
        # As a new `python -m` would: the working directory first, then the PYTHONPATH entries the server lacks.
        extra = [entry for entry in request["environ"].get("PYTHONPATH", "").split(os.pathsep) if entry]
        sys.path[:0] = [request["cwd"], *(entry for entry in extra if entry not in sys.path)]
        sys.argv = [request["module"], *request["args"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        if isinstance(exit_.code, int):
            code = exit_.code
        elif exit_.code is not None:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _serve(requests: IO[str], replies: IO[str]) -> None:
    """The server loop: one run per request line, until ``requests`` ends."""
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _run_as_main(request)
            finally:
                os._exit(code)
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


class ForkServer:
    """A server process started by this process, with :data:`PRELOAD` imported, that forks one run per request."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tools.lab.forked_runs"],
            cwd=_REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._pending = b""  # reply bytes read but not yet returned (both replies of a short run can come at once)

    def _reply(self, deadline: float | None) -> dict[str, Any] | None:
        """The next reply line, or ``None`` when ``deadline`` passes first.

        Reads the pipe's descriptor directly: a buffered reader could hold the next reply where ``select`` cannot
        see it.
        """
        assert self._process.stdout is not None
        descriptor = self._process.stdout.fileno()
        while b"\n" not in self._pending:
            if deadline is not None:
                ready, _, _ = select.select([descriptor], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    return None
            chunk = os.read(descriptor, 65536)
            if not chunk:
                msg = f"the fork server ended (exit code {self._process.poll()})"
                raise RuntimeError(msg)
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def run(
        self, request: Mapping[str, Any], timeout: float | None, while_waiting: Callable[[], None] | None = None
    ) -> int:
        """Run one request and return its exit status; ``while_waiting`` is called about twice a second meanwhile.

        Raises:
            TimeoutError: the run was still going after ``timeout`` seconds (it has been killed).
        """
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(dict(request)).encode() + b"\n")
        self._process.stdin.flush()
        started = self._reply(None)
        assert started is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = time.monotonic() + _POLL_S
            finished = self._reply(step if deadline is None else min(step, deadline))
            if while_waiting is not None:
                while_waiting()
            if finished is not None:
                return finished["returncode"]
            if deadline is not None and time.monotonic() >= deadline:
                try:
                    os.kill(started["pid"], signal.SIGKILL)
                except ProcessLookupError:  # it ended just now; its reply is on the way
                    pass
                self._reply(None)
                raise TimeoutError

    def close(self) -> None:
        """End the server (it exits when its requests end)."""
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            self._process.wait(timeout=60)


class _LineFollower:
    """Calls ``on_line`` with each complete line appended to a file since the last call (``tail -f`` by polling)."""

    def __init__(self, path: Path, on_line: Callable[[str], None]) -> None:
        self._path, self._on_line, self._offset, self._partial = path, on_line, 0, b""

    def __call__(self) -> None:
        with open(self._path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._on_line(line.decode(errors="replace"))


_server: ForkServer | None = None


def _the_server() -> ForkServer:
    global _server
    if _server is None or _server._process.poll() is not None:
        _server = ForkServer()
        atexit.register(_server.close)
    return _server


def run_module(
    module: str,
    args: Sequence[str],
    cwd: str | Path,
    timeout: float | None = None,
    environ: Mapping[str, str] | None = None,
    output_file: str | Path | None = None,
    on_line: Callable[[str], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m module *args`` in a fork of the preloaded server and wait for it.

    Args:
        module: the module run as ``__main__`` (``"monai.bundle"``).
        args: its command-line arguments.
        cwd: working directory of the run (also first on its ``sys.path``, as with ``python -m``).
        timeout: seconds before the run is killed and :class:`subprocess.TimeoutExpired` raised.
        environ: the run's environment (default: this process's); its ``PYTHONPATH`` entries go on ``sys.path`` after
            ``cwd``, as at the start of a new interpreter (packages the server preloaded stay as they are).
        output_file: where stdout and stderr are written as the run goes (default: a temporary file, removed).
        on_line: called with each complete output line (without its newline) as the run writes it.

    Returns:
        The finished run as :class:`subprocess.CompletedProcess`: ``returncode`` (negative for a signal, as from
        :mod:`subprocess`), ``stdout`` with stdout and stderr interleaved as written, ``stderr`` empty.
    """
    command = [sys.executable, "-m", module, *args]
    if output_file is None:
        handle, name = tempfile.mkstemp(prefix="forked_run_", suffix=".log")
        os.close(handle)
    else:
        name = str(Path(output_file).resolve())
    request = {
        "module": module,
        "args": list(args),
        "cwd": str(Path(cwd).resolve()),
        "environ": dict(os.environ if environ is None else environ),
        "output": name,
    }
    follower = None if on_line is None else _LineFollower(Path(name), on_line)
    try:
        try:
            returncode = _the_server().run(request, timeout, follower)
        except TimeoutError:
            output = Path(name).read_text(errors="replace")
            raise subprocess.TimeoutExpired(command, timeout or 0.0, output=output) from None
        output = Path(name).read_text(errors="replace")
        return subprocess.CompletedProcess(command, returncode, stdout=output, stderr="")
    finally:
        if output_file is None:
            Path(name).unlink(missing_ok=True)


def main() -> None:
    """Server entry point (``python -m tools.lab.forked_runs``): preload, then serve stdin until it ends."""
    for name in PRELOAD:
        importlib.import_module(name)
    # A run's own signal handling starts from the defaults; the server ignores Ctrl-C meant for its client.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
