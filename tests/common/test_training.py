"""Tests for common.training: batch preparation for foreground-weighted losses."""

from __future__ import annotations

import torch

from common.training import PrepareImageAndForeground


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
