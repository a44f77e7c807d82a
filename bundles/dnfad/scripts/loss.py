"""DNFAD training loss: the map-flow NLL plus the pixel-flow NLL (DNFAD Eqs. 9, 12-14)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from common.flows import flow_nll

__all__ = ["DNFADLoss"]


class DNFADLoss(nn.Module):
    r"""Total loss :math:`L = L_P + L_M` (DNFAD Eq. 14), averaged over the batch.

    - Map flow (Eq. 9): :math:`L_M = \tfrac12\lVert z_M \rVert_2^2 - \log|\det J_M|` over the whole feature map of a
      sample.
    - Pixel flow (Eqs. 12-13): per pixel vector :math:`L_i = \tfrac12\lVert z_i \rVert_2^2 - \log|\det J_i|`,
      averaged over the :math:`h \times w` positions. The pixel flow transforms every position on its own, so
      :math:`\sum_i \log|\det J_i|` is the flow's per-sample log-determinant and
      :math:`L_P = \frac{1}{hw}\big(\tfrac12\lVert z_P \rVert_2^2 - \log|\det J_P|\big)`.

    The constant of the Gaussian density is dropped. A disabled branch (``None``) contributes nothing.

    Example:
        >>> from common.flows import FlowOutput
        >>> out = (FlowOutput(torch.ones(1, 2, 2, 2), torch.zeros(1)), FlowOutput(torch.ones(1, 2, 2, 2), torch.zeros(1)))
        >>> DNFADLoss()(out)  # L_M = 8 / 2 = 4, L_P = (8 / 2) / 4 = 1
        tensor(5.)
    """

    def forward(self, outputs: Any, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the loss.

        Args:
            outputs: ``(map_flow, pixel_flow)`` flow outputs (a :class:`scripts.network.DNFADTrainOutput`), each a
                ``(z, log_jac_det)`` pair or ``None``.
            targets: ignored (the flows are trained without labels); accepted for MONAI's ``SupervisedTrainer``.

        Returns:
            a scalar tensor.

        Raises:
            ValueError: when both branches are ``None``.
        """
        map_flow, pixel_flow = outputs
        if map_flow is None and pixel_flow is None:
            msg = "DNFADLoss needs at least one branch output, got none (are both branches disabled?)"
            raise ValueError(msg)
        total = 0.0
        if map_flow is not None:
            z, log_jac_det = map_flow
            total = total + (flow_nll(z, log_jac_det) * z[0].numel()).mean()  # Eq. 9: whole map, not per element
        if pixel_flow is not None:
            z, log_jac_det = pixel_flow
            total = total + (flow_nll(z, log_jac_det) * z.shape[1]).mean()  # Eq. 13: mean over positions
        return total
