"""Tests for common.checkpoint: networks that record their constructor arguments and the model.pt describing them."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointSaver
from torch import nn

from common.checkpoint import (
    DESCRIPTION_KEY,
    ArchitectureMismatchError,
    NetworkDescription,
    check_arguments,
    read_description,
    records_arguments,
    stored_arguments,
)
from common.training import load_checkpoint


@records_arguments(runtime=("weights", "seed"))
class Tiny(nn.Module):
    """A network whose ``width`` shapes its parameters; ``weights`` and ``seed`` do not shape the trained model."""

    def __init__(
        self,
        size: tuple[int, int] = (8, 8),
        width: int = 4,
        root: str | Path = Path("scans"),
        weights: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 1)


@records_arguments()
class Deeper(Tiny):
    """A subclass with its own arguments: its record replaces the one its ``super().__init__`` made."""

    def __init__(self, depth: int = 3, width: int = 4) -> None:
        super().__init__(width=width, seed=7)
        self.head = nn.Conv2d(width, depth, 1)


class Wrapper(nn.Module):
    """Like ``DistributedDataParallel``: the network is ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


@pytest.fixture
def bundle_root(tmp_path: Path) -> Path:
    """A bundle folder ``my_bundle`` with a ``configs/metadata.json``."""
    root = tmp_path / "my_bundle"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "metadata.json").write_text(json.dumps({"name": "My bundle", "version": "1.2.3"}))
    return root


def _save_described(network: nn.Module, path: Path, bundle_root: Path | None = None) -> dict:
    description = NetworkDescription(network, bundle_root).state_dict()
    torch.save({"model": network.state_dict(), DESCRIPTION_KEY: description}, path)
    return description


# --------------------------------------------------------------------------------------------------------------------
# records_arguments


def test_records_arguments_after_defaults_as_json_data_without_runtime_names() -> None:
    net = Tiny(width=2, root=Path("data") / "t1", weights="backbone.pt", seed=3)
    assert net.constructor_arguments == {"size": [8, 8], "width": 2, "root": "data/t1"}
    assert json.loads(json.dumps(net.constructor_arguments)) == net.constructor_arguments
    assert Tiny((16, 12)).constructor_arguments == {"size": [16, 12], "width": 4, "root": "scans"}  # positional


def test_records_arguments_rejects_runtime_names_that_are_not_arguments() -> None:
    class Net(nn.Module):
        def __init__(self, width: int = 4) -> None:
            super().__init__()

    with pytest.raises(TypeError, match=r"Net: runtime names \['nope'\] are not arguments of __init__"):
        records_arguments(runtime=("width", "nope"))(Net)


def test_a_subclass_records_its_own_arguments() -> None:
    net = Deeper(width=6)
    assert net.constructor_arguments == {"depth": 3, "width": 6}
    assert net.conv.out_channels == 6


def test_an_argument_that_is_not_json_data_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match=r"constructor argument root=<object object at .*> is not JSON data"):
        Tiny(root=object())
    with pytest.raises(TypeError, match=r"size=\(8, \w*Path\(.* name it in records_arguments\(runtime=...\)$"):
        Tiny(size=(8, Path("x")))  # only a path argument itself becomes a string


def test_records_arguments_keeps_the_signature() -> None:
    """MONAI's config parser reads the class's signature to check the arguments a config gives."""
    assert list(inspect.signature(Tiny).parameters) == ["size", "width", "root", "weights", "seed"]


# --------------------------------------------------------------------------------------------------------------------
# NetworkDescription


def test_description_names_the_class_its_arguments_and_the_bundle(bundle_root: Path) -> None:
    description = NetworkDescription(Tiny(width=2), bundle_root).state_dict()
    assert description == {
        "_target_": f"{Tiny.__module__}.Tiny",
        "arguments": {"size": [8, 8], "width": 2, "root": "scans"},
        "bundle": {"id": "my_bundle", "name": "My bundle", "version": "1.2.3"},
    }
    assert Tiny.__module__ == "tests.common.test_checkpoint"


