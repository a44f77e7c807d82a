"""Checks of the benchmark's sizes and counts: each bad value is a ``ValueError`` naming the argument."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["non_negative_int", "positive_int", "positive_ints"]


def _integer_at_least(name: str, value: int, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        msg = f"{name}: expected a {what} integer, got {value!r}"
        raise ValueError(msg)
    return int(value)


def positive_int(name: str, value: int) -> int:
    """``value`` as a positive ``int`` (a bool is not one).

    Args:
        name: the argument's name, used in the error.
        value: the value to check (a Python or NumPy integer).

    Returns:
        ``int(value)``.

    Raises:
        ValueError: for anything but an integer of at least 1.
    """
    return _integer_at_least(name, value, 1, "positive")


def non_negative_int(name: str, value: int) -> int:
    """``value`` as a non-negative ``int`` (a bool is not one); arguments and errors as :func:`positive_int`."""
    return _integer_at_least(name, value, 0, "non-negative")


def positive_ints(name: str, values: int | Sequence[int], length: int) -> tuple[int, ...]:
    """``values`` as ``length`` positive ints; a single int is repeated ``length`` times.

    Args:
        name: the argument's name, used in the errors.
        values: one integer or a sequence of them.
        length: how many values are expected.

    Returns:
        The values as a tuple of Python ints.

    Raises:
        ValueError: for another count, a value that is not an integer, or one below 1.

    Example:
        >>> positive_ints("image_size", 64, 2)
        (64, 64)
    """
    seq = [values] * length if isinstance(values, int | np.integer) else list(values)
    if len(seq) != length or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in seq):
        msg = f"{name}: expected {length} positive integers, got {values!r}"
        raise ValueError(msg)
    if min(seq) < 1:
        msg = f"{name}: sizes must be positive, got {tuple(int(v) for v in seq)}"
        raise ValueError(msg)
    return tuple(int(v) for v in seq)
