"""Tests for common.parallel: the way back from data-parallel wrappers to the detector."""

from __future__ import annotations

import torch

from common.parallel import TrainingForward, unwrap_network, unwrap_parallel


class _Detector(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def forward(self, x):
        return -self.layer(x)

    def forward_train(self, x):
        return self.layer(x)


def test_unwrap_network_reaches_the_detector_through_every_wrapper():
    detector = _Detector()
    assert unwrap_network(detector) is detector
    assert unwrap_network(TrainingForward(detector)) is detector
    assert unwrap_network(torch.nn.DataParallel(detector)) is detector
    assert unwrap_network(torch.nn.DataParallel(TrainingForward(detector))) is detector


def test_unwrap_parallel_keeps_the_training_forward_wrapper():
    detector = _Detector()
    wrapped = TrainingForward(detector)
    assert unwrap_parallel(torch.nn.DataParallel(wrapped)) is wrapped
    assert unwrap_parallel(wrapped) is wrapped


def test_training_forward_runs_forward_train_and_shares_the_parameters():
    detector = _Detector()
    x = torch.ones(3, 2)
    wrapped = TrainingForward(detector)
    assert torch.equal(wrapped(x), detector.forward_train(x))
    assert not torch.equal(wrapped(x), detector(x))
    assert list(wrapped.parameters()) == list(detector.parameters())
