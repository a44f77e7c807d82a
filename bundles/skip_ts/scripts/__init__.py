"""Skip-TS bundle code: the teacher-student network (``scripts.network``) and its loss (``scripts.loss``)."""

from . import loss, network

__all__ = ["loss", "network"]
