"""Tests for common.distributed outside torchrun: the environment decides the share, one process does everything."""

from __future__ import annotations

import torch

from common.distributed import (
    gather_to_first,
    init_process_group,
    is_distributed,
    is_first_process,
    local_device,
    rank,
    shard,
    world_size,
)


def test_one_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert (world_size(), rank(), is_distributed(), is_first_process()) == (1, 0, False, True)
    assert shard(list("abcde")) == [0, 1, 2, 3, 4]
    assert init_process_group("cpu") is False
    assert gather_to_first({"x": 1}) == [{"x": 1}]


def test_each_rank_takes_every_world_size_th_item(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    assert (world_size(), rank(), is_distributed(), is_first_process()) == (3, 1, True, False)
    assert shard(list(range(7))) == [1, 4]
    monkeypatch.setenv("RANK", "0")
    assert shard(list(range(7))) == [0, 3, 6]


def test_local_device_follows_local_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert local_device(cuda=False) == torch.device("cpu")
    assert local_device(cuda=True) == torch.device("cuda", 1)
