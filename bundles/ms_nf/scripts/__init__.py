"""MS-NF bundle code: the network (``scripts.network``)."""

from . import network

__all__ = ["network"]
