"""Tests for tools.bundles: the slice settings read from a bundle's config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.volumes import SliceSettings
from tools.bundles import bundle_slice_settings

REPO_ROOT = Path(__file__).resolve().parents[2]

BUNDLES = sorted(p.name for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs" / "evaluate.json").is_file())


def test_slice_settings_follow_the_evaluation_config_and_its_overrides() -> None:
    config = json.loads((REPO_ROOT / "bundles" / "ms_nf" / "configs" / "evaluate.json").read_text())
    settings = bundle_slice_settings()
    assert isinstance(settings, SliceSettings)
    assert settings.axis == config["slice_axis"]
    assert settings.min_foreground == config["min_foreground"]
    assert settings.min_brain_fraction == config["min_brain_fraction"]
    assert settings.brain_extraction == config["brain_extraction"]
    changed = bundle_slice_settings(overrides={"slice_axis": 0, "min_brain_fraction": 0.5})
    assert (changed.axis, changed.min_brain_fraction) == (0, 0.5)
    assert changed.min_foreground == settings.min_foreground


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_bundle_evaluates_with_the_same_slice_settings(bundle: str) -> None:
    """Tools read one bundle's settings for all (tools.compare, tools.volume_slices, tools.backbone_probe)."""
    assert bundle_slice_settings(bundle).as_dict() == bundle_slice_settings("ms_nf").as_dict()


def test_unknown_bundle_names_the_available_ones() -> None:
    with pytest.raises(ValueError, match="available"):
        bundle_slice_settings("no_such_bundle")