def test_description_of_a_wrapped_network_is_that_of_the_network(bundle_root: Path) -> None:
    wrapped = NetworkDescription(Wrapper(Deeper(depth=2)), bundle_root).state_dict()
    assert wrapped["_target_"] == f"{Deeper.__module__}.Deeper"
    assert wrapped["arguments"] == {"depth": 2, "width": 4}


def test_description_without_metadata_or_bundle(tmp_path: Path) -> None:
    (tmp_path / "bare").mkdir()
    assert NetworkDescription(Tiny(), tmp_path / "bare").state_dict()["bundle"] == {"id": "bare"}
    assert NetworkDescription(Tiny()).state_dict()["bundle"] == {}


def test_description_of_a_network_that_does_not_record_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Linear does not record its constructor arguments"):
        NetworkDescription(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Linear does not record"):
        NetworkDescription(Wrapper(nn.Linear(2, 2)))


def test_description_load_state_dict_takes_a_stored_one(bundle_root: Path) -> None:
    stored = NetworkDescription(Tiny(width=2), bundle_root).state_dict()
    description = NetworkDescription(Tiny())
    description.load_state_dict(stored)
    assert description.state_dict() == stored


def test_checkpoint_saver_writes_a_description_that_loads_with_weights_only(bundle_root: Path, tmp_path: Path) -> None:
    """What training does: MONAI's ``CheckpointSaver`` with the description beside the network in ``save_dict``."""
    net = Tiny(size=(4, 4), width=3)
    engine = Engine(lambda engine, batch: None)
    save_dict = {"model": net, DESCRIPTION_KEY: NetworkDescription(net, bundle_root)}
    CheckpointSaver(str(tmp_path / "models"), save_dict, save_final=True, final_filename="model.pt").attach(engine)
    engine.run([0], max_epochs=1)
    path = tmp_path / "models" / "model.pt"

    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert set(loaded) == {"model", DESCRIPTION_KEY}
    assert loaded[DESCRIPTION_KEY] == NetworkDescription(net, bundle_root).state_dict()
    assert read_description(path) == loaded[DESCRIPTION_KEY]
    rebuilt = Tiny(**stored_arguments(path))
    rebuilt.load_state_dict(loaded["model"])  # strict: the stored arguments rebuild the same parameters
    assert torch.equal(rebuilt.conv.weight, net.conv.weight)
    assert rebuilt.constructor_arguments == net.constructor_arguments


# --------------------------------------------------------------------------------------------------------------------
# Reading a checkpoint


def test_stored_arguments(tmp_path: Path) -> None:
    assert stored_arguments(None) == {}
    assert stored_arguments(tmp_path / "missing.pt") == {}  # configs resolve before training
    net = Tiny(width=2)
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    torch.save({"model": net.state_dict()}, tmp_path / "wrapped.pt")
    assert stored_arguments(tmp_path / "bare.pt") == {}
    assert stored_arguments(tmp_path / "wrapped.pt") == {}
    _save_described(net, tmp_path / "described.pt")
    assert stored_arguments(tmp_path / "described.pt") == {"size": [8, 8], "width": 2, "root": "scans"}
    assert stored_arguments(str(tmp_path / "described.pt"))["width"] == 2


def test_read_description_of_old_and_foreign_checkpoints_is_none(tmp_path: Path) -> None:
    torch.save({"model": Tiny().state_dict()}, tmp_path / "old.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({"model": {}, DESCRIPTION_KEY: "not a dict"}, tmp_path / "odd.pt")
    for name in ("old.pt", "list.pt", "odd.pt"):
        assert read_description(tmp_path / name) is None, name


def test_read_description_of_a_corrupt_file_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"this is not a checkpoint\nsecond line\n")
    with pytest.raises(ValueError, match="not a readable model checkpoint") as error:
        read_description(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    with pytest.raises(ValueError, match="not a readable model checkpoint"):
        stored_arguments(path)


# --------------------------------------------------------------------------------------------------------------------
# check_arguments and load_checkpoint


def test_check_arguments_passes_for_the_stored_architecture(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _save_described(Tiny(size=(4, 4), width=2, weights="a.pt", seed=1), path)
    check_arguments(Tiny(size=[4, 4], width=2, weights="b.pt", seed=2), path)  # runtime arguments are not compared
    check_arguments(Wrapper(Tiny(size=(4, 4), width=2)), path)


def test_check_arguments_conflict_is_one_line_naming_the_key_and_both_values(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _save_described(Tiny(size=(4, 4), width=2), path)
    with pytest.raises(ArchitectureMismatchError) as error:
        check_arguments(Tiny(size=(6, 4), width=2), path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert "size=[6, 4] was given but the model was trained with size=[4, 4]" in message
    with pytest.raises(ValueError, match="width=3 was given .* trained with width=2"):  # a ValueError for the CLIs
        check_arguments(Wrapper(Tiny(size=(4, 4), width=3)), path)


@records_arguments(runtime=("seed",), readout=("levels",))
class ReadOut(nn.Module):
    """``width`` shapes the parameters; ``levels`` only selects what the trained network outputs."""

    def __init__(self, width: int = 4, levels: tuple[int, ...] = (1, 2), seed: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 1)


def test_readout_arguments_are_stored_and_may_differ_at_inference(tmp_path: Path, caplog) -> None:
    path = tmp_path / "model.pt"
    description = _save_described(ReadOut(width=2, levels=(1, 2)), path)
    assert description["arguments"] == {"width": 2, "levels": [1, 2]}
    with caplog.at_level(logging.INFO, logger="common.checkpoint"):
        check_arguments(ReadOut(width=2, levels=(2,)), path)
    assert "levels=[2] (trained with [1, 2])" in caplog.text
    with pytest.raises(ArchitectureMismatchError, match="width=3"):
        check_arguments(ReadOut(width=3, levels=(2,)), path)


def test_records_arguments_rejects_bad_readout_names() -> None:
    with pytest.raises(TypeError, match="readout names \\['depth'\\]"):
        records_arguments(readout=("depth",))(Tiny)
    with pytest.raises(TypeError, match="both runtime and readout"):
        records_arguments(runtime=("seed",), readout=("seed",))(Tiny)


def test_check_arguments_does_nothing_without_a_description(tmp_path: Path) -> None:
    torch.save({"model": Tiny(width=2).state_dict()}, tmp_path / "old.pt")
    torch.save(Tiny(width=2).state_dict(), tmp_path / "bare.pt")
    _save_described(Tiny(width=2), tmp_path / "described.pt")
    check_arguments(Tiny(width=5), tmp_path / "old.pt")
    check_arguments(Tiny(width=5), tmp_path / "bare.pt")
    check_arguments(Tiny(width=5), tmp_path / "missing.pt")
    check_arguments(nn.Conv2d(1, 5, 1), tmp_path / "described.pt")  # the network does not record its arguments


def test_load_checkpoint_reports_the_architecture_before_any_size_mismatch(tmp_path: Path) -> None:
    trained = Tiny(width=2)
    _save_described(trained, tmp_path / "model.pt")
    torch.save({"model": trained.state_dict()}, tmp_path / "old.pt")
    other = Tiny(width=3)
    before = other.conv.weight.detach().clone()
    with pytest.raises(ArchitectureMismatchError, match="width=3 was given .* trained with width=2"):
        load_checkpoint(other, tmp_path / "model.pt")
    assert torch.equal(other.conv.weight, before)  # nothing was loaded
    with pytest.raises(RuntimeError, match="size mismatch"):  # an old checkpoint: load_state_dict's own error
        load_checkpoint(other, tmp_path / "old.pt")
    loaded = load_checkpoint(Wrapper(Tiny(width=2)), tmp_path / "model.pt")
    assert torch.equal(loaded.module.conv.weight, trained.conv.weight)
