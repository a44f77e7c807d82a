r"""Skip-TS anomaly maps and training loss.

Paper: Liu M., Jiao Y., Lu J., Chen H., "Anomaly Detection for Medical Images Using Teacher-Student Model with Skip
Connections and Multi-scale Anomaly Consistency", IEEE Transactions on Instrumentation and Measurement 73, 2024,
https://ieeexplore.ieee.org/document/10540605 (Sec. III-D, eqs. 1-5).

For teacher features :math:`F_t^l` and student features :math:`F_s^l` at levels :math:`l = 1..L`:

.. math::

    M_l(h, w) = 1 - \frac{F_t^l(h, w) \cdot F_s^l(h, w)}{\lVert F_t^l(h, w)\rVert \, \lVert F_s^l(h, w)\rVert}
    \qquad \text{(eq. 1)}

    \mathcal{L}_{sim} = \sum_l \frac{1}{H_l W_l} \sum_{h, w} M_l(h, w) \qquad \text{(eqs. 2-3)}

    \mathcal{L}_{mac} = \frac{1}{H_1 W_1} \sum_{h, w} \sum_{i < j} \big(M_i^{bi}(h, w) - M_j^{bi}(h, w)\big)^2
    \qquad \text{(eq. 4)}

    \mathcal{L} = \alpha \mathcal{L}_{sim} + \beta \mathcal{L}_{mac} \qquad \text{(eq. 5)}

where :math:`M^{bi}` is a map bilinearly upsampled to the size of the largest map. All means are also taken over
the batch.

The authors' released code (and reverse distillation's, which anomalib follows) computes the similarity term on each
sample's whole feature map flattened to one vector, :math:`1 - \cos(\mathrm{vec}\,F_t^l, \mathrm{vec}\,F_s^l)`,
rather than as the mean of the per-position map of eqs. 2-3; ``similarity="cosine_flat"`` selects that form.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SIMILARITIES",
    "SkipTSLoss",
    "cosine_distance_map",
    "flattened_cosine_distance",
    "multiscale_anomaly_consistency",
    "teacher_strength_weights",
]

SIMILARITIES = ("cosine", "cosine_flat", "mse")


def _check_same_shape(teacher: torch.Tensor, student: torch.Tensor) -> None:
    """Raise ``ValueError`` when teacher and student features differ in shape."""
    if teacher.shape != student.shape:
        msg = (
            "teacher and student features must have the same shape, "
            f"got {tuple(teacher.shape)} and {tuple(student.shape)}"
        )
        raise ValueError(msg)


def cosine_distance_map(teacher: torch.Tensor, student: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-position anomaly map ``M = 1 - cos(F_t, F_s)`` along channels (eq. 1).

    Args:
        teacher: teacher features ``(B, C, H, W)``.
        student: student features of the same shape.
        eps: guard against zero-norm feature vectors.

    Returns:
        ``(B, 1, H, W)`` map in ``[0, 2]``.

    Raises:
        ValueError: when the shapes differ.
    """
    _check_same_shape(teacher, student)
    return 1.0 - F.cosine_similarity(teacher, student, dim=1, eps=eps).unsqueeze(1)


def teacher_strength_weights(teacher: torch.Tensor, reference: torch.Tensor | float) -> torch.Tensor:
    """Per-position weights ``min(1, ||F_t|| / tau)`` that discount the map where the teacher's features are weak.

    ``1 - cos`` compares directions, and the direction of a short feature vector is mostly noise: where the frozen
    teacher responds weakly, the student cannot match it and eq. 1 is high on normal tissue. Positions whose teacher
    norm is at least the reference ``tau`` (the median over the training foreground, fitted by
    :meth:`SkipTS.fit_foreground_statistics`) keep eq. 1 unchanged; weaker ones are scaled down in proportion.
    A departure from the paper (eq. 1 has no weight); see the bundle's ``docs/README.md``.

    Args:
        teacher: teacher features ``(B, C, H, W)``.
        reference: ``tau``, a scalar; an unfitted ``0`` gives weight 1 wherever the teacher is not exactly zero.

    Returns:
        ``(B, 1, H, W)`` weights in ``[0, 1]``.
    """
    norm = teacher.norm(dim=1, keepdim=True)
    reference = torch.as_tensor(reference, dtype=norm.dtype, device=norm.device).clamp_min(1e-12)
    return (norm / reference).clamp(max=1.0)


