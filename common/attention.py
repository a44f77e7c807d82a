"""Attention blocks embedded in the subnetworks of coupling flows.

The blocks here work on 2D feature maps ``(B, C, H, W)`` and return a tensor of the same shape: the input
re-weighted by an attention map. They are used inside flow subnets (see :mod:`common.flows`) and by the detectors'
networks.

References:
    - S. Woo, J. Park, J.-Y. Lee, I. S. Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
      https://arxiv.org/abs/1807.06521.
    - Y. Xiao, X. Huang, W. Liang, J. Liu, Y. Chen, R. Xie, K. Li, N. Ling, "Medical Images Anomaly Detection for
      Imbalanced Datasets with Multi-scale Normalizing Flow" (MS-NF), Computer Science and Information Systems
      22(1), 2025, https://doi.org/10.2298/CSIS240227001X.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.checks import check_int_at_least, check_odd_kernel_size

__all__ = ["CBAM", "ChannelAttention", "SpatialAttention"]


class ChannelAttention(nn.Module):
    r"""Channel attention of CBAM (Woo et al., 2018, Eq. 2; MS-NF Eqs. 8-9).

    Both the average-pooled and the max-pooled channel descriptors go through ONE shared MLP; the two results are
    summed and squashed:

    .. math::

        M_c(F) = \sigma\big(\mathrm{MLP}(\mathrm{AvgPool}(F)) + \mathrm{MLP}(\mathrm{MaxPool}(F))\big),
        \qquad
        \mathrm{MLP}(v) = W_1\,\mathrm{ReLU}(W_0\, v),

    with :math:`W_0 \in \mathbb{R}^{C/r \times C}` and :math:`W_1 \in \mathbb{R}^{C \times C/r}` implemented as
    bias-free 1x1 convolutions. The block returns :math:`F \odot M_c(F)`, broadcast over the spatial dimensions.

    Args:
        channels: number of channels :math:`C` of the input ``(B, C, H, W)``.
        reduction: reduction ratio :math:`r`; the hidden layer has ``max(channels // reduction, 1)`` units.

    Raises:
        ValueError: when ``channels`` or ``reduction`` is not an integer >= 1.

    Example:
        >>> attn = ChannelAttention(channels=32, reduction=16)
        >>> attn(torch.randn(2, 32, 8, 8)).shape
        torch.Size([2, 32, 8, 8])
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        check_int_at_least("channels", channels, 1)
        check_int_at_least("reduction", reduction, 1)
        self.channels = channels
        self.reduction = reduction
        hidden = max(channels // reduction, 1)
        # one MLP shared by both pooled descriptors (MS-NF Eqs. 8-9)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(inplace=False),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def attention_map(self, x: Tensor) -> Tensor:
        r"""Compute :math:`M_c(F)` (MS-NF Eqs. 8-9).

        Args:
            x: feature map ``(B, C, H, W)``.

        Returns:
            channel weights in ``(0, 1)``, shape ``(B, C, 1, 1)``.
        """
        avg = torch.mean(x, dim=(2, 3), keepdim=True)
        mx = torch.amax(x, dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))

    def forward(self, x: Tensor) -> Tensor:
        r"""Re-weight the channels of ``x``.

        Args:
            x: feature map ``(B, C, H, W)``.

        Returns:
            :math:`F \odot M_c(F)`, shape ``(B, C, H, W)``.
        """
        return x * self.attention_map(x)


class SpatialAttention(nn.Module):
    r"""Spatial attention of CBAM (Woo et al., 2018, Eq. 3; MS-NF Eqs. 10-11).

    The channel-wise mean and maximum of the input are stacked into a 2-channel map and convolved:

    .. math::

        M_s(F) = \sigma\big(f^{k \times k}([\mathrm{AvgPool}_c(F);\, \mathrm{MaxPool}_c(F)])\big),

    where :math:`f^{k \times k}` is a bias-free ``k x k`` convolution with 'same' padding (``k = 7`` in both
    papers). The block returns :math:`F \odot M_s(F)`, broadcast over the channels. It has no channel count, so it
    can follow any block.

    Args:
        kernel_size: odd size ``k`` of the convolution.

    Raises:
        ValueError: when ``kernel_size`` is not a positive odd integer.

    Example:
        >>> attn = SpatialAttention(kernel_size=7)
        >>> attn(torch.randn(2, 32, 8, 8)).shape
        torch.Size([2, 32, 8, 8])
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        check_odd_kernel_size("kernel_size", kernel_size)
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)

    def attention_map(self, x: Tensor) -> Tensor:
        r"""Compute :math:`M_s(F)` (MS-NF Eqs. 10-11).

        Args:
            x: feature map ``(B, C, H, W)``.

        Returns:
            spatial weights in ``(0, 1)``, shape ``(B, 1, H, W)``; channel 0 of the convolution's input is the
            channel mean, channel 1 the channel maximum.
        """
        pooled = torch.cat([torch.mean(x, dim=1, keepdim=True), torch.amax(x, dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: Tensor) -> Tensor:
        r"""Re-weight the positions of ``x``.

        Args:
            x: feature map ``(B, C, H, W)``.

        Returns:
            :math:`F \odot M_s(F)`, shape ``(B, C, H, W)``.
        """
        return x * self.attention_map(x)


class CBAM(nn.Module):
    r"""Convolutional Block Attention Module: channel attention, then spatial attention.

    From Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018 (https://arxiv.org/abs/1807.06521),
    Eq. (1), as used in the flow subnets of MS-NF (Xiao et al., 2025, Eqs. 8-11):

    .. math::

        F' = M_c(F) \odot F, \qquad F'' = M_s(F') \odot F',

    with :math:`M_c` from :class:`ChannelAttention` and :math:`M_s` from :class:`SpatialAttention`.

    Args:
        channels: number of channels ``C`` of the input ``(B, C, H, W)``.
        reduction: reduction ratio of the channel attention's shared MLP.
        spatial_kernel_size: odd kernel size of the spatial attention's convolution.

    Raises:
        ValueError: when ``channels`` or ``reduction`` is not an integer >= 1, or ``spatial_kernel_size`` is not a
            positive odd integer.

    Example:
        >>> cbam = CBAM(channels=64, reduction=16, spatial_kernel_size=7)
        >>> cbam(torch.randn(2, 64, 6, 10)).shape
        torch.Size([2, 64, 6, 10])
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel_size: int = 7) -> None:
        super().__init__()
        check_int_at_least("channels", channels, 1)
        check_int_at_least("reduction", reduction, 1)
        check_odd_kernel_size("spatial_kernel_size", spatial_kernel_size)
        self.channel_attention = ChannelAttention(channels, reduction)
        self.spatial_attention = SpatialAttention(spatial_kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        """Apply channel attention, then spatial attention.

        Args:
            x: feature map ``(B, C, H, W)``.

        Returns:
            the refined feature map :math:`F''`, shape ``(B, C, H, W)``.
        """
        return self.spatial_attention(self.channel_attention(x))
