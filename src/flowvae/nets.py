"""Encoder and decoder networks: plain MLPs between images (784 pixels) and the latent space."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x -> (mu(x), log sigma(x), h(x)): the base Gaussian's parameters and a context vector.

    Args:
        data_dim: pixels per image.
        hidden: hidden widths.
        latent_dim: d, the latent dimension.
        context_dim: c, the length of the context h(x) for conditional flows (0 = none).
    """

    def __init__(
        self, data_dim: int, hidden: list[int], latent_dim: int, context_dim: int, activation: str
    ):
        super().__init__()
        self.latent_dim, self.context_dim = latent_dim, context_dim
        self.body = mlp([data_dim, *hidden], activation)
        self.act = ACTIVATIONS[activation]()
        self.head = nn.Linear(hidden[-1], 2 * latent_dim + context_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        out = self.head(self.act(self.body(x)))
        d = self.latent_dim
        mu, log_sigma = out[:, :d], out[:, d : 2 * d]
        h = out[:, 2 * d :] if self.context_dim else None
        return mu, log_sigma, h


class Decoder(nn.Module):
    """z -> 784 Bernoulli logits; log p(x|z) = sum_j [x_j l_j - softplus(l_j)]."""

    def __init__(self, latent_dim: int, hidden: list[int], data_dim: int, activation: str):
        super().__init__()
        self.net = mlp([latent_dim, *hidden, data_dim], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
