"""Run bundle configs the way a user does: ``python -m monai.bundle run ...`` in a subprocess.

The ``uad`` command, the demo and the bundle tests drive the bundles through this one helper, so they exercise the
same code path as the documented commands. The bundles are found through the installed ``bundles`` package (the
``bundles/`` folder of a checkout, or the copy a wheel installs), never through the working directory. A command
runs through :func:`tools.processes.run_python_module`'s runner when one is installed (the test suite installs a
faster one), else in a new Python.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from monai.bundle import ConfigParser

import bundles
from common.volumes import SliceSettings
from tools import processes

__all__ = [
    "BUNDLES_ROOT",
    "PACKAGE_ROOT",
    "BundleRunError",
    "available_bundles",
    "bundle_command",
    "bundle_dir",
    "bundle_slice_settings",
    "run_bundle",
    "torchrun_command",
]

BUNDLES_ROOT = Path(bundles.__file__).resolve().parent
"""The folder holding one folder per bundle: ``bundles/`` of the checkout or of the installed package."""

PACKAGE_ROOT = BUNDLES_ROOT.parent
"""The folder holding the ``common``, ``tools`` and ``bundles`` packages (the checkout, or site-packages)."""


class BundleRunError(RuntimeError):
    """A bundle command exited with a non-zero status."""


def available_bundles() -> list[str]:
    """The names of the installed bundles (folders of :data:`BUNDLES_ROOT` with a ``configs`` folder), sorted."""
    return sorted(p.name for p in BUNDLES_ROOT.iterdir() if (p / "configs").is_dir())


def bundle_dir(name: str) -> Path:
    """The folder of bundle ``name`` (``bundles/<name>``), absolute.

    Raises:
        ValueError: for an unknown bundle, listing the available ones.
    """
    path = BUNDLES_ROOT / name
    if not name or "/" in name or "\\" in name or not (path / "configs").is_dir():
        msg = f"unknown bundle {name!r}; available: {', '.join(available_bundles())}"
        raise ValueError(msg)
    return path


def bundle_slice_settings(
    name: str = "ms_nf", config: str = "evaluate.json", overrides: Mapping[str, Any] | None = None
) -> SliceSettings:
    """The ``slice_settings`` a bundle config builds, with ``--key value`` style overrides applied.

    Tools that read images the way a bundle's evaluation does (which slices, foreground, brain extraction,
    intensity) take their settings from here rather than restating them. All bundles ship the same slice settings.

    Example:
        >>> bundle_slice_settings(overrides={"min_brain_fraction": 0.5}).min_brain_fraction
        0.5
    """
    parser = ConfigParser()
    parser.read_config(str(bundle_dir(name) / "configs" / config))
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser.get_parsed_content("slice_settings", instantiate=True)


def _format(value: Any) -> str:
    if isinstance(value, str | Path):
        return str(value)
    return json.dumps(value)


def bundle_command(
    name: str,
    config: str,
    run_id: str = "run",
    overrides: Mapping[str, Any] | None = None,
    extra_configs: Sequence[str | Path] = (),
) -> list[str]:
    """The ``python -m monai.bundle run`` command line for a bundle config with ``--key value`` overrides.

    ``extra_configs`` are merged after the bundle's config (MONAI's list form of ``--config_file``), e.g.
    ``tools/configs/time_limit.json``. ``bundle_root`` is set to the bundle's folder (unless ``overrides`` set it), so
    the command means the same from any working directory; paths in ``overrides`` are taken as given.
    """
    folder = bundle_dir(name)
    config_file = str(folder / "configs" / config)
    if extra_configs:
        config_file = repr([config_file, *(str(Path(c).resolve()) for c in extra_configs)])
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_file]
    for key, value in {"bundle_root": folder, **(overrides or {})}.items():
        command += [f"--{key}", _format(value)]
    return command


def torchrun_command(command: Sequence[str], nproc_per_node: int) -> list[str]:
    """``command`` (a :func:`bundle_command`) started by ``torchrun --standalone --nproc_per_node N``."""
    if command[:2] != [sys.executable, "-m"]:
        msg = f"expected a 'python -m ...' command, got {' '.join(command[:3])}"
        raise ValueError(msg)
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={int(nproc_per_node)}",
    ]
    return [*launcher, "-m", *command[2:]]


def _echo_lines_with(prefix: str) -> Callable[[str], None]:
    """A line handler that prints the lines starting with ``prefix`` (without it), as :func:`_run_echoing` does."""

    def echo(line: str) -> None:
        if line.startswith(prefix):
            print("    " + line[len(prefix) :].strip(), flush=True)

    return echo


def _run_echoing(command: list[str], log: TextIO, prefix: str, timeout: float | None) -> subprocess.CompletedProcess:
    """Run ``command``, writing its output to ``log`` and printing the lines that start with ``prefix``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    echo = _echo_lines_with(prefix)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            echo(line)
            if deadline is not None and time.monotonic() > deadline:
                process.kill()
                raise subprocess.TimeoutExpired(command, timeout)
        returncode = process.wait()
    return subprocess.CompletedProcess(command, returncode)


def run_bundle(
    name: str,
    config: str,
    run_id: str = "run",
    overrides: Mapping[str, Any] | None = None,
    log_file: str | Path | None = None,
    timeout: float | None = None,
    extra_configs: Sequence[str | Path] = (),
    echo_prefix: str | None = None,
    nproc_per_node: int = 1,
) -> subprocess.CompletedProcess:
    """Run a bundle config in this process's working directory and return the finished process.

    Args:
        name: bundle folder name, e.g. ``"ms_nf"``.
        config: config file name, e.g. ``"train.json"``.
        run_id: ``"training"`` for training, ``"run"`` otherwise.
        overrides: config overrides (``{"dataset_dir": ..., "max_epochs": 2}``).
        log_file: write stdout and stderr there (else they are captured in the result).
        timeout: seconds before the run is killed.
        extra_configs: configs merged after the bundle's (see :func:`bundle_command`).
        echo_prefix: with ``log_file``, output lines that start with this are also printed to the console as they
            come (e.g. :data:`common.progress.EPOCH_LINE_PREFIX`, the training progress).
        nproc_per_node: above 1, run the command under ``torchrun`` with that many processes (:func:`torchrun_command`).

    Raises:
        BundleRunError: when the command fails; the message ends with the last lines of its output.
    """
    command = bundle_command(name, config, run_id, overrides, extra_configs)
    if nproc_per_node > 1:
        command = torchrun_command(command, nproc_per_node)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    runner = processes.installed_module_runner()
    if runner is not None and nproc_per_node == 1:
        echo = None if echo_prefix is None else _echo_lines_with(echo_prefix)
        result = runner(command[2], command[3:], Path.cwd(), timeout=timeout, output_file=log_file, on_line=echo)
        output = result.stdout
    elif log_file is not None:
        with open(log_file, "w") as handle:
            if echo_prefix is None:
                result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
            else:
                result = _run_echoing(command, handle, echo_prefix, timeout)
        output = Path(log_file).read_text(errors="replace")
    else:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        output = (result.stdout or "") + (result.stderr or "")
    if result.returncode != 0:
        lines = output.strip().splitlines()
        errors = [line for line in lines if " - ERROR - " in line]
        tail = "\n".join(errors + lines[-15:])
        msg = f"{' '.join(command[1:])} failed with exit code {result.returncode}:\n{tail}"
        raise BundleRunError(msg)
    return result
