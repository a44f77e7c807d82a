"""Tests for common.training: batch preparation for foreground-weighted losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.scoring import Calibration, MapScorer
from common.training import CalibrationHandler, PrepareImageAndForeground


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
