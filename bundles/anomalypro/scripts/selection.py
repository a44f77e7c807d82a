"""Label-free checkpoint selection with Brainomaly's pseudo-AUC.

Brainomaly (Siddiquee et al., WACV 2024, Sec. 3.3) chooses the checkpoint without any disease label: the pseudo-AUC
is the AUROC of separating set-A images (mixed: healthy and diseased) from held-out healthy set-B images by their
anomaly scores. Set B holds no disease, set A does, so a detector that scores disease higher separates them better;
no test image and no label is used.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from common.parallel import unwrap_network
from common.scoring import MapScorer
from common.training import predict_maps

__all__ = ["PseudoAUCHandler", "pseudo_auc"]

logger = logging.getLogger(__name__)

METRIC_NAME = "pseudo_auc"


def pseudo_auc(set_a_scores: np.ndarray | list[float], set_b_scores: np.ndarray | list[float]) -> float:
    """Pseudo-AUC: AUROC of set-A scores (positives) against held-out set-B scores (negatives).

    Args:
        set_a_scores: image scores of set-A images.
        set_b_scores: image scores of held-out healthy images.

    Returns:
        The AUROC in [0, 1] (scikit-learn's ``roc_auc_score``).

    Raises:
        ValueError: when either set is empty or a score is not finite.

    Example:
        >>> pseudo_auc([0.9, 0.4], [0.1, 0.5])
        0.75
    """
    a = np.asarray(set_a_scores, dtype=np.float64).ravel()
    b = np.asarray(set_b_scores, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        msg = f"pseudo-AUC needs scores of both sets, got {a.size} set-A and {b.size} set-B scores"
        raise ValueError(msg)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        msg = "pseudo-AUC got non-finite scores (did training diverge?)"
        raise ValueError(msg)
    labels = np.concatenate([np.ones(a.size), np.zeros(b.size)])
    return float(roc_auc_score(labels, np.concatenate([a, b])))


class PseudoAUCHandler:
    """Compute the pseudo-AUC every ``interval`` epochs; keep and finally restore the best generator.

    Attach it to the trainer BEFORE the calibration handler and the checkpoint saver: at ``COMPLETED`` it loads the
    best weights back into the network, so thresholds are calibrated for, and ``model.pt`` holds, the selected
    generator. The value goes into ``engine.state.metrics["pseudo_auc"]`` (for stats handlers); the selection is
    recorded in ``network.calibration.settings["model_selection"]``.

    Args:
        network: the generator.
        set_a_loader: set-A slice dictionaries (``image``, ``foreground``), without augmentation.
        set_b_loader: held-out healthy slice dictionaries.
        device: where to run.
        scorer: how maps become image scores (the bundle's scorer).
        interval: epochs between evaluations (the last epoch is always evaluated).
        select_best: restore the best generator at the end; ``False`` keeps the last one (used when set A is set B,
            where the pseudo-AUC carries no information).
    """

    def __init__(
        self,
        network: nn.Module,
        set_a_loader: Iterable[Mapping[str, Any]],
        set_b_loader: Iterable[Mapping[str, Any]],
        device: torch.device | str,
        scorer: MapScorer,
        interval: int = 1,
        select_best: bool = True,
    ) -> None:
        if interval < 1:
            msg = f"interval must be >= 1, got {interval}"
            raise ValueError(msg)
        self.network = network
        self.set_a_loader = set_a_loader
        self.set_b_loader = set_b_loader
        self.device = device
        self.scorer = scorer
        self.interval = interval
        self.select_best = select_best
        self.history: list[tuple[int, float]] = []
        self.best_epoch: int | None = None
        self.best_value = -np.inf
        self.best_state: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The selection so far (history, best epoch, value and weights), for a resumable training checkpoint."""
        return {
            "history": [[int(e), float(v)] for e, v in self.history],
            "best_epoch": -1 if self.best_epoch is None else int(self.best_epoch),
            "best_value": float(self.best_value),
            "best_state": self.best_state if self.best_state is not None else {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a selection saved by :meth:`state_dict` (when a training run resumes)."""
        self.history = [(int(e), float(v)) for e, v in state["history"]]
        self.best_epoch = None if int(state["best_epoch"]) < 0 else int(state["best_epoch"])
        self.best_value = float(state["best_value"])
        self.best_state = dict(state["best_state"]) or None

    def attach(self, engine: Any) -> None:
        """Evaluate at ``EPOCH_COMPLETED``; restore the best weights at ``COMPLETED``."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.restore_best)

    def evaluate(self) -> float:
        """The pseudo-AUC of the current generator."""
        network = unwrap_network(self.network)
        _, _, scores_a = predict_maps(network, self.set_a_loader, self.device, self.scorer)
        _, _, scores_b = predict_maps(network, self.set_b_loader, self.device, self.scorer)
        return pseudo_auc(scores_a, scores_b)

    def __call__(self, engine: Any) -> None:
        """Evaluate at the interval (and at the last epoch); keep a copy of the best weights."""
        epoch = int(engine.state.epoch)
        if epoch % self.interval and epoch != engine.state.max_epochs:
            return
        value = self.evaluate()
        self.history.append((epoch, value))
        engine.state.metrics[METRIC_NAME] = value
        if value > self.best_value:
            self.best_value, self.best_epoch = value, epoch
            network = unwrap_network(self.network)
            self.best_state = {
                k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                for k, v in network.state_dict().items()
            }
        logger.info("epoch %d: pseudo-AUC %.4f (best %.4f at epoch %s)", epoch, value, self.best_value, self.best_epoch)

    def restore_best(self, engine: Any = None) -> None:
        """Load the best generator back (when ``select_best``) and record the selection in the calibration."""
        network = unwrap_network(self.network)
        chosen = self.best_epoch if self.select_best else (self.history[-1][0] if self.history else None)
        if self.select_best and self.best_state is not None:
            network.load_state_dict(self.best_state)
        calibration = getattr(network, "calibration", None)
        if calibration is not None:
            calibration.settings["model_selection"] = {
                "criterion": METRIC_NAME if self.select_best else "last_epoch",
                "epoch": chosen,
                "pseudo_auc_history": [[e, round(v, 6)] for e, v in self.history],
            }
        logger.info(
            "model selection: %s, epoch %s (pseudo-AUC history %s)",
            METRIC_NAME if self.select_best else "last epoch",
            chosen,
            [(e, round(v, 4)) for e, v in self.history],
        )
