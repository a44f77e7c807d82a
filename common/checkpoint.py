"""Self-describing checkpoints: ``model.pt`` carries the network's constructor arguments and its bundle's version.

Training saves ``{"model": state_dict, "network_def": description}`` (MONAI ``CheckpointSaver`` with a
:class:`NetworkDescription` beside the network). The description is plain JSON-able data, so the file still loads with
``torch.load(..., weights_only=True)``::

    {"_target_": "scripts.network.MSNF", "arguments": {"image_size": [96, 96], "n_blocks": 4, ...},
     "bundle": {"id": "ms_nf", "name": "MS-NF anomaly detection", "version": "0.3.0"}}

The inference, evaluation and MONAI Label configs read the arguments back (:func:`stored_arguments`) as the defaults of
their architecture keys, so a model trained with any overrides runs from ``--ckpt_path`` alone. An architecture
argument given at inference that differs from the checkpoint's is a one-line error naming the key and both values
(:func:`check_arguments`), instead of a wall of ``size mismatch`` lines from ``load_state_dict``. A checkpoint written
before descriptions existed has none: the config's values are used, as before.

A network class opts in with :func:`records_arguments`, which keeps the arguments it was built with in
``constructor_arguments``; arguments that do not shape the trained model (pretrained-weight files, which ``model.pt``
replaces, and training-only settings) are named as ``runtime`` and are neither stored nor checked. Arguments that
only change how a trained network is read out (e.g. which maps are summed) are named as ``readout``: they are stored,
so the checkpoint's value is the default, and a different value given at inference is used (and logged), not refused.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from common.parallel import unwrap_network

__all__ = [
    "DESCRIPTION_KEY",
    "ArchitectureMismatchError",
    "NetworkDescription",
    "check_arguments",
    "read_description",
    "records_arguments",
    "stored_arguments",
]

DESCRIPTION_KEY = "network_def"
"""Key of the description in ``model.pt`` (next to ``"model"``, the ``state_dict``)."""

ModuleType = TypeVar("ModuleType", bound=type)
logger = logging.getLogger(__name__)


class ArchitectureMismatchError(ValueError):
    """A network's constructor argument differs from the one its checkpoint was trained with."""


def _plain(value: Any, name: str) -> Any:
    """``value`` as JSON data (tuples become lists, paths strings); a one-line error for anything else."""
    if isinstance(value, Path):
        return str(value)
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        msg = f"constructor argument {name}={value!r} is not JSON data; name it in records_arguments(runtime=...)"
        raise TypeError(msg) from None


def records_arguments(runtime: Sequence[str] = (), readout: Sequence[str] = ()) -> Callable[[ModuleType], ModuleType]:
    """Class decorator: instances keep their constructor arguments in ``constructor_arguments`` (JSON data).

    Every argument of ``__init__`` is recorded after defaults are applied, except those named in ``runtime``.

    Args:
        runtime: arguments that do not shape the trained model (e.g. ``backbone_weights``: ``model.pt`` holds the
            weights; ``seed``; training-only noise).
        readout: recorded arguments that only change how the trained model is read out (which maps, how they are
            weighted); :func:`check_arguments` accepts a value other than the stored one for them.

    Example:
        >>> @records_arguments(runtime=("seed",))
        ... class Net(nn.Module):
        ...     def __init__(self, width: int = 8, seed: int = 0) -> None:
        ...         super().__init__()
        >>> Net(width=4).constructor_arguments
        {'width': 4}
    """
    skipped = frozenset(runtime)
    readable = frozenset(readout)

    def decorate(cls: ModuleType) -> ModuleType:
        init = cls.__init__
        signature = inspect.signature(init)
        for kind, names in (("runtime", skipped), ("readout", readable)):
            unknown = names - set(signature.parameters)
            if unknown:
                msg = f"{cls.__name__}: {kind} names {sorted(unknown)} are not arguments of __init__"
                raise TypeError(msg)
        if skipped & readable:
            msg = f"{cls.__name__}: {sorted(skipped & readable)} cannot be both runtime and readout arguments"
            raise TypeError(msg)
        cls.readout_arguments = readable

        @functools.wraps(init)
        def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            init(self, *args, **kwargs)
            # Set after the wrapped __init__, so a subclass's arguments replace those its super().__init__ recorded.
            self.constructor_arguments = {
                name: _plain(value, name) for name, value in list(bound.arguments.items())[1:] if name not in skipped
            }

        cls.__init__ = __init__
        return cls

    return decorate


