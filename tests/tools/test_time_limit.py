"""Tests for tools/configs/time_limit.json: a training merged with it stops at an epoch end after ``time_limit``
seconds and still writes its calibrated final checkpoint."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from common.training import read_state_dict
from tools.processes import run_python_module

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ("ms_nf", "dnfad", "skip_ts", "anomalypro")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_time_limit_config_matches_the_training_config(bundle: str) -> None:
    """The override replaces ``imports`` and ``run``: it must keep every bundle's own entries."""
    limit = json.loads((REPO_ROOT / "tools/configs/time_limit.json").read_text())
    train = json.loads((REPO_ROOT / f"bundles/{bundle}/configs/train.json").read_text())
    assert set(train["imports"]) <= set(limit["imports"])
    assert limit["run"][-1] == train["run"][-1] == "$@train#trainer.run()"
    assert train["training"] == "%run"


def test_training_stops_at_the_time_limit_and_saves(tmp_path: Path) -> None:
    from tools.phantoms import write_dataset

    data = write_dataset(tmp_path / "data", dims=2, n_train=12, n_test_good=1, n_test_lesion=1, size=32)
    configs = "['bundles/skip_ts/configs/train.json','tools/configs/time_limit.json']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", configs]
    cmd += ["--dataset_dir", str(data), "--image_size", "[32,32]", "--max_epochs", "500", "--time_limit", "1"]
    cmd += ["--batch_size", "4", "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "train")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = run_python_module(cmd[2], cmd[3:], REPO_ROOT, timeout=600, environ=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    log = done.stdout + done.stderr
    assert "Reached the time limit" in log
    epochs = [int(line.split("Epoch: ")[1].split("/")[0]) for line in log.splitlines() if "Epoch: " in line]
    assert 1 <= max(epochs) < 500
    state = read_state_dict(tmp_path / "models" / "model.pt")
    assert any("calibration" in key for key in state), "the final checkpoint must hold the calibrated thresholds"
