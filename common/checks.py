"""Argument checks shared by the networks and losses (messages name the argument, the value and the range)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_bool", "check_image_size", "check_int_at_least", "check_non_negative", "check_odd_kernel_size"]


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


def check_non_negative(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value >= 0`` (loss weights, noise levels)."""
    if not value >= 0:  # also rejects NaN
        msg = f"{name} must be >= 0, got {value}"
        raise ValueError(msg)


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``; raise ``TypeError`` otherwise.

    A command-line override such as ``--attention false`` reaches a bundle config as the string ``"false"``
    (python-fire parses only ``False`` / ``True`` as booleans), and any non-empty string is truthy: without this
    check an ablation switch would silently stay on.
    """
    if not isinstance(value, bool):
        msg = (
            f"{name} must be True or False, got {value!r} ({type(value).__name__}); "
            f"on the command line write --{name} False or --{name} True (capitalised)"
        )
        raise TypeError(msg)
    return value


def check_image_size(image_size: Sequence[int], minimum: int = 32) -> tuple[int, int]:
    """Return ``image_size`` as two ints; raise ``ValueError`` unless it is two sizes of at least ``minimum``.

    The default minimum of 32 keeps the deepest ResNet stage (stride 32) at least one pixel wide.
    """
    if len(image_size) != 2 or min(image_size) < minimum:
        msg = f"image_size must be two sizes of at least {minimum}, got {tuple(image_size)}"
        raise ValueError(msg)
    return int(image_size[0]), int(image_size[1])
