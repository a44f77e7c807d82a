"""Tests for common.ssl: the VICReg loss terms, the projector, the pretraining wrapper, views, records and saver."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.backbones import build_backbone, load_local_weights
from common.ssl import (
    VIEW_KEYS,
    BackboneWeightsSaver,
    PrepareViews,
    Projector,
    SelfSupervisedBackbone,
    VICRegLoss,
    ViewEmbeddings,
    pretraining_records,
    pretraining_slices,
    two_view_transforms,
)

FLOOR = 1.0 - 1e-2  # v of a collapsed dimension: gamma - sqrt(eps) with the defaults gamma = 1, eps = 1e-4


def _spread(n: int = 64, d: int = 8, std: float = 1.5, seed: int = 0) -> torch.Tensor:
    """Embeddings whose dimensions are centred, uncorrelated and of standard deviation ``std`` exactly."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(dim=0))
    return (q * std * (n - 1) ** 0.5).float()


def test_identical_spread_embeddings_sit_at_the_floor() -> None:
    z = _spread()
    terms = VICRegLoss().terms(z, z)
    assert float(terms.invariance) == 0.0
    assert float(terms.variance) == 0.0  # every dimension's std (1.5) is above gamma
    assert float(terms.covariance) == pytest.approx(0.0, abs=1e-8)
    assert float(VICRegLoss()(z, z)) == pytest.approx(0.0, abs=1e-6)


def test_identical_embeddings_cost_only_their_variance_and_covariance_and_less_than_independent_ones() -> None:
    generator = torch.Generator().manual_seed(1)
    z, other = torch.randn(32, 16, generator=generator), torch.randn(32, 16, generator=generator)
    loss = VICRegLoss()
    floor = 25.0 * loss.variance(z) + 1.0 * 2 * loss.covariance(z)
    assert float(loss(z, z)) == pytest.approx(float(floor), rel=1e-6)
    assert float(loss(z, other)) > float(loss(z, z)) + 25.0  # the invariance term: E|z - z'|^2 = 2 per entry


def test_variance_term_penalises_collapse() -> None:
    loss = VICRegLoss()
    collapsed = torch.ones(16, 8) * 0.3
    terms = loss.terms(collapsed, collapsed)
    assert float(terms.variance) == pytest.approx(FLOOR, abs=1e-6)
    assert float(loss(collapsed, collapsed)) == pytest.approx(25.0 * FLOOR, abs=1e-4)
    assert float(loss.variance(_spread())) == 0.0


def test_covariance_term_penalises_correlated_dimensions() -> None:
    z = _spread(d=4)
    correlated = torch.cat([z, z], dim=1)  # each dimension duplicated: covariance 2.25 off the diagonal
    assert float(VICRegLoss.covariance(z)) == pytest.approx(0.0, abs=1e-8)
    assert float(VICRegLoss.covariance(correlated)) == pytest.approx(2 * 4 * 1.5**4 / 8, rel=1e-4)


def test_gradients_reach_both_views_and_the_backbone() -> None:
    torch.manual_seed(0)
    model = SelfSupervisedBackbone(projector_channels=(16, 16, 8))
    generator = torch.Generator().manual_seed(0)
    views = torch.rand(2, 4, 1, 32, 32, generator=generator)
    output = model.forward_train(views[0], views[1])
    assert isinstance(output, ViewEmbeddings)
    loss = VICRegLoss()(output)  # the trainer's call: the training output, no target
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_loss_is_computed_in_float32_for_half_inputs() -> None:
    z = _spread().half()
    assert VICRegLoss()(z, z).dtype == torch.float32


BAD_LOSS_ARGUMENTS = [
    # negative weight of each term
    {"invariance_weight": -1.0},
    {"variance_weight": -0.1},
    {"covariance_weight": -2.0},
    # gamma and eps must be positive
    {"gamma": 0.0},
    {"eps": 0.0},
]


@pytest.mark.parametrize("kwargs", BAD_LOSS_ARGUMENTS, ids=["lambda", "mu", "nu", "gamma", "eps"])
def test_bad_loss_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        VICRegLoss(**kwargs)


def test_bad_embeddings_raise() -> None:
    loss = VICRegLoss()
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.zeros(4, 8), torch.zeros(4, 6))
    with pytest.raises(ValueError, match="at least 2"):
        loss(torch.zeros(1, 8), torch.zeros(1, 8))
    with pytest.raises(TypeError, match="two embeddings"):
        loss(torch.zeros(4, 8))


def test_projector_layers() -> None:
    projector = Projector(256, (64, 64, 32))
    kinds = [type(layer) for layer in projector]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert projector(torch.rand(3, 256)).shape == (3, 32)
    with pytest.raises(ValueError, match="projector channels"):
        Projector(256, ())


