"""AnomalyPro bundle code: generator, WGAN-GP losses, paired data, GAN-engine adapters, pseudo-AUC selection."""

from . import data, engine, loss, network, selection

__all__ = ["data", "engine", "loss", "network", "selection"]
