"""Tests for common.backbones: feature shapes, freezing, fitted standardisation and local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.backbones import FeatureExtractor, build_backbone, load_local_weights, random_init_options

SHAPE_CASES = [
    # grayscale, square 64x64, three stages
    (1, (1, 2, 3), (2, 1, 64, 64)),
    # grayscale, non-square 64x96
    (1, (1, 2, 3), (1, 1, 64, 96)),
    # RGB, square 64x64
    (3, (1, 2, 3), (2, 3, 64, 64)),
    # RGB, non-square 64x96, first and last stage only
    (3, (1, 4), (1, 3, 64, 96)),
]
SHAPE_IDS = ["gray-64x64", "gray-64x96", "rgb-64x64", "rgb-64x96-stages-1-4"]


def _batches(n: int = 3, batch: int = 4, channels: int = 1, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, channels, 64, 64, generator=generator) for _ in range(n)]


@pytest.mark.parametrize(("in_channels", "out_indices", "shape"), SHAPE_CASES, ids=SHAPE_IDS)
def test_channels_and_strides_match_outputs(in_channels: int, out_indices: tuple[int, ...], shape: tuple) -> None:
    torch.manual_seed(0)
    extractor = FeatureExtractor("resnet18", in_channels=in_channels, out_indices=out_indices)
    features = extractor(torch.rand(shape))
    assert len(features) == len(out_indices) == len(extractor.channels) == len(extractor.strides)
    expected_channels = {1: 64, 2: 128, 3: 256, 4: 512}
    assert extractor.channels == [expected_channels[i] for i in out_indices]
    for feature, channels, stride in zip(features, extractor.channels, extractor.strides, strict=True):
        assert tuple(feature.shape) == (shape[0], channels, shape[2] // stride, shape[3] // stride)
        assert torch.isfinite(feature).all()
    assert extractor.strides == sorted(extractor.strides)


def test_wrong_input_channels_fail() -> None:
    extractor = FeatureExtractor("resnet18", in_channels=1)
    with pytest.raises(RuntimeError):
        extractor(torch.rand(1, 3, 64, 64))


def test_backbone_is_frozen_and_stays_in_eval_mode() -> None:
    extractor = FeatureExtractor("resnet18", in_channels=1)
    assert all(not p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert extractor.training
    assert not any(m.training for m in extractor.model.modules())
    # even if someone switches the backbone itself to train mode, forward runs it in eval mode
    extractor.model.train()
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    first = extractor(x)
    second = extractor(x)
    assert not extractor.model.training
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)
    # the extractor passes no gradient to its parameters
    x.requires_grad_(True)
    assert not any(f.requires_grad for f in extractor(x))


@pytest.fixture(scope="module")
def fitted() -> tuple[FeatureExtractor, list[torch.Tensor]]:
    """A random-init extractor fitted once on three small batches (shared: the fit is the slow part)."""
    torch.manual_seed(0)
    extractor = FeatureExtractor("resnet18", in_channels=1)
    batches = _batches()
    assert not bool(extractor.fitted)
    extractor.fit_statistics(batches)
    return extractor, batches


def test_fit_statistics_standardises_features_on_fitting_data(fitted) -> None:
    extractor, batches = fitted
    assert bool(extractor.fitted)
    outputs = [extractor(b) for b in batches]
    for level in range(len(extractor.channels)):
        feature = torch.cat([o[level] for o in outputs]).double()
        mean = feature.mean(dim=(0, 2, 3))
        std = feature.std(dim=(0, 2, 3), unbiased=False)
        assert mean.abs().max() < 1e-3, f"level {level}: max |mean| {mean.abs().max():.2e}"
        assert (std - 1).abs().max() < 1e-3, f"level {level}: std range [{std.min():.4f}, {std.max():.4f}]"


def test_fit_statistics_leaves_no_constant_channels(fitted) -> None:
    extractor, batches = fitted
    with torch.no_grad():
        outputs = [extractor.model(b) for b in batches]  # raw backbone features, before standardisation
    for level in range(len(extractor.channels)):
        std = torch.cat([o[level] for o in outputs]).std(dim=(0, 2, 3))
        assert (std > 1e-4).all(), f"level {level}: {int((std <= 1e-4).sum())} constant channels"


def test_fit_statistics_needs_batches() -> None:
    with pytest.raises(ValueError, match="at least one batch"):
        FeatureExtractor("resnet18").fit_statistics([])


def test_min_std_validation() -> None:
    with pytest.raises(ValueError, match="min_std"):
        FeatureExtractor("resnet18", min_std=-1.0)


def test_statistics_survive_state_dict_round_trip(tmp_path: Path, fitted) -> None:
    extractor, _ = fitted
    state = extractor.state_dict()
    for key in ("fitted", "mean_0", "std_0", "mean_2", "std_2", "model.bn1.running_mean"):
        assert key in state
    path = tmp_path / "extractor.pt"
    torch.save(state, path)
    torch.manual_seed(1)
    restored = FeatureExtractor("resnet18", in_channels=1)
    assert not bool(restored.fitted)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert bool(restored.fitted)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(4))
    for a, b in zip(extractor(x), restored(x), strict=True):
        torch.testing.assert_close(a, b)


def _random_state(in_channels: int, seed: int) -> dict[str, torch.Tensor]:
    """A random state dict of a ResNet18 feature model with ``in_channels`` input channels."""
    torch.manual_seed(seed)
    model = build_backbone("resnet18", in_channels=in_channels)
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}


WEIGHTS_CASES = [
    # same channel count, plain state dict
    (1, 1, None),
    # wrapped as {"state_dict": ...} (Lightning checkpoints)
    (1, 1, "state_dict"),
    # wrapped as {"model": ...}
    (3, 3, "model"),
    # ImageNet-style 3-channel weights into a grayscale backbone: the first conv is summed over RGB
    (3, 1, None),
]
WEIGHTS_IDS = ["plain", "wrapped-state-dict", "wrapped-model", "rgb-into-gray"]


@pytest.mark.parametrize(("file_channels", "model_channels", "wrapper"), WEIGHTS_CASES, ids=WEIGHTS_IDS)
def test_load_local_weights(tmp_path: Path, file_channels: int, model_channels: int, wrapper: str | None) -> None:
    state = _random_state(file_channels, seed=5)
    path = tmp_path / "weights.pth"
    torch.save({wrapper: state} if wrapper else state, path)
    torch.manual_seed(6)
    model = build_backbone("resnet18", in_channels=model_channels)
    load_local_weights(model, path)
    loaded = model.state_dict()
    expected_conv = state["conv1.weight"]
    if file_channels != model_channels:
        expected_conv = expected_conv.sum(dim=1, keepdim=True)
    torch.testing.assert_close(loaded["conv1.weight"], expected_conv)
    torch.testing.assert_close(loaded["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])
    torch.testing.assert_close(loaded["bn1.running_var"], state["bn1.running_var"])


def test_feature_extractor_with_local_weights(tmp_path: Path) -> None:
    state = _random_state(3, seed=7)
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    extractor = FeatureExtractor("resnet18", in_channels=1, weights=path)
    torch.testing.assert_close(extractor.model.state_dict()["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    # pretrained weights: fit_statistics does not touch the BatchNorm statistics
    assert not extractor.recalibrate_batchnorm
    running_mean = extractor.model.bn1.running_mean.clone()
    extractor.fit_statistics(_batches(n=1))
    torch.testing.assert_close(extractor.model.bn1.running_mean, running_mean)


def test_missing_weights_file_raises_file_not_found_naming_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(FileNotFoundError) as info:
        build_backbone("resnet18", weights=path)
    assert str(path) in str(info.value)


BAD_FILE_CASES = [
    # a tensor, not a state dict
    (lambda: torch.zeros(3), "state dict"),
    # a state dict of another architecture: no names match
    (lambda: {"encoder.weight": torch.zeros(2, 2)}, "no parameter names match"),
]
BAD_FILE_IDS = ["tensor", "foreign-keys"]


@pytest.mark.parametrize(("make", "expected"), BAD_FILE_CASES, ids=BAD_FILE_IDS)
def test_bad_weights_file_raises_value_error_naming_path(tmp_path: Path, make, expected: str) -> None:
    path = tmp_path / "weights.pt"
    torch.save(make(), path)
    model = build_backbone("resnet18")
    with pytest.raises(ValueError) as info:
        load_local_weights(model, path)
    assert str(info.value).startswith(str(path))
    assert expected in str(info.value)


def test_unknown_backbone_name_raises_value_error() -> None:
    with pytest.raises(ValueError, match="resnet_does_not_exist"):
        FeatureExtractor("resnet_does_not_exist")


def test_grayscale_is_repeated_for_a_three_channel_backbone() -> None:
    torch.manual_seed(0)
    extractor = FeatureExtractor(
        "resnet18", in_channels=1, out_indices=(1, 4), standardize=False, backbone_in_channels=3
    )
    assert extractor.model.conv1.in_channels == 3
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = extractor.model(x.expand(-1, 3, -1, -1))
    for got, want in zip(extractor(x), expected, strict=True):
        torch.testing.assert_close(got, want)
    extractor.fit_statistics(_batches(n=1), "cpu")  # 1-channel training batches are repeated there too
    assert bool(extractor.fitted)


def test_input_normalisation_is_applied_before_the_backbone() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    extractor = FeatureExtractor(
        "resnet18", in_channels=1, standardize=False, backbone_in_channels=3, input_mean=mean, input_std=std
    )
    x = torch.rand(1, 1, 32, 32)
    prepared = extractor.prepare_input(x)
    torch.testing.assert_close(prepared[:, 2], (x[:, 0] - mean[2]) / std[2])
    assert "input_mean" not in extractor.state_dict()  # not persistent: older checkpoints still load


BAD_INPUT_OPTIONS = [
    # repetition needs a grayscale input
    ({"in_channels": 2, "backbone_in_channels": 3}, "backbone_in_channels"),
    # mean without std
    ({"backbone_in_channels": 3, "input_mean": (0.5, 0.5, 0.5)}, "input_std"),
    # wrong number of values
    ({"backbone_in_channels": 3, "input_mean": (0.5,), "input_std": (0.2,)}, "3 values"),
]


@pytest.mark.parametrize(("kwargs", "word"), BAD_INPUT_OPTIONS, ids=["not-gray", "mean-only", "length"])
def test_bad_input_options_raise(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        FeatureExtractor("resnet18", **{"in_channels": 1, **kwargs})


RANDOM_INIT_CASES = [
    # residual branches active, BatchNorm statistics re-estimated on the training images
    ("recalibrated", None, {"recalibrate_batchnorm": True, "zero_init_last": False}),
    # timm's default: residual branches silenced, statistics untouched
    ("timm", None, {"recalibrate_batchnorm": False, "zero_init_last": True}),
    # a weight file decides the weights whatever the initialisation
    ("timm", "weights.pt", {"recalibrate_batchnorm": False, "zero_init_last": False}),
    ("recalibrated", "weights.pt", {"recalibrate_batchnorm": False, "zero_init_last": False}),
]


@pytest.mark.parametrize(
    ("random_init", "weights", "expected"), RANDOM_INIT_CASES, ids=["recalibrated", "timm", "file-timm", "file-recal"]
)
def test_random_init_options(random_init: str, weights: str | None, expected: dict) -> None:
    assert random_init_options(random_init, weights) == expected


def test_random_init_options_name_the_key_of_a_bad_value() -> None:
    with pytest.raises(ValueError, match="random_backbone must be one of"):
        random_init_options("kaiming", key="random_backbone")


def test_timm_initialisation_gives_local_features() -> None:
    # with silenced residual branches stage 1 is the stem alone: a 7x7 stride-2 convolution, ReLU and a 3x3 stride-2
    # max-pool, so a change far from a position leaves its feature unchanged (recalibrated features do change)
    torch.manual_seed(0)
    extractor = FeatureExtractor(out_indices=(1,), **random_init_options("timm"))
    torch.manual_seed(0)
    recalibrated = FeatureExtractor(out_indices=(1,), **random_init_options("recalibrated"))
    images = torch.rand(4, 1, 64, 64)
    extractor.fit_statistics([images])
    recalibrated.fit_statistics([images])
    changed = images.clone()
    changed[:, :, 24:, 24:] = 0.0
    for net, local in ((extractor, True), (recalibrated, False)):
        before, after = net(images)[0], net(changed)[0]
        # stem: stage-1 positions 0..3 see input pixels up to 4 * 3 + 5 = 17 < 24; layer1's four 3x3 convolutions
        # at stride 4 widen that by 16 pixels when the residual branches are active
        assert torch.equal(before[..., :4, :4], after[..., :4, :4]) is local