def _bundle_identity(bundle_root: str | Path | None) -> dict[str, str]:
    """``{"id": folder name, "name": display name, "version": ...}`` from the bundle's ``configs/metadata.json``."""
    if bundle_root is None:
        return {}
    root = Path(bundle_root).resolve()
    identity = {"id": root.name}
    metadata = root / "configs" / "metadata.json"
    if metadata.is_file():
        data = json.loads(metadata.read_text())
        identity.update(name=str(data.get("name", root.name)), version=str(data.get("version", "")))
    return identity


class NetworkDescription:
    """The description of a network for ``CheckpointSaver``'s ``save_dict`` (module docstring).

    Args:
        network: a module built by a class decorated with :func:`records_arguments` (data-parallel and
            :class:`common.parallel.TrainingForward` wrappers are unwrapped).
        bundle_root: the bundle folder (its name is the bundle's id); its ``configs/metadata.json`` gives the
            bundle's name and version.

    Raises:
        TypeError: when the network does not record its constructor arguments.
    """

    def __init__(self, network: nn.Module, bundle_root: str | Path | None = None) -> None:
        module = unwrap_network(network)
        arguments = getattr(module, "constructor_arguments", None)
        if arguments is None:
            msg = f"{type(module).__name__} does not record its constructor arguments (common.checkpoint)"
            raise TypeError(msg)
        self.description = {
            "_target_": f"{type(module).__module__}.{type(module).__qualname__}",
            "arguments": dict(arguments),
            "bundle": _bundle_identity(bundle_root),
        }

    def state_dict(self) -> dict[str, Any]:
        """The description (what ``CheckpointSaver`` writes)."""
        return self.description

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take a stored description (what ``CheckpointLoader`` calls when a run resumes)."""
        self.description = dict(state)


def read_description(path: str | Path) -> dict[str, Any] | None:
    """The description stored in ``model.pt``, or ``None`` for a checkpoint written before descriptions existed.

    Raises:
        ValueError: when the file is not a readable checkpoint, in one line naming it.
    """
    try:
        checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged or foreign file
        msg = f"{path}: not a readable model checkpoint ({type(error).__name__}: {str(error).splitlines()[0]})"
        raise ValueError(msg) from None
    if not isinstance(checkpoint, dict):
        return None
    description = checkpoint.get(DESCRIPTION_KEY)
    return description if isinstance(description, dict) else None


def stored_arguments(path: str | Path | None) -> dict[str, Any]:
    """Constructor arguments stored in ``model.pt``; ``{}`` when the file is absent or predates descriptions.

    The configs use them as the defaults of their architecture keys:
    ``"n_blocks": "$@architecture.get('n_blocks', 15)"`` with ``"architecture":
    "$common.checkpoint.stored_arguments(@ckpt_path)"``. An absent file gives ``{}`` so that configs still resolve
    before training (the missing checkpoint is reported when the weights are loaded).
    """
    if path is None or not Path(path).is_file():
        return {}
    description = read_description(path)
    return dict(description.get("arguments", {})) if description else {}


def check_arguments(network: nn.Module, path: str | Path) -> None:
    """Require that ``network`` was built with the architecture its checkpoint was trained with.

    Compares the arguments the checkpoint stores with the network's ``constructor_arguments`` (as JSON data). Does
    nothing for a checkpoint without a description or a network that does not record its arguments.

    Raises:
        ArchitectureMismatchError: one line naming the first differing key, the value given and the stored one.
    """
    module = unwrap_network(network)
    given = getattr(module, "constructor_arguments", None)
    if given is None or not Path(path).is_file():
        return
    description = read_description(path)
    if not description:
        return
    readout = getattr(module, "readout_arguments", frozenset())
    for key, stored in description.get("arguments", {}).items():
        if key not in given or given[key] == stored:
            continue
        if key in readout:
            logger.info("%s: read out with %s=%s (trained with %s)", path, key, json.dumps(given[key]), stored)
        else:
            msg = (
                f"{path}: {key}={json.dumps(given[key])} was given but the model was trained with "
                f"{key}={json.dumps(stored)}; drop the override (the checkpoint's value is the default)"
            )
            logger.error(msg)  # one clear line before MONAI's config machinery wraps the exception
            raise ArchitectureMismatchError(msg)
