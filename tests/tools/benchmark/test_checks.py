"""Tests for tools.benchmark.checks: sizes and counts are checked, each bad one a ValueError naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

from tools.benchmark.checks import non_negative_int, positive_int, positive_ints


def test_good_values_come_back_as_python_ints() -> None:
    assert positive_int("batch_size", 3) == 3 and type(positive_int("batch_size", np.int64(3))) is int
    assert non_negative_int("warmup", 0) == 0 and type(non_negative_int("warmup", np.int32(2))) is int
    assert positive_ints("image_size", 64, 2) == (64, 64)  # one int: repeated
    assert positive_ints("volume_shape", [40, np.int64(40), 6], 3) == (40, 40, 6)


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "2", None])
def test_positive_int_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"^batch_size: expected a positive integer, got "):
        positive_int("batch_size", value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, False, 0.0, "0"])
def test_non_negative_int_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"^warmup: expected a non-negative integer, got "):
        non_negative_int("warmup", value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([64, 64, 64], "image_size: expected 2 positive integers"),  # wrong count
        ([64, 6.5], "image_size: expected 2 positive integers"),  # not an integer
        ([64, True], "image_size: expected 2 positive integers"),  # a bool is not a size
        ([64, 0], r"image_size: sizes must be positive, got \(64, 0\)"),
        (-3, r"image_size: sizes must be positive, got \(-3, -3\)"),
    ],
)
def test_positive_ints_rejects(values: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        positive_ints("image_size", values, 2)  # type: ignore[arg-type]
