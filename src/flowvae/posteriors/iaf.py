"""Inverse autoregressive flow (Kingma et al., 2016, arXiv:1606.04934), conditioned on h(x).

Each step t reads z_{t-1} and the context h through a MADE-style masked network that returns
(m_t, s_t), output i depending only on coordinates < i of z_{t-1}. The gated update is

    sigma_t = sigmoid(a s_t + b),   z_t = sigma_t * z_{t-1} + (1 - sigma_t) * m_t,
    log q(z_T|x) = log q(z_0|x) - sum_t sum_i log sigma_{t,i},

with the coordinate order reversed between steps. The gate scale a (``gate_scale``) slows how
fast sigma_t moves: the IAF VAE code the poster's team followed uses a = 1/10.

Context: with ``context_norm`` the MADEs read LN(h) = (h - mean(h)) / sd(h) (over h's c
features, no learned scale), so ||LN(h)||^2 = c whatever the encoder's scale. Without it h is
the encoder's unbounded linear output; trained long at a constant learning rate its scale
grows and the gradient norm with it (README, "Why the IAF trained worse"). The loss jumps
seen with Adam at a constant 1e-3 come with or without it.

Start: the output layers of every MADE are zero, so m = s = 0 and each step is the contraction
z_t = sigmoid(b) z_{t-1}: the flow starts at z = sigmoid(b)^T R^(T-1) z0, R the reversal of the
coordinates (not the identity: 0.45 z0 reversed for the defaults b = 1.5, T = 4), with
log-determinant T d log sigmoid(b). The encoder's mu and sigma absorb the scale and the order,
so q starts as a Gaussian.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from flowvae.posteriors.base import PosteriorFamily


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask of shape (out, in)."""

    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoregressive network (Germain et al., 2015): (z, h) -> (m, s), each (N, d).

    Input i has degree i (1..d); hidden unit k has degree k mod d (0..d-1, degree 0 sees no z,
    only h); a unit of degree a feeds one of degree b when b >= a, and output i reads the hidden
    units of degree < i. So m_i and s_i depend on z_{<i} and on all of h.
    """

    def __init__(self, latent_dim: int, context_dim: int, hidden: int, depth: int):
        super().__init__()
        d = latent_dim
        deg_in = torch.arange(1, d + 1)
        deg_hidden = torch.arange(hidden) % d
        layers, prev = [], deg_in
        for i in range(depth):
            mask = (deg_hidden[:, None] >= prev[None, :]).float()
            layers.append(MaskedLinear(d if i == 0 else hidden, hidden, mask))
            prev = deg_hidden
        self.hidden = nn.ModuleList(layers)
        self.context = nn.Linear(context_dim, hidden) if context_dim else None
        out_mask = (deg_in[:, None] > deg_hidden[None, :]).float().repeat(2, 1)
        self.out = MaskedLinear(hidden, 2 * d, out_mask)
        nn.init.zeros_(self.out.weight)  # m = s = 0 at start: each step is a fixed contraction
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.hidden[0](z)
        if self.context is not None:
            a = a + self.context(h)
        a = F.elu(a)
        for layer in self.hidden[1:]:
            a = F.elu(layer(a))
        m, s = self.out(a).chunk(2, dim=-1)
        return m, s


class IAFStep(nn.Module):
    """One gated IAF step; its Jacobian dz_t/dz_{t-1} is lower triangular with diagonal sigma_t."""

    def __init__(self, latent_dim, context_dim, hidden, depth, forget_bias, gate_scale=1.0):
        super().__init__()
        self.made = MADE(latent_dim, context_dim, hidden, depth)
        self.forget_bias = forget_bias
        self.gate_scale = gate_scale

    def forward(self, z, h):
        m, s = self.made(z, h)
        log_sigma = F.logsigmoid(self.gate_scale * s + self.forget_bias)
        sigma = torch.exp(log_sigma)
        return sigma * z + (1 - sigma) * m, log_sigma.sum(-1)

    def inverse(self, z_t, h):
        """z_{t-1,i} = (z_{t,i} - (1 - sigma_i) m_i) / sigma_i, one coordinate per pass."""
        z = torch.zeros_like(z_t)
        for i in range(z_t.shape[-1]):
            m, s = self.made(z, h)
            sigma = torch.sigmoid(self.gate_scale * s[:, i] + self.forget_bias)
            z = z.clone()
            z[:, i] = (z_t[:, i] - (1 - sigma) * m[:, i]) / sigma
        return z


class IAFPosterior(PosteriorFamily):
    """IAF posterior: Gaussian base, then ``steps`` gated autoregressive steps.

    Args:
        latent_dim: d.
        context_dim: length of the encoder context h(x).
        steps: number of IAF steps T.
        hidden: width of each MADE hidden layer.
        depth: hidden layers per MADE.
        forget_bias: b in sigma = sigmoid(a s + b); each step starts as z_t = sigmoid(b) z_{t-1}.
        gate_scale: a in sigma = sigmoid(a s + b).
        context_norm: read LN(h), the context standardized over its features, instead of h.

    Example:
        >>> import torch
        >>> q = IAFPosterior(latent_dim=2, context_dim=8)
        >>> z, log_q = q.sample(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 8))
        >>> z.shape, log_q.shape
        (torch.Size([1, 3, 2]), torch.Size([1, 3]))
    """

    SETTINGS: ClassVar[dict] = {
        "context_dim": {"type": "integer", "minimum": 1},
        "steps": {"type": "integer", "minimum": 1},
        "hidden": {"type": "integer", "minimum": 1},
        "depth": {"type": "integer", "minimum": 1},
        "forget_bias": {"type": "number"},
        "gate_scale": {"type": "number", "exclusiveMinimum": 0},
        "context_norm": {"type": "boolean"},
    }

    def __init__(
        self,
        latent_dim: int,
        context_dim: int = 128,
        steps: int = 4,
        hidden: int = 128,
        depth: int = 2,
        forget_bias: float = 1.5,
        context_norm: bool = True,
        gate_scale: float = 1.0,
    ):
        super().__init__(latent_dim)
        self.context_dim = context_dim
        self.norm = nn.LayerNorm(context_dim, elementwise_affine=False) if context_norm else None
        self.steps = nn.ModuleList(
            IAFStep(latent_dim, context_dim, hidden, depth, forget_bias, gate_scale)
            for _ in range(steps)
        )

    def _context(self, h):
        return h if self.norm is None else self.norm(h)

    def transform(self, z0, h):
        h = self._context(h)
        z, logdet = z0, z0.new_zeros(z0.shape[0])
        for t, step in enumerate(self.steps):
            if t > 0:
                z = z.flip(-1)  # reverse the order so every coordinate sees the others
            z, ld = step(z, h)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, z, h):
        h = self._context(h)
        for t in reversed(range(len(self.steps))):
            z = self.steps[t].inverse(z, h)
            if t > 0:
                z = z.flip(-1)
        return z
