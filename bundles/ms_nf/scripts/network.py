"""MS-NF: multi-scale normalizing flow with CBAM-attention coupling subnets.

Paper: "Medical Images Anomaly Detection for Imbalanced Datasets with Multi-scale Normalizing Flow" (MS-NF).
A frozen ResNet18 (stages 1-3, random initialisation as in the paper) gives features at strides 4, 8 and 16; one
flow of affine coupling blocks per scale maps each feature map to a standard normal latent (Sec. 3.2, eqs. 5-7);
the coupling subnets are conv3x3 → ReLU → conv3x3 → CBAM (Algorithm 1, eqs. 8-11); training minimises the
negative log-likelihood of normal images (eq. 12).

Anomaly map (Sec. 3.3): at each scale the per-position negative log-likelihood ``0.5 · mean_c(z²)`` (the mean of
``z²`` over channels, halved so it is the Gaussian NLL up to a constant), bilinearly upsampled to the input size;
the scales are fused by their arithmetic mean (``fusion="mean"``; ``"max"`` takes the per-pixel maximum). The paper
does not spell out the fusion; the mean treats the scales symmetrically, as the summed multi-scale loss does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from common.backbones import FeatureExtractor, random_init_options
from common.checkpoint import records_arguments
from common.checks import check_image_size, check_non_negative
from common.flows import (
    LocalFlowOutput,
    build_coupling_flow,
    cbam_subnet_constructor,
    conv_subnet_constructor,
    full_precision,
    position_nll,
    run_flow_with_local_log_det,
)
from common.scoring import Calibration

__all__ = ["MSNF", "MSNFTrainOutput"]

FUSIONS = ("mean", "max")
MAP_SCORES = ("z2", "nll")


class MSNFTrainOutput(NamedTuple):
    """Training outputs: one :class:`~common.flows.LocalFlowOutput` per scale (latent, log-determinant, its split)."""

    flows: list[LocalFlowOutput]


@records_arguments(runtime=("backbone_weights", "random_backbone", "feature_noise", "seed"))
class MSNF(nn.Module):
    r"""Multi-scale normalizing flow anomaly detector.

    In eval mode ``forward(x)`` returns the anomaly map ``(B, 1, H, W)`` at the input resolution (higher = more
    anomalous). Inputs of any size are resized to ``image_size`` for the backbone and the map is resized back.

    Args:
        in_channels: image channels.
        image_size: network input size ``(X, Y)`` (paper: 256 x 256).
        backbone: timm backbone name (paper: ``"resnet18"``).
        backbone_weights: local weight file, or ``None`` for random initialisation (the paper's choice).
        random_backbone: how the backbone is initialised without ``backbone_weights``: ``"recalibrated"`` (residual
            branches active, BatchNorm statistics re-estimated on the training images) or ``"timm"`` (timm's default,
            residual branches silenced: local features); :func:`common.backbones.random_init_options`. Training
            only: ``model.pt`` holds the backbone either way.
        out_indices: backbone stages, one flow each (paper: stages 1-3, 64/128/256 channels).
        n_blocks: coupling blocks per flow (paper: 15).
        hidden_channels: subnet hidden width (paper: 128).
        reduction: CBAM channel reduction (paper: 16).
        clamp: soft-clamp bound α of the log-scales.
        attention: use the CBAM subnet (``False``: plain conv subnet, an ablation).
        fusion: how per-scale maps are fused, ``"mean"`` or ``"max"``.
        map_score: each scale's anomaly map. ``"z2"``: :math:`\tfrac12\,\mathrm{mean}_c z_c^2`, the Gaussian term of
            the NLL alone; ``"nll"``: the per-position NLL of the flow, :math:`\tfrac{1}{C}(\tfrac12\lVert z\rVert^2
            - \ell)` with :math:`\ell` the position's share of :math:`\log|\det J|`
            (:func:`common.flows.position_nll`), the quantity eq. 12 sums into the training loss. Both are divided
            by the channel count so the scales weigh alike in the fusion.
        feature_noise: standard deviation of Gaussian noise added to the standardised features in training only
            (0 = none). Flat background regions give near-constant features that a flow can compress without
            bound, which lets the likelihood of the background dominate the loss; a little noise bounds that gain
            so the flow spends its capacity on the anatomy (dequantisation, as in flow-based density models).
        seed: seed of the fixed channel permutations.

    Example:
        >>> net = MSNF(image_size=(64, 64), n_blocks=2, hidden_channels=16).eval()
        >>> net(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: Sequence[int] = (256, 256),
        backbone: str = "resnet18",
        backbone_weights: str | Path | None = None,
        random_backbone: str = "recalibrated",
        out_indices: Sequence[int] = (1, 2, 3),
        n_blocks: int = 15,
        hidden_channels: int = 128,
        reduction: int = 16,
        clamp: float = 2.0,
        attention: bool = True,
        fusion: str = "mean",
        feature_noise: float = 0.0,
        seed: int = 0,
        map_score: str = "z2",
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            msg = f"fusion must be one of {FUSIONS}, got {fusion!r}"
            raise ValueError(msg)
        if map_score not in MAP_SCORES:
            msg = f"map_score must be one of {MAP_SCORES}, got {map_score!r}"
            raise ValueError(msg)
        self.map_score = map_score
        check_non_negative("feature_noise", feature_noise)
        self.image_size = check_image_size(image_size)
        self.fusion = fusion
        self.feature_noise = feature_noise
        self.extractor = FeatureExtractor(
            backbone,
            in_channels,
            out_indices,
            backbone_weights,
            **random_init_options(random_backbone, backbone_weights, key="random_backbone"),
        )
        subnet = (
            cbam_subnet_constructor(hidden_channels, reduction)
            if attention
            else conv_subnet_constructor(hidden_channels)
        )
        self.flows = nn.ModuleList(
            build_coupling_flow(channels, n_blocks, subnet, clamp=clamp, seed=seed + level)
            for level, channels in enumerate(self.extractor.channels)
        )
        self.calibration = Calibration()

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return self.extractor(x)

    def forward_train(self, x: torch.Tensor) -> MSNFTrainOutput:
        """Latents and log-determinants of every scale for the NLL loss (eq. 12)."""
        features = self._features(x)
        if self.training and self.feature_noise > 0:
            features = [f + self.feature_noise * torch.randn_like(f) for f in features]
        return MSNFTrainOutput(
            [run_flow_with_local_log_det(flow, f) for flow, f in zip(self.flows, features, strict=True)]
        )

    def scale_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-scale maps (``map_score``), each ``(B, 1, h_l, w_l)`` at its feature resolution.

        The sums run in float32 even under bf16 autocast (hundreds of squared channels would lose their low digits).
        """
        flows = self.forward_train(x).flows
        if self.map_score == "nll":
            return [position_nll(out.z, out.log_jac_map) / out.z.shape[1] for out in flows]
        return [0.5 * full_precision(out.z).pow(2).mean(dim=1, keepdim=True) for out in flows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly map ``(B, 1, H, W)`` for images ``(B, C, H, W)``."""
        size = tuple(x.shape[-2:])
        maps = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in self.scale_maps(x)]
        stacked = torch.stack(maps, dim=0)
        return stacked.mean(dim=0) if self.fusion == "mean" else stacked.amax(dim=0)
