"""Tests for tools.lab.link_torch: PyTorch's distributions hard-linked into another environment, nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tools.lab.link_torch import is_linked_distribution, link_distributions, main


def _fake_distribution(site: Path, name: str, version: str, files: dict[str, str]) -> None:
    """Write an installed distribution (files plus a dist-info with METADATA and RECORD) into ``site``."""
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    records = [*files, f"{info}/METADATA", f"{info}/RECORD"]
    for relative, text in files.items():
        path = site / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (site / info).mkdir()
    (site / info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (site / info / "RECORD").write_text("".join(f"{record},,\n" for record in records))


@pytest.fixture
def source_site(tmp_path: Path) -> Path:
    site = tmp_path / "source" / "site-packages"
    site.mkdir(parents=True)
    _fake_distribution(
        site, "torch", "2.14.1", {"torch/__init__.py": "", "torch/lib/libtorch.so": "x", "../../bin/torchrun": "#!"}
    )
    _fake_distribution(site, "nvidia-cublas", "13.1", {"nvidia/cublas/lib/libcublas.so": "c"})
    _fake_distribution(site, "nvidia_cudnn_cu13", "9.2", {"nvidia/cudnn/lib/libcudnn.so": "d"})
    _fake_distribution(site, "cuda-bindings", "13.5", {"cuda/bindings/__init__.py": ""})
    _fake_distribution(site, "numpy", "2.3.0", {"numpy/__init__.py": ""})
    _fake_distribution(site, "torchmetrics", "1.0", {"torchmetrics/__init__.py": ""})
    return site


def test_only_pytorch_and_its_libraries_are_linked():
    for name in ("torch", "torchvision", "triton", "nvidia-cublas", "nvidia_cudnn_cu13", "cuda-bindings", "Torch"):
        assert is_linked_distribution(name), name
    for name in ("numpy", "torchmetrics", "sympy", "pytorch-ignite", "cudatext"):
        assert not is_linked_distribution(name), name


def test_files_are_hard_links_and_pip_sees_the_distributions(source_site, tmp_path):
    target = tmp_path / "target" / "site-packages"
    target.mkdir(parents=True)
    created = link_distributions(metadata.distributions(path=[str(source_site)]), target)

    assert (target / "torch/lib/libtorch.so").stat().st_ino == (source_site / "torch/lib/libtorch.so").stat().st_ino
    assert (target / "nvidia/cublas/lib/libcublas.so").read_text() == "c"  # a namespace folder shared by two
    assert (target / "nvidia/cudnn/lib/libcudnn.so").read_text() == "d"
    assert (target / "cuda/bindings/__init__.py").is_file()
    assert not (target / "numpy").exists() and not (target / "torchmetrics").exists()
    assert not (tmp_path / "target" / "bin").exists()  # console scripts name the source's interpreter
    assert target / "torch-2.14.1.dist-info" / "METADATA" in created
    linked = {d.metadata["Name"]: d.version for d in metadata.distributions(path=[str(target)])}
    assert linked == {"torch": "2.14.1", "nvidia-cublas": "13.1", "nvidia_cudnn_cu13": "9.2", "cuda-bindings": "13.5"}


def test_a_failed_link_leaves_the_target_as_it_was(source_site, tmp_path):
    target = tmp_path / "target" / "site-packages"
    (target / "nvidia" / "cudnn" / "lib").mkdir(parents=True)
    (target / "nvidia" / "cudnn" / "lib" / "libcudnn.so").write_text("already here")
    with pytest.raises(FileExistsError):
        link_distributions(metadata.distributions(path=[str(source_site)]), target)
    remaining = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert remaining == ["nvidia/cudnn/lib/libcudnn.so"]
    assert (target / "nvidia" / "cudnn" / "lib" / "libcudnn.so").read_text() == "already here"


def test_links_this_environment_into_a_new_venv(tmp_path):
    """With the real install: the new environment finds the same torch and torchvision in its own site-packages.

    Importing them there needs their pure Python requirements, which ``pip`` adds in the real build
    (``tools/lab/monailabel_env.sh``, run by the MONAI Label integration test).
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    assert main([python]) == 0
    code = (
        "import importlib.metadata as m, importlib.util as u; "
        "print(m.version('torch'), m.version('torchvision'), u.find_spec('torch').origin)"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True, env=env).stdout.split()
    assert out[:2] == [metadata.version("torch"), metadata.version("torchvision")]
    assert out[2].startswith(str(venv))
    import torch

    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    assert (Path(out[2]).parent / "lib" / "libtorch_cpu.so").stat().st_ino == library.stat().st_ino


def test_another_python_version_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tools.lab.link_torch._site_packages_of", lambda python: (tmp_path, "2.7"))
    assert main([sys.executable]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "is Python 2.7" in error and "not linked" in error
    assert list(tmp_path.iterdir()) == []
