"""Argument parsing shared by the command-line tools: every bad argument is one ``error:`` line, exit status 2."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["OneLineArgumentParser", "UsageError", "parse_overrides"]


class UsageError(Exception):
    """A command-line argument was rejected by :class:`OneLineArgumentParser`."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises :class:`UsageError` instead of printing the usage and exiting.

    The tool's ``main`` catches it (with ``ValueError``) and prints one ``<prog>: error: <message>`` line.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise :class:`UsageError` with argparse's message."""
        raise UsageError(message)


def parse_overrides(items: Sequence[str] | None, option: str = "--override") -> dict[str, Any]:
    """Parse ``key=value`` config overrides; values are JSON (``8``, ``[128, 128]``, ``true``) or else plain strings.

    Keys use MONAI's ``#`` separator for nested ids (``network_def#clamp=1.5``).

    Args:
        items: the ``--override`` arguments.
        option: the option's name, for the error message.

    Returns:
        ``{key: value}`` in the order given (a repeated key keeps its last value).

    Raises:
        ValueError: for an item without ``=`` or with an empty key.

    Example:
        >>> parse_overrides(["n_blocks=4", "image_size=[128, 128]", "backbone=resnet18"])
        {'n_blocks': 4, 'image_size': [128, 128], 'backbone': 'resnet18'}
    """
    overrides: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            msg = f"{option}: expected key=value with a JSON value (e.g. n_blocks=4), got {item!r}"
            raise ValueError(msg)
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    return overrides
