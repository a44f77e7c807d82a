"""Tests for tools/configs/pretrain_backbone.json: VICReg pretraining run through ``monai.bundle run training`` writes a
backbone weight file that the MS-NF and DNFAD backbones load with every key matched, and never reads ``test/``."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest
import torch

from common.backbones import FeatureExtractor, build_backbone
from common.progress import EPOCH_LINE_PREFIX
from tools.processes import run_python_module

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "tools" / "configs" / "pretrain_backbone.json"
SLICE_KEYS = (
    "slice_axis",
    "slice_range",
    "min_foreground",
    "foreground",
    "foreground_min_component",
    "brain_extraction",
    "min_brain_fraction",
    "intensity",
    "calibration_fraction",
    "seed",
    "backbone",
)


@pytest.mark.parametrize("bundle", ["ms_nf", "dnfad"])
def test_slices_and_split_match_the_bundle_training(bundle: str) -> None:
    """Pretraining cuts slices and holds out calibration files as the detectors' training does."""
    pretrain = json.loads(CONFIG.read_text())
    train = json.loads((REPO_ROOT / f"bundles/{bundle}/configs/train.json").read_text())
    assert {key: pretrain[key] for key in SLICE_KEYS} == {key: train[key] for key in SLICE_KEYS}
    assert pretrain["in_channels"] == train["network_def"]["in_channels"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Two epochs on a tiny 2D phantom set whose test/ files are garbage, with one extra healthy folder."""
    from tools.phantoms import write_dataset

    root = tmp_path_factory.mktemp("pretrain")
    data = write_dataset(root / "data", dims=2, n_train=8, n_test_good=2, n_test_lesion=2, size=32)
    garbage = sorted(p for p in (data / "test").rglob("*") if p.is_file())
    assert garbage
    for path in garbage:  # a run that opened any of them would fail to read it
        path.write_bytes(b"not an image")
    extra = root / "extra"
    extra.mkdir()
    for path in sorted((data / "train" / "good").iterdir())[:2]:
        (extra / f"extra_{path.name}").write_bytes(path.read_bytes())
    weights = root / "out" / "resnet18_vicreg.pt"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIG)]
    cmd += ["--dataset_dir", str(data), "--output_path", str(weights), "--extra_dirs", f"['{extra}']"]
    cmd += ["--max_epochs", "2", "--batch_size", "4", "--crop_size", "[32,32]", "--projector_channels", "[16,16,16]"]
    cmd += ["--num_workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    done = run_python_module(cmd[2], cmd[3:], REPO_ROOT, timeout=600, environ=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return weights, done.stdout + done.stderr


def test_run_writes_weights_and_reports_progress(pretrained: tuple[Path, str]) -> None:
    weights, log = pretrained
    assert sorted(p.name for p in weights.parent.iterdir()) == ["resnet18_vicreg.pt", "runs"]  # no temporary file
    lines = [line for line in log.splitlines() if line.startswith(EPOCH_LINE_PREFIX)]
    assert len(lines) == 2 and "mean loss" in lines[-1]
    saved = torch.load(weights, weights_only=True)
    description = saved["pretraining"]
    assert description["method"] == "VICReg" and description["epochs"] == 2
    assert description["files"] == 6 + 2  # train/good less 2 calibration files, plus the extra folder


@pytest.mark.parametrize(
    "out_indices", [(1, 2, 3), (2, 3), (1, 2)], ids=["stages-1-3", "stages-2-3", "stages-1-2-both-defaults"]
)
def test_detector_backbone_loads_every_key(
    pretrained: tuple[Path, str], out_indices: tuple[int, ...], caplog: pytest.LogCaptureFixture
) -> None:
    weights, _ = pretrained
    state = torch.load(weights, weights_only=True)["state_dict"]
    wanted = set(build_backbone("resnet18", 1, out_indices).state_dict())
    assert wanted <= set(state)  # nothing missing; stages 1-2 leave the file's layer3 unused
    unused = {key for key in state if key.startswith("layer3.")} if 3 not in out_indices else set()
    assert set(state) - wanted == unused
    with caplog.at_level(logging.WARNING, logger="common.backbones"):
        extractor = FeatureExtractor("resnet18", 1, out_indices, weights=weights)  # what MSNF / DNFAD build
    assert not caplog.records
    loaded = extractor.model.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in loaded.items())
    assert not extractor.recalibrate_batchnorm  # the pretrained BatchNorm statistics are kept


def test_weights_differ_from_random_initialisation(pretrained: tuple[Path, str]) -> None:
    weights, _ = pretrained
    state = torch.load(weights, weights_only=True)["state_dict"]
    fresh = build_backbone("resnet18", 1, (1, 2, 3)).state_dict()
    floating = [key for key, value in state.items() if value.is_floating_point()]
    assert all(not torch.equal(state[key], fresh[key]) for key in floating)
    # whatever the seed, a random initialisation has BatchNorm weights 1, biases 0 and running means 0
    norms = [key.removesuffix(".running_mean") for key in state if key.endswith(".running_mean")]
    assert len(norms) == 1 + 3 * 2 * 2 + 2  # bn1, two per block of layers 1-3 (two blocks each), two downsamples
    for name in norms:
        assert not torch.equal(state[f"{name}.weight"], torch.ones_like(state[f"{name}.weight"])), name
        assert not torch.equal(state[f"{name}.bias"], torch.zeros_like(state[f"{name}.bias"])), name
        assert state[f"{name}.running_mean"].abs().sum() > 0, name
    assert int(state["bn1.num_batches_tracked"]) == 2 * 2 * 2  # 2 epochs x 2 batches, one forward per view
