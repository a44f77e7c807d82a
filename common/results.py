"""What an evaluation run produces: per-slice predictions and the metrics computed from them.

:class:`common.evaluation.AnomalyEvaluation` fills an :class:`EvaluationResult` and
:func:`common.plots.save_evaluation_plots` draws it; both import it from here, so neither imports the other back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["EvaluationResult"]


@dataclass
class EvaluationResult:
    """Per-slice predictions of an evaluation run and the metrics computed from them."""

    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray | None] = field(default_factory=list)
    foregrounds: list[np.ndarray] = field(default_factory=list)
    volume_labels: list[int] = field(default_factory=list)
    volume_scores: list[float] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
