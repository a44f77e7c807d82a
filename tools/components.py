"""A bundle's inference components built from its own config, and the torch device the command-line tools run on.

:func:`build_components` instantiates ``network_def``, ``scorer`` and ``slice_settings`` from a bundle's
``configs/inference.json`` (with overrides), as the bundle's inference does; the benchmark, the comparison and the
exports build their networks through it. :func:`resolve_device` turns a ``--device`` argument into a
:class:`torch.device`, with one-line errors.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn

from tools.bundles import bundle_dir

__all__ = ["build_components", "bundle_scripts_on_path", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device of a ``--device`` argument: ``cpu``, ``cuda`` or ``cuda:N``.

    Args:
        device: the device, or ``None`` for CUDA when it is available, else the CPU.

    Returns:
        The device, of type ``cpu`` or ``cuda``.

    Raises:
        ValueError: for a string torch does not read as a device, CUDA asked for where it is not available, or
            another device type (each message starts with ``--device:``).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        msg = f"--device: not a torch device: {device!r}; use cpu, cuda or cuda:N"
        raise ValueError(msg) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        msg = f"--device: {device!r} requested but CUDA is not available; use --device cpu"
        raise ValueError(msg)
    if resolved.type not in ("cpu", "cuda"):
        msg = f"--device: only cpu and cuda are supported, got {device!r}"
        raise ValueError(msg)
    return resolved


@contextmanager
def bundle_scripts_on_path(path: Path) -> Iterator[None]:
    """Import the bundle's ``scripts`` package from ``path``; restore ``sys.path`` and ``sys.modules`` afterwards.

    Each bundle has its own top-level ``scripts`` package, so another bundle's one already imported is set aside for
    the duration and put back at the end.
    """

    def is_scripts(name: str) -> bool:
        return name == "scripts" or name.startswith("scripts.")

    saved: dict[str, ModuleType] = {k: m for k, m in sys.modules.items() if is_scripts(k)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))
        for name in [k for k in sys.modules if is_scripts(k)]:
            del sys.modules[name]
        sys.modules.update(saved)


def build_components(
    bundle: str, overrides: Mapping[str, Any] | None = None, checkpoint: str | Path | None = None
) -> tuple[ConfigParser, nn.Module, Any, Any]:
    """Build ``network_def``, ``scorer`` and ``slice_settings`` from the bundle's ``configs/inference.json``.

    Args:
        bundle: bundle folder name under ``bundles/``.
        overrides: config ids (``#`` for nesting) and their values; every id must exist in the config.
        checkpoint: the config's ``ckpt_path``: a ``model.pt`` that describes its network gives the architecture
            (overrides still apply; the weights are not loaded here).

    Returns:
        ``(parser, network, scorer, slice_settings)``; the network is on the CPU, in eval mode.

    Raises:
        ValueError: for an unknown bundle (listing the available ones), an override id the config does not have, or
            a configuration that fails to build (the message gives the config id and the cause).
    """
    root = bundle_dir(bundle).resolve()
    config_file = root / "configs" / "inference.json"
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(root)
    if checkpoint is not None:
        parser["ckpt_path"] = str(checkpoint)
    for key, value in (overrides or {}).items():
        if key not in parser:
            top = sorted(k for k in parser.get() if not k.startswith("_") and k != "imports")
            msg = f"--override {key}: no such id in {config_file}; top-level ids: {top}"
            raise ValueError(msg)
        parser[key] = value
    built = {}
    with bundle_scripts_on_path(root):
        for key in ("network_def", "scorer", "slice_settings"):
            try:
                built[key] = parser.get_parsed_content(key, instantiate=True)
            except Exception as error:  # config errors arrive wrapped in MONAI's RuntimeError
                cause = error
                while cause.__cause__ is not None:
                    cause = cause.__cause__
                lines = [line for line in str(cause).strip().splitlines() if line.strip()] or [type(cause).__name__]
                msg = f"{config_file}: cannot build {key!r} with overrides {dict(overrides or {})}: {lines[-1]}"
                raise ValueError(msg) from error
    network = built["network_def"]
    if not isinstance(network, nn.Module):
        msg = f"{config_file}: network_def must build a torch.nn.Module, got {type(network).__name__}"
        raise ValueError(msg)
    return parser, network.eval(), built["scorer"], built["slice_settings"]
