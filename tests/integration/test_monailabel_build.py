"""The MONAI Label environment's build under pytest-xdist: one process builds, the others wait for its lock.

A fake build script stands in for ``tools/lab/monailabel_env.sh``. ``flock`` locks belong to open file descriptions, so
a second :func:`~tests.integration.monailabel_build.start` in this process meets the lock exactly as another worker
process would.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.integration import monailabel_build


def _fake_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seconds: float) -> Path:
    """Point the module at a fake build that sleeps ``seconds`` and then marks the environment complete."""
    venv = tmp_path / "venv"
    monkeypatch.setattr(monailabel_build, "VENV", venv)
    monkeypatch.setattr(monailabel_build, "LOCK", tmp_path / "venv.lock")
    monkeypatch.setattr(monailabel_build, "BUILD_SCRIPT", _script(tmp_path, seconds))
    monkeypatch.setattr(monailabel_build, "_build", None)
    monkeypatch.setattr(monailabel_build, "_other_builder", False)
    monkeypatch.delenv("UAD_MONAILABEL_VENV", raising=False)
    return venv


def _script(tmp_path: Path, seconds: float) -> Path:
    script = tmp_path / f"build_{seconds}.sh"
    script.write_text(f'#!/usr/bin/env bash\nsleep {seconds}\nmkdir -p "$1" && touch "$1/.complete"\necho built\n')
    return script


def _as_another_process(monkeypatch: pytest.MonkeyPatch) -> object:
    """Forget this process's build, as a second worker that did not start it."""
    first = monailabel_build._build
    monkeypatch.setattr(monailabel_build, "_build", None)
    return first


def test_a_second_process_waits_for_the_first_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_build(tmp_path, monkeypatch, 2)
    assert monailabel_build.start() and monailabel_build._build is not None
    first = _as_another_process(monkeypatch)
    assert monailabel_build.start() and monailabel_build._build is None  # the lock is held: someone else builds
    result = monailabel_build.wait(60)
    assert result.returncode == 0 and "another test process" in result.output
    assert monailabel_build.is_complete()
    assert first[0].wait(timeout=10) == 0


def test_a_build_stopped_elsewhere_is_done_by_the_waiting_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_build(tmp_path, monkeypatch, 60)
    assert monailabel_build.start()
    first = _as_another_process(monkeypatch)
    assert monailabel_build.start() and monailabel_build._build is None
    os.killpg(first[0].pid, signal.SIGTERM)  # the building worker's session was stopped
    first[0].wait(timeout=10)
    monkeypatch.setattr(monailabel_build, "BUILD_SCRIPT", _script(tmp_path, 0))
    result = monailabel_build.wait(60)
    assert result.returncode == 0 and "built" in result.output
    assert monailabel_build.is_complete()


def test_no_build_when_the_environment_is_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = _fake_build(tmp_path, monkeypatch, 60)
    venv.mkdir()
    (venv / ".complete").touch()
    assert not monailabel_build.start()
    assert monailabel_build.wait(1) is None
