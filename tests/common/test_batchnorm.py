"""Tests for common.batchnorm: re-estimating BatchNorm statistics as a plain average over batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.batchnorm import reestimate_batch_norm, training_batch_norms


class _FrozenPart(nn.Module):
    """A sub-module that stays in eval mode whatever its parent's mode (like a frozen backbone)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(2)

    def train(self, mode: bool = True) -> _FrozenPart:
        super().train(mode)
        self.norm.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = _FrozenPart()
        self.norm = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.frozen(x))


def _batches(n: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(4, 2, 5, 5, generator=generator) * (i + 1) + i for i in range(n)]


def test_training_batch_norms_leave_out_a_frozen_part_kept_in_eval_mode() -> None:
    model = _Model().train()
    assert training_batch_norms(model) == [model.norm]
    assert training_batch_norms(model.eval()) == []


def test_statistics_become_the_plain_average_of_the_batch_statistics() -> None:
    model = _Model().train()
    model.frozen.norm.running_mean.fill_(0.5)  # a frozen statistic that must survive
    batches = _batches()
    for batch in batches:  # ordinary training steps leave exponential averages
        model(batch)

    def run() -> int:
        for batch in batches:
            model(batch)
        return len(batches)

    assert reestimate_batch_norm(training_batch_norms(model), run) == 3
    # the frozen norm normalises with mean 0.5 and variance 1, so the trained norm sees x - 0.5 (up to eps)
    seen = [(b - 0.5) / (1 + model.frozen.norm.eps) ** 0.5 for b in batches]
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in seen]).mean(0)
    variances = torch.stack([b.transpose(0, 1).reshape(2, -1).var(dim=1, unbiased=True) for b in seen]).mean(0)
    torch.testing.assert_close(model.norm.running_mean, means)
    torch.testing.assert_close(model.norm.running_var, variances)
    assert model.norm.momentum == 0.1  # restored for later training
    assert torch.equal(model.frozen.norm.running_mean, torch.full((2,), 0.5))
    assert torch.equal(model.frozen.norm.running_var, torch.ones(2))


def test_no_batch_raises_and_keeps_the_previous_statistics() -> None:
    model = _Model().train()
    model(_batches(1)[0])
    before = model.norm.running_mean.clone()
    with pytest.raises(ValueError, match="at least one batch"):
        reestimate_batch_norm(training_batch_norms(model), lambda: 0)
    assert torch.equal(model.norm.running_mean, before)
    assert model.norm.momentum == 0.1


def test_a_failing_forward_restores_the_previous_statistics() -> None:
    model = _Model().train()
    model(_batches(1)[0])
    before = model.norm.running_var.clone()

    def run() -> int:
        model(_batches(1)[0] * 100)
        msg = "out of memory"
        raise RuntimeError(msg)

    with pytest.raises(RuntimeError, match="out of memory"):
        reestimate_batch_norm(training_batch_norms(model), run)
    assert torch.equal(model.norm.running_var, before)
