"""Tests for tools/compare/peers.py: the anomalib peers' cost and foreground are the bundles' (no anomalib needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from common.data import discover_dataset, load_image
from common.evaluation import AnomalyEvaluation
from common.scoring import MapScorer
from tools.benchmark import count_flops
from tools.compare.peers import (
    OFFLINE_UNAVAILABLE,
    PEER_IN_CHANNELS,
    PEERS,
    _build_model,
    check_peers,
    evaluation_ground_truth,
    evaluation_slice_settings,
    peer_cost,
)
from tools.compare.report import COST_COLUMNS, aggregate, markdown_report
from tools.compare.settings import CompareSettings
from tools.phantoms import write_dataset

SIZE = 16
# Conv 3->4 (3x3, padding 1) then conv 4->1 (1x1) at 16x16: 2 * (3*4*9 + 4*1) * 16*16 FLOPs (multiply-add = 2).
TINY_FLOPS = 2 * (3 * 4 * 9 + 4 * 1) * SIZE * SIZE


class _MeanMap(nn.Module):
    """A stand-in detector: the anomaly map is the mean over the input channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)


def _settings(tmp_path: Path, **kwargs) -> CompareSettings:
    return CompareSettings(dataset=tmp_path, bundles=["ms_nf"], output_dir=tmp_path / "out", **kwargs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2D phantoms (2 normal, 2 lesion test images, 32x32); one normal and one lesion image have a brain_mask/ file."""
    root = write_dataset(
        tmp_path_factory.mktemp("peers") / "data", dims=2, n_train=1, n_test_good=2, n_test_lesion=2, size=32, seed=0
    )
    disc = np.zeros((32, 32), dtype=np.uint8)
    yy, xx = np.mgrid[:32, :32]
    disc[(yy - 14) ** 2 + (xx - 17) ** 2 < 10**2] = 255  # off-centre, so a transposed mask would differ
    for defect in ("good", "lesion"):
        image = sorted((root / "test" / defect).glob("*.png"))[0]
        (root / "brain_mask" / defect).mkdir(parents=True, exist_ok=True)
        Image.fromarray(disc).save(root / "brain_mask" / defect / image.name)
    return root


def test_peer_cost_is_the_benchmark_of_the_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(PEER_IN_CHANNELS, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))
    settings = _settings(tmp_path, image_size=[SIZE, SIZE], device="cpu", bench_batch_size=2, bench_iterations=2)
    out = peer_cost(network, settings)
    cost, bench = out["cost"], out["benchmark"]
    assert out["input_size"] == f"{SIZE}x{SIZE}"
    assert cost["slices_per_s"] > 0 and math.isfinite(cost["slices_per_s"])
    assert len(bench["batch_seconds"]) == 2 and all(t > 0 for t in bench["batch_seconds"])
    assert cost["slices_per_s"] == pytest.approx(2 * 2 / sum(bench["batch_seconds"]))
    assert cost["parameters"] == sum(p.numel() for p in network.parameters()) == 3 * 4 * 9 + 4 + 4 * 1 + 1
    flops, _ = count_flops(network, torch.rand(1, PEER_IN_CHANNELS, SIZE, SIZE))
    assert cost["gflops_per_slice"] * 1e9 == pytest.approx(flops) and flops == TINY_FLOPS
    assert cost["peak_memory_mib"] > 0
    assert cost["volume_s"] is None  # peers take 2D images only
    assert not bench["bf16_autocast"] and not bench["channels_last"]  # fp32, as anomalib runs it; CPU


class _ScaledByParameter(nn.Module):
    """A module called on a bare parameter, as in the flow blocks of anomalib's FastFlow: ``softplus(scale)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(PEER_IN_CHANNELS, 1, 1)
        self.scale = nn.Parameter(torch.zeros(1))
        self.softplus = nn.Softplus()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.softplus(self.scale)


def test_peer_cost_of_a_module_called_on_a_parameter(tmp_path: Path) -> None:
    network = _ScaledByParameter()
    out = peer_cost(network, _settings(tmp_path, image_size=[SIZE, SIZE], device="cpu", bench_iterations=1))
    assert out["cost"]["gflops_per_slice"] * 1e9 == pytest.approx(2 * 3 * SIZE * SIZE)  # the 1x1 convolution
    assert out["benchmark"]["parameters"] == {"total": 5, "trainable": 5}
    assert all(p.requires_grad for p in network.parameters())  # restored after the FLOP count


def test_peer_cost_default_size(tmp_path: Path) -> None:
    network = nn.Conv2d(PEER_IN_CHANNELS, 1, 1)
    out = peer_cost(network, _settings(tmp_path, device="cpu", bench_batch_size=1, bench_iterations=1))
    assert out["input_size"] == "256x256"  # the peers' training size when the comparison sets none
    assert out["cost"]["gflops_per_slice"] * 1e9 == pytest.approx(2 * 3 * 256 * 256)


def test_peer_cost_row_in_the_report(tmp_path: Path) -> None:
    network = nn.Conv2d(PEER_IN_CHANNELS, 1, 1)
    out = peer_cost(network, _settings(tmp_path, image_size=[8, 8], device="cpu", bench_iterations=1))
    cost = {"train_s": aggregate([3.0]), **{key: aggregate([value]) for key, value in out["cost"].items()}}
    row = {"name": "padim (anomalib)", "kind": "peer", "status": "ok", "error": None, "input_size": "8x8"}
    row.update(metrics={"image_auroc": aggregate([0.75])}, cost=cost)
    results = {
        "command": "uad-compare", "date": "today", "wall_s": 60.0, "rows": [row], "benchmark_volume_shape": None,
        "settings": {"seeds": [0], "train_dataset": "d", "dataset": "d", "budget": {}},
        "environment": {k: "x" for k in ("device", "device_name", "cpu_count", "torch_threads", "python", "torch",
                                         "monai", "numpy")},
    }  # fmt: skip
    md = markdown_report(results)
    cost_table = md.split("## Cost", 1)[1]
    line = next(line for line in cost_table.splitlines() if line.startswith("| padim (anomalib) (8x8) |"))
    cells = dict(zip([key for key, _ in COST_COLUMNS], line.strip("| ").split(" | ")[1:], strict=True))
    assert cells["volume_s"] == "–" and cells["parameters"] == "4" and cells["gflops_per_slice"] == "0.00"
    assert all(cells[key] != "–" for key in ("train_s", "slices_per_s", "peak_memory_mib"))
    assert "anomalib peers" in md and "s / volume stays empty" in md


def test_evaluation_slice_settings_follow_the_bundle_and_overrides(tmp_path: Path) -> None:
    default = evaluation_slice_settings(_settings(tmp_path))
    assert default.foreground == "auto" and default.foreground_min_component == pytest.approx(0.1)
    scoped = _settings(tmp_path, overrides={"foreground": "compute"})
    scoped.bundle_overrides = {"ms_nf": {"foreground_min_component": 1.0}}
    changed = evaluation_slice_settings(scoped)
    assert changed.foreground == "compute" and changed.foreground_min_component == 1.0


def test_peer_foreground_is_the_evaluation_foreground(dataset: Path, tmp_path: Path) -> None:
    slice_settings = evaluation_slice_settings(_settings(dataset))
    evaluation = AnomalyEvaluation(
        _MeanMap(), dataset, tmp_path / "eval", slice_settings, MapScorer("max"), device="cpu", amp=False, plots=False
    )
    evaluation.prepare()
    result = evaluation.predict_test_set()
    records = discover_dataset(dataset, require_test=True).test
    assert len(records) == len(result.foregrounds) == 4  # one slice per 2D image, in the dataset's order
    from_files = 0
    for record, foreground, mask in zip(records, result.foregrounds, result.masks, strict=True):
        peer_mask, peer_foreground = evaluation_ground_truth(record, slice_settings)
        assert peer_foreground.dtype == bool and peer_foreground.shape == foreground.shape == (32, 32)
        np.testing.assert_array_equal(peer_foreground, foreground)
        if record.mask is not None:
            np.testing.assert_array_equal(peer_mask, mask)
            assert peer_mask.any()
        else:
            assert peer_mask is None and not record.label
        if record.foreground is not None:  # the brain_mask/ file
            np.testing.assert_array_equal(peer_foreground, np.asarray(load_image(record.foreground)) > 0)
            from_files += 1
        else:  # computed from the image: the phantom head, not the whole image
            assert 0.1 < peer_foreground.mean() < 0.95
    assert from_files == 2


def test_anomalib_models_take_the_peer_input(tmp_path: Path) -> None:
    pytest.importorskip("anomalib")
    settings = _settings(tmp_path, image_size=[32, 32], device="cpu", bench_batch_size=1, bench_iterations=1)
    # PaDiM's and PatchCore's forward need a fitted Gaussian or memory bank: trained in compare
    for name in ("fastflow", "reverse_distillation", "cflow"):
        model = _build_model(name, (32, 32))
        first_conv = next(m for m in model.model.modules() if isinstance(m, nn.Conv2d))
        assert first_conv.in_channels == PEER_IN_CHANNELS, name
        cost = peer_cost(model.model, settings)["cost"]
        assert cost["parameters"] == sum(p.numel() for p in model.model.parameters()), name
        assert cost["slices_per_s"] > 0 and cost["gflops_per_slice"] > 0, name


def test_every_documented_peer_name_is_known() -> None:
    assert set(PEERS) == {"padim", "fastflow", "reverse_distillation", "patchcore", "cflow", "efficient_ad"}
    with pytest.raises(ValueError, match="unknown peer 'efficientad'"):
        check_peers(["efficientad"])


def test_efficient_ad_says_why_it_cannot_run() -> None:
    """EfficientAD needs downloads (pretrained teacher, ImageNette): its row fails with the reason, nothing trains."""
    with pytest.raises(ValueError, match="downloaded at training time") as raised:
        _build_model("efficient_ad", (32, 32))
    assert str(raised.value) == OFFLINE_UNAVAILABLE["efficient_ad"] and "\n" not in str(raised.value)


@pytest.mark.slow
def test_patchcore_cflow_and_efficient_ad_rows(dataset: Path, tmp_path: Path) -> None:
    """PatchCore and CFlow train and are scored like the other peers; EfficientAD's row gives its reason."""
    pytest.importorskip("anomalib")
    from tools.compare.peers import run_peers

    class _Step:
        def start(self, text: str) -> None:
            pass

        def done(self, n: int = 1) -> None:
            pass

    settings = _settings(
        dataset, image_size=[32, 32], device="cpu", max_epochs=1, batch_size=2, bench_batch_size=1, bench_iterations=1
    )
    settings.peers = ["patchcore", "cflow", "efficient_ad"]
    settings.seeds = [0]
    settings.output_dir = tmp_path / "out"
    rows = {row["name"]: (row, pred) for row, pred in run_peers(settings, _Step())}
    for name in ("patchcore (anomalib)", "cflow (anomalib)"):
        row, pred = rows[name]
        assert row["status"] == "ok", row["error"]
        assert len(pred.labels) == 4 and 0.0 <= row["metrics"]["image_auroc"]["mean"] <= 1.0
        assert math.isfinite(row["metrics"]["pixel_auroc_foreground"]["mean"])
        assert row["cost"]["parameters"]["mean"] > 0 and row["cost"]["volume_s"]["mean"] is None
    row, pred = rows["efficient_ad (anomalib)"]
    assert row["status"] == "failed" and pred is None and row["error"] == OFFLINE_UNAVAILABLE["efficient_ad"]
