"""PCP-Map posterior (Wang, Baptista, Marzouk, Ruthotto, Verma, 2023, arXiv:2310.16975).

The map is the gradient of a potential that is strictly convex in z0 and arbitrary in h:

    G(z0, h) = softplus(g1) Gtilde(z0, h) + (relu(g2) + softplus(g3)) |z0|^2 / 2,
    z = grad_{z0} G(z0, h),   log q(z|x) = log q(z0|x) - log det Hess_{z0} G(z0, h),

where Gtilde is a partially input-convex network (PICNN, Amos et al., 2017). The inverse solves
the convex conjugate problem z0 = argmin_y G(y, h) - <y, z> by damped Newton steps; points where
it does not converge within ``newton_iters`` raise a ``NewtonWarning`` that gives their count.

Differences from the reference code (github EmoryMLIP/PCP-Map, src/pcpmap.py, src/icnn.py), on
purpose:
- Direction: the reference learns grad G from data to the Gaussian (the density needs only the
  forward map) and samples by inverting it. A VAE posterior samples in every training step, so
  here grad G maps the base Gaussian z0 to z, and the inverse is needed only for log q on a grid.
- Log-determinant: log q(z) = log N(z0) - log det Hess G (the reference adds log det Hess G, its
  map going the other way). The Hessian is built from d autograd rows with create_graph=True and
  its log-determinant in closed form for d <= 2 (Cholesky above), not by eigvalsh of a vmapped
  functorch Hessian.
- Inverse solver: batched damped Newton with the exact Hessian and Armijo backtracking per point,
  stopping at a residual |grad G(y) - z| <= newton_tol, instead of one L-BFGS over the batch.
- Positivity: convex-path weights are softplus(V) of a free V (smooth, never clamped), instead of
  relu applied to the weights in the forward pass and written back into them at construction.
- Initialisation: softplus(g1) = 0.1, relu(g2) + softplus(g3) = 1, so the flow starts close to
  the identity z = z0 (the reference starts at 0.69 Gtilde + 0.84 |x|^2 / 2).
- Quadratic term: |z0|^2 / 2 summed over the d coordinates, one scalar added to Gtilde; the
  reference adds the per-coordinate x * x / 2 to a scalar Gtilde by broadcasting, which only
  sums correctly for d = 1.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from flowvae.posteriors.base import PosteriorFamily


class NewtonWarning(RuntimeWarning):
    """The PCP-Map inverse left some points above its residual tolerance."""


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class NonnegLinear(nn.Module):
    """u -> W u with W = softplus(V) >= 0 elementwise (keeps the convex path convex)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        w0 = torch.rand(n_out, n_in) * (2.0 / n_in) + 1e-3
        self.raw = nn.Parameter(torch.log(torch.expm1(w0)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u @ F.softplus(self.raw).T


class PICNNLayer(nn.Module):
    """One convex-path layer, convex and nondecreasing in u, affine in y for fixed v:

    a = W+ (u * relu(B v + b_u)) + W_y (y * (A v + b_y)) + W_v v + b,  with W+ >= 0.
    """

    def __init__(self, n_u: int, n_y: int, n_v: int, n_out: int):
        super().__init__()
        self.gate_u = nn.Linear(n_v, n_u) if n_u else None
        self.pos = NonnegLinear(n_u, n_out) if n_u else None
        self.gate_y = nn.Linear(n_v, n_y)
        self.lin_y = nn.Linear(n_y, n_out, bias=False)
        self.lin_v = nn.Linear(n_v, n_out)

    def forward(self, u, y, v):
        a = self.lin_y(y * self.gate_y(v)) + self.lin_v(v)
        if self.pos is not None:
            a = a + self.pos(u * F.relu(self.gate_u(v)))
        return a


class PICNN(nn.Module):
    """Gtilde(y, v): context path v_{k+1} = elu(L_k v_k), convex path u_{k+1} = softplus(a_k)."""

    def __init__(self, latent_dim: int, context_dim: int, width: int, depth: int, context_width):
        super().__init__()
        v_sizes = [context_dim] + [context_width] * depth
        self.context = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(v_sizes[:-1], v_sizes[1:], strict=True)
        )
        u_sizes = [0] + [width] * depth
        self.layers = nn.ModuleList(
            PICNNLayer(u_sizes[k], latent_dim, v_sizes[k], width) for k in range(depth)
        )
        self.out = PICNNLayer(width, latent_dim, v_sizes[-1], 1)

    def forward(self, y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        v, u = h, None
        for layer, ctx in zip(self.layers, self.context, strict=True):
            u = F.softplus(layer(u, y, v))
            v = F.elu(ctx(v))
        return self.out(u, y, v).squeeze(-1)


class PCPMapPosterior(PosteriorFamily):
    """PCP-Map posterior: z = grad G(z0, h) with G strictly convex in z0.

    Args:
        latent_dim: d.
        context_dim: length of the encoder context h(x).
        width: width of the PICNN's convex path.
        depth: hidden layers of the PICNN.
        context_width: width of the PICNN's context path.
        newton_tol, newton_iters: stopping rule of the inverse (max residual |grad G - z|); points
            still above ``newton_tol`` after ``newton_iters`` steps are counted in a
            ``NewtonWarning`` and in ``newton_failures``.

    Example:
        >>> import torch
        >>> q = PCPMapPosterior(latent_dim=2, context_dim=8, width=16)
        >>> z, log_q = q.sample(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 8))
        >>> z.shape, log_q.shape
        (torch.Size([1, 3, 2]), torch.Size([1, 3]))
    """

    SETTINGS: ClassVar[dict] = {
        "context_dim": {"type": "integer", "minimum": 1},
        "width": {"type": "integer", "minimum": 1},
        "depth": {"type": "integer", "minimum": 1},
        "context_width": {"type": "integer", "minimum": 1},
        "newton_tol": {"type": "number", "exclusiveMinimum": 0},
        "newton_iters": {"type": "integer", "minimum": 1},
    }

    def __init__(
        self,
        latent_dim: int,
        context_dim: int = 128,
        width: int = 128,
        depth: int = 2,
        context_width: int = 128,
        newton_tol: float = 1e-6,
        newton_iters: int = 50,
    ):
        super().__init__(latent_dim)
        self.context_dim = context_dim
        self.picnn = PICNN(latent_dim, context_dim, width, depth, context_width)
        # start close to the identity map: a small convex part plus |z0|^2 / 2
        self.g1 = nn.Parameter(torch.tensor(_inv_softplus(0.1)))
        self.g2 = nn.Parameter(torch.tensor(0.0))
        self.g3 = nn.Parameter(torch.tensor(_inv_softplus(1.0)))
        self.newton_tol, self.newton_iters = newton_tol, newton_iters
        self.newton_failures = 0  # points the inverse left unconverged, over this object's life

    def potential(self, y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """G(y, h) = softplus(g1) Gtilde(y, h) + (relu(g2) + softplus(g3)) |y|^2 / 2, shape (N,)."""
        quad = F.relu(self.g2) + F.softplus(self.g3)
        return F.softplus(self.g1) * self.picnn(y, h) + 0.5 * quad * (y**2).sum(-1)

    def grad_hessian(self, y, h, create_graph: bool):
        """grad_y G (N, d) and Hess_y G (N, d, d) by autograd (d Hessian rows)."""
        with torch.enable_grad():
            if not y.requires_grad:
                y = y.detach().requires_grad_(True)
            g = torch.autograd.grad(self.potential(y, h).sum(), y, create_graph=True)[0]
            rows = [
                torch.autograd.grad(g[:, i].sum(), y, create_graph=create_graph, retain_graph=True)[
                    0
                ]
                for i in range(y.shape[-1])
            ]
        return g, torch.stack(rows, dim=1)

    def transform(self, z0, h):
        graph = torch.is_grad_enabled()
        z, hess = self.grad_hessian(z0, h, create_graph=graph)
        logdet = log_det_spd(hess)
        if not graph:
            z, logdet = z.detach(), logdet.detach()
        return z, logdet

    @torch.no_grad()
    def inverse(self, z, h):
        """Damped Newton on phi(y) = G(y, h) - <y, z>: y <- y - t H^{-1} (grad G(y) - z).

        Only the samples whose residual |grad G(y) - z| is still above ``newton_tol`` are updated;
        those left above it after ``newton_iters`` steps raise a ``NewtonWarning`` with their count.
        """
        y = z.clone()
        active = torch.arange(z.shape[0], device=z.device)
        for it in range(self.newton_iters + 1):
            ya, za, ha = y[active], z[active], None if h is None else h[active]
            g, hess = self.grad_hessian(ya, ha, create_graph=False)
            r = g - za
            left = r.abs().amax(-1) > self.newton_tol
            if not left.any():
                return y
            if it == self.newton_iters:
                break
            ya, za, r, hess, active = ya[left], za[left], r[left], hess[left], active[left]
            ha = None if ha is None else ha[left]
            step = torch.linalg.solve(hess, r.unsqueeze(-1)).squeeze(-1)
            phi = self.potential(ya, ha) - (ya * za).sum(-1)
            slack = 1e-4 * (r * step).sum(-1) - 1e-6 * (1 + phi.abs())  # float round-off allowance
            t = torch.ones_like(phi)
            for _ in range(20):  # Armijo backtracking, per sample
                y_new = ya - t[:, None] * step
                ok = self.potential(y_new, ha) - (y_new * za).sum(-1) <= phi - t * slack
                if ok.all():
                    break
                t = torch.where(ok, t, 0.5 * t)
            y[active] = ya - t[:, None] * step
        n_bad = int(left.sum())
        self.newton_failures += n_bad
        warnings.warn(
            f"PCP-Map inverse: {n_bad} of {z.shape[0]} points not converged after "
            f"{self.newton_iters} Newton steps (max residual {r.abs().amax().item():.3g} > "
            f"newton_tol {self.newton_tol:g})",
            NewtonWarning,
            stacklevel=2,
        )
        return y


def log_det_spd(hess: torch.Tensor) -> torch.Tensor:
    """log det of SPD matrices (N, d, d): closed form for d <= 2, else 2 sum log diag(chol)."""
    d = hess.shape[-1]
    if d == 1:
        return torch.log(hess[:, 0, 0])
    if d == 2:
        off = 0.5 * (hess[:, 0, 1] + hess[:, 1, 0])
        return torch.log(hess[:, 0, 0] * hess[:, 1, 1] - off**2)
    chol = torch.linalg.cholesky(0.5 * (hess + hess.transpose(-1, -2)))
    return 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
