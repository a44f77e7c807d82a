"""AnomalyPro generator: a one-way image-to-image translation network from any image to a healthy one.

Paper: Kumar et al., "MedAI AnomalyPro: Advancing Unsupervised Anomaly Detection in Medical Imaging", following
Siddiquee et al., "Brainomaly: Unsupervised Neurologic Disease Detection Utilizing Unannotated T1-weighted Brain MR
Images", WACV 2024 (https://arxiv.org/abs/2302.09200).

For an input ``x`` the encoder-decoder predicts an intermediate healthy image ``B_int`` and a mask ``M`` in
``[0, 1]``. The translated (healthy) image is ``B₀ = B_int ⊙ M + x ⊙ (1 − M)`` (eq. 2): where the mask is off the
input passes through unchanged, so a healthy input needs ``M ≈ 0`` only. The complementary composition
``A₀ = x ⊙ M + B_int ⊙ (1 − M)`` (eq. 1) is returned for the reconstruction loss. The anomaly map is
``|x − B₀| = M ⊙ |x − B_int|``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from common.checkpoint import records_arguments
from common.scoring import Calibration

__all__ = [
    "HEALTHY_OUTPUT",
    "AnomalyProGenerator",
    "TranslationOutput",
    "compose_complement",
    "compose_healthy",
]

HEALTHY_OUTPUT = "healthy"
"""Name of the extra inference output: the translated healthy image, written as ``<stem>_healthy.nii.gz``."""


def compose_healthy(intermediate: torch.Tensor, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Translated healthy image ``B₀ = B_int ⊙ M + x ⊙ (1 − M)`` (eq. 2).

    Args:
        intermediate: ``B_int``, ``(B, C, H, W)``.
        mask: ``M`` in ``[0, 1]``, ``(B, 1, H, W)`` or ``(B, C, H, W)``.
        image: the input ``x``, ``(B, C, H, W)``.

    Returns:
        ``B₀``, ``(B, C, H, W)``; exactly ``x`` where ``M = 0`` and exactly ``B_int`` where ``M = 1``.
    """
    return intermediate * mask + image * (1.0 - mask)


