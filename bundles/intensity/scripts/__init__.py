"""Intensity yardstick bundle code.

The model (``scripts.network``), its fitted distribution (``scripts.distribution``) and its one-pass fitting in
MONAI's trainer (``scripts.fitting``).
"""

from . import distribution, fitting, network

__all__ = ["distribution", "fitting", "network"]
