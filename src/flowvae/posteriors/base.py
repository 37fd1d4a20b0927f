"""The interface every posterior family implements.

q(z|x) is a base Gaussian N(mu(x), diag sigma(x)^2) pushed through an invertible map
z = T(z0; h(x)) conditioned on the encoder context h(x):

    log q(z|x) = log N(z0; mu, sigma^2) - log |det dT/dz0|

The Gaussian family is the identity map.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """sum_i [ -((z_i - mu_i)/sigma_i)^2 / 2 - log sigma_i - log(2 pi)/2 ] over the last axis."""
    eps = (z - mu) * torch.exp(-log_sigma)
    return (-0.5 * eps**2 - log_sigma - 0.5 * LOG_2PI).sum(-1)


class PosteriorFamily(nn.Module):
    """Base class: subclasses set ``context_dim`` and implement ``transform`` and ``inverse``."""

    context_dim: int = 0

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def transform(self, z0: torch.Tensor, h: torch.Tensor | None):
        """(N, d) base samples -> (z (N, d), log|det dz/dz0| (N,))."""
        raise NotImplementedError

    def inverse(self, z: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        """(N, d) -> z0 with transform(z0, h)[0] == z."""
        raise NotImplementedError

    def sample(
        self,
        mu: torch.Tensor,
        log_sigma: torch.Tensor,
        h: torch.Tensor | None,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized samples: z (S, B, d) and log q(z|x) (S, B)."""
        shape = (n_samples, *mu.shape)
        eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z0 = mu + torch.exp(log_sigma) * eps
        log_q0 = (-0.5 * eps**2 - log_sigma - 0.5 * LOG_2PI).sum(-1)
        z, logdet = self.transform(*_flatten(z0, h))
        return z.reshape(shape), log_q0 - logdet.reshape(shape[:-1])

    def log_prob(
        self, z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, h: torch.Tensor | None
    ) -> torch.Tensor:
        """log q(z|x) at given z of shape (S, B, d) for a batch of B encodings -> (S, B)."""
        z_flat, h_flat = _flatten(z, h)
        z0 = self.inverse(z_flat, h_flat)
        _, logdet = self.transform(z0, h_flat)
        z0 = z0.reshape(z.shape)
        return gaussian_log_prob(z0, mu, log_sigma) - logdet.reshape(z.shape[:-1])


def _flatten(z: torch.Tensor, h: torch.Tensor | None):
    """(S, B, d) samples and (B, c) contexts -> (S*B, d) and (S*B, c)."""
    flat = z.reshape(-1, z.shape[-1])
    if h is None:
        return flat, None
    h = h.expand(z.shape[0], *h.shape).reshape(-1, h.shape[-1])
    return flat, h
