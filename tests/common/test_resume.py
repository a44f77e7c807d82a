"""Tests for common.resume: a killed run resumes from its checkpoint and ends with an uninterrupted run's weights."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.transforms import Compose, RandGaussianNoised
from torch import nn

from common.checkpoint import NetworkDescription, records_arguments
from common.resume import (
    ReproducibleSteps,
    ResumableTraining,
    ResumeError,
    derive_seed,
    latest_checkpoint,
    shuffling_sampler,
)

SEED = 3
N_ITEMS = 12
BATCH_SIZE = 4
ITERATIONS_PER_EPOCH = N_ITEMS // BATCH_SIZE


@pytest.fixture(autouse=True)
def _keep_global_random_state() -> Iterator[None]:
    """The runs re-seed the global generators; give the other tests theirs back."""
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    torch.set_rng_state(torch_state)
    np.random.set_state(numpy_state)
    random.setstate(python_state)


@records_arguments()
class _Net(nn.Module):
    """Dropout then a linear layer: the step draws from the global torch generator."""

    def __init__(self, features: int = 4, scale: float = 1.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.25)
        self.linear = nn.Linear(features, 1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x)) * self.scale


class _Run:
    """A training run built from scratch: seeded, then network, optimizer, data and trainer."""

    def __init__(
        self,
        ckpt_dir: Path,
        *,
        max_epochs: int = 3,
        reproducible: bool = True,
        plain_shuffle: bool = False,
        describe: bool = False,
        net_kwargs: dict[str, Any] | None = None,
        **resumable_kwargs: Any,
    ) -> None:
        torch.manual_seed(SEED)
        self.net = _Net(**(net_kwargs or {}))
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.05)
        generator = torch.Generator().manual_seed(0)  # the same data in every run
        data = [
            {"image": torch.randn(1, 4, generator=generator), "label": torch.randn(1, 1, generator=generator)}
            for _ in range(N_ITEMS)
        ]
        dataset = Dataset(data=data, transform=Compose([RandGaussianNoised(keys="image", prob=1.0, std=0.5)]))
        if plain_shuffle:
            self.loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=0)
        else:
            sampler = shuffling_sampler(dataset, SEED)
            self.loader = DataLoader(dataset, batch_size=BATCH_SIZE, sampler=sampler, num_workers=0)
        save_dict: dict[str, Any] = {"model": self.net, "optimizer": self.optimizer}
        if describe:
            save_dict["network_def"] = NetworkDescription(self.net)
        self.resumable = ResumableTraining(ckpt_dir, save_dict=save_dict, **resumable_kwargs)
        handlers: list[Any] = [self.resumable]
        if reproducible:
            handlers.append(ReproducibleSteps(SEED, self.loader))
        self.trainer = SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=max_epochs,
            train_data_loader=self.loader,
            network=self.net,
            optimizer=self.optimizer,
            loss_function=nn.MSELoss(),
            train_handlers=handlers,
        )
        self.iterations_run = 0
        self.trainer.add_event_handler(Events.ITERATION_COMPLETED, self._count)

    def _count(self, engine: Engine) -> None:
        self.iterations_run += 1

    def crash_at_epoch(self, epoch: int) -> None:
        """Raise when ``epoch`` starts, as a killed job would stop."""

        def crash(engine: Engine) -> None:
            msg = f"killed at the start of epoch {engine.state.epoch}"
            raise RuntimeError(msg)

        self.trainer.add_event_handler(Events.EPOCH_STARTED(once=epoch), crash)

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: value.clone() for name, value in self.net.state_dict().items()}


def _same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def _files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def _interrupted_then_resumed(ckpt_dir: Path, **run_kwargs: Any) -> _Run:
    """Run to the start of epoch 2 (after ``checkpoint_epoch=1.pt``), then resume in a fresh run to the end."""
    interrupted = _Run(ckpt_dir, **run_kwargs)
    interrupted.crash_at_epoch(2)
    with pytest.raises(RuntimeError, match="killed at the start of epoch 2"):
        interrupted.trainer.run()
    assert _files(ckpt_dir) == ["checkpoint_epoch=1.pt"]
    assert interrupted.iterations_run == ITERATIONS_PER_EPOCH
    resumed = _Run(ckpt_dir, resume=True, **run_kwargs)
    resumed.trainer.run()
    return resumed


# --- derive_seed, shuffling_sampler, latest_checkpoint


def test_derive_seed_is_a_deterministic_32_bit_function_of_seed_and_position() -> None:
    assert derive_seed(7, 0, 5) == derive_seed(7, 0, 5)
    assert derive_seed(7, 0, 5) != derive_seed(8, 0, 5)
    assert derive_seed(7, 0, 5) != derive_seed(7, 0, 6)
    assert derive_seed(7, 0, 5) != derive_seed(7, 1, 5)  # the data stream and the step stream differ
    iteration_seeds = [derive_seed(7, 1, i) for i in range(1, 1001)]
    assert len(set(iteration_seeds)) == len(iteration_seeds)
    for value in [*iteration_seeds, derive_seed(2**40 + 3, 0, 1), derive_seed(0, 2**31, 2**40)]:
        assert isinstance(value, int)
        assert 0 <= value < 2**32
    assert derive_seed(2**32 + 7, 0, 5) == derive_seed(7, 0, 5)  # the seed is taken modulo 2**32


def test_shuffling_sampler_order_depends_on_seed_and_epoch_only() -> None:
    dataset = Dataset(data=list(range(10)))

    def order(seed: int, epoch: int, *, earlier_epochs: Sequence[int] = ()) -> list[int]:
        sampler = shuffling_sampler(dataset, seed)
        for earlier in earlier_epochs:
            sampler.set_epoch(earlier)
            list(sampler)
        sampler.set_epoch(epoch)
        return list(sampler)

    reference = order(5, 2)
    torch.manual_seed(123)
    torch.rand(100)  # another global generator state changes nothing
    assert order(5, 2) == reference
    assert order(5, 2, earlier_epochs=(0, 1)) == reference  # nor does the sampler's history
    assert sorted(reference) == list(range(10))  # every index once
    assert len(shuffling_sampler(dataset, 5)) == 10
    epochs = [order(5, epoch) for epoch in range(1, 5)]
    assert all(epochs[i] != epochs[i + 1] for i in range(len(epochs) - 1))
    assert order(6, 2) != reference


def test_latest_checkpoint_is_the_highest_epoch(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "absent") is None
    assert latest_checkpoint(tmp_path) is None
    for name in [
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=9.pt",
        "checkpoint_epoch=10.pt",
        "model.pt",
        "checkpoint_final_iteration=500.pt",
        "other_epoch=99.pt",
        "checkpoint_epoch=11.pt.bak",
        "checkpoint_epoch=x.pt",
        "notes.txt",
    ]:
        (tmp_path / name).write_bytes(b"")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=10.pt"
    assert latest_checkpoint(str(tmp_path)) == tmp_path / "checkpoint_epoch=10.pt"


def test_latest_checkpoint_ignores_folders_without_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "checkpoint_key_metric=0.9.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path) is None


# --- resuming


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    uninterrupted = _Run(tmp_path / "uninterrupted")
    uninterrupted.trainer.run()
    assert uninterrupted.iterations_run == 3 * ITERATIONS_PER_EPOCH

    ckpt_dir = tmp_path / "killed"
    resumed = _interrupted_then_resumed(ckpt_dir)

    assert resumed.resumable.resumed_from == ckpt_dir / "checkpoint_epoch=1.pt"
    assert resumed.iterations_run == 2 * ITERATIONS_PER_EPOCH  # epochs 2 and 3 only
    assert resumed.trainer.state.epoch == uninterrupted.trainer.state.epoch == 3
    assert resumed.trainer.state.iteration == uninterrupted.trainer.state.iteration == 3 * ITERATIONS_PER_EPOCH
    assert _same_weights(resumed.weights(), uninterrupted.weights())
    resumed_adam = resumed.optimizer.state_dict()["state"]
    uninterrupted_adam = uninterrupted.optimizer.state_dict()["state"]
    for index, state in uninterrupted_adam.items():
        assert torch.equal(resumed_adam[index]["exp_avg"], state["exp_avg"])
        assert torch.equal(resumed_adam[index]["step"], state["step"])
    # the old checkpoint stays; the resumed run keeps the latest of its own
    assert _files(ckpt_dir) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=3.pt"]
    assert latest_checkpoint(ckpt_dir) == ckpt_dir / "checkpoint_epoch=3.pt"


def test_the_resumed_run_really_continues_from_the_checkpoint(tmp_path: Path) -> None:
    """A fresh start would not do: training from epoch 1's weights is what makes the runs agree."""
    after_one = _Run(tmp_path / "one", max_epochs=1)
    after_one.trainer.run()
    checkpoint = torch.load(tmp_path / "one" / "checkpoint_epoch=1.pt", weights_only=True)
    assert _same_weights(checkpoint["model"], after_one.weights())
    assert checkpoint["trainer"]["iteration"] == ITERATIONS_PER_EPOCH

    fresh = _Run(tmp_path / "fresh")  # same seed, no resume: its first epoch starts from the initial weights
    assert not _same_weights(fresh.weights(), after_one.weights())
    resumed = _Run(tmp_path / "resumed", max_epochs=1, resume_from=tmp_path / "one" / "checkpoint_epoch=1.pt")
    resumed.trainer.run()  # the checkpoint's epoch is the run's last: nothing left to do
    assert resumed.iterations_run == 0
    assert _same_weights(resumed.weights(), after_one.weights())


