"""Quadrature against a closed form: a linear-Gaussian decoder, where p(x) is Gaussian."""

import math

import torch
from torch import nn

from flowvae import quadrature


class LinearGaussian(nn.Module):
    """p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I): then p(x) = N(b, W W^T + s^2 I)."""

    def __init__(self, w, b, s):
        super().__init__()
        self.w, self.b, self.s = w, b, s

    def decoder_log_lik(self, x, z):
        mean = z @ self.w.T + self.b
        return (-0.5 * ((x[:, None] - mean[None]) / self.s) ** 2).sum(-1) - x.shape[1] * (
            math.log(self.s) + 0.5 * math.log(2 * math.pi)
        )


def test_grid_log_marginal_matches_closed_form(monkeypatch):
    torch.manual_seed(0)
    w = torch.randn(5, 2, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    lg = LinearGaussian(w, b, 0.7)
    x = torch.randn(8, 5, dtype=torch.float64) * 1.5 + b

    from flowvae.vae import VAE

    # swap the Bernoulli likelihood for the Gaussian one in the shared joint density
    def log_joint(model, x, z):
        return lg.decoder_log_lik(x, z) + VAE.log_prior(z)

    monkeypatch.setattr(quadrature, "log_joint", log_joint)
    got = quadrature.log_marginal(None, x, extent=8.0, points=400)
    cov = w @ w.T + 0.49 * torch.eye(5, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(b, cov).log_prob(x)
    assert torch.allclose(got, exact, atol=1e-6)


def test_grid_cells_tile_the_square():
    z, axis, log_area = quadrature.latent_grid(3.0, 30)
    assert z.shape == (900, 2)
    assert math.isclose(math.exp(log_area) * 900, 36.0, rel_tol=1e-9)
    assert torch.isclose(axis[0], torch.tensor(-2.9)) and torch.isclose(axis[-1], torch.tensor(2.9))
    # row-major in z2: consecutive points move along z1
    assert z[1, 0] > z[0, 0] and z[1, 1] == z[0, 1]
