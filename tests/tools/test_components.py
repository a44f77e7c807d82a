"""Tests for tools/components.py: a bundle's inference components from its config, and the ``--device`` argument."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from tools.components import build_components, resolve_device

BUNDLE = "ms_nf"
TINY = {"n_blocks": 1, "hidden_channels": 8, "image_size": [64, 64]}


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("nowhere", "--device: not a torch device: 'nowhere'; use cpu, cuda or cuda:N"),
        ("meta", "--device: only cpu and cuda are supported, got 'meta'"),
    ],
)
def test_resolve_device_rejects(device: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_resolve_device_without_cuda() -> None:
    with pytest.raises(ValueError, match="--device: 'cuda:0' requested but CUDA is not available; use --device cpu"):
        resolve_device("cuda:0")


def test_build_components_restores_the_import_state() -> None:
    other = types.ModuleType("scripts")  # another bundle's ``scripts`` package, already imported
    path_before = list(sys.path)
    sys.modules["scripts"] = other
    try:
        parser, network, scorer, slice_settings = build_components(BUNDLE, TINY)
        assert sys.modules["scripts"] is other and sys.path == path_before
    finally:
        del sys.modules["scripts"]
    assert isinstance(network, nn.Module) and not network.training
    assert parser.get_parsed_content("image_size") == [64, 64] and parser["bundle_root"].endswith(BUNDLE)
    assert scorer is not None and hasattr(slice_settings, "brain_extraction")


@pytest.mark.parametrize(
    ("bundle", "overrides", "message"),
    [
        ("nope", None, "unknown bundle 'nope'; available: .*ms_nf"),
        (BUNDLE, {"no_such_key": 3}, "--override no_such_key: no such id in .*inference.json; top-level ids: "),
        (BUNDLE, {"n_blocks": "many"}, r"inference.json: cannot build 'network_def' with overrides \{'n_blocks': "),
    ],
)
def test_build_components_errors_are_one_line(bundle: str, overrides: dict | None, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        build_components(bundle, overrides)
    assert len(str(caught.value).splitlines()) == 1
