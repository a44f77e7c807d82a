"""Tests for common/checks.py: each check accepts valid values and names the argument in its error."""

from __future__ import annotations

import math

import pytest

from common.checks import check_bool, check_image_size, check_int_at_least, check_non_negative, check_odd_kernel_size


def test_check_bool_returns_bools_and_rejects_command_line_strings() -> None:
    assert check_bool("attention", True) is True
    assert check_bool("attention", False) is False
    for value in ("false", "False", 0, 1, None):
        with pytest.raises(TypeError, match=r"^attention must be True or False, got .*--attention False"):
            check_bool("attention", value)


def test_check_image_size_returns_ints_and_rejects_small_or_wrong_length() -> None:
    assert check_image_size([64, 48.0]) == (64, 48)
    assert check_image_size((16, 16), minimum=16) == (16, 16)
    for bad in ((31, 64), (64,), (64, 64, 64)):
        with pytest.raises(ValueError, match=r"^image_size must be two sizes of at least 32"):
            check_image_size(bad)


def test_check_non_negative_rejects_negative_and_nan() -> None:
    check_non_negative("feature_noise", 0.0)
    check_non_negative("feature_noise", 0.5)
    for bad in (-1e-9, math.nan):
        with pytest.raises(ValueError, match=r"^feature_noise must be >= 0"):
            check_non_negative("feature_noise", bad)


def test_integer_checks_reject_bools_and_out_of_range() -> None:
    check_int_at_least("n_blocks", 1, 1)
    check_odd_kernel_size("kernel_size", 3)
    with pytest.raises(ValueError, match="n_blocks"):
        check_int_at_least("n_blocks", True, 1)
    with pytest.raises(ValueError, match="kernel_size"):
        check_odd_kernel_size("kernel_size", 4)
