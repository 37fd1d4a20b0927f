"""The VAE: encoder -> posterior family -> decoder, with a N(0, I) prior and Bernoulli pixels."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from flowvae import posteriors
from flowvae.nets import Decoder, Encoder
from flowvae.posteriors.base import PosteriorFamily
from flowvae.spec import ModelSpec, PosteriorSpec

DATA_DIM = 784


class VAE(nn.Module):
    """p(z) = N(0, I), p(x|z) = prod_j Bernoulli(x_j; sigmoid(l_j(z))), q(z|x) from a family."""

    def __init__(
        self,
        posterior: PosteriorFamily,
        hidden: list[int],
        activation: str = "relu",
        data_dim: int = DATA_DIM,
    ):
        super().__init__()
        d = posterior.latent_dim
        self.latent_dim = d
        self.encoder = Encoder(data_dim, hidden, d, posterior.context_dim, activation)
        self.decoder = Decoder(d, hidden[::-1], data_dim, activation)
        self.posterior = posterior

    def encode(self, x: torch.Tensor):
        """x (B, 784) -> mu (B, d), log sigma (B, d), context h (B, c) or None."""
        return self.encoder(x)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) = sum_j [x_j l_j - softplus(l_j)] for z (S, B, d), x (B, 784) -> (S, B)."""
        return self.bernoulli_log_likelihood(x, self.decoder(z))

    @staticmethod
    def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """sum_j [x_j l_j - softplus(l_j)] over the last axis (pixels), broadcast over the rest."""
        return (x * logits - F.softplus(logits)).sum(-1)

    @staticmethod
    def log_prior(z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) summed over the last axis."""
        return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)


def build_model(model: ModelSpec, posterior: PosteriorSpec) -> VAE:
    """The VAE with the architecture ``model`` and the posterior family ``posterior``."""
    family = posteriors.families()[posterior.family]
    q = family(latent_dim=model.latent_dim, **posterior.kwargs())
    return VAE(q, list(model.hidden), model.activation)
