"""Fixtures for bundle tests: import a bundle's ``scripts`` package under a unique name, locate shared data."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SCHEMA = REPO_ROOT.parent / "shared" / "schema" / "meta_schema_20240725.json"


def load_bundle_scripts(name: str) -> ModuleType:
    """Import ``bundles/<name>/scripts`` as the package ``<name>_scripts`` (bundles all call theirs ``scripts``)."""
    alias = f"{name}_scripts"
    if alias in sys.modules:
        return sys.modules[alias]
    folder = REPO_ROOT / "bundles" / name / "scripts"
    spec = importlib.util.spec_from_file_location(
        alias, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module


def shared_dataset(name: str) -> Path:
    """A development dataset under ``../shared/data``; skips the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (development data lives beside the repository)")
    return path


@pytest.fixture(scope="module")
def phantoms_3d(tmp_path_factory) -> Path:
    """A tiny 3D phantom dataset (4 normal training volumes, 1 normal and 2 lesion test volumes, 48x48x12)."""
    from tools.phantoms import write_dataset

    return write_dataset(
        tmp_path_factory.mktemp("ph3d") / "data", dims=3, n_train=4, n_test_good=1, n_test_lesion=2, size=48, depth=12
    )