@pytest.mark.parametrize("variant", ["without_reproducible_steps"])
def test_without_reproducible_randomness_a_resumed_run_differs(tmp_path: Path, variant: str) -> None:
    options = {"reproducible": False} if variant == "without_reproducible_steps" else {"plain_shuffle": True}
    uninterrupted = _Run(tmp_path / "uninterrupted", **options)
    uninterrupted.trainer.run()
    resumed = _interrupted_then_resumed(tmp_path / "killed", **options)
    assert resumed.trainer.state.iteration == uninterrupted.trainer.state.iteration
    assert not _same_weights(resumed.weights(), uninterrupted.weights())
    # yet each configuration is deterministic: a second uninterrupted run repeats the first
    again = _Run(tmp_path / "again", **options)
    again.trainer.run()
    assert _same_weights(again.weights(), uninterrupted.weights())


def test_resume_without_a_checkpoint_starts_from_epoch_0(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt_dir = tmp_path / "ckpt"
    run = _Run(ckpt_dir, resume=True)
    with caplog.at_level(logging.WARNING, logger="common.resume"):
        run.trainer.run()
    warnings = [r for r in caplog.records if r.name == "common.resume" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "starting from epoch 0" in warnings[0].getMessage()
    assert str(ckpt_dir) in warnings[0].getMessage()
    assert run.resumable.resumed_from is None
    assert run.iterations_run == 3 * ITERATIONS_PER_EPOCH
    assert run.trainer.state.epoch == 3
    assert _files(ckpt_dir) == ["checkpoint_epoch=3.pt"]


def test_resuming_with_more_data_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _Run(tmp_path / "twelve", max_epochs=1).trainer.run()  # 3 iterations per epoch
    monkeypatch.setattr(f"{__name__}.N_ITEMS", 20)  # the data grew: 5 iterations per epoch
    run = _Run(tmp_path / "twenty", resume_from=tmp_path / "twelve" / "checkpoint_epoch=1.pt")
    assert len(run.loader) == 5
    with pytest.raises(ResumeError, match="had 3 iterations per epoch, this one has 5"):
        run.trainer.run()
    assert run.iterations_run == 0


# --- unusable checkpoints: one line naming the file, before any iteration


def _resume_error(run: _Run) -> str:
    with pytest.raises(ResumeError) as raised:
        run.trainer.run()
    message = str(raised.value)
    assert "\n" not in message
    assert run.iterations_run == 0
    assert run.resumable.resumed_from is None
    return message


def test_a_corrupt_checkpoint_is_a_one_line_error_before_training(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_epoch=4.pt"
    path.write_bytes(np.random.default_rng(0).bytes(512))
    run = _Run(tmp_path / "run", resume_from=path)
    before = run.weights()
    message = _resume_error(run)
    assert message.startswith(f"{path}: not a readable training checkpoint")
    assert _same_weights(run.weights(), before)
    assert _files(tmp_path / "run") == []  # nothing trained, nothing saved


def test_a_corrupt_latest_checkpoint_is_reported_with_resume(tmp_path: Path) -> None:
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(b"truncated")
    message = _resume_error(_Run(tmp_path, resume=True))
    assert message.startswith(f"{tmp_path / 'checkpoint_epoch=2.pt'}: not a readable training checkpoint")


def test_a_file_that_is_not_a_dictionary_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    message = _resume_error(_Run(tmp_path / "run", resume_from=path))
    assert message == f"{path}: not a training checkpoint (expected a dictionary of saved objects)"


def test_a_checkpoint_lacking_an_object_of_the_run_names_it(tmp_path: Path) -> None:
    path = tmp_path / "model_only.pt"
    torch.save({"model": _Net().state_dict()}, path)
    message = _resume_error(_Run(tmp_path / "run", resume_from=path))
    assert message == f"{path}: not a checkpoint of this training run; it lacks optimizer, trainer"


def test_a_checkpoint_of_another_architecture_does_not_fit(tmp_path: Path) -> None:
    trained = _Run(tmp_path / "four", max_epochs=1)
    trained.trainer.run()
    path = tmp_path / "four" / "checkpoint_epoch=1.pt"
    message = _resume_error(_Run(tmp_path / "five", resume_from=path, net_kwargs={"features": 5}))
    assert message.startswith(f"{path}: does not fit this training run (")
    assert "size mismatch for linear.weight" in message  # the line of torch's error that names the parameter


def test_a_checkpoint_past_the_runs_last_epoch_does_not_fit(tmp_path: Path) -> None:
    _Run(tmp_path / "three", max_epochs=3).trainer.run()
    path = tmp_path / "three" / "checkpoint_epoch=3.pt"
    message = _resume_error(_Run(tmp_path / "two", max_epochs=2, resume_from=path))
    assert message.startswith(f"{path}: does not fit this training run (")


def test_a_missing_resume_path_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "checkpoint_epoch=7.pt"
    run = _Run(tmp_path / "run", resume_from=path, resume=True)
    assert _resume_error(run) == f"{path}: resume checkpoint not found"


def test_other_constructor_arguments_than_the_checkpoints_are_refused(tmp_path: Path) -> None:
    _Run(tmp_path / "scale1", max_epochs=1, describe=True).trainer.run()
    path = tmp_path / "scale1" / "checkpoint_epoch=1.pt"
    stored = torch.load(path, weights_only=True)["network_def"]
    assert stored["arguments"] == {"features": 4, "scale": 1.0}

    message = _resume_error(_Run(tmp_path / "scale2", describe=True, resume_from=path, net_kwargs={"scale": 2.0}))
    assert message.startswith(f"{path}: ")
    assert "scale=2.0 was given but the model was trained with scale=1.0" in message

    same = _Run(tmp_path / "same", max_epochs=2, describe=True, resume_from=path)
    same.trainer.run()  # the same arguments resume
    assert same.resumable.resumed_from == path
    assert same.iterations_run == ITERATIONS_PER_EPOCH


# --- saving


def test_interval_0_saves_nothing(tmp_path: Path) -> None:
    run = _Run(tmp_path / "ckpt", interval=0)
    run.trainer.run()
    assert run.iterations_run == 3 * ITERATIONS_PER_EPOCH
    assert _files(tmp_path / "ckpt") == []


def test_interval_2_over_3_epochs_saves_epoch_2(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    epoch_2: dict[str, torch.Tensor] = {}
    run = _Run(ckpt_dir, interval=2)
    run.trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda _: epoch_2.update(run.weights()))
    run.trainer.run()
    assert _files(ckpt_dir) == ["checkpoint_epoch=2.pt"]
    checkpoint = torch.load(ckpt_dir / "checkpoint_epoch=2.pt", weights_only=True)
    assert set(checkpoint) == {"model", "optimizer", "trainer"}
    assert checkpoint["trainer"]["iteration"] == 2 * ITERATIONS_PER_EPOCH
    assert _same_weights(checkpoint["model"], epoch_2)
    assert not _same_weights(checkpoint["model"], run.weights())


def test_interval_1_keeps_the_latest_checkpoint_only(tmp_path: Path) -> None:
    run = _Run(tmp_path / "ckpt", interval=1)
    run.trainer.run()
    assert _files(tmp_path / "ckpt") == ["checkpoint_epoch=3.pt"]
    checkpoint = torch.load(tmp_path / "ckpt" / "checkpoint_epoch=3.pt", weights_only=True)
    assert _same_weights(checkpoint["model"], run.weights())


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"interval": -1}, "checkpoint_interval must be an int >= 0, got -1"),
        ({"interval": True}, "checkpoint_interval must be an int >= 0, got True"),
        ({"interval": 1.0}, "checkpoint_interval must be an int >= 0, got 1.0"),
        ({"interval": "2"}, "checkpoint_interval must be an int >= 0, got '2'"),
        ({"resume": "yes"}, "resume must be true or false, got 'yes'"),
        ({"resume": 1}, "resume must be true or false, got 1"),
        ({"resume": None}, "resume must be true or false, got None"),
    ],
)
def test_constructor_validation(tmp_path: Path, arguments: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as raised:
        ResumableTraining(tmp_path, save_dict={"model": _Net()}, **arguments)
    assert str(raised.value) == match


def test_reproducible_steps_reseed_every_step(tmp_path: Path) -> None:
    """The global generators after an iteration depend on the seed and the iteration, not on what ran before."""
    draws: list[tuple[int, float, float, float]] = []

    def record(engine: Engine) -> None:
        draws.append((engine.state.iteration, torch.rand(1).item(), float(np.random.rand()), random.random()))

    runs: list[Callable[[], None]] = []
    for name in ("first", "second"):
        run = _Run(tmp_path / name, max_epochs=1, interval=0)
        run.trainer.add_event_handler(Events.ITERATION_STARTED, record)
        runs.append(run.trainer.run)
    runs[0]()
    torch.rand(50)
    np.random.rand(7)
    runs[1]()
    first, second = draws[:ITERATIONS_PER_EPOCH], draws[ITERATIONS_PER_EPOCH:]
    assert first == second
    assert len({draw[1] for draw in first}) == ITERATIONS_PER_EPOCH
