"""``tools.export_bundle``: a standalone bundle runs without this repository and gives the in-repository outputs."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.checkpoint import read_description
from tests.bundles import contract
from tools.bundles import run_bundle
from tools.export_bundle import common_closure, export_bundle, main, rewrite_config, rewrite_source
from tools.phantoms import write_dataset
from tools.torchscript import eager_network

REPO_ROOT = Path(__file__).resolve().parents[2]

TINY = {"image_size": [64, 64], "n_blocks": 2, "hidden_channels": 16}
"""The architecture the model is trained with: the export and its runs never repeat it (``model.pt`` describes it)."""


def test_rewrite_source_points_common_imports_at_the_vendored_copy():
    source = (
        "from common.io import atomic_output\nimport common.data\n    from common import scoring\nx = 'common.io'\n"
    )
    assert rewrite_source(source) == (
        "from scripts.common.io import atomic_output\nimport scripts.common.data\n"
        "    from scripts.common import scoring\nx = 'common.io'\n"
    )


def test_rewrite_config_changes_targets_expressions_and_bundle_root():
    config = {
        "bundle_root": "$'bundles/ms_nf' if os.path.isdir('bundles/ms_nf') else '.'",
        "a": {"_target_": "common.volumes.SliceSettings", "axis": "@slice_axis"},
        "b": ["$common.io.atomic_output(@x)", "$@scripts.common_thing", "uncommon.x"],
    }
    assert rewrite_config(config) == {
        "bundle_root": ".",
        "a": {"_target_": "scripts.common.volumes.SliceSettings", "axis": "@slice_axis"},
        "b": ["$scripts.common.io.atomic_output(@x)", "$@scripts.common_thing", "uncommon.x"],
    }


def test_common_closure_follows_imports_and_rejects_unknown_modules():
    assert {"volumes", "data", "foreground", "io"} <= set(common_closure({"volumes"}))
    with pytest.raises(ValueError, match="common.nope"):
        common_closure({"nope"})


def test_bad_requests_are_one_line_errors(tmp_path, capsys):
    assert main(["nope", str(tmp_path)]) == 2
    assert "unknown bundle 'nope'" in capsys.readouterr().err
    assert main(["ms_nf", str(tmp_path), "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def _isolated_env() -> dict[str, str]:
    """Site-packages only, without ``.pth`` processing: the editable install of this repository is not active."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return {**env, "PYTHONPATH": sysconfig.get_paths()["purelib"], "OMP_NUM_THREADS": "1"}


