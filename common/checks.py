"""Argument checks shared by the network building blocks (messages name the argument, the value and the range)."""

from __future__ import annotations

__all__ = ["check_int_at_least", "check_odd_kernel_size"]


def check_int_at_least(name: str, value: int, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"{name} must be an integer >= {minimum}, got {value!r}."
        raise ValueError(msg)


def check_odd_kernel_size(name: str, value: int) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive odd integer (so 'same' padding keeps the size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        msg = (
            f"{name} must be a positive odd integer so that the output keeps the input's spatial size, "
            f"got {value!r} (for example 3 or 7)."
        )
        raise ValueError(msg)