def compose_complement(intermediate: torch.Tensor, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Complementary composition ``A₀ = x ⊙ M + B_int ⊙ (1 − M)`` (eq. 1), shapes as :func:`compose_healthy`."""
    return image * mask + intermediate * (1.0 - mask)


class TranslationOutput(NamedTuple):
    """Training outputs of the generator, all ``(B, C, H, W)`` at the network size.

    Attributes:
        image: the input ``x`` (resized to the network size).
        healthy: ``B₀`` (eq. 2).
        intermediate: ``B_int``.
        mask: ``M`` in ``[0, 1]``, one channel.
        complement: ``A₀`` (eq. 1).
    """

    image: torch.Tensor
    healthy: torch.Tensor
    intermediate: torch.Tensor
    mask: torch.Tensor
    complement: torch.Tensor


class _ResidualBlock(nn.Module):
    """Two 3x3 convolutions with instance norm and an identity shortcut (the translation bottleneck)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            Convolution(2, channels, channels, kernel_size=3, act="RELU", norm="INSTANCE"),
            Convolution(2, channels, channels, kernel_size=3, act=None, norm="INSTANCE"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + body(x)``."""
        return x + self.body(x)


@records_arguments(runtime=())
class AnomalyProGenerator(nn.Module):
    """Encoder-decoder generator of AnomalyPro / Brainomaly: input → (``B_int``, ``M``) → ``B₀`` (eq. 2).

    Encoder: a 7x7 convolution to ``channels``, then ``n_down`` stride-2 4x4 convolutions doubling the channels;
    bottleneck: ``n_res`` residual blocks; decoder: ``n_down`` stride-2 4x4 transposed convolutions halving them;
    head: a 7x7 convolution to ``in_channels + 1`` maps, a sigmoid on each (``B_int`` and ``M`` in ``[0, 1]``, the
    range of the normalised inputs). Instance norm and ReLU throughout, as in the StarGAN-style generator Brainomaly
    builds on. The mask logit starts at ``mask_bias`` (sigmoid(−3) ≈ 0.05), so a fresh generator returns almost its
    input and training starts from the identity the healthy images need.

    In eval mode ``forward(x)`` returns the anomaly map ``|x − B₀|`` ``(B, 1, H, W)`` (mean over channels) at the
    input size. Inputs of another size are resized to ``image_size`` for the network and ``B_int`` and ``M`` are
    resized back, so ``B₀`` is composed with the original input and ``M = 0`` returns it exactly at any size.

    Args:
        in_channels: image channels.
        image_size: network input size ``(X, Y)`` (paper: 256 x 256); each must be divisible by ``2**n_down``.
        channels: width of the first layer.
        n_down: down-sampling (and up-sampling) stages.
        n_res: residual blocks in the bottleneck.
        mask_bias: initial bias of the mask logit.

    Raises:
        ValueError: for non-positive sizes or widths, or an ``image_size`` not divisible by ``2**n_down``.

    Example:
        >>> net = AnomalyProGenerator(image_size=(32, 32), channels=8, n_res=1).eval()
        >>> net(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: Sequence[int] = (256, 256),
        channels: int = 64,
        n_down: int = 2,
        n_res: int = 6,
        mask_bias: float = -3.0,
    ) -> None:
        super().__init__()
        if in_channels < 1 or channels < 1 or n_down < 0 or n_res < 0:
            msg = (
                "in_channels and channels must be >= 1 and n_down, n_res >= 0, got "
                f"in_channels={in_channels}, channels={channels}, n_down={n_down}, n_res={n_res}"
            )
            raise ValueError(msg)
        factor = 2**n_down
        if len(image_size) != 2 or any(int(s) < factor or int(s) % factor for s in image_size):
            msg = f"image_size must be two sizes divisible by 2**n_down = {factor}, got {tuple(image_size)}"
            raise ValueError(msg)
        self.in_channels = in_channels
        self.image_size = tuple(int(s) for s in image_size)
        layers: list[nn.Module] = [Convolution(2, in_channels, channels, kernel_size=7, act="RELU", norm="INSTANCE")]
        width = channels
        for _ in range(n_down):
            layers.append(
                Convolution(2, width, 2 * width, strides=2, kernel_size=4, padding=1, act="RELU", norm="INSTANCE")
            )
            width *= 2
        layers.extend(_ResidualBlock(width) for _ in range(n_res))
        for _ in range(n_down):
            layers.append(
                Convolution(
                    2,
                    width,
                    width // 2,
                    strides=2,
                    kernel_size=4,
                    padding=1,
                    output_padding=0,
                    is_transposed=True,
                    act="RELU",
                    norm="INSTANCE",
                )
            )
            width //= 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, in_channels + 1, kernel_size=7, padding=3)
        with torch.no_grad():
            self.head.bias[in_channels:].fill_(mask_bias)
        self.calibration = Calibration()

    def _intermediate_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``B_int`` and ``M`` at the size of ``x`` (computed at the network size)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            msg = f"expected images (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            raise ValueError(msg)
        size = tuple(x.shape[-2:])
        resized = size != self.image_size
        inputs = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False) if resized else x
        out = self.head(self.body(inputs))
        if resized:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        out = torch.sigmoid(out)
        return out[:, : self.in_channels], out[:, self.in_channels :]

    def forward_train(self, x: torch.Tensor) -> TranslationOutput:
        """All training outputs for images ``(B, C, H, W)`` (eqs. 1-2)."""
        intermediate, mask = self._intermediate_and_mask(x)
        return TranslationOutput(
            image=x,
            healthy=compose_healthy(intermediate, mask, x),
            intermediate=intermediate,
            mask=mask,
            complement=compose_complement(intermediate, mask, x),
        )

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        """The translated healthy image ``B₀`` (eq. 2), ``(B, C, H, W)``."""
        intermediate, mask = self._intermediate_and_mask(x)
        return compose_healthy(intermediate, mask, x)

    def forward_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Anomaly map and healthy image in one pass (the extra-output protocol of :mod:`common.inference`).

        Returns:
            ``{"anomaly": |x − B₀| (B, 1, H, W), "healthy": B₀ (B, C, H, W)}``.
        """
        healthy = self.translate(x)
        return {"anomaly": (x - healthy).abs().mean(dim=1, keepdim=True), HEALTHY_OUTPUT: healthy}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly map ``|x − B₀|`` ``(B, 1, H, W)`` (the paper's difference map) for images ``(B, C, H, W)``."""
        return (x - self.translate(x)).abs().mean(dim=1, keepdim=True)
