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
    - Y. Li, S. Lan et al., "Dual-branch Normalizing Flow for Anomaly Detection and Localization from Images"
      (DNFAD), Sec. 3.3 and Fig. 4: the dynamic spatial attention module (DSAM) and its input-dependent depthwise
      convolution (IDConv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.checks import check_int_at_least, check_odd_kernel_size

__all__ = ["CBAM", "DSAM", "ChannelAttention", "IDConv", "SpatialAttention", "per_sample_depthwise_conv"]


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


class IDConv(nn.Module):
    r"""Input-dependent depthwise convolution (DNFAD, Sec. 3.3, Fig. 4).

    The kernel is built from the input itself. The input :math:`X \in \mathbb{R}^{C \times H \times W}` is
    average-pooled to :math:`K \times K`, two 1x1 convolutions turn it into attention logits
    :math:`A' \in \mathbb{R}^{(G \cdot C) \times K^2}`, reshaped to :math:`G \times C \times K^2` and normalised by a
    softmax over the :math:`G` groups; the kernel is the attention-weighted sum of :math:`G` learnable kernels
    :math:`P \in \mathbb{R}^{G \times C \times K^2}`:

    .. math::

        W(X) = \sum_{g=1}^{G} \operatorname{softmax}_g(A'(X))_g \odot P_g \in \mathbb{R}^{C \times K \times K},

    and the output is the depthwise ('same'-padded) convolution of :math:`X` with :math:`W(X)`: every sample gets
    its own kernel. In DNFAD :math:`C = 2` (the channel-pooled map of :class:`DSAM`).

    Args:
        channels: channels :math:`C` of the input (one kernel per channel, depthwise).
        kernel_size: odd kernel size :math:`K`.
        groups: number :math:`G` of learnable kernels mixed per input.
        reduction: the hidden layer of the two 1x1 convolutions has ``max(channels // reduction, 1)`` channels.

    Raises:
        ValueError: when an argument is out of range.

    Example:
        >>> conv = IDConv(channels=2, kernel_size=3, groups=4)
        >>> conv(torch.randn(2, 2, 16, 12)).shape
        torch.Size([2, 2, 16, 12])
    """

    def __init__(self, channels: int = 2, kernel_size: int = 3, groups: int = 4, reduction: int = 1) -> None:
        super().__init__()
        check_int_at_least("channels", channels, 1)
        check_odd_kernel_size("kernel_size", kernel_size)
        check_int_at_least("groups", groups, 2)
        check_int_at_least("reduction", reduction, 1)
        self.channels = channels
        self.kernel_size = kernel_size
        self.groups = groups
        hidden = max(channels // reduction, 1)
        self.pool = nn.AdaptiveAvgPool2d(kernel_size)
        self.proj = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.Conv2d(hidden, groups * channels, kernel_size=1),
        )
        # P: the G candidate kernels mixed by the input-dependent softmax weights.
        self.weight = nn.Parameter(torch.empty(groups, channels, kernel_size * kernel_size))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def kernels(self, x: Tensor) -> Tensor:
        """The per-sample depthwise kernels :math:`W(X)`.

        Args:
            x: input ``(B, C, H, W)``.

        Returns:
            kernels of shape ``(B, C, K, K)``.
        """
        b = x.shape[0]
        k2 = self.kernel_size * self.kernel_size
        logits = self.proj(self.pool(x)).reshape(b, self.groups, self.channels, k2)
        mixed = (torch.softmax(logits, dim=1) * self.weight.unsqueeze(0)).sum(dim=1)
        return mixed.reshape(b, self.channels, self.kernel_size, self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        """Convolve every sample of ``x`` ``(B, C, H, W)`` with its own depthwise kernel; same shape out."""
        return per_sample_depthwise_conv(x, self.kernels(x), self.kernel_size // 2)


@torch.jit.script_if_tracing
def per_sample_depthwise_conv(x: Tensor, kernels: Tensor, padding: int) -> Tensor:
    """Convolve each sample's channels ``x`` ``(B, C, H, W)`` with its own kernels ``(B, C, K, K)``.

    A grouped convolution over the batch folded into channels applies one kernel per (sample, channel). Its
    ``groups`` depends on the batch size, so under ``torch.jit.trace`` the function is scripted rather than traced
    and a traced detector still accepts any batch size.
    """
    b, c, h, w = x.shape
    k = kernels.shape[-1]
    folded = kernels.reshape(b * c, 1, k, k)
    out = F.conv2d(x.reshape(1, b * c, h, w), folded, padding=padding, groups=b * c)
    return out.reshape(b, c, h, w)


class DSAM(nn.Module):
    r"""Dynamic spatial attention module, the coupling subnet of DNFAD (Sec. 3.3, Fig. 4).

    For the conditioning half :math:`y \in \mathbb{R}^{C_{in} \times H \times W}`:

    .. math::

        S &= \sigma\big(\mathrm{Conv}_{1\times1}(\mathrm{IDConv}([\mathrm{AvgPool}_c(y);
             \mathrm{MaxPool}_c(y)]))\big) \in \mathbb{R}^{1 \times H \times W}, \\
        [W_s; W_t] &= \mathrm{Conv}_{k}\big(\mathrm{ReLU}(\mathrm{Conv}_{k}(\mathrm{LN}(S \odot y)))\big),

    where LN is a LayerNorm over the channels at every position and the output has :math:`C_{out}` channels
    (``2 x`` the transformed half: scale :math:`W_s` and shift :math:`W_t` of the coupling, DNFAD Eqs. 3-6). The
    last convolution is zero-initialised, so a coupling block built on DSAM starts as the identity.

    Args:
        c_in: channels of the conditioning half.
        c_out: output channels (FrEIA passes ``2 x`` the transformed half).
        hidden_channels: channels of the hidden convolution; ``None`` uses ``c_in``.
        kernel_size: odd kernel size of the two convolutions.
        idconv_kernel_size: odd kernel size :math:`K` of the IDConv.
        idconv_groups: number :math:`G` of IDConv candidate kernels.

    Raises:
        ValueError: when an argument is out of range.

    Example:
        >>> dsam = DSAM(8, 16, hidden_channels=12)
        >>> dsam(torch.randn(2, 8, 10, 6)).shape
        torch.Size([2, 16, 10, 6])
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        hidden_channels: int | None = None,
        kernel_size: int = 3,
        idconv_kernel_size: int = 3,
        idconv_groups: int = 4,
    ) -> None:
        super().__init__()
        check_int_at_least("c_in", c_in, 1)
        check_int_at_least("c_out", c_out, 1)
        hidden = c_in if hidden_channels is None else hidden_channels
        check_int_at_least("hidden_channels", hidden, 1)
        check_odd_kernel_size("kernel_size", kernel_size)
        self.idconv = IDConv(2, idconv_kernel_size, idconv_groups)
        self.pointwise = nn.Conv2d(2, 1, kernel_size=1)
        self.norm = nn.LayerNorm(c_in)
        padding = kernel_size // 2
        last = nn.Conv2d(hidden, c_out, kernel_size, padding=padding)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.head = nn.Sequential(
            nn.Conv2d(c_in, hidden, kernel_size, padding=padding),
            nn.ReLU(inplace=False),
            last,
        )

    def score_map(self, y: Tensor) -> Tensor:
        """Spatial score map :math:`S` in ``(0, 1)``, shape ``(B, 1, H, W)``, for ``y`` ``(B, C_in, H, W)``."""
        pooled = torch.cat([torch.mean(y, dim=1, keepdim=True), torch.amax(y, dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.pointwise(self.idconv(pooled)))

    def forward(self, y: Tensor) -> Tensor:
        """Coupling coefficients ``[W_s; W_t]``, shape ``(B, C_out, H, W)``."""
        attended = y * self.score_map(y)
        normed = self.norm(attended.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(normed)
