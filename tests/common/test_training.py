"""Tests for common.training: batch preparation for foreground-weighted losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.scoring import Calibration, MapScorer
from common.training import (
    BatchNormStatisticsHandler,
    CalibrationHandler,
    ForegroundStatisticsHandler,
    PrepareImageAndForeground,
    TrainingForward,
    learning_rate_schedule,
)


def test_prepare_batch_returns_image_and_foreground_on_device() -> None:
    image = torch.rand(2, 1, 4, 4)
    foreground = (torch.rand(2, 1, 4, 4) > 0.5).float()
    got_image, got_foreground = PrepareImageAndForeground()(
        {"image": image, "foreground": foreground, "label": torch.tensor([0, 1])}, torch.device("cpu")
    )
    assert torch.equal(got_image, image)
    assert torch.equal(got_foreground, foreground)


def test_prepare_batch_without_foreground_gives_all_ones() -> None:
    _, foreground = PrepareImageAndForeground()({"image": torch.rand(3, 2, 5, 6)})
    assert foreground.shape == (3, 1, 5, 6)
    assert foreground.eq(1).all()


class _IdentityDetector(torch.nn.Module):
    """The map is the image itself, so the calibration data are known exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.calibration = Calibration()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


@pytest.mark.parametrize("rule", ["pixel_quantile", "slice_max"])
def test_calibration_handler_applies_the_pixel_rule_on_foreground_pixels(rule: str) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(20, 1, 6, 6, generator=generator)
    foreground = torch.zeros(20, 1, 6, 6)
    foreground[..., 1:5, 1:5] = 1
    images[..., 0, :] = 10.0  # outside the foreground: never part of a threshold
    loader = [{"image": images[i : i + 5], "foreground": foreground[i : i + 5]} for i in range(0, 20, 5)]
    network = _IdentityDetector()
    handler = CalibrationHandler(
        network, loader, "cpu", MapScorer("max"), pixel_quantile=0.99, pixel_rule=rule, pixel_slice_fpr=0.1
    )
    handler()
    inside = images[:, 0, 1:5, 1:5].reshape(20, -1).numpy().astype(np.float64)
    expected = np.quantile(inside, 0.99) if rule == "pixel_quantile" else np.quantile(inside.max(axis=1), 0.9)
    assert float(network.calibration.pixel_threshold) == pytest.approx(expected, rel=1e-6)
    assert float(network.calibration.image_threshold) == pytest.approx(np.quantile(inside.max(axis=1), 0.95), rel=1e-6)
    assert network.calibration.settings["pixel_rule"] == rule
    assert network.calibration.settings["pixel_slice_fpr"] == 0.1
    if rule == "slice_max":  # 10% of the normal slices (2 of 20) keep a non-empty mask
        assert int((inside.max(axis=1) > expected).sum()) == 2


def test_calibration_handler_rejects_an_unknown_rule() -> None:
    loader = [{"image": torch.rand(2, 1, 4, 4)}]
    handler = CalibrationHandler(_IdentityDetector(), loader, "cpu", MapScorer("max"), pixel_rule="per_voxel")
    with pytest.raises(ValueError, match="pixel threshold rule must be one of"):
        handler()


def _rates(scheduler: torch.optim.lr_scheduler.LambdaLR, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_learning_rate_schedule_warms_up_then_decays_to_zero_on_a_cosine() -> None:
    rates = _rates(learning_rate_schedule(_optimizer(), warmup_iterations=2, decay="cosine", total_iterations=6), 7)
    quarter = np.cos(np.pi / 4)
    expected = [0.05, 0.1, 0.1, 0.05 * (1 + quarter), 0.05, 0.05 * (1 - quarter), 0.0]
    np.testing.assert_allclose(rates, expected, atol=1e-12)


def test_learning_rate_schedule_constant_holds_the_base_rate_after_warm_up() -> None:
    constant = _rates(learning_rate_schedule(_optimizer(), warmup_iterations=3), 5)
    np.testing.assert_allclose(constant, [0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1])


def test_learning_rate_schedule_resumes_from_its_state() -> None:
    full = _rates(learning_rate_schedule(_optimizer(), decay="cosine", total_iterations=8), 8)
    first = learning_rate_schedule(_optimizer(), decay="cosine", total_iterations=8)
    _rates(first, 3)
    resumed = learning_rate_schedule(_optimizer(), decay="cosine", total_iterations=8)
    resumed.load_state_dict(first.state_dict())
    resumed.optimizer.param_groups[0]["lr"] = resumed.get_last_lr()[0]
    np.testing.assert_allclose(_rates(resumed, 5), full[3:])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup_iterations": -1}, "warmup_iterations must be >= 0"),
        ({"decay": "step"}, "decay must be one of"),
        ({"decay": "cosine", "total_iterations": 0}, "needs total_iterations above"),
        ({"decay": "cosine", "warmup_iterations": 5, "total_iterations": 5}, "needs total_iterations above"),
    ],
)
def test_learning_rate_schedule_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        learning_rate_schedule(_optimizer(), **kwargs)


