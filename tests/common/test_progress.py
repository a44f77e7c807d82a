"""Tests for common.progress: a bar in a terminal, one line per epoch elsewhere."""

from __future__ import annotations

import io

import torch
from ignite.engine import Engine

from common.progress import EPOCH_LINE_PREFIX, EpochProgress


def _engine(outputs: list) -> Engine:
    def step(engine, batch):
        return outputs[(engine.state.iteration - 1) % len(outputs)]

    return Engine(step)


def test_one_line_per_epoch_with_the_mean_loss_when_not_a_terminal():
    stream = io.StringIO()
    engine = _engine([[{"loss": torch.tensor(1.0)}], [{"loss": torch.tensor(3.0)}]])
    EpochProgress(stream=stream).attach(engine)
    engine.run(range(4), max_epochs=3)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert all(line.startswith(EPOCH_LINE_PREFIX) for line in lines)
    assert "epoch 1/3: 4 iterations, mean loss 2," in lines[0]
    assert "epoch 3/3" in lines[2]


def test_named_losses_of_a_dict_output_are_averaged_separately():
    stream = io.StringIO()
    engine = _engine([{"g_loss": 1.0, "d_loss": -2.0, "image": torch.zeros(2)}, {"g_loss": 2.0, "d_loss": -4.0}])
    EpochProgress(stream=stream).attach(engine)
    engine.run(range(2), max_epochs=1)
    assert "mean g_loss 1.5, mean d_loss -3," in stream.getvalue()
    assert "image" not in stream.getvalue()


def test_a_terminal_gets_the_tqdm_bar_not_the_lines():
    stream = io.StringIO()
    engine = _engine([[{"loss": torch.tensor(0.5)}]])
    EpochProgress(stream=stream, interactive=True).attach(engine)
    engine.run(range(3), max_epochs=2)
    text = stream.getvalue()
    assert EPOCH_LINE_PREFIX not in text
    assert "\r" in text and "loss" in text
