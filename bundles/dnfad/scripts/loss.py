"""DNFAD training loss: the map-flow NLL plus the pixel-flow NLL (DNFAD Eqs. 9, 12-14), optionally on the foreground."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from common.checks import check_bool
from common.flows import check_foreground_targets, foreground_weights, position_nll

__all__ = ["DNFADLoss"]


class DNFADLoss(nn.Module):
    r"""Total loss :math:`L = L_P + L_M` (DNFAD Eq. 14), averaged over the batch.

    With :math:`\ell_i = \tfrac12\lVert z_i \rVert_2^2 - \log|\det J_i|` the NLL of position :math:`i`
    (:func:`common.flows.position_nll`; it sums to the per-sample NLL over the positions):

    - Map flow (Eq. 9): :math:`L_M = \sum_i w_i\,\ell_i^{M}` — with :math:`w_i = 1` the NLL
      :math:`\tfrac12\lVert z_M \rVert^2 - \log|\det J_M|` of the whole feature map.
    - Pixel flow (Eqs. 12-13): :math:`L_P = \sum_i w_i\,\ell_i^{P} / \sum_i w_i` — with :math:`w_i = 1` the mean of
      the per-pixel NLLs over the :math:`h \times w` positions.

    The weights :math:`w_i` are 1 (the paper's loss) unless ``foreground_only`` is set and the trainer passes a
    foreground mask as the target (:class:`common.training.PrepareImageAndForeground`): then :math:`w_i` is the
    foreground fraction of feature cell :math:`i`. Flat image background (air, skull-stripped zeros) gives
    near-constant features whose likelihood a flow can raise without bound; left in the loss it dominates
    training and the flow's scaling of the background leaks into the maps of the tissue, which is what the
    detector must model. Samples with an empty foreground use all positions.

    Args:
        foreground_only: weigh positions by the foreground target (``True``) or use all positions (``False``).

    Raises:
        TypeError: when ``foreground_only`` is not a bool.

    Example:
        >>> from common.flows import LocalFlowOutput
        >>> z, ld = torch.ones(1, 2, 2, 2), torch.zeros(1, 1, 2, 2)
        >>> out = (LocalFlowOutput(z, ld.sum((1, 2, 3)), ld), LocalFlowOutput(z, ld.sum((1, 2, 3)), ld))
        >>> DNFADLoss()(out)  # L_M = 4 positions x 1 = 4, L_P = mean of 1 = 1
        tensor(5.)
    """

    def __init__(self, foreground_only: bool = False) -> None:
        super().__init__()
        self.foreground_only = check_bool("foreground_only", foreground_only)

    def forward(self, outputs: Any, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the loss.

        Args:
            outputs: ``(map_flow, pixel_flow)`` (a :class:`scripts.network.DNFADTrainOutput`), each a
                :class:`common.flows.LocalFlowOutput` or ``None`` for a disabled branch.
            targets: foreground masks ``(B, 1, H, W)`` at the network input size when ``foreground_only``;
                ignored otherwise (the flows are trained without labels).

        Returns:
            a scalar tensor.

        Raises:
            ValueError: when both branches are ``None``, or ``foreground_only`` is set and ``targets`` is not a
                ``(B, 1, H, W)`` mask.
        """
        map_flow, pixel_flow = outputs
        if map_flow is None and pixel_flow is None:
            msg = "DNFADLoss needs at least one branch output, got none (are both branches disabled?)"
            raise ValueError(msg)
        foreground = check_foreground_targets(targets) if self.foreground_only else None
        total = 0.0
        if map_flow is not None:
            nll = position_nll(map_flow.z, map_flow.log_jac_map)
            weights = foreground_weights(foreground, nll)
            total = total + (weights * nll).flatten(1).sum(dim=1).mean()  # Eq. 9: the whole map
        if pixel_flow is not None:
            nll = position_nll(pixel_flow.z, pixel_flow.log_jac_map)
            weights = foreground_weights(foreground, nll)
            per_sample = (weights * nll).flatten(1).sum(dim=1) / weights.flatten(1).sum(dim=1)
            total = total + per_sample.mean()  # Eq. 13: mean over positions
        return total
