"""Reference quadratures that only the tests use: one grid or one lattice for every image.

The evaluation's own path is ``quadrature.adaptive_log_marginal``; these sum the same joint
density (``quadrature.log_joint``, looked up at call time so that tests can patch it) over one
square for all images, as independent routes to log p(x).
"""

from __future__ import annotations

import math

import torch

from flowvae import quadrature
from flowvae.quadrature import MAX_ELEMENTS, Sums, latent_grid, lattice


@torch.no_grad()
def log_marginal(model, x: torch.Tensor, extent: float, points: int) -> torch.Tensor:
    """log p(x) = logsumexp_g log p(x, z_g) + log(cell area) per image (N,), midpoint rule on a
    points x points grid over [-extent, extent]^2."""
    z, _, log_area = latent_grid(extent, points, device=x.device, dtype=x.dtype)
    step = max(1, MAX_ELEMENTS // max(x.shape[0], x.shape[1]))  # bounds both blocks
    total = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=x.dtype)
    for i in range(0, z.shape[0], step):
        lj = quadrature.log_joint(model, x, z[i : i + step])
        total = torch.logaddexp(total, torch.logsumexp(lj, dim=1))
    return total + log_area


@torch.no_grad()
def lattice_sums(model, x: torch.Tensor, z: torch.Tensor, log_w: torch.Tensor, log_area: float):
    """``Sums`` of w_g p(x_i, z_g) over the points z (G, 2) with log weights log_w, per image."""
    step = max(1, MAX_ELEMENTS // max(x.shape[0], x.shape[1]))
    sums, rows = Sums(x.shape[0], x), torch.arange(x.shape[0], device=x.device)
    for i in range(0, z.shape[0], step):
        zc = z[i : i + step]
        sums.add(rows, quadrature.log_joint(model, x, zc) + log_w[i : i + step], zc)
    return sums.result(log_area)


@torch.no_grad()
def bounded_log_marginal(
    model,
    x: torch.Tensor,
    extent: float,
    spacing: float,
    ring: float | None = None,
    center: tuple[float, float] = (0.0, 0.0),
) -> dict[str, torch.Tensor]:
    """``quadrature._bound`` on one square c + [-E, E]^2 for every image: midpoint and
    trapezoid sums of spacing h there, midpoint sums on the ring out to E + ring (E / 4
    unless given)."""
    ring = ring or max(spacing, round(extent / 4 / spacing) * spacing)
    kw, h2 = {"device": x.device, "dtype": x.dtype, "center": center}, 2 * math.log(spacing)
    mid = lattice_sums(model, x, *lattice(extent, spacing, **kw), h2)
    trap = lattice_sums(model, x, *lattice(extent, spacing, "trapezoid", **kw), h2)["log_sum"]
    outer = lattice_sums(model, x, *lattice(extent + ring, spacing, inner=extent, **kw), h2)
    return quadrature._bound(mid, trap, outer["log_sum"])
