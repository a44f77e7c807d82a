"""The built wheel works outside the checkout, and the project's top-level packages are the ones imported.

The wheel test builds the wheel from a copy of the sources, installs it into a new virtual environment that sees the
dependencies of this one but not the checkout, and from another directory trains a bundle (``uad train``), runs
batch inference (``uad infer`` and MONAI's own runner on the installed config) and exports it for MONAI Label
(``uad export``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import bundles
import common
import tools
from tools.phantoms import write_dataset

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ("anomalypro", "dnfad", "intensity", "ms_nf", "skip_ts")
SOURCE_IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "demo_output", "runs", "*.pt"
)


@pytest.mark.parametrize(("package", "folder"), [(common, "common"), (tools, "tools"), (bundles, "bundles")])
def test_top_level_names_are_this_project(package, folder):
    """A ``common``, ``tools`` or ``bundles`` of another distribution earlier on ``sys.path`` would shadow ours."""
    assert Path(package.__file__).resolve() == ROOT / folder / "__init__.py", (
        f"import {folder} found {package.__file__}, not this project's; install the project into its own environment"
    )


def _build_wheel(out: Path) -> Path:
    """The wheel built from a clean copy of the sources (a ``build/`` left in the checkout cannot leak into it)."""
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=SOURCE_IGNORE)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."]
    done = subprocess.run(command, cwd=source, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return next(out.glob("uad_bundles-*.whl"))


def _environment_with(wheel: Path, venv: Path) -> Path:
    """A new venv with ``wheel`` installed; this environment's packages stand in for its dependencies."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # A path line only: the .pth files of this environment (its editable install of the checkout) are not run.
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return site


def _run(command: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}\n{(done.stdout + done.stderr)[-3000:]}"
    return done


@pytest.mark.slow
def test_wheel_trains_infers_and_exports_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path / "wheel")
    names = zipfile.ZipFile(wheel).namelist()
    for bundle in BUNDLES:
        for part in ("configs/train.json", "configs/inference.json", "configs/metadata.json", "docs/README.md"):
            assert f"bundles/{bundle}/{part}" in names
        assert f"bundles/{bundle}/scripts/network.py" in names
    assert "tools/cli.py" in names and "tools/configs/time_limit.json" in names
    assert not [n for n in names if n.startswith(("tools/lab/", "tests/"))], "development tooling is not shipped"

    venv = tmp_path / "venv"
    site = _environment_with(wheel, venv)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import json, bundles, common, tools; print(json.dumps([m.__file__ for m in (bundles, common, tools)]))",
        ],
        work,
    )
    for path in json.loads(where.stdout):
        assert Path(path).resolve().is_relative_to(site.resolve()), path
    assert ROOT.as_posix() not in where.stdout

    write_dataset(work / "data", dims=3, n_train=4, n_test_good=1, n_test_lesion=1, size=32, seed=0)
    uad = str(venv / "bin" / "uad")
    sets = ["--set", "max_epochs=1", "--set", "image_size=[32,32]", "--set", "batch_size=4", "--set", "n_blocks=2"]
    trained = _run([uad, "train", "ms_nf", "data", "--output-dir", "run", *sets], work)
    assert "python -m monai.bundle run training --config_file" in trained.stdout
    model = work / "run" / "models" / "model.pt"
    assert model.is_file()

    _run([uad, "infer", "run/models/model.pt", "data/test/lesion", "maps"], work)
    stems = [p.name.removesuffix(".nii.gz") for p in (work / "data" / "test" / "lesion").iterdir()]
    for stem in stems:
        assert (work / "maps" / f"{stem}_anomaly.nii.gz").is_file()
    assert (work / "maps" / "scores.csv").is_file()

    config = site / "bundles" / "ms_nf" / "configs" / "inference.json"
    runner = [str(venv / "bin" / "python"), "-m", "monai.bundle", "run", "--config_file", str(config)]
    _run([*runner, "--ckpt_path", str(model), "--dataset_dir", "data/test/good", "--output_dir", "runner_maps"], work)
    assert (work / "runner_maps" / "scores.csv").is_file()

    _run([uad, "export", "ms_nf", "exported", "--checkpoint", "run/models/model.pt"], work)
    exported = work / "exported" / "ms_nf"
    assert (exported / "models" / "model.pt").is_file() and (exported / "configs" / "inference.json").is_file()
    assert (exported / "scripts" / "common" / "__init__.py").is_file()
    assert not list(site.glob("bundles/*/models")), "nothing is written into the installed package"
