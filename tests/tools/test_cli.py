"""Tests for tools.cli (``uad``): subcommands, the MONAI runner line each prints, one-line errors.

The end-to-end ``uad train`` / ``uad infer`` / ``uad export`` run from an installed wheel is in tests/test_packaging.py.
"""

from __future__ import annotations

import subprocess

import pytest
import torch

from tools import cli
from tools.bundles import bundle_dir


def test_help_lists_every_subcommand_with_an_example(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for name in ("train", "infer", "evaluate", "compare", "brain-extract", "export", "demo"):
        assert f"\n    {name}" in out
    assert "uad train ms_nf ~/scans" in out


@pytest.mark.parametrize("name", ["train", "infer", "evaluate"])
def test_subcommand_help_has_an_example(name, capsys):
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    assert f"example:\n  uad {name} " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "no_such_bundle", "."],
            "unknown bundle 'no_such_bundle'; available: anomalypro, dnfad, intensity, ms_nf, skip_ts",
        ),
        (["train", "ms_nf", "{missing}"], "{missing}: dataset folder not found (not a folder)"),
        (["train", "ms_nf", "{tmp}"], "{tmp}: no train/good folder"),
        (["train", "ms_nf", "{tmp}", "--set", "max_epochs"], "--set: expected key=value"),
        (["infer", "{missing}", "{tmp}", "{tmp}/out"], "{missing}: model file not found"),
        (["evaluate", "{tmp}/not_a_model.pt", "{tmp}", "{tmp}/out"], "{tmp}/not_a_model.pt: not a readable model"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_a_wrong_argument_is_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "not_a_model.pt").write_text("not a checkpoint")
    fill = {"tmp": tmp_path, "missing": tmp_path / "missing"}
    code = cli.main([a.format(**fill) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"uad: error: {message.format(**fill)}"), err


def _checkpoint(path, bundle: str | None):
    description = {"_target_": "scripts.network.X", "arguments": {}, "bundle": {"id": bundle} if bundle else {}}
    torch.save({"model": {}, "network_def": description}, path)
    return path


def test_the_bundle_comes_from_the_checkpoint(tmp_path):
    assert cli.bundle_of_checkpoint(_checkpoint(tmp_path / "a.pt", "skip_ts")) == "skip_ts"
    with pytest.raises(ValueError, match="does not record its bundle"):
        cli.bundle_of_checkpoint(_checkpoint(tmp_path / "b.pt", None))
    with pytest.raises(ValueError, match="written by bundle 'elsewhere', which is not installed"):
        cli.bundle_of_checkpoint(_checkpoint(tmp_path / "c.pt", "elsewhere"))


def _recorded_runs(monkeypatch) -> list[list[str]]:
    runs: list[list[str]] = []

    def fake_run(command, check=False):
        runs.append(list(command))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    return runs


def test_train_runs_the_bundle_config_and_prints_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "data" / "train" / "good").mkdir(parents=True)
    runs = _recorded_runs(monkeypatch)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "dnfad", "data", "--set", "max_epochs=2", "--set", "image_size=[64,64]"])
    out = capsys.readouterr()
    assert code == 1  # the fake run wrote no model: a clean exit without model.pt is an error
    assert "training ended without writing" in out.err
    (command,) = runs
    config = str(bundle_dir("dnfad") / "configs" / "train.json")
    assert command[1:6] == ["-m", "monai.bundle", "run", "training", "--config_file"] and command[6] == config
    pairs = dict(zip(command[7::2], command[8::2], strict=True))
    assert pairs["--dataset_dir"] == str(tmp_path / "data")
    assert pairs["--ckpt_dir"] == str(tmp_path / "uad_runs" / "dnfad" / "models")
    assert pairs["--max_epochs"] == "2" and pairs["--image_size"] == "[64, 64]"
    assert out.out.startswith(f"$ python -m monai.bundle run training --config_file {config} ")


def test_train_under_torchrun_merges_the_multi_gpu_config(tmp_path, monkeypatch):
    (tmp_path / "train" / "good").mkdir(parents=True)
    runs = _recorded_runs(monkeypatch)
    cli.main(["train", "ms_nf", str(tmp_path), "--nproc", "2", "--output-dir", str(tmp_path / "o")])
    (command,) = runs
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert "multi_gpu_train.json" in command[command.index("--config_file") + 1]


def test_infer_uses_the_checkpoints_bundle(tmp_path, monkeypatch, capsys):
    model = _checkpoint(tmp_path / "model.pt", "skip_ts")
    runs = _recorded_runs(monkeypatch)
    assert cli.main(["infer", str(model), str(tmp_path), str(tmp_path / "out")]) == 0
    (command,) = runs
    assert command[command.index("--config_file") + 1] == str(bundle_dir("skip_ts") / "configs" / "inference.json")
    pairs = dict(zip(command[7::2], command[8::2], strict=True))
    assert pairs["--ckpt_path"] == str(model) and pairs["--output_dir"] == str(tmp_path / "out")
    assert capsys.readouterr().out.splitlines()[-1] == f"outputs: {tmp_path / 'out'}"


def test_delegated_subcommands_print_the_module_line(capsys):
    with pytest.raises(SystemExit):
        cli.main(["brain-extract", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("$ python -m tools.brain_extract --help\n")