class _NormedDetector(torch.nn.Module):
    """A trainable BatchNorm behind ``forward_train``; ``forward`` is the eval-mode map."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(1)

    def forward_train(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(images)


def _image_batches() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [{"image": 3.0 + 2.0 * torch.randn(4, 1, 6, 6, generator=generator)} for _ in range(3)]


@pytest.mark.parametrize("wrapped", [False, True], ids=["network", "training_forward"])
def test_batchnorm_handler_sets_the_statistics_of_the_final_weights(wrapped: bool) -> None:
    network = _NormedDetector().eval()
    loader = _image_batches()
    handler = BatchNormStatisticsHandler(TrainingForward(network) if wrapped else network, loader, "cpu")
    handler()
    images = torch.cat([b["image"] for b in loader])
    torch.testing.assert_close(network.norm.running_mean, images.mean().view(1), atol=1e-5, rtol=0)
    assert network.norm.running_var.item() == pytest.approx(images.var().item(), rel=0.05)
    assert not network.training  # the mode it had before


def test_batchnorm_handler_uses_at_most_max_batches() -> None:
    network = _NormedDetector()
    loader = _image_batches()
    BatchNormStatisticsHandler(network, loader, "cpu", max_batches=1)()
    torch.testing.assert_close(network.norm.running_mean, loader[0]["image"].mean().view(1), atol=1e-5, rtol=0)


def test_batchnorm_handler_attaches_at_completion_only_when_enabled() -> None:
    from ignite.engine import Engine, Events

    network = _NormedDetector()
    on, off = Engine(lambda engine, batch: None), Engine(lambda engine, batch: None)
    enabled = BatchNormStatisticsHandler(network, _image_batches(), "cpu")
    enabled.attach(on)
    BatchNormStatisticsHandler(network, _image_batches(), "cpu", enabled=False).attach(off)
    assert on.has_event_handler(enabled, Events.COMPLETED)
    assert not off._event_handlers[Events.COMPLETED]


def test_batchnorm_handler_rejects_a_non_bool_switch_and_bad_max_batches() -> None:
    with pytest.raises(TypeError, match="enabled"):
        BatchNormStatisticsHandler(_NormedDetector(), [], "cpu", enabled="false")
    with pytest.raises(ValueError, match="max_batches"):
        BatchNormStatisticsHandler(_NormedDetector(), [], "cpu", max_batches=0)


class _ForegroundRecorder(torch.nn.Module):
    """Records what ``fit_foreground_statistics`` receives."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.device = None

    def fit_foreground_statistics(self, batches, device) -> None:
        self.received = list(batches)
        self.device = device


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "training-wrapper"])
def test_foreground_statistics_handler_passes_images_with_their_foregrounds(wrapped: bool) -> None:
    network = _ForegroundRecorder()
    foreground = torch.zeros(2, 1, 4, 4)
    foreground[:, :, 1:3, 1:3] = 1.0
    batches = [
        {"image": torch.rand(2, 1, 4, 4), "foreground": foreground},
        {"image": torch.rand(1, 1, 4, 4)},  # no foreground key: all ones
        {"image": torch.rand(2, 1, 4, 4), "foreground": foreground},
    ]
    handler = ForegroundStatisticsHandler(TrainingForward(network) if wrapped else network, batches, "cpu", 2)
    handler()
    assert network.device == "cpu"
    assert len(network.received) == 2  # max_batches
    assert torch.equal(network.received[0][0], batches[0]["image"])
    assert torch.equal(network.received[0][1], foreground)
    assert torch.equal(network.received[1][1], torch.ones(1, 1, 4, 4))


def test_foreground_statistics_handler_needs_the_network_method() -> None:
    with pytest.raises(AttributeError, match="fit_foreground_statistics"):
        ForegroundStatisticsHandler(torch.nn.Linear(2, 2), [{"image": torch.rand(1, 2)}], "cpu")()
