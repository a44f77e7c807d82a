"""DNFAD: dual-branch normalizing flow with dynamic spatial attention.

Paper: Y. Li, S. Lan et al., "Dual-branch Normalizing Flow for Anomaly Detection and Localization from Images"
(DNFAD). A frozen backbone gives the fused features of two intermediate levels (Sec. 3.1); two branches of
dynamic flow modules map them to a standard normal latent (Sec. 3.2-3.4):

- the **map-flow** (global) branch transforms the whole feature map of a sample; its coupling subnets are DSAM
  blocks (:class:`common.attention.DSAM`), whose depthwise kernel depends on the input (Eqs. 1-7, Fig. 4);
- the **pixel-flow** (local) branch transforms every pixel's feature vector on its own (1x1 subnets), so each
  position has its own density (Eqs. 10-13).

Anomaly map (Sec. 3.5, Eqs. 15-16): each branch gives a log-likelihood map ``log p = -||z||^2 / 2`` per position
(the sum over channels), bilinearly upsampled to the input size; the probabilities of the two branches are added,
``P_add = exp(log p_M) + exp(log p_P)``, and ``S_loc = max(P_add) - P_add``. With hundreds of channels
``exp(log p)`` underflows in float32 (``||z||^2 / 2 > 104`` gives 0), so this network outputs the negative log of
the mean probability, ``-log(P_add / 2) = log 2 - logaddexp(log p_M, log p_P)``, computed with ``logaddexp``. It is
a strictly decreasing function of ``P_add`` and so a strictly increasing function of ``S_loc``: pixel AUROC, AUPRO
and any threshold are the same as with ``S_loc`` computed exactly. The image score of Eq. 17 (mean of the top 3 %
of ``S_loc``) is ranked the same by ``MapScorer("topk_probability")``, which works on this map in log space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from common.backbones import FeatureExtractor, random_init_options
from common.checkpoint import records_arguments
from common.checks import check_bool, check_image_size, check_int_at_least, check_non_negative
from common.flows import (
    LocalFlowOutput,
    build_coupling_flow,
    conv_subnet_constructor,
    dsam_subnet_constructor,
    full_precision,
    positional_encoding_map,
    run_flow_with_local_log_det,
)
from common.scoring import Calibration

__all__ = ["BRANCHES", "DNFAD", "DNFADTrainOutput", "LOG_LIKELIHOODS"]

BRANCHES = ("map", "pixel")
LOG_LIKELIHOODS = ("sum", "mean")


class DNFADTrainOutput(NamedTuple):
    """Training outputs: latent and per-position log-determinant of each enabled branch (``None`` when disabled)."""

    map_flow: LocalFlowOutput | None
    pixel_flow: LocalFlowOutput | None


@records_arguments(runtime=("backbone_weights", "random_backbone", "feature_noise", "seed"))
class DNFAD(nn.Module):
    """Dual-branch normalizing flow anomaly detector.

    In eval mode ``forward(x)`` returns the anomaly map ``(B, 1, H, W)`` at the input resolution: the negative log
    of the mean probability of the enabled branches (higher = more anomalous; see the module docstring). Inputs of
    any size are resized to ``image_size`` for the backbone.

    Args:
        in_channels: image channels.
        image_size: network input size ``(X, Y)``.
        backbone: timm backbone name (``"resnet18"``, ``"wide_resnet50_2"``, a DINO ViT, ...).
        backbone_weights: local weight file, or ``None`` for random initialisation.
        random_backbone: how the backbone is initialised without ``backbone_weights``: ``"recalibrated"`` (residual
            branches active, BatchNorm statistics re-estimated on the training images) or ``"timm"`` (timm's default,
            residual branches silenced: local features); :func:`common.backbones.random_init_options`. Training
            only: ``model.pt`` holds the backbone either way.
        out_indices: the two backbone levels whose features are fused (ResNet: stages 2 and 3).
        n_blocks: dynamic flow modules per branch (paper: 6).
        hidden_channels: hidden width of the map-flow subnets; ``None`` uses their input channels.
        pixel_hidden_channels: hidden width of the pixel-flow subnets; ``None`` uses their input channels.
        clamp: soft-clamp bound α of the log-scales (Eq. 7).
        branches: enabled branches, a subset of ``("map", "pixel")`` (ablations: one branch only).
        dynamic_attention: map-flow subnets are DSAM blocks; ``False`` uses plain conv subnets (ablation).
        kernel_size: odd kernel size of the map-flow subnet convolutions.
        idconv_kernel_size: IDConv kernel size K.
        idconv_groups: number G of IDConv candidate kernels.
        feature_noise: standard deviation of Gaussian noise added to the standardised features in training only
            (0 = none): flat background gives near-constant features whose likelihood a flow can raise without
            bound; a little noise bounds that gain (dequantisation).
        seed: seed of the fixed channel permutations and initial subnet weights.
        log_likelihood: channel reduction of the per-position log-likelihood used for the maps: ``"sum"``
            (``-||z||^2 / 2``, Sec. 3.5 as written) or ``"mean"`` (``-mean(z^2) / 2``, the authors' released
            evaluation code). Scoring only: it does not change training or the checkpoint.
        positional_channels: channels of a 2D sine-cosine positional encoding that conditions every coupling subnet
            of both branches (:func:`common.flows.positional_encoding_map`), a multiple of 4; 0 (default) builds the
            unconditional flows of the paper's Eqs. 1-7. The authors' released code conditions both branches on a
            64-channel encoding, as CFlow-AD does.

    Raises:
        ValueError: for bad ``branches``, ``out_indices``, ``log_likelihood`` or ``positional_channels``.

    Example:
        >>> net = DNFAD(image_size=(64, 64), n_blocks=1, hidden_channels=8, pixel_hidden_channels=8).eval()
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
        out_indices: Sequence[int] = (2, 3),
        n_blocks: int = 6,
        hidden_channels: int | None = None,
        pixel_hidden_channels: int | None = None,
        clamp: float = 2.0,
        branches: Sequence[str] = BRANCHES,
        dynamic_attention: bool = True,
        kernel_size: int = 3,
        idconv_kernel_size: int = 3,
        idconv_groups: int = 4,
        feature_noise: float = 0.0,
        seed: int = 0,
        log_likelihood: str = "sum",
        positional_channels: int = 0,
    ) -> None:
        super().__init__()
        if log_likelihood not in LOG_LIKELIHOODS:
            msg = f"log_likelihood must be one of {LOG_LIKELIHOODS}, got {log_likelihood!r}"
            raise ValueError(msg)
        self.log_likelihood = log_likelihood
        branches = tuple(branches)
        if not branches or any(b not in BRANCHES for b in branches) or len(set(branches)) != len(branches):
            msg = f"branches must be a non-empty subset of {BRANCHES} without repeats, got {branches!r}"
            raise ValueError(msg)
        if len(out_indices) < 1:
            msg = f"out_indices must name at least one backbone level, got {tuple(out_indices)}"
            raise ValueError(msg)
        check_non_negative("feature_noise", feature_noise)
        check_bool("dynamic_attention", dynamic_attention)
        check_int_at_least("positional_channels", positional_channels, 0)
        if positional_channels % 4:
            msg = f"positional_channels must be 0 or a multiple of 4, got {positional_channels}"
            raise ValueError(msg)
        self.positional_channels = positional_channels
        # the encoding of the last feature grid, kept so it is not rebuilt for every batch; it follows .to(device)
        # and, being non-persistent, stays out of the checkpoint
        self.register_buffer("positional_encoding", torch.empty(0), persistent=False)
        self.image_size = check_image_size(image_size)
        self.branches = branches
        self.feature_noise = feature_noise
        self.extractor = FeatureExtractor(
            backbone,
            in_channels,
            out_indices,
            backbone_weights,
            **random_init_options(random_backbone, backbone_weights, key="random_backbone"),
        )
        channels = sum(self.extractor.channels)
        self.map_flow: nn.Module | None = None
        self.pixel_flow: nn.Module | None = None
        if "map" in branches:
            subnet = (
                dsam_subnet_constructor(hidden_channels, kernel_size, idconv_kernel_size, idconv_groups)
                if dynamic_attention
                else conv_subnet_constructor(hidden_channels or channels // 2, kernel_size)
            )
            self.map_flow = build_coupling_flow(
                channels, n_blocks, subnet, clamp=clamp, seed=seed, condition_channels=positional_channels
            )
        if "pixel" in branches:
            # 1x1 subnets: every position's vector is transformed on its own, so the per-sample log-determinant is
            # the sum of the per-pixel ones (Eq. 12); with a positional condition each position has its own density.
            subnet = conv_subnet_constructor(pixel_hidden_channels or channels // 2, kernel_size=1)
            self.pixel_flow = build_coupling_flow(
                channels, n_blocks, subnet, clamp=clamp, seed=seed + 1000, condition_channels=positional_channels
            )
        self.calibration = Calibration()

    @property
    def feature_channels(self) -> int:
        """Channels of the fused feature map the flows transform."""
        return sum(self.extractor.channels)

    def fused_features(self, x: torch.Tensor) -> torch.Tensor:
        """Fused features ``(B, C, h, w)`` (Sec. 3.1): every level bilinearly resized to the finest one, concatenated.

        Args:
            x: images ``(B, C_in, H, W)``, resized to ``image_size`` first when needed.
        """
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        levels = self.extractor(x)
        size = max((f.shape[-2:] for f in levels), key=lambda s: s[0] * s[1])
        resized = [
            f
            if tuple(f.shape[-2:]) == tuple(size)
            else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            for f in levels
        ]
        return torch.cat(resized, dim=1)

    def positional_condition(self, features: torch.Tensor) -> torch.Tensor | None:
        """The flows' condition for ``features`` ``(B, C, h, w)``: the positional encoding ``(B, P, h, w)`` or None."""
        if not self.positional_channels:
            return None
        batch, _, height, width = features.shape
        if tuple(self.positional_encoding.shape[-2:]) != (height, width):
            self.positional_encoding = positional_encoding_map(self.positional_channels, height, width)
        encoding = self.positional_encoding.to(device=features.device, dtype=features.dtype)
        return encoding.expand(batch, -1, -1, -1)

    def forward_train(self, x: torch.Tensor) -> DNFADTrainOutput:
        """Latents and log-determinants of the enabled branches, for :class:`scripts.loss.DNFADLoss`."""
        features = self.fused_features(x)
        if self.training and self.feature_noise > 0:
            features = features + self.feature_noise * torch.randn_like(features)
        condition = self.positional_condition(features)
        return DNFADTrainOutput(
            map_flow=None if self.map_flow is None else run_flow_with_local_log_det(self.map_flow, features, condition),
            pixel_flow=(
                None if self.pixel_flow is None else run_flow_with_local_log_det(self.pixel_flow, features, condition)
            ),
        )

    def log_likelihood_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-branch log-likelihood maps ``log p = -||z||^2 / 2``, ``(B, 1, h, w)`` each.

        Summed over channels, or averaged with ``log_likelihood="mean"``. The constant ``-C/2 log 2π`` of the
        Gaussian density is the same for both branches and is dropped.
        """
        outputs = self.forward_train(x)
        squared = [full_precision(out.z).pow(2) for out in outputs if out is not None]  # float32 sums under autocast
        if self.log_likelihood == "mean":
            return [-0.5 * z2.mean(dim=1, keepdim=True) for z2 in squared]
        return [-0.5 * z2.sum(dim=1, keepdim=True) for z2 in squared]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly map ``-log(mean_b exp(log p_b))`` ``(B, 1, H, W)`` for images ``(B, C, H, W)`` (Eqs. 15-16)."""
        size = tuple(x.shape[-2:])
        upsampled = torch.stack(
            [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in self.log_likelihood_maps(x)]
        )
        # -log((1/n) sum_b p_b), stable for any magnitude of log p_b
        return math.log(upsampled.shape[0]) - torch.logsumexp(upsampled, dim=0)
