"""Tests for tools.lab.forked_runs: a forked run behaves as ``python -m module`` in a new interpreter would."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch

from common.training import read_state_dict
from tools import processes
from tools.bundles import run_bundle
from tools.lab.forked_runs import run_module
from tools.phantoms import write_dataset

PROBE = """
import atexit, json, os, signal, sys
import torch  # preloaded by the server
print(json.dumps({
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "probe": os.environ.get("PROBE"),
    "marked": hasattr(torch, "_probe_mark"),
    "sigint_default": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    "name": __name__,
}), flush=True)
torch._probe_mark = True  # must not leak into the next run
print("to stderr", file=sys.stderr)
atexit.register(lambda: print("atexit ran"))
mode = sys.argv[1]
if mode == "raise":
    raise ValueError("probe failure")
if mode == "signal":
    os.kill(os.getpid(), signal.SIGTERM)
if mode == "sleep":
    import time
    time.sleep(600)
sys.exit(int(mode))
"""


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    (tmp_path / "probe_module.py").write_text(textwrap.dedent(PROBE))
    return tmp_path


def _first_line(output: str) -> dict:
    import json

    return json.loads(output.splitlines()[0])


def test_a_run_sees_its_arguments_directory_and_environment_and_ends_with_its_status(probe_dir):
    environ = {**os.environ, "PROBE": "given"}
    done = run_module("probe_module", ["3", "x y"], probe_dir, environ=environ)
    assert done.returncode == 3
    facts = _first_line(done.stdout)
    assert facts["argv"] == ["3", "x y"] and facts["cwd"] == str(probe_dir.resolve()) and facts["probe"] == "given"
    assert facts["name"] == "__main__" and facts["sigint_default"]
    assert "to stderr" in done.stdout and done.stdout.rstrip().endswith("atexit ran")


def test_runs_do_not_share_state(probe_dir):
    for _ in range(2):
        done = run_module("probe_module", ["0"], probe_dir)
        assert done.returncode == 0 and not _first_line(done.stdout)["marked"]


def test_an_uncaught_error_is_status_1_with_its_traceback(probe_dir):
    done = run_module("probe_module", ["raise"], probe_dir)
    assert done.returncode == 1
    assert "ValueError: probe failure" in done.stdout and "Traceback" in done.stdout
    assert "atexit ran" in done.stdout


def test_a_signal_is_a_negative_status_as_from_subprocess(probe_dir):
    assert run_module("probe_module", ["signal"], probe_dir).returncode == -15


def test_a_run_past_its_timeout_is_killed(probe_dir):
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as info:
        run_module("probe_module", ["sleep"], probe_dir, timeout=2)
    assert time.monotonic() - start < 60
    assert '"argv": ["sleep"]' in info.value.output
    assert run_module("probe_module", ["0"], probe_dir).returncode == 0  # the server goes on


def test_output_file_is_kept_and_a_missing_module_fails_in_one_process(probe_dir, tmp_path):
    log = tmp_path / "logs" / "run.log"
    log.parent.mkdir()
    done = run_module("probe_module", ["0"], probe_dir, output_file=log)
    assert log.read_text() == done.stdout
    missing = run_module("no_such_module_here", [], probe_dir)
    assert missing.returncode == 1 and "No module named no_such_module_here" in missing.stdout


def test_without_the_runner_a_new_python_runs_it(probe_dir, monkeypatch):
    monkeypatch.setattr(processes, "_runner", None)
    done = processes.run_python_module("probe_module", ["5"], probe_dir)
    assert done.returncode == 5 and "to stderr" in done.stderr and "atexit ran" in done.stdout


@pytest.mark.slow
def test_bundle_training_forked_equals_a_new_python(tmp_path, monkeypatch):
    """The same training through the server and through ``python -m monai.bundle`` ends with equal weights."""
    data = write_dataset(tmp_path / "data", dims=2, n_train=4, n_test_good=1, n_test_lesion=1, size=32, seed=0)
    weights = {}
    for switch in ("1", "0"):
        monkeypatch.setattr(processes, "_runner", run_module if switch == "1" else None)
        out = tmp_path / f"run{switch}"
        overrides = {"dataset_dir": data, "max_epochs": 1, "image_size": [32, 32], "batch_size": 2}
        run_bundle(
            "skip_ts",
            "train.json",
            "training",
            {**overrides, "ckpt_dir": out / "models", "output_dir": out / "train"},
            timeout=600,
        )
        weights[switch] = read_state_dict(out / "models" / "model.pt")
    assert weights["1"].keys() == weights["0"].keys()
    for key, value in weights["1"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, weights["0"][key]), key


def test_lines_are_handed_over_as_the_run_writes_them(tmp_path):
    ticker = "import time\nfor i in range(3):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.7)\n"
    (tmp_path / "ticker.py").write_text(ticker + "print('end', end='')\n")
    seen: list[tuple[str, float]] = []
    start = time.monotonic()
    done = run_module("ticker", [], tmp_path, on_line=lambda line: seen.append((line, time.monotonic() - start)))
    assert done.returncode == 0
    assert [line for line, _ in seen] == ["tick 0", "tick 1", "tick 2"]  # the unterminated last line is not a line
    assert seen[0][1] < seen[-1][1] - 0.5  # the first came while the run was still going


def test_pythonpath_entries_of_the_run_are_importable(tmp_path):
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "only_on_pythonpath.py").write_text("VALUE = 7\n")
    (tmp_path / "uses_it.py").write_text("import only_on_pythonpath, sys\nsys.exit(only_on_pythonpath.VALUE)\n")
    environ = {**os.environ, "PYTHONPATH": str(tmp_path / "extra")}
    assert run_module("uses_it", [], tmp_path, environ=environ).returncode == 7


def test_replies_that_arrive_together_are_each_read_without_waiting():
    """A short run's two replies can reach the pipe at once; the second must not wait for more data."""
    import types

    from tools.lab.forked_runs import ForkServer

    read_end, write_end = os.pipe()
    os.write(write_end, b'{"pid": 12}\n{"returncode": 3}\n')
    server = ForkServer.__new__(ForkServer)
    server._process = types.SimpleNamespace(stdout=types.SimpleNamespace(fileno=lambda: read_end), poll=lambda: None)
    server._pending = b""
    try:
        start = time.monotonic()
        assert server._reply(None) == {"pid": 12}
        assert server._reply(time.monotonic() + 5) == {"returncode": 3}
        assert time.monotonic() - start < 1
        assert server._reply(time.monotonic() + 0.2) is None  # nothing more: the deadline passes
    finally:
        os.close(read_end)
        os.close(write_end)
