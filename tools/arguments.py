"""Argument parsing shared by the command-line tools: every bad argument is one ``error:`` line, exit status 2."""

from __future__ import annotations

import argparse

__all__ = ["OneLineArgumentParser", "UsageError"]


class UsageError(Exception):
    """A command-line argument was rejected by :class:`OneLineArgumentParser`."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises :class:`UsageError` instead of printing the usage and exiting.

    The tool's ``main`` catches it (with ``ValueError``) and prints one ``<prog>: error: <message>`` line.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise :class:`UsageError` with argparse's message."""
        raise UsageError(message)
