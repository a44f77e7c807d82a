"""Tests for tools/lab/backbone_probe.py: training-free detectors on frozen features, evaluated like a bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.backbones import FeatureExtractor
from tests.bundles.conftest import load_bundle_scripts
from tools.lab.backbone_probe import DETECTORS, FeatureProbe, main, probe_backbone


def _images(seed: int, n: int = 6, size: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, size, size, generator=generator)]


def test_norm_probe_is_the_ms_nf_map_at_initialisation() -> None:
    """The docstring's claim: an untrained MS-NF (identity couplings, permutations) maps exactly as ``norm``."""
    torch.manual_seed(0)
    msnf = load_bundle_scripts("ms_nf").network.MSNF
    net = msnf(image_size=(32, 32), n_blocks=2, hidden_channels=8, reduction=4).eval()
    net.extractor.fit_statistics(_images(1))
    probe = FeatureProbe(net.extractor, (32, 32), "norm").eval()
    x = _images(2, n=3)[0]
    expected = net(x)
    assert expected.abs().max() > 0
    torch.testing.assert_close(probe(x), expected, rtol=1e-5, atol=1e-6)


def _fitted_probe(detector: str) -> tuple[list[np.ndarray], list[np.ndarray], list[torch.Tensor]]:
    """A probe fitted on 8 random images: the training features, a test batch's features and its maps per level."""
    torch.manual_seed(0)
    extractor = FeatureExtractor(out_indices=(1, 2))
    probe = FeatureProbe(extractor, (32, 32), detector, shrinkage=0.5)
    train = _images(3, n=8)
    probe.fit(train)
    x = _images(4, n=2)[0]
    # features as (h, w, N, C): the N vectors of each position
    train_features = [f.permute(2, 3, 0, 1).double().numpy() for f in extractor(train[0])]
    test_features = [f.permute(2, 3, 0, 1).double().numpy() for f in extractor(x)]
    return train_features, test_features, probe.level_maps(x)


def _distance(vectors: np.ndarray, test: np.ndarray) -> np.ndarray:
    """½/C Mahalanobis distance of ``test`` (..., C) under the Gaussian of ``vectors`` (N, C), shrinkage 0.5."""
    mean = vectors.mean(axis=0)
    covariance = np.cov(vectors, rowvar=False, bias=True) + 0.5 * np.eye(vectors.shape[1])
    centred = test - mean
    return np.einsum("...c,cd,...d->...", centred, np.linalg.inv(covariance), centred) / (2 * vectors.shape[1])


def test_gaussian_probe_is_the_mahalanobis_distance_of_the_training_features() -> None:
    train, test, maps = _fitted_probe("gaussian")
    for level, (vectors, features) in enumerate(zip(train, test, strict=True)):
        expected = _distance(vectors.reshape(-1, vectors.shape[-1]), features)  # one Gaussian for every position
        np.testing.assert_allclose(maps[level][:, 0].numpy(), expected.transpose(2, 0, 1), rtol=1e-3, atol=1e-4)


def test_positional_probe_has_one_gaussian_per_position() -> None:
    train, test, maps = _fitted_probe("positional")
    for level, (vectors, features) in enumerate(zip(train, test, strict=True)):
        height, width = vectors.shape[:2]
        for i, j in [(0, 0), (height // 2, width - 1), (height - 1, width // 3)]:
            expected = _distance(vectors[i, j], features[i, j])
            np.testing.assert_allclose(maps[level][:, 0, i, j].numpy(), expected, rtol=1e-3, atol=1e-4)


def test_probe_arguments_are_checked() -> None:
    extractor = FeatureExtractor(out_indices=(1,))
    with pytest.raises(ValueError, match="detector must be one of"):
        FeatureProbe(extractor, (32, 32), "pca")
    with pytest.raises(ValueError, match="shrinkage must be > 0"):
        FeatureProbe(extractor, (32, 32), "gaussian", shrinkage=0.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        FeatureProbe(extractor, (32, 32), "gaussian").level_maps(torch.rand(1, 1, 32, 32))


@pytest.fixture(scope="module")
def phantoms_2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tools.phantoms import write_dataset

    return write_dataset(tmp_path_factory.mktemp("probe") / "data", n_train=12, n_test_good=6, n_test_lesion=6, size=64)


def test_probe_backbone_evaluates_every_detector_like_a_bundle(phantoms_2d: Path, tmp_path: Path) -> None:
    """Every detector finds the phantom lesions inside the brain better than chance.

    Measured with random initialisation seeds 0, 1, 2 (this test: seed 0): in-brain pixel AUROC 0.743 / 0.805 / 0.797
    (norm), 0.652 / 0.710 / 0.721 (gaussian) and 0.795 / 0.835 / 0.836 (positional); image AUROC 0.639 / 0.611 / 0.833,
    0.694 / 0.694 / 0.806 and 0.722 / 0.722 / 0.833.
    """
    torch.manual_seed(0)
    rows = probe_backbone(phantoms_2d, tmp_path / "out", image_size=(64, 64))
    assert [(r["weights"], r["detector"]) for r in rows] == [("random", d) for d in DETECTORS]
    assert json.loads((tmp_path / "out" / "probe.json").read_text()) == rows
    for row in rows:
        metrics = json.loads((tmp_path / "out" / "random" / row["detector"] / "metrics.json").read_text())
        assert metrics["pixel_auroc_foreground"] == pytest.approx(row["pixel_auroc_foreground"])
        assert row["pixel_auroc_foreground"] > 0.6
        assert row["image_auroc"] > 0.55


def test_main_reports_a_table_and_rejects_a_missing_weights_file(
    phantoms_2d: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = [str(phantoms_2d), "--output-dir", str(tmp_path / "a"), "--image-size", "64", "--detectors", "norm"]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "| random | norm |" in out
    code = main([str(phantoms_2d), "--output-dir", str(tmp_path / "b"), "--weights", str(tmp_path / "missing.pt")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"python -m tools.lab.backbone_probe: error: {tmp_path / 'missing.pt'}: backbone weights file not found"
    ]
    assert not (tmp_path / "b").exists()


def test_timm_random_init_probes_the_zero_initialised_backbone(
    phantoms_2d: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = [str(phantoms_2d), "--output-dir", str(tmp_path / "t"), "--image-size", "64", "--detectors", "norm"]
    assert main([*arguments, "--random-init", "timm"]) == 0
    assert "| random_timm | norm |" in capsys.readouterr().out
    assert (tmp_path / "t" / "random_timm" / "norm" / "metrics.json").is_file()
    with pytest.raises(ValueError, match="random_init must be one of"):
        probe_backbone(phantoms_2d, tmp_path / "u", random_init="imagenet")


def test_timm_random_init_silences_the_residual_branches() -> None:
    """What ``--random-init timm`` builds: every block's last BatchNorm scale is zero, statistics untouched."""
    torch.manual_seed(0)
    extractor = FeatureExtractor(out_indices=(1, 2), recalibrate_batchnorm=False, zero_init_last=True)
    extractor.fit_statistics(_images(0))
    last_norms = [block.bn2 for stage in (extractor.model.layer1, extractor.model.layer2) for block in stage]
    assert all(torch.equal(norm.weight, torch.zeros_like(norm.weight)) for norm in last_norms)
    assert torch.equal(extractor.model.bn1.running_var, torch.ones_like(extractor.model.bn1.running_var))
