"""Adapters that run AnomalyPro's image-to-image translation GAN on MONAI's ignite ``GanTrainer``.

``GanTrainer`` implements the WGAN loop of one iteration (generator forward, ``d_train_steps`` critic updates on
``d_loss_function(g_output, d_input)``, then one generator update on ``g_loss_function(g_output)``), but it is built
for unconditional GANs: its generator input comes from ``g_prepare_batch(num_latents, latent_size, device, ...)``,
which is not given the batch. A translation GAN's generator input IS the batch, so :class:`CurrentBatchInput` is a
``g_prepare_batch`` that hands the engine's current batch to the generator (attach it to the trainer as a handler).
With ``g_update_latents=False`` the generator runs once per iteration and its outputs are shared by the critic steps
(detached there) and the generator step. Everything else (events, handlers, checkpoints) is the stock engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from monai.inferers import Inferer
from torch import nn

from common.parallel import unwrap_network

from .network import TranslationOutput

__all__ = [
    "CurrentBatchInput",
    "PairedBatch",
    "TranslationInferer",
    "TranslationStep",
    "loss_values",
    "prepare_paired_batch",
]

SET_A_KEY = "image"
SET_B_KEY = "image_b"


class PairedBatch(NamedTuple):
    """A training batch: set-A images (mixed, unlabelled) and set-B images (healthy), each ``(B, C, H, W)``."""

    set_a: torch.Tensor
    set_b: torch.Tensor


class TranslationStep(NamedTuple):
    """Generator outputs for both images of a :class:`PairedBatch` (what the losses of ``scripts.loss`` take)."""

    set_a: TranslationOutput
    set_b: TranslationOutput


def prepare_paired_batch(
    batchdata: Mapping[str, torch.Tensor],
    device: torch.device | str | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> PairedBatch:
    """``prepare_batch`` for ``GanTrainer``: move ``image`` (set A) and ``image_b`` (set B) to the device.

    Raises:
        KeyError: when the batch lacks one of the keys (the loader must come from ``PairedSliceDataset``).
    """
    missing = [k for k in (SET_A_KEY, SET_B_KEY) if k not in batchdata]
    if missing:
        msg = f"training batch lacks {missing}; expected keys {SET_A_KEY!r} (set A) and {SET_B_KEY!r} (set B)"
        raise KeyError(msg)
    return PairedBatch(
        torch.as_tensor(batchdata[SET_A_KEY]).to(device=device, non_blocking=non_blocking, **kwargs),
        torch.as_tensor(batchdata[SET_B_KEY]).to(device=device, non_blocking=non_blocking, **kwargs),
    )


class CurrentBatchInput:
    """``g_prepare_batch`` for ``GanTrainer`` that returns the engine's current batch instead of random latents.

    Attach it to the trainer (put it in ``train_handlers``) so it can read ``engine.state.batch``.
    """

    def __init__(self) -> None:
        self.engine: Any = None

    def attach(self, engine: Any) -> None:
        """Remember the engine whose current batch is handed to the generator."""
        self.engine = engine

    def __call__(
        self, num_latents: int = 0, latent_size: int = 0, device: torch.device | str | None = None, **kwargs: Any
    ) -> PairedBatch:
        """The current batch as a :class:`PairedBatch` on ``device`` (``num_latents``/``latent_size`` are unused)."""
        if self.engine is None:
            msg = "CurrentBatchInput is not attached; put it in the trainer's train_handlers (call attach(engine))"
            raise RuntimeError(msg)
        return prepare_paired_batch(self.engine.state.batch, device, **kwargs)


class TranslationInferer(Inferer):
    """``g_inferer`` for ``GanTrainer``: one ``forward_train`` pass over set A and set B stacked together."""

    def __call__(self, inputs: PairedBatch, network: nn.Module, *args: Any, **kwargs: Any) -> TranslationStep:
        """Generator outputs for both halves of a :class:`PairedBatch`."""
        model = unwrap_network(network)
        n_a = len(inputs.set_a)
        out = model.forward_train(torch.cat([inputs.set_a, inputs.set_b]), *args, **kwargs)
        first = TranslationOutput(*(t[:n_a] for t in out))
        second = TranslationOutput(*(t[n_a:] for t in out))
        return TranslationStep(first, second)


def loss_values(output: Mapping[str, Any]) -> dict[str, float]:
    """``{"g_loss", "d_loss"}`` of a ``GanTrainer`` iteration output (for ``StatsHandler``/TensorBoard handlers).

    ``d_loss`` is the sum over the ``d_train_steps`` critic updates of the iteration, as ``GanTrainer`` reports it.
    """
    return {key: float(output[key]) for key in ("g_loss", "d_loss") if key in output}
