"""Fast stand-ins for slow pieces, run through the product's own code paths in tests.

``brain_extraction: "tests.stand_ins:threshold_brain"`` makes every bundle use :func:`threshold_brain` where it would
run deepbet (about 5 s per volume on two CPU cores): the same transform, plausibility check, stripping and outputs.
"""

from __future__ import annotations

import numpy as np

from common.foreground import compute_foreground

__all__ = ["threshold_brain"]


def threshold_brain(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A brain extractor stand-in: the computed foreground (Otsu, large components, holes filled) of the volume."""
    del affine  # the real extractor uses it to orient the volume
    low, high = np.percentile(volume, [0.5, 99.5])
    scaled = np.clip((volume - low) / max(high - low, 1e-6), 0.0, 1.0)
    return compute_foreground(scaled.astype(np.float32))


def simulated_preemption(engine: object) -> None:
    """An event handler that stops a training run the way a pre-emption would (for the resume tests)."""
    msg = f"simulated pre-emption at epoch {getattr(getattr(engine, 'state', None), 'epoch', '?')}"
    raise RuntimeError(msg)