def flattened_cosine_distance(teacher: torch.Tensor, student: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample ``1 - cos(vec F_t, vec F_s)`` over each sample's whole flattened feature map.

    The similarity term of the authors' released code and of reverse distillation's (Deng & Li 2022); positions with
    large feature norms weigh more than in the per-position mean of eqs. 2-3.

    Args:
        teacher: teacher features ``(B, C, H, W)``.
        student: student features of the same shape.
        eps: guard against zero-norm feature maps.

    Returns:
        ``(B,)`` distances in ``[0, 2]``.

    Raises:
        ValueError: when the shapes differ.
    """
    _check_same_shape(teacher, student)
    return 1.0 - F.cosine_similarity(teacher.flatten(1), student.flatten(1), dim=1, eps=eps)


def multiscale_anomaly_consistency(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Multi-scale anomaly consistency loss ``L_mac`` (eq. 4).

    Every map is bilinearly upsampled to the size of the largest one; the squared differences of every pair of
    maps ``i < j`` are summed and averaged over pixels (and the batch).

    Args:
        maps: per-level maps ``(B, 1, H_l, W_l)``.

    Returns:
        A scalar tensor, zero when all upsampled maps are equal.
    """
    if len(maps) < 2:
        return maps[0].new_zeros(()) if maps else torch.zeros(())
    size = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
    upsampled = [
        m if tuple(m.shape[-2:]) == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        for m in maps
    ]
    pairs = [(a - b).pow(2) for a, b in itertools.combinations(upsampled, 2)]
    return torch.stack(pairs, dim=0).sum(dim=0).mean()


class SkipTSLoss(nn.Module):
    """Teacher-student distillation loss ``L = α·L_sim + β·L_mac`` (eq. 5).

    Usable as the ``loss_function`` of MONAI's ``SupervisedTrainer`` with the network's ``forward_train`` output
    (see :class:`common.training.ForwardTrainInferer`); the label argument is ignored (unsupervised training).

    Args:
        alpha: weight α of the similarity term (paper: 1.0).
        beta: weight β of the multi-scale anomaly consistency term (paper: 0.05; 0 = "L_sim only" ablation).
        similarity: ``"cosine"`` (eqs. 2-3, the mean of ``1 - cos`` maps), ``"cosine_flat"`` (``1 - cos`` of each
            sample's flattened feature map, the authors' released code) or ``"mse"`` (ablation: the mean squared
            feature difference, summed over levels).

    Raises:
        ValueError: for a negative weight or an unknown ``similarity``.

    Example:
        >>> f = [torch.rand(2, 8, 4, 4), torch.rand(2, 4, 8, 8)]
        >>> float(SkipTSLoss()((f, f)))
        0.0
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.05, similarity: str = "cosine") -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            msg = f"loss weights must be >= 0, got alpha={alpha}, beta={beta}"
            raise ValueError(msg)
        self.alpha = float(alpha)
        self.beta = float(beta)
        if similarity not in SIMILARITIES:
            msg = f"similarity must be one of {SIMILARITIES}, got {similarity!r}"
            raise ValueError(msg)
        self.similarity = similarity

    def forward(self, outputs: Any, target: Any = None) -> torch.Tensor:
        """Loss of ``outputs = (teacher_features, student_features)``, two equal-length lists of tensors."""
        teacher, student = outputs[0], outputs[1]
        if len(teacher) != len(student) or not teacher:
            msg = f"need the same non-zero number of teacher and student levels, got {len(teacher)} and {len(student)}"
            raise ValueError(msg)
        maps = [cosine_distance_map(t, s) for t, s in zip(teacher, student, strict=True)]
        if self.similarity == "cosine":
            sim = sum(m.mean() for m in maps)  # eqs. 2-3
        elif self.similarity == "cosine_flat":
            sim = sum(flattened_cosine_distance(t, s).mean() for t, s in zip(teacher, student, strict=True))
        else:
            sim = sum(F.mse_loss(s, t) for t, s in zip(teacher, student, strict=True))
        loss = self.alpha * sim
        if self.beta > 0:
            loss = loss + self.beta * multiscale_anomaly_consistency(maps)  # eq. 4
        return loss