def _standalone(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-S", *args]
    return subprocess.run(command, cwd=cwd, env=_isolated_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny trained MS-NF exported with its zip, and a folder of test volumes: ``(export, zip, inputs)``.

    Trained with the non-default architecture :data:`TINY`, exported without any setting.
    """
    root = tmp_path_factory.mktemp("export")
    data = write_dataset(root / "data", dims=3, n_train=4, n_test_good=1, n_test_lesion=1, size=48, depth=12)
    checkpoint = contract.train("ms_nf", {**TINY, "dataset_dir": data, "max_epochs": 1, "batch_size": 8}, root)
    target = export_bundle("ms_nf", root / "dist", checkpoint, make_zip=True)
    return target, root / "dist" / "ms_nf.zip", data / "test"


@pytest.mark.slow
def test_export_layout_and_zip(exported):
    target, archive, _ = exported
    for part in ("LICENSE", "docs/README.md", "models/model.pt", "configs/inference.json", "configs/metadata.json"):
        assert (target / part).is_file(), part
    assert (target / "scripts" / "common" / "transforms.py").is_file()
    for source in (target / "scripts").rglob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+common\b", source.read_text(), flags=re.M), source
    with zipfile.ZipFile(archive) as handle:
        names = set(handle.namelist())
    assert {"ms_nf/models/model.pt", "ms_nf/scripts/common/volumes.py", "ms_nf/configs/inference.json"} <= names
    assert not [name for name in names if "__pycache__" in name]
    with pytest.raises(ValueError, match="already exists"):
        export_bundle("ms_nf", target.parent, target / "models" / "model.pt")


@pytest.mark.slow
def test_exported_configs_read_the_architecture_from_the_checkpoint(exported):
    target = exported[0]
    assert (target / "scripts" / "common" / "checkpoint.py").is_file()
    for config in ("inference.json", "evaluate.json"):
        parsed = json.loads((target / "configs" / config).read_text())
        assert parsed["architecture"]["_target_"] == "scripts.common.checkpoint.stored_arguments", config
        assert parsed["n_blocks"] == "$@architecture.get('n_blocks', 15)", config
    description = read_description(target / "models" / "model.pt")
    assert description["_target_"] == "scripts.network.MSNF" and description["bundle"]["id"] == "ms_nf"
    assert {key: description["arguments"][key] for key in TINY} == TINY


@pytest.mark.slow
def test_settings_are_baked_in_and_may_not_contradict_the_checkpoint(exported, tmp_path, capsys):
    checkpoint = exported[0] / "models" / "model.pt"
    argv = ["ms_nf", str(tmp_path), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--set", "n_blocks=3"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"--set n_blocks=3: {checkpoint} was trained with n_blocks=2" in err
    assert not (tmp_path / "ms_nf").exists()
    # other settings, and architecture ones equal to the checkpoint's, are baked into the configs that define them
    assert main([*argv, "--set", "score_method=max", "--set", "image_size=[64,64]"]) == 0
    inference = json.loads((tmp_path / "ms_nf" / "configs" / "inference.json").read_text())
    assert inference["score_method"] == "max" and inference["image_size"] == [64, 64]
    assert inference["n_blocks"] == "$@architecture.get('n_blocks', 15)"


@pytest.mark.slow
def test_exported_metadata_verifies(exported):
    contract.check_metadata_verifies("ms_nf", exported[0] / "configs" / "metadata.json")


@pytest.mark.slow
def test_exported_bundle_runs_without_the_repository_and_matches(exported, tmp_path):
    target, _, inputs = exported
    probe = _standalone(["-c", "import sys, common"], cwd=target)
    assert "No module named 'common'" in probe.stderr, "the repository's common must not be importable"
    probe = _standalone(
        ["-c", "import json, os, sys; print(json.dumps([os.path.realpath(p) for p in sys.path]))"], target
    )
    assert str(REPO_ROOT.resolve()) not in json.loads(probe.stdout)
    result = _standalone(
        [
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/inference.json",
            "--dataset_dir",
            str(inputs),
            "--output_dir",
            str(tmp_path / "standalone"),
            "--device",
            "cpu",
        ],
        cwd=target,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_bundle(
        "ms_nf",
        "inference.json",
        overrides={
            "ckpt_path": target / "models" / "model.pt",
            "dataset_dir": inputs,
            "output_dir": tmp_path / "repo",
            "device": "cpu",
        },
        timeout=600,
    )
    outputs = sorted(p.name for p in (tmp_path / "repo").glob("*.nii.gz"))
    # per volume: the map, the anomaly mask and the brain mask (the phantoms' brain_mask/ beside the inputs)
    assert len(outputs) == 6 and outputs == sorted(p.name for p in (tmp_path / "standalone").glob("*.nii.gz"))
    assert sum(name.endswith("_brain_mask.nii.gz") for name in outputs) == 2
    for name in outputs:
        ours, theirs = nib.load(tmp_path / "standalone" / name), nib.load(tmp_path / "repo" / name)
        np.testing.assert_allclose(ours.get_fdata(), theirs.get_fdata(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ours.affine, theirs.affine)
    rows = [list(csv.reader((tmp_path / d / "scores.csv").open())) for d in ("standalone", "repo")]
    assert rows[0] == rows[1]


_RUN_TORCHSCRIPT_WITHOUT_REPOSITORY = """
import sys
for package in ("common", "scripts", "tools", "tests", "bundles"):
    sys.modules[package] = None  # importing any of them now fails: the graph must not need them
import torch
graph = torch.jit.load(sys.argv[1], map_location="cpu").eval()
with torch.no_grad():
    torch.save(graph(torch.load(sys.argv[2])), sys.argv[3])
"""


@pytest.mark.slow
def test_torchscript_export_runs_without_the_repository_and_equals_eager(exported, tmp_path):
    checkpoint = exported[0] / "models" / "model.pt"
    target = export_bundle("ms_nf", tmp_path / "dist", checkpoint, torchscript=True)
    assert (target / "models" / "model.pt").read_bytes() == checkpoint.read_bytes()
    graph = target / "models" / "model.ts"
    assert graph.is_file()
    assert not [p.name for p in (tmp_path / "dist").iterdir() if p.name != "ms_nf"]  # no staging left
    outside = tmp_path / "outside"
    outside.mkdir()
    x = torch.rand(2, 1, *TINY["image_size"], generator=torch.Generator().manual_seed(1))
    torch.save(x, outside / "x.pt")
    result = subprocess.run(
        [sys.executable, "-I", "-c", _RUN_TORCHSCRIPT_WITHOUT_REPOSITORY, str(graph), "x.pt", "y.pt"],
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with torch.no_grad():
        eager = eager_network("ms_nf", target / "models" / "model.pt")(x)
    torch.testing.assert_close(torch.load(outside / "y.pt"), eager, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_failed_torchscript_export_is_a_one_line_error_and_leaves_nothing(exported, tmp_path, monkeypatch, capsys):
    calls = []

    def fail(bundle, checkpoint, output, **_):
        calls.append((bundle, Path(checkpoint), Path(output)))
        msg = f"ckpt_export of {Path(checkpoint).resolve()} failed (exit code 1):\nTraceback ...\nRuntimeError: boom"
        raise RuntimeError(msg)

    monkeypatch.setattr("tools.export_bundle.export_torchscript", fail)
    out = tmp_path / "new" / "out"
    argv = ["ms_nf", str(out), "--checkpoint", str(exported[0] / "models" / "model.pt"), "--torchscript", "--zip"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "bundle 'ms_nf': TorchScript export failed" in err and "RuntimeError: boom" in err
    assert str(out / "ms_nf" / "models" / "model.pt") in err  # the staging folder is named as the export
    # it was given the staged copy of the exported model.pt, and nothing of the export is left
    assert [(b, c.name, c.parent.name, o.name) for b, c, o in calls] == [("ms_nf", "model.pt", "models", "model.ts")]
    assert not calls[0][1].exists()
    assert not out.exists() and not out.parent.exists()
