"""DNFAD bundle code: the network (``scripts.network``) and its loss (``scripts.loss``)."""

from . import loss, network

__all__ = ["loss", "network"]
