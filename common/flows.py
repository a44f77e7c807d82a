"""Coupling flows built with FrEIA, subnet constructors that embed attention, and the flow NLL loss.

A flow maps a feature map ``x`` of shape ``(B, C, H, W)`` to a latent ``z`` of the same shape and returns the
log-determinant of its Jacobian per sample. Under a standard normal prior on ``z``, normal features get a low
negative log-likelihood and anomalous ones a high one.

References:
    - Y. Xiao, X. Huang, W. Liang, J. Liu, Y. Chen, R. Xie, K. Li, N. Ling, "Medical Images Anomaly Detection for
      Imbalanced Datasets with Multi-scale Normalizing Flow" (MS-NF), Computer Science and Information Systems
      22(1), 2025, https://doi.org/10.2298/CSIS240227001X.
    - L. Ardizzone et al., "Framework for Easily Invertible Architectures (FrEIA)", https://github.com/vislearn/FrEIA.
    - D. P. Kingma, P. Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018,
      https://arxiv.org/abs/1807.03039.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import numpy as np
import torch
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from monai.utils import LossReduction, look_up_option
from torch import Tensor, nn

from common.attention import CBAM, DSAM
from common.checks import check_bool, check_int_at_least, check_odd_kernel_size

__all__ = [
    "FlowNLLLoss",
    "FlowOutput",
    "LocalFlowOutput",
    "SubnetConstructor",
    "build_coupling_flow",
    "check_foreground_targets",
    "cbam_subnet_constructor",
    "conv_subnet_constructor",
    "dsam_subnet_constructor",
    "flow_nll",
    "foreground_weights",
    "full_precision",
    "invert_flow",
    "position_nll",
    "positional_encoding_map",
    "run_flow",
    "run_flow_with_local_log_det",
]

SubnetConstructor = Callable[[int, int], nn.Module]
"""A FrEIA subnet factory: ``subnet_constructor(c_in, c_out)`` returns a module mapping ``(B, c_in, H, W)`` to
``(B, c_out, H, W)``."""


class FlowOutput(NamedTuple):
    r"""Output of a flow's forward pass.

    Attributes:
        z: latent, same shape as the flow's input ``(B, C, H, W)``.
        log_jac_det: :math:`\log|\det J|` of the flow at the input, one value per sample, shape ``(B,)``.
    """

    z: Tensor
    log_jac_det: Tensor


class LocalFlowOutput(NamedTuple):
    r"""Output of a flow's forward pass with the log-determinant split over positions.

    Attributes:
        z: latent, same shape as the flow's input ``(B, C, H, W)``.
        log_jac_det: :math:`\log|\det J|` per sample, shape ``(B,)``.
        log_jac_map: the share of every position, shape ``(B, 1, H, W)``: the sum over blocks and channels of the
            coupling log-scales :math:`s` at that position. It sums to ``log_jac_det`` over the positions.
    """

    z: Tensor
    log_jac_det: Tensor
    log_jac_map: Tensor


def _conv_subnet(
    c_in: int, c_out: int, *, hidden_channels: int, kernel_size: int, reduction: int | None
) -> nn.Sequential:
    """Build ``Conv -> ReLU -> Conv [-> CBAM]`` with a zero-initialised last convolution.

    Args:
        c_in: input channels (given by FrEIA).
        c_out: output channels (given by FrEIA; ``2 x`` the channels of the transformed half, for ``[s, t]``).
        hidden_channels: channels of the hidden layer.
        kernel_size: odd kernel size of both convolutions ('same' padding).
        reduction: reduction ratio of the CBAM appended after the last convolution; ``None`` appends no attention.

    Returns:
        the subnet, mapping ``(B, c_in, H, W)`` to ``(B, c_out, H, W)``.
    """
    padding = kernel_size // 2
    last = nn.Conv2d(hidden_channels, c_out, kernel_size, padding=padding)
    # zero output => s = t = 0 => every coupling block starts as the identity
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, hidden_channels, kernel_size, padding=padding),
        nn.ReLU(inplace=False),
        last,
    ]
    if reduction is not None:
        layers.append(CBAM(c_out, reduction=reduction))
    return nn.Sequential(*layers)


def cbam_subnet_constructor(hidden_channels: int = 128, reduction: int = 16, kernel_size: int = 3) -> SubnetConstructor:
    """Subnet factory with CBAM attention, as in MS-NF (Xiao et al., 2025, Algorithm 1).

    ``subnet(c_in, c_out)`` is ``Conv(k, c_in -> hidden) -> ReLU -> Conv(k, hidden -> c_out) -> CBAM(c_out)``; its
    output holds the coupling coefficients ``[s, t]`` of :func:`build_coupling_flow`.

    The last convolution's weight and bias are zero-initialised, so every subnet outputs zeros at initialisation
    (CBAM multiplies its input by the attention maps, and zero stays zero), hence :math:`s = t = 0` and every
    coupling block starts as the identity. Gradients still reach the last convolution through CBAM, whose derivative
    at zero input is the product of its (non-zero, sigmoid) attention weights.

    Args:
        hidden_channels: channels of the hidden layer.
        reduction: reduction ratio of CBAM's channel-attention MLP.
        kernel_size: odd kernel size of both convolutions.

    Returns:
        a picklable callable ``subnet(c_in, c_out) -> nn.Module`` for FrEIA's ``subnet_constructor``.

    Raises:
        ValueError: when ``hidden_channels`` or ``reduction`` is not an integer >= 1, or ``kernel_size`` is not a
            positive odd integer.

    Example:
        >>> subnet = cbam_subnet_constructor(hidden_channels=32, reduction=4)(8, 16)
        >>> subnet(torch.randn(2, 8, 5, 7)).shape
        torch.Size([2, 16, 5, 7])
    """
    check_int_at_least("hidden_channels", hidden_channels, 1)
    check_int_at_least("reduction", reduction, 1)
    check_odd_kernel_size("kernel_size", kernel_size)
    return functools.partial(
        _conv_subnet, hidden_channels=hidden_channels, kernel_size=kernel_size, reduction=reduction
    )


def conv_subnet_constructor(hidden_channels: int = 128, kernel_size: int = 3) -> SubnetConstructor:
    """Subnet factory without attention: ``Conv(k, c_in -> hidden) -> ReLU -> Conv(k, hidden -> c_out)``.

    The same as :func:`cbam_subnet_constructor` without CBAM (for ablations and detectors that use plain
    convolutional subnets). The last convolution is zero-initialised, so every coupling block starts as the
    identity.

    Args:
        hidden_channels: channels of the hidden layer.
        kernel_size: odd kernel size of both convolutions.

    Returns:
        a picklable callable ``subnet(c_in, c_out) -> nn.Module`` for FrEIA's ``subnet_constructor``.

    Raises:
        ValueError: when ``hidden_channels`` is not an integer >= 1 or ``kernel_size`` is not a positive odd integer.
    """
    check_int_at_least("hidden_channels", hidden_channels, 1)
    check_odd_kernel_size("kernel_size", kernel_size)
    return functools.partial(_conv_subnet, hidden_channels=hidden_channels, kernel_size=kernel_size, reduction=None)


def dsam_subnet_constructor(
    hidden_channels: int | None = None,
    kernel_size: int = 3,
    idconv_kernel_size: int = 3,
    idconv_groups: int = 4,
) -> SubnetConstructor:
    """Subnet factory of DNFAD's dynamic flow module: ``subnet(c_in, c_out)`` is a :class:`common.attention.DSAM`.

    Inside :func:`build_coupling_flow` this gives DNFAD's dynamic coupling (Eqs. 3-6): each half is scaled and
    shifted by coefficients that DSAM computes from the other half with an input-dependent depthwise kernel. The
    last convolution is zero-initialised, so every block starts as the identity.

    Args:
        hidden_channels: hidden width of DSAM's two convolutions; ``None`` uses the subnet's input channels.
        kernel_size: odd kernel size of DSAM's two convolutions.
        idconv_kernel_size: odd kernel size of the IDConv.
        idconv_groups: number of IDConv candidate kernels.

    Returns:
        a picklable callable ``subnet(c_in, c_out) -> nn.Module`` for FrEIA's ``subnet_constructor``.

    Raises:
        ValueError: when an argument is out of range.
    """
    if hidden_channels is not None:
        check_int_at_least("hidden_channels", hidden_channels, 1)
    check_odd_kernel_size("kernel_size", kernel_size)
    check_odd_kernel_size("idconv_kernel_size", idconv_kernel_size)
    check_int_at_least("idconv_groups", idconv_groups, 2)
    return functools.partial(
        DSAM,
        hidden_channels=hidden_channels,
        kernel_size=kernel_size,
        idconv_kernel_size=idconv_kernel_size,
        idconv_groups=idconv_groups,
    )


class _AtanSoftClamp:
    r"""Soft clamp :math:`u \mapsto \frac{2}{\pi}\arctan(u / \alpha)` for FrEIA's ``clamp_activation``.

    FrEIA multiplies the result by ``clamp`` (:math:`\alpha`), which gives
    :math:`s = \frac{2\alpha}{\pi}\arctan(s / \alpha)`: slope 1 at 0 and :math:`|s| < \alpha`. FrEIA's built-in
    ``"ATAN"`` computes :math:`\alpha \cdot 0.636 \arctan(s)` instead, whose slope at 0 is :math:`0.636\,\alpha`.
    A module-level class (not a lambda) keeps flows picklable.
    """

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def __call__(self, u: Tensor) -> Tensor:
        return (2.0 / math.pi) * torch.atan(u / self.alpha)


def build_coupling_flow(
    channels: int,
    n_blocks: int,
    subnet_constructor: SubnetConstructor,
    clamp: float = 2.0,
    permute: bool = True,
    seed: int | None = None,
    condition_channels: int = 0,
) -> Ff.SequenceINN:
    r"""Stack of affine coupling blocks (FrEIA ``GLOWCouplingBlock``) with fixed random channel permutations.

    Follows the flow of MS-NF (Xiao et al., 2025, Eqs. 5-7), the two-sided affine coupling of Glow / RealNVP. Block
    :math:`k` splits its input along the channels into :math:`x = [x_1; x_2]`, with :math:`c_1 = \mathrm{round}(C/2)`
    channels in :math:`x_1`, and computes

    .. math::

        y_1 &= x_1 \odot \exp\big(s_2(x_2)\big) + t_2(x_2), \\
        y_2 &= x_2 \odot \exp\big(s_1(y_1)\big) + t_1(y_1), \\
        z &= P_k\,[y_1; y_2],

    where :math:`[s_2, t_2] = \mathrm{subnet}_2(x_2)` and :math:`[s_1, t_1] = \mathrm{subnet}_1(y_1)` (first and
    second halves of the subnet's output channels), :math:`P_k` is a fixed random permutation of the channels (when
    ``permute``), and every scale is soft-clamped by :math:`s \leftarrow \frac{2\alpha}{\pi}\arctan(s/\alpha)` so
    that :math:`|s| < \alpha`. The block's log-Jacobian-determinant is

    .. math::

        \log|\det J_k| = \sum_{c,h,w} s_2(x_2) + \sum_{c,h,w} s_1(y_1),

    and its inverse is :math:`x_2 = (y_2 - t_1(y_1)) \odot \exp(-s_1(y_1))`,
    :math:`x_1 = (y_1 - t_2(x_2)) \odot \exp(-s_2(x_2))`. The permutations let both halves be transformed across
    blocks.

    The blocks only read the channel count from the dimensions they are built with, so the flow is built with a
    nominal spatial size and runs on any ``(H, W)``: one flow serves every input size. Use :func:`run_flow` and
    :func:`invert_flow` to call it.

    With ``condition_channels > 0`` every coupling block is conditional (FrEIA's ``cond``): each subnet also reads
    a condition map ``(B, condition_channels, H, W)``, concatenated to its input channels, e.g. the positional
    encoding of :func:`positional_encoding_map` (CFlow-AD); the log-determinant formula is unchanged.

    Args:
        channels: number of channels ``C`` of the input ``(B, C, H, W)``.
        n_blocks: number of coupling blocks.
        subnet_constructor: ``subnet(c_in, c_out)`` factory, e.g. from :func:`cbam_subnet_constructor` or
            :func:`conv_subnet_constructor`; a zero-initialised last layer makes every block start as the identity.
        clamp: soft-clamping bound :math:`\alpha`: each block scales every element by at most
            :math:`\exp(\pm\alpha)`.
        permute: append a fixed random channel permutation (FrEIA ``PermuteRandom``) after every block.
        seed: when given, fixes the permutations (block ``k`` uses ``seed + k``) and the subnets' initial weights,
            without changing the global NumPy or PyTorch random states; ``None`` draws them from those states.
        condition_channels: channels of the condition every block reads (0: an unconditional flow).

    Returns:
        the flow, a FrEIA ``SequenceINN``; ``flow(x)`` returns ``(z, log_jac_det)`` (``flow(x, c=[condition])``
        when conditional).

    Raises:
        ValueError: when ``channels`` < 2, ``n_blocks`` < 1, ``clamp`` is not a finite number > 0 or
            ``condition_channels`` < 0.
        TypeError: when ``subnet_constructor`` is not callable.

    Example:
        >>> flow = build_coupling_flow(8, n_blocks=2, subnet_constructor=conv_subnet_constructor(16), seed=0)
        >>> out = run_flow(flow, torch.randn(2, 8, 5, 7))
        >>> out.z.shape, out.log_jac_det.shape
        (torch.Size([2, 8, 5, 7]), torch.Size([2]))
    """
    check_int_at_least("channels", channels, 2)
    check_int_at_least("n_blocks", n_blocks, 1)
    check_int_at_least("condition_channels", condition_channels, 0)
    if isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not math.isfinite(clamp) or clamp <= 0:
        msg = f"clamp must be a finite number > 0 (for example 2.0), got {clamp!r}."
        raise ValueError(msg)
    if not callable(subnet_constructor):
        msg = (
            "subnet_constructor must be a callable subnet(c_in, c_out) -> nn.Module, for example "
            f"cbam_subnet_constructor(), got {type(subnet_constructor).__name__}."
        )
        raise TypeError(msg)

    # GLOWCouplingBlock and PermuteRandom read only the channel count and the tensor rank from these dims.
    flow = Ff.SequenceINN(channels, 1, 1)
    np_state = np.random.get_state() if seed is not None else None
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            # the condition is concatenated to the subnets' input channels, so it needs the same nominal (1, 1) grid
            conditioning = {"cond": 0, "cond_shape": (condition_channels, 1, 1)} if condition_channels else {}
            for k in range(n_blocks):
                flow.append(
                    Fm.GLOWCouplingBlock,
                    **conditioning,
                    subnet_constructor=subnet_constructor,
                    clamp=float(clamp),
                    clamp_activation=_AtanSoftClamp(float(clamp)),
                )
                if permute:
                    flow.append(Fm.PermuteRandom, seed=None if seed is None else seed + k)
        finally:
            if np_state is not None:
                np.random.set_state(np_state)
    return flow


def _check_flow_input(flow: nn.Module, x: Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, C, H, W)`` with the flow's channel count."""
    dims_in = getattr(flow, "dims_in", None)
    channels = dims_in[0][0] if dims_in else None
    if not torch.is_tensor(x) or x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        expected = f"(B, {channels}, H, W)" if channels is not None else "(B, C, H, W)"
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        msg = f"{name} must be a tensor of shape {expected}, got {got}."
        raise ValueError(msg)


def _condition_args(flow: nn.Module, x: Tensor, condition: Tensor | None) -> dict[str, list[Tensor]]:
    """FrEIA's ``c`` argument for ``flow``; raise ``ValueError`` when ``condition`` does not fit the flow or ``x``."""
    dims_c = [m.dims_c[0] for m in getattr(flow, "module_list", []) if getattr(m, "dims_c", None)]
    if not dims_c:
        if condition is not None:
            msg = "condition was given to an unconditional flow (build it with condition_channels > 0)."
            raise ValueError(msg)
        return {}
    expected = (x.shape[0], dims_c[0][0], *x.shape[2:])
    if not torch.is_tensor(condition) or tuple(condition.shape) != expected:
        got = tuple(condition.shape) if torch.is_tensor(condition) else type(condition).__name__
        msg = f"condition must be a tensor of shape {expected} (the flow is conditional), got {got}."
        raise ValueError(msg)
    return {"c": [condition]}


def run_flow(flow: nn.Module, x: Tensor, condition: Tensor | None = None) -> FlowOutput:
    """Run a FrEIA flow forward and package its outputs.

    Args:
        flow: a FrEIA ``SequenceINN`` (e.g. from :func:`build_coupling_flow`).
        x: input features ``(B, C, H, W)``.
        condition: ``(B, C_c, H, W)`` for a conditional flow (``condition_channels`` of
            :func:`build_coupling_flow`), ``None`` otherwise.

    Returns:
        ``FlowOutput(z, log_jac_det)`` with ``z`` of shape ``(B, C, H, W)`` and ``log_jac_det`` of shape ``(B,)``.

    Raises:
        ValueError: when ``x`` is not ``(B, C, H, W)`` with the flow's channel count, or ``condition`` does not fit.
    """
    _check_flow_input(flow, x, "x")
    z, log_jac_det = flow(x, **_condition_args(flow, x, condition))
    if not torch.is_tensor(log_jac_det):  # a flow of fixed transforms only returns a Python number
        log_jac_det = x.new_full((x.shape[0],), float(log_jac_det))
    return FlowOutput(z=z, log_jac_det=log_jac_det)


def run_flow_with_local_log_det(flow: nn.Module, x: Tensor, condition: Tensor | None = None) -> LocalFlowOutput:
    r"""Run a coupling flow forward and split its log-determinant over the spatial positions.

    An affine coupling block scales element :math:`(c, h, w)` by :math:`e^{s_{c,h,w}}`, and its Jacobian is
    triangular, so :math:`\log|\det J| = \sum_{c,h,w} s_{c,h,w}` (Glow, Eq. 7 of MS-NF). Summing :math:`s` over the
    channels only gives every position's share, :math:`\ell_{h,w} = \sum_k \sum_c s^{(k)}_{c,h,w}`; with 1x1
    subnets this is exactly the log-determinant of the per-position map (DNFAD Eq. 12), and in general it lets a
    loss weigh positions (e.g. leave out image background). The log-scales are read from the subnets' outputs
    with forward hooks and soft-clamped the way the block does; permutations contribute nothing.

    Args:
        flow: a FrEIA ``SequenceINN`` of ``GLOWCouplingBlock``s and permutations (e.g. :func:`build_coupling_flow`).
        x: input features ``(B, C, H, W)``.
        condition: ``(B, C_c, H, W)`` for a conditional flow, ``None`` otherwise (see :func:`run_flow`).

    Returns:
        ``LocalFlowOutput(z, log_jac_det, log_jac_map)``.

    Raises:
        ValueError: when ``x`` is not ``(B, C, H, W)`` with the flow's channel count, or ``condition`` does not fit.
        TypeError: when the flow holds a block whose log-determinant this function cannot split.
    """
    _check_flow_input(flow, x, "x")
    shares: list[Tensor] = []
    handles = []

    def _record(block: Fm.GLOWCouplingBlock, scale_channels: int):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            s = block.clamp * block.f_clamp(output[:, :scale_channels])
            shares.append(full_precision(s).sum(dim=1, keepdim=True))

        return hook

    for module in flow.modules():
        if isinstance(module, Fm.GLOWCouplingBlock):
            # subnet2 gives the scales of the first half (split_len1 channels), subnet1 those of the second
            handles.append(module.subnet2.register_forward_hook(_record(module, module.split_len1)))
            handles.append(module.subnet1.register_forward_hook(_record(module, module.split_len2)))
        elif isinstance(module, Fm.coupling_layers._BaseCouplingBlock) or isinstance(module, Fm.AllInOneBlock):
            msg = f"cannot split the log-determinant of {type(module).__name__} over positions"
            raise TypeError(msg)
    try:
        out = run_flow(flow, x, condition)
    finally:
        for handle in handles:
            handle.remove()
    log_jac_map = torch.stack(shares).sum(dim=0) if shares else torch.zeros_like(x[:, :1])
    return LocalFlowOutput(out.z, out.log_jac_det, log_jac_map)


def full_precision(tensor: Tensor) -> Tensor:
    """``tensor`` in float32 when it is in a half type (bf16 / fp16 autocast outputs), else unchanged.

    Sums of squared latents and log-determinants run in at least float32: in bf16 a sum over hundreds of channels
    keeps only about three significant digits. Float64 stays float64 (the numerical Jacobian checks use it).
    """
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def position_nll(z: Tensor, log_jac_map: Tensor) -> Tensor:
    r"""Per-position negative log-likelihood :math:`\tfrac12\lVert z_{:,h,w} \rVert^2 - \ell_{h,w}` (DNFAD Eq. 12).

    Args:
        z: latent ``(B, C, H, W)``.
        log_jac_map: per-position log-determinant shares ``(B, 1, H, W)`` from :func:`run_flow_with_local_log_det`.

    Returns:
        the NLL map ``(B, 1, H, W)`` (the Gaussian constant :math:`\tfrac{C}{2}\log 2\pi` dropped); its sum over
        positions is the per-sample NLL :math:`\tfrac12\lVert z \rVert^2 - \log|\det J|`, in float32 (also under
        bf16 autocast).
    """
    if z.ndim != 4 or log_jac_map.shape != (z.shape[0], 1, *z.shape[2:]):
        msg = (
            f"z must be (B, C, H, W) and log_jac_map (B, 1, H, W) on the same grid, got {tuple(z.shape)} and "
            f"{tuple(log_jac_map.shape)}."
        )
        raise ValueError(msg)
    return 0.5 * full_precision(z).pow(2).sum(dim=1, keepdim=True) - full_precision(log_jac_map)


def positional_encoding_map(channels: int, height: int, width: int) -> Tensor:
    r"""2D sine-cosine positional encoding as a map ``(1, channels, height, width)``, a condition for a flow.

    CFlow-AD (Gudovskiy et al., WACV 2022, Sec. 4.2) conditions its flows on such an encoding so that the density
    of a feature can depend on where it is; for aligned anatomy (axial brain slices) this lets the flow learn what
    is normal at each position. The values come from MONAI's ``build_sincos_position_embedding`` (the MAE
    encoding: half of the channels encode the column, half the row, with frequencies
    :math:`10000^{-k/(\mathrm{channels}/4)}`), reshaped from tokens to a map.

    Args:
        channels: encoding channels, a positive multiple of 4.
        height: rows of the feature grid.
        width: columns of the feature grid.

    Raises:
        ValueError: when ``channels`` is not a positive multiple of 4 or the grid is empty.

    Example:
        >>> positional_encoding_map(8, 3, 5).shape
        torch.Size([1, 8, 3, 5])
    """
    check_int_at_least("channels", channels, 4)
    check_int_at_least("height", height, 1)
    check_int_at_least("width", width, 1)
    if channels % 4:
        msg = f"channels of a 2D sine-cosine positional encoding must be a multiple of 4, got {channels}"
        raise ValueError(msg)
    with warnings.catch_warnings():  # MONAI calls torch.meshgrid without ``indexing`` (its default "ij" is meant)
        warnings.simplefilter("ignore", UserWarning)
        tokens = build_sincos_position_embedding([height, width], channels, spatial_dims=2).detach()
    return tokens.reshape(1, height, width, channels).permute(0, 3, 1, 2).contiguous()


def invert_flow(flow: nn.Module, z: Tensor, condition: Tensor | None = None) -> Tensor:
    """Run a FrEIA flow in reverse, from latent to input.

    Args:
        flow: a FrEIA ``SequenceINN`` (e.g. from :func:`build_coupling_flow`).
        z: latent ``(B, C, H, W)``.
        condition: the condition of the forward pass for a conditional flow, ``None`` otherwise.

    Returns:
        ``x`` with ``flow(x) = z``, shape ``(B, C, H, W)``.

    Raises:
        ValueError: when ``z`` is not ``(B, C, H, W)`` with the flow's channel count, or ``condition`` does not fit.
    """
    _check_flow_input(flow, z, "z")
    x, _ = flow(z, rev=True, jac=False, **_condition_args(flow, z, condition))
    return x


def flow_nll(z: Tensor, log_jac_det: Tensor) -> Tensor:
    r"""Negative log-likelihood per sample under a standard normal prior, per element (MS-NF Eq. 12).

    .. math::

        \mathcal{L}(x) = \frac{1}{D}\Big(\tfrac{1}{2}\lVert z \rVert_2^2 - \log|\det J(x)|\Big),
        \qquad D = C \cdot H \cdot W.

    The constant :math:`\frac{D}{2}\log 2\pi` of the Gaussian log-density is dropped: it does not depend on the
    parameters. Dividing by the number of elements :math:`D` keeps the loss on the same scale for every feature size,
    so scales of different resolution weigh alike when summed.

    Args:
        z: latent ``(B, ...)``, e.g. ``(B, C, H, W)``.
        log_jac_det: log-Jacobian-determinant per sample, shape ``(B,)``.

    Returns:
        the NLL per sample, shape ``(B,)``.

    Raises:
        ValueError: when ``z`` has no batch and feature dimensions, or ``log_jac_det`` is not of shape ``(B,)``.

    Example:
        >>> flow_nll(torch.ones(1, 2, 1, 1), torch.tensor([1.0]))
        tensor([0.])
    """
    if z.ndim < 2:
        msg = f"z must have shape (B, ...) with at least one feature dimension, got shape {tuple(z.shape)}."
        raise ValueError(msg)
    if log_jac_det.shape != z.shape[:1]:
        msg = (
            f"log_jac_det must have shape ({z.shape[0]},) to match z of shape {tuple(z.shape)}, "
            f"got shape {tuple(log_jac_det.shape)}."
        )
        raise ValueError(msg)
    n_elements = z[0].numel()
    return (0.5 * full_precision(z).pow(2).flatten(1).sum(dim=1) - full_precision(log_jac_det)) / n_elements


def check_foreground_targets(targets: object) -> Tensor:
    """Return ``targets`` when it is a batch of foreground masks ``(B, 1, H, W)``; raise a one-line error otherwise.

    Raises:
        ValueError: when ``targets`` is not a ``(B, 1, H, W)`` tensor.
    """
    if not torch.is_tensor(targets) or targets.ndim != 4 or targets.shape[1] != 1:
        got = tuple(targets.shape) if torch.is_tensor(targets) else type(targets).__name__
        msg = (
            "foreground_only needs the foreground masks (B, 1, H, W) as targets "
            f"(prepare_batch: common.training.PrepareImageAndForeground), got {got}"
        )
        raise ValueError(msg)
    return targets


def foreground_weights(foreground: Tensor | None, like: Tensor) -> Tensor:
    """Foreground fraction of every cell of a feature grid, shape of ``like`` ``(B, 1, h, w)``.

    The masks ``(B, 1, H, W)`` are area-averaged onto the grid of ``like``. Without masks, and for a sample whose
    foreground is empty, every position weighs 1 (the loss over all positions).
    """
    if foreground is None:
        return torch.ones_like(like)
    weights = torch.nn.functional.interpolate(foreground.float(), size=like.shape[-2:], mode="area").to(like.dtype)
    empty = weights.flatten(1).sum(dim=1) <= 0
    return torch.where(empty.view(-1, 1, 1, 1), torch.ones_like(weights), weights)


def _foreground_nll(z: Tensor, log_jac_map: Tensor, foreground: Tensor) -> Tensor:
    """Per-element NLL over the foreground positions, per sample ``(B,)`` (all positions where it is empty)."""
    nll = position_nll(z, log_jac_map)
    weights = foreground_weights(foreground, nll)
    return (weights * nll).flatten(1).sum(dim=1) / (weights.flatten(1).sum(dim=1) * z.shape[1])


class FlowNLLLoss(nn.Module):
    r"""Multi-scale flow NLL loss (MS-NF, Xiao et al., 2025, Eq. 12).

    For flow outputs :math:`(z^{(l)}, \log|\det J^{(l)}|)` at scales :math:`l = 1..L`:

    .. math::

        \mathcal{L} = \frac{1}{B}\sum_{b=1}^{B}\sum_{l=1}^{L}
            \frac{1}{D_l}\Big(\tfrac{1}{2}\lVert z_b^{(l)} \rVert_2^2 - \log|\det J_b^{(l)}|\Big),

    i.e. the per-sample, per-element NLL of :func:`flow_nll`, summed over scales and averaged over the batch (with
    the default ``reduction="mean"``).

    With ``foreground_only``, each scale's term is instead the per-element NLL over the foreground positions only,
    :math:`\sum_i w_i \ell_i / (C_l \sum_i w_i)`, where :math:`\ell_i` is the NLL of position :math:`i`
    (:func:`position_nll`, from the exact per-position split of the log-determinant) and :math:`w_i` the foreground
    fraction of its feature cell, taken from the foreground masks passed as ``targets``
    (:class:`common.training.PrepareImageAndForeground`). Flat image background then cannot dominate the loss.
    With all weights 1 it equals the loss above.

    Args:
        reduction: how the per-sample losses are reduced: ``"mean"`` (default), ``"sum"`` or ``"none"`` (returns
            shape ``(B,)``).
        foreground_only: weigh positions by the foreground masks given as ``targets`` (needs
            :class:`LocalFlowOutput` items, e.g. from :func:`run_flow_with_local_log_det`).

    Raises:
        ValueError: when ``reduction`` is not one of the above.
        TypeError: when ``foreground_only`` is not a bool.

    Example:
        >>> loss = FlowNLLLoss()
        >>> loss([FlowOutput(torch.ones(2, 2, 1, 1), torch.ones(2))])
        tensor(0.)
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN, foreground_only: bool = False) -> None:
        super().__init__()
        self.foreground_only = check_bool("foreground_only", foreground_only)
        try:
            self.reduction = look_up_option(reduction, LossReduction).value
        except ValueError as err:
            options = [r.value for r in LossReduction]
            msg = f"reduction must be one of {options}, got {reduction!r}."
            raise ValueError(msg) from err

    def forward(self, flow_outputs: Sequence[FlowOutput] | FlowOutput, targets: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            flow_outputs: one :class:`FlowOutput` per scale (or a single one), or a network's training output
                with a ``flows`` attribute holding them (e.g. a NamedTuple returned by ``forward_train``); each is
                ``(z, log_jac_det)`` with ``z`` of shape ``(B, C_l, H_l, W_l)`` and ``log_jac_det`` of shape ``(B,)``.
            targets: foreground masks ``(B, 1, H, W)`` at the network input size when ``foreground_only``; ignored
                otherwise. Accepted so the loss can be called as ``loss_function(pred, targets)`` by MONAI's
                ``SupervisedTrainer``; the flow is trained without labels.

        Returns:
            a scalar tensor (``(B,)`` for ``reduction="none"``).

        Raises:
            ValueError: when ``flow_outputs`` is empty or its scales have different batch sizes.
            TypeError: when an item of ``flow_outputs`` is not a ``(z, log_jac_det)`` pair of tensors.
        """
        flow_outputs = getattr(flow_outputs, "flows", flow_outputs)  # a network's training NamedTuple
        if isinstance(flow_outputs, FlowOutput):
            flow_outputs = [flow_outputs]
        if len(flow_outputs) == 0:
            msg = "flow_outputs must hold at least one (z, log_jac_det) pair, got an empty sequence."
            raise ValueError(msg)
        for i, item in enumerate(flow_outputs):
            if (
                not isinstance(item, Sequence)
                or len(item) not in (2, 3)
                or not all(torch.is_tensor(t) for t in item)
                or (self.foreground_only and len(item) != 3)
            ):
                expected = "LocalFlowOutput(z, log_jac_det, log_jac_map)" if self.foreground_only else "FlowOutput"
                msg = f"flow_outputs[{i}] must be a {expected} of tensors, got {type(item).__name__}."
                raise TypeError(msg)
        if self.foreground_only:
            foreground = check_foreground_targets(targets)
            per_scale = [_foreground_nll(item[0], item[2], foreground) for item in flow_outputs]
        else:
            per_scale = [flow_nll(item[0], item[1]) for item in flow_outputs]
        batch_sizes = [nll.shape[0] for nll in per_scale]
        if len(set(batch_sizes)) != 1:
            msg = f"flow_outputs must share one batch size across scales, got batch sizes {batch_sizes}."
            raise ValueError(msg)
        per_sample = torch.stack(per_scale, dim=0).sum(dim=0)
        if self.reduction == LossReduction.MEAN.value:
            return per_sample.mean()
        if self.reduction == LossReduction.SUM.value:
            return per_sample.sum()
        return per_sample
