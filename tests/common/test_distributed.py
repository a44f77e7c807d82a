"""Tests for common.distributed outside torchrun: the environment decides the share, one process does everything."""

from __future__ import annotations

import pytest
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


class _Tiny(torch.nn.Module):
    """A network with a training forward pass distinct from its scoring one."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def forward(self, x):  # scoring path: never used in training
        msg = "training must call forward_train"
        raise AssertionError(msg)

    def forward_train(self, x):
        return self.layer(x)


def _train_one_step(rank_: int, world: int, store: str, results: str, wrap: str) -> None:
    import torch.distributed as dist

    from common.distributed import average_gradients, wrap_for_training
    from common.training import ForwardTrainInferer

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank_, world_size=world)
    torch.manual_seed(rank_)  # different initial weights: the wrappers must start every rank from rank 0's
    net = _Tiny()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    model = wrap_for_training(net, "cpu") if wrap == "ddp" else net
    if wrap == "average":
        average_gradients(optimizer)
    x = torch.full((2, 3), float(rank_ + 1))  # each rank its own data
    loss = ForwardTrainInferer()(x, model).pow(2).mean()
    loss.backward()
    optimizer.step()
    torch.save({k: v.detach() for k, v in net.state_dict().items()}, f"{results}/{rank_}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("wrap", ["ddp", "average"])
@pytest.mark.slow
def test_two_processes_end_a_step_with_the_same_weights_as_one_on_all_the_data(tmp_path, wrap):
    """DDP around forward_train (MS-NF, DNFAD, Skip-TS) and gradient averaging (AnomalyPro) are data parallel."""
    torch.multiprocessing.spawn(
        _train_one_step, args=(2, str(tmp_path / "store"), str(tmp_path), wrap), nprocs=2, join=True
    )
    first, second = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    torch.manual_seed(0)  # rank 0's initial weights, one process, both ranks' data in one batch
    net = _Tiny()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)])
    net.forward_train(x).pow(2).mean().backward()
    optimizer.step()
    for key, value in net.state_dict().items():
        assert torch.allclose(first[key], second[key]), key
        assert torch.allclose(first[key], value, atol=1e-6), key
