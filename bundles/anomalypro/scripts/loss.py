"""AnomalyPro losses: the Wasserstein critic loss with gradient penalty (eq. 3) and the generator loss (eq. 5).

Paper: Kumar et al., "MedAI AnomalyPro: Advancing Unsupervised Anomaly Detection in Medical Imaging"; the critic
objective is WGAN-GP (Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017,
https://arxiv.org/abs/1704.00028), as in Brainomaly (Siddiquee et al., WACV 2024).

Both losses take the generator's training outputs for a set-A batch (mixed, unlabelled images) and a set-B batch
(healthy images) as a :class:`~scripts.engine.TranslationStep`, the object MONAI's ``GanTrainer`` passes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from common.checks import check_non_negative

if TYPE_CHECKING:
    from .engine import PairedBatch, TranslationStep

__all__ = ["CriticLoss", "GeneratorLoss", "critic_score", "gradient_penalty"]


def critic_score(critic: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch scores ``(B, 1, h, w)`` of a critic; MONAI's ``PatchDiscriminator`` returns a list whose last is them."""
    out = critic(images)
    return out[-1] if isinstance(out, list | tuple) else out


def gradient_penalty(
    critic: nn.Module | Callable[[torch.Tensor], Any], real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """Gradient penalty ``E[(‖∇D(x̂)‖₂ − 1)²]`` at ``x̂ = α·real + (1 − α)·fake`` (eq. 3, second term).

    The critic value of an image is the mean of its PatchGAN scores, the quantity whose expectation the
    Wasserstein losses use, so the 1-Lipschitz constraint is put on it; the gradient's L2 norm is taken per image
    over all pixels and channels.

    Args:
        critic: the critic ``D``.
        real: real images ``(B, C, H, W)``.
        fake: generated images ``(B, C, H, W)`` (detached from the generator).
        alpha: interpolation weights, broadcastable to ``(B, 1, 1, 1)``.

    Returns:
        The scalar penalty (mean over the batch).
    """
    mixed = (alpha * real + (1.0 - alpha) * fake).detach().requires_grad_(True)
    scores = critic_score(critic, mixed)
    values = scores.flatten(1).mean(dim=1)  # one critic value per image
    (grad,) = torch.autograd.grad(values.sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Build a graph through ``module`` without gradients for its parameters (they are restored afterwards)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class CriticLoss(nn.Module):
    """Wasserstein critic loss with gradient penalty (eq. 3).

    ``L_D = E[D(G(A))] − E[D(B)] + λ_gp · E[(‖∇D(x̂)‖₂ − 1)²]``: the critic learns to score healthy set-B images
    above set-A images translated to healthy, ``B₀ = G(A)``; ``x̂`` interpolates between a set-B image and a
    translated set-A image with a uniform random weight per image. The generator outputs are detached.

    Args:
        critic: the critic ``D`` (MONAI ``PatchDiscriminator``).
        lambda_gp: weight λ_gp of the gradient penalty (paper: 10).

    Raises:
        ValueError: for a negative ``lambda_gp``.
    """

    def __init__(self, critic: nn.Module, lambda_gp: float = 10.0) -> None:
        super().__init__()
        check_non_negative("lambda_gp", lambda_gp)
        self.critic = critic
        self.lambda_gp = lambda_gp

    def forward(self, step: TranslationStep, batch: PairedBatch | None = None) -> torch.Tensor:
        """Critic loss for one generator step (``batch`` is the real pair, already inside ``step``)."""
        fake = step.set_a.healthy.detach()
        real = step.set_b.image.detach()
        n = min(len(fake), len(real))
        fake, real = fake[:n], real[:n]
        loss = critic_score(self.critic, fake).mean() - critic_score(self.critic, real).mean()
        if self.lambda_gp > 0:
            alpha = torch.rand(n, 1, 1, 1, device=real.device, dtype=real.dtype)
            loss = loss + self.lambda_gp * gradient_penalty(self.critic, real, fake, alpha)
        return loss


class GeneratorLoss(nn.Module):
    """Generator loss of AnomalyPro (eq. 5): ``L_adv + λ_rec·L_rec + λ_id·L_id + λ_f·L_f``.

    * ``L_adv = −E[D(B₀(A))]``: translated set-A images should look healthy to the critic (Wasserstein generator
      loss; the critic's parameters get no gradient from it).
    * ``L_rec = E|A₀ − x|`` over set A and set B, with ``A₀ = x ⊙ M + B_int ⊙ (1 − M)`` (eq. 1): where the mask is
      off, the intermediate image must reproduce the input, so ``B_int`` stays a faithful image of this patient and
      only the masked region is re-synthesised.
    * ``L_id = E|B₀(B) − x_B|``: identity on healthy set-B images (healthy in → itself out).
    * ``L_f = E[M ⊙ (1 − M)]`` over both sets: the focus loss, zero only for a binary mask, pushing ``M`` towards
      0 or 1 so that a region is either kept or replaced.

    Args:
        critic: the critic ``D``.
        lambda_rec: weight of ``L_rec``.
        lambda_id: weight of ``L_id``.
        lambda_f: weight of ``L_f``.

    Raises:
        ValueError: for a negative weight.
    """

    def __init__(
        self, critic: nn.Module, lambda_rec: float = 5.0, lambda_id: float = 10.0, lambda_f: float = 1.0
    ) -> None:
        super().__init__()
        for name, value in (("lambda_rec", lambda_rec), ("lambda_id", lambda_id), ("lambda_f", lambda_f)):
            check_non_negative(name, value)
        self.critic = critic
        self.lambda_rec = lambda_rec
        self.lambda_id = lambda_id
        self.lambda_f = lambda_f
        self.last_terms: dict[str, float] = {}

    def terms(self, step: TranslationStep) -> dict[str, torch.Tensor]:
        """The four terms of eq. 5, unweighted."""
        a, b = step.set_a, step.set_b
        with _frozen(self.critic):
            adversarial = -critic_score(self.critic, a.healthy).mean()
        reconstruction = 0.5 * ((a.complement - a.image).abs().mean() + (b.complement - b.image).abs().mean())
        identity = (b.healthy - b.image).abs().mean()
        focus = 0.5 * ((a.mask * (1 - a.mask)).mean() + (b.mask * (1 - b.mask)).mean())
        return {"adv": adversarial, "rec": reconstruction, "id": identity, "focus": focus}

    def forward(self, step: TranslationStep) -> torch.Tensor:
        """Weighted sum of the terms (eq. 5); the unweighted values are kept in ``last_terms`` for logging."""
        terms = self.terms(step)
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return (
            terms["adv"]
            + self.lambda_rec * terms["rec"]
            + self.lambda_id * terms["id"]
            + self.lambda_f * terms["focus"]
        )
