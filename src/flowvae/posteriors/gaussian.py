"""Gaussian posterior of the standard VAE (Kingma and Welling, 2014, arXiv:1312.6114).

z = mu + sigma * eps,  log q(z|x) = sum_i [ -eps_i^2/2 - log sigma_i - log(2 pi)/2 ].
"""

from __future__ import annotations

from typing import ClassVar

from flowvae.posteriors.base import PosteriorFamily


class GaussianPosterior(PosteriorFamily):
    """Diagonal Gaussian q(z|x) = N(mu(x), diag sigma(x)^2); the flow is the identity.

    Example:
        >>> import torch
        >>> q = GaussianPosterior(latent_dim=2)
        >>> z, log_q = q.sample(torch.zeros(3, 2), torch.zeros(3, 2), None, n_samples=5)
        >>> z.shape, log_q.shape
        (torch.Size([5, 3, 2]), torch.Size([5, 3]))
    """

    context_dim = 0
    SETTINGS: ClassVar[dict] = {}

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)

    def transform(self, z0, h):
        return z0, z0.new_zeros(z0.shape[0])

    def inverse(self, z, h):
        return z
