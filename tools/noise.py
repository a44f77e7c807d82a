"""Random fields shared by the synthetic-data tools (:mod:`tools.phantoms`, :mod:`tools.anatomy_lesions`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["check_rng", "smooth_noise"]


def check_rng(rng: np.random.Generator) -> None:
    """Require a ``numpy.random.Generator``.

    Raises:
        TypeError: for anything else (a legacy ``RandomState``, a seed), in one line.
    """
    if not isinstance(rng, np.random.Generator):
        msg = f"rng: expected a numpy.random.Generator (e.g. numpy.random.default_rng(0)), got {type(rng).__name__}"
        raise TypeError(msg)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]) -> np.ndarray:
    """Gaussian-filtered white noise, standardised to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="reflect")
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field