@pytest.mark.parametrize("out_indices", [(1, 2, 3), (2, 3), (1, 2)], ids=["stages-1-3", "stages-2-3", "stages-1-2"])
def test_backbone_state_dict_has_the_detector_backbone_keys(out_indices: tuple[int, ...]) -> None:
    model = SelfSupervisedBackbone(out_indices=out_indices, projector_channels=(8,))
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 256 if 3 in out_indices else 128)  # the last stage, pooled
    state = model.backbone_state_dict()
    assert set(state) == set(build_backbone("resnet18", 1, out_indices).state_dict())
    assert all(value.device.type == "cpu" for value in state.values())


def test_two_views_are_independent_crops_of_the_crop_size() -> None:
    transform = two_view_transforms(crop_size=(32, 48))
    transform.set_random_state(0)
    image = np.random.default_rng(0).random((1, 40, 50), dtype=np.float32)
    out = transform({"image": image, "foreground": np.ones_like(image), "source": "x.png"})
    assert set(out) == set(VIEW_KEYS)
    for key in VIEW_KEYS:
        assert isinstance(out[key], torch.Tensor) and out[key].dtype == torch.float32
        assert tuple(out[key].shape) == (1, 32, 48)
    assert not torch.equal(out["view_a"], out["view_b"])


BAD_VIEW_ARGUMENTS = [
    # crop below the ResNet's stride
    ({"crop_size": (16, 16)}, "crop_size"),
    # crop scale out of (0, 1]
    ({"crop_scale": (0.5, 1.2)}, "crop_scale"),
    # one blur probability per view
    ({"blur_prob": (0.5,)}, "blur_prob"),
    # probability above 1
    ({"flip_prob": 1.5}, "flip_prob"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD_VIEW_ARGUMENTS, ids=["crop", "scale", "blur", "prob"])
def test_bad_view_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        two_view_transforms(**kwargs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tools.phantoms import write_dataset

    return write_dataset(
        tmp_path_factory.mktemp("ssl") / "data", dims=2, n_train=7, n_test_good=1, n_test_lesion=1, size=32
    )


def test_records_are_train_good_less_calibration_plus_extra_dirs(dataset: Path, tmp_path: Path) -> None:
    records = pretraining_records(dataset)
    assert len(records) == 5  # 7 files, 15% held out as the bundles do: ceil(1.05) = 2
    assert all(r.image.parent == dataset / "train" / "good" and r.label == 0 for r in records)
    assert len(pretraining_records(dataset, calibration_fraction=0.0)) == 7
    extra = tmp_path / "extra"
    extra.mkdir()
    for path in sorted((dataset / "train" / "good").iterdir())[:2]:
        (extra / f"extra_{path.name}").write_bytes(path.read_bytes())
    with_extra = pretraining_records(dataset, extra_dirs=[extra])
    assert len(with_extra) == 7 and {r.image.parent for r in with_extra[5:]} == {extra}
    assert len(pretraining_slices(with_extra, {"brain_extraction": "none"})) == 7


def test_extra_dirs_that_are_empty_or_under_test_raise(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test set"):
        pretraining_records(dataset, extra_dirs=[dataset / "test" / "good"])
    with pytest.raises(ValueError, match="no image files"):
        pretraining_records(dataset, extra_dirs=[tmp_path])


def test_too_few_slices_raise(dataset: Path) -> None:
    records = pretraining_records(dataset)[:1]
    with pytest.raises(ValueError, match="at least 2 healthy slices"):
        pretraining_slices(records, {"brain_extraction": "none"})


def test_prepare_views_feeds_both_views_to_forward_train() -> None:
    batch = {"view_a": torch.zeros(2, 1, 8, 8), "view_b": torch.ones(2, 1, 8, 8)}
    inputs, target, args, kwargs = PrepareViews()(batch, "cpu")
    assert torch.equal(inputs, batch["view_a"]) and target is None and kwargs == {}
    assert len(args) == 1 and torch.equal(args[0], batch["view_b"])
    with pytest.raises(KeyError, match="view_b"):
        PrepareViews()({"view_a": torch.zeros(2, 1, 8, 8)})


def test_saver_writes_weights_the_detector_backbone_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(3)
    model = SelfSupervisedBackbone(projector_channels=(8,))
    path = tmp_path / "out" / "weights.pt"
    BackboneWeightsSaver(model, path, {"slices": 4})()
    assert sorted(p.name for p in path.parent.iterdir()) == ["weights.pt"]  # no temporary file left
    saved = torch.load(path, weights_only=True)
    assert saved["pretraining"]["method"] == "VICReg" and saved["pretraining"]["slices"] == 4
    backbone = build_backbone("resnet18", 1, (1, 2, 3))
    caplog.clear()  # the saver's own INFO line, captured when another test set the root level to INFO
    with caplog.at_level(logging.WARNING, logger="common.backbones"):
        load_local_weights(backbone, path)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert torch.equal(backbone.conv1.weight, model.backbone.conv1.weight)
