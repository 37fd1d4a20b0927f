"""Exact evaluation in a 2-D latent space by quadrature on a grid of z (midpoint rule).

    log p(x) ~= logsumexp_g [ log p(x|z_g) + log p(z_g) ] + log(cell area)

The decoder runs once per grid point; log p(x|z_g) = x . l_g - sum_j softplus(l_gj) for the
whole test set is one matrix product X L^T, accumulated over grid chunks by log-sum-exp.
"""

from __future__ import annotations

import logging
import math

import torch
from torch.nn import functional as F

from flowvae.vae import VAE

log = logging.getLogger(__name__)

MIN_N_EFF = 4 * math.pi  # lattice points under a peak of width h (see bounded_log_marginal)
MAX_ELEMENTS = 2**23  # entries of the (images x points) and (points x pixels) blocks: 32 MiB each
WINDOW_POINTS = 2**20  # a refinement window's points per part (its moments are summed by parts)


def latent_grid(extent: float, points: int, device=None, dtype=None):
    """Cell centres of [-extent, extent]^2: z (points^2, 2) (z2-major), axis, log area."""
    h = 2 * extent / points
    axis = torch.linspace(-extent + h / 2, extent - h / 2, points, device=device, dtype=dtype)
    z2, z1 = torch.meshgrid(axis, axis, indexing="ij")
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1)
    return z, axis, 2 * math.log(h)


@torch.no_grad()
def log_joint(model: VAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x_i, z_g) = log p(x_i|z_g) + log p(z_g); images (N, 784), points (G, 2) -> (N, G)."""
    logits = model.decoder(z)
    return x @ logits.T - F.softplus(logits).sum(-1) + model.log_prior(z)


@torch.no_grad()
def log_joint_paired(model: VAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x_b, z_bp) for each image's own points: images (B, 784), z (B, P, 2) -> (B, P).

    The decoder runs on blocks of points whose (B, points, pixels) logits stay within
    MAX_ELEMENTS, so a large refinement window does not hold all its logits at once.
    """
    cols = max(1, MAX_ELEMENTS // (z.shape[0] * max(1, x.shape[1])))
    blocks = []
    for i in range(0, z.shape[1], cols):
        logits = model.decoder(z[:, i : i + cols])
        log_lik = torch.bmm(logits, x[:, :, None])[..., 0] - F.softplus(logits).sum(-1)
        blocks.append(log_lik + model.log_prior(z[:, i : i + cols]))
    return torch.cat(blocks, 1)


@torch.no_grad()
def log_marginal(model: VAE, x: torch.Tensor, extent: float, points: int) -> torch.Tensor:
    """log p(x) per image (N,) on a points x points grid over [-extent, extent]^2."""
    z, _, log_area = latent_grid(extent, points, device=x.device, dtype=x.dtype)
    step = max(1, MAX_ELEMENTS // max(x.shape[0], x.shape[1]))  # bounds both blocks
    total = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=x.dtype)
    for i in range(0, z.shape[0], step):
        total = torch.logaddexp(total, torch.logsumexp(log_joint(model, x, z[i : i + step]), dim=1))
    return total + log_area


@torch.no_grad()
def _lattice_log_sum(
    model: VAE, x: torch.Tensor, z: torch.Tensor, log_w: torch.Tensor, log_area: float
) -> dict[str, torch.Tensor]:
    """Over the points z (G, 2) with log weights log_w, per image (N,):

    log_sum = log sum_g w_g p(x_i, z_g) * area; n_eff = (sum_g w_g p_g)^2 / sum_g (w_g p_g)^2
    (lattice points under the peak); mean (N, 2) and sd (N, 2) of z under the weights w_g p_g.
    """
    step = max(1, MAX_ELEMENTS // max(x.shape[0], x.shape[1]))
    sums, rows = _Sums(x.shape[0], x), torch.arange(x.shape[0], device=x.device)
    for i in range(0, z.shape[0], step):
        zc = z[i : i + step]
        sums.add(rows, log_joint(model, x, zc) + log_w[i : i + step], zc)
    return sums.result(log_area)


def lattice(
    extent: float,
    spacing: float,
    rule: str = "midpoint",
    inner: float = 0.0,
    device=None,
    dtype=torch.float32,
    center: tuple[float, float] = (0.0, 0.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points z (G, 2) and log weights (G,) of a product rule on center + [-extent, extent]^2.

    midpoint: cell centres (k + 1/2) h; trapezoid: nodes k h with weight 1/2 on the edges
    (both exact for linear functions); with inner > 0 only points with max |z_i| > inner.
    """
    n = round(extent / spacing)
    if rule == "midpoint":
        axis = (torch.arange(-n, n, dtype=torch.float64) + 0.5) * spacing
        w = torch.zeros_like(axis)
    else:
        axis = torch.arange(-n, n + 1, dtype=torch.float64) * spacing
        w = torch.zeros_like(axis)
        w[[0, -1]] = -math.log(2)
    z2, z1 = torch.meshgrid(axis, axis, indexing="ij")
    w2, w1 = torch.meshgrid(w, w, indexing="ij")
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1)
    log_w = (w1 + w2).reshape(-1)
    if inner > 0:
        keep = z.abs().amax(-1) > inner + 1e-9
        z, log_w = z[keep], log_w[keep]
    z = z + torch.tensor(center, dtype=z.dtype)
    return z.to(device, dtype), log_w.to(device, dtype)


@torch.no_grad()
def bounded_log_marginal(
    model: VAE,
    x: torch.Tensor,
    extent: float,
    spacing: float,
    ring: float | None = None,
    center: tuple[float, float] = (0.0, 0.0),
) -> dict[str, torch.Tensor]:
    """log p(x) per image with a per-image error bound, on one lattice of spacing h.

    Three sums of p(x, z) h^2: A by the midpoint rule and A' by the trapezoid rule on the
    square c + [-E, E]^2 (nodes shifted by h/2), R by the midpoint rule on the ring around it,
    E < max|z_i - c_i| <= E + ring (ring = E / 4 unless given).

        log p(x) ~= log((A + A') / 2 + R)
        spacing error <= |log A - log A'|   (the two rules' leading errors have opposite signs,
                                             so their mean lies between them)
        extent error  <= log(1 + R / (A + A')/2)  (mass beyond E + ring assumed below the mass
                                             in the ring, i.e. tails that decay outward)

    The spacing estimate can miss a peak narrower than h (both rules alias alike), so the
    effective number of lattice points n_eff = (sum p)^2 / sum p^2 is returned too: a
    Gaussian peak of width sigma has n_eff ~= 4 pi sigma^2 / h^2, and for sigma >= h the
    midpoint rule's relative error is below 2 exp(-2 pi^2) ~= 5e-9.

    Returns log_px, spacing_err, extent_err, bound = spacing_err + extent_err and n_eff (N,).
    """
    ring = ring or max(spacing, round(extent / 4 / spacing) * spacing)
    kw, h2 = {"device": x.device, "dtype": x.dtype, "center": center}, 2 * math.log(spacing)
    mid = _lattice_log_sum(model, x, *lattice(extent, spacing, **kw), h2)
    a2 = _lattice_log_sum(model, x, *lattice(extent, spacing, "trapezoid", **kw), h2)["log_sum"]
    r = _lattice_log_sum(model, x, *lattice(extent + ring, spacing, inner=extent, **kw), h2)
    return _bound(mid, a2, r["log_sum"])


def _bound(mid: dict, trapezoid: torch.Tensor, ring: torch.Tensor) -> dict[str, torch.Tensor]:
    """log p(x) = log((A + A') / 2 + R) and its spacing and extent errors (bounded_log_marginal)
    from the midpoint sums (with n_eff and moments), the trapezoid sums and the ring sums."""
    inner = torch.logaddexp(mid["log_sum"], trapezoid) - math.log(2)
    log_px = torch.logaddexp(inner, ring)
    spacing_err, extent_err = (mid["log_sum"] - trapezoid).abs(), log_px - inner
    return {
        "log_px": log_px,
        "spacing_err": spacing_err,
        "extent_err": extent_err,
        "bound": spacing_err + extent_err,
        "n_eff": mid["n_eff"],
        "mean": mid["mean"],
        "sd": mid["sd"],
    }


def _window_sums(
    model: VAE,
    x: torch.Tensor,
    center: torch.Tensor,
    step: torch.Tensor,
    n: int,
    rule: str,
    inner: int = 0,
) -> dict[str, torch.Tensor]:
    """Per image b, a product rule on its own window c_b + [-n h_b, n h_b] (spacing h_b per
    axis; with inner, only the ring beyond inner h_b): log sum_p w_p p(x_b, z_bp) h_b1 h_b2,
    n_eff and the moments of z under the weights (see _lattice_log_sum)."""
    u, log_w = lattice(float(n), 1.0, rule, inner=float(inner), device=x.device, dtype=x.dtype)
    per = max(1, MAX_ELEMENTS // (u.shape[0] * max(1, x.shape[1])))  # images per decoder block
    out = {"log_sum": [], "n_eff": [], "mean": [], "sd": []}
    for b in range(0, x.shape[0], per):
        c, h = center[b : b + per, None, :], step[b : b + per, None, :]
        parts = [log_joint_paired(model, x[b : b + per], z) for _, z in _window_parts(c, u, h)]
        lj = torch.cat(parts, 1) + log_w
        top = lj.amax(1, keepdim=True)
        e = torch.exp(lj - top)
        s0 = e.sum(1)
        mean = _moment(e, c, u, h, 1) / s0[:, None]
        var = _moment(e, c, u, h, 2, mean[:, None]) / s0[:, None]
        log_area = torch.log(step[b : b + per]).sum(-1)
        out["log_sum"].append(top[:, 0] + torch.log(s0) + log_area)
        out["n_eff"].append(s0**2 / (e * e).sum(1))
        out["mean"].append(mean)
        out["sd"].append(var.clamp(min=0).sqrt())
    return {k: torch.cat(v) for k, v in out.items()}


def _window_parts(c: torch.Tensor, u: torch.Tensor, h: torch.Tensor):
    """(slice, z) over a window's points in parts of WINDOW_POINTS: z_bp = c_b + u_p h_b, so
    that no (images, points, 2) array of a large window is held whole (one part otherwise)."""
    for i in range(0, u.shape[0], WINDOW_POINTS):
        yield slice(i, i + WINDOW_POINTS), c + u[None, i : i + WINDOW_POINTS] * h


def _moment(e, c, u, h, power: int, about: torch.Tensor | float = 0.0) -> torch.Tensor:
    """sum_p e_bp (z_bp - about_b)^power over the window's parts."""
    return sum((e[:, s, None] * (z - about) ** power).sum(1) for s, z in _window_parts(c, u, h))


def _window_bound(model, x, center, step, n) -> dict[str, torch.Tensor]:
    """bounded_log_marginal on each image's own window (midpoint, trapezoid, ring of n/4)."""
    mid = _window_sums(model, x, center, step, n, "midpoint")
    trap = _window_sums(model, x, center, step, n, "trapezoid")["log_sum"]
    ring = _window_sums(model, x, center, step, n + max(1, n // 4), "midpoint", inner=n)
    return _bound(mid, trap, ring["log_sum"])


@torch.no_grad()
def posterior_reach(model: VAE, x: torch.Tensor, radius: float = 4.0, directions: int = 16):
    """max_i |z_i| over z = T(mu + sigma * radius * (cos a, sin a); h) at ``directions`` angles a,
    per image (N,): how far q(z|x) reaches in z, not in the base space (an IAF's base Gaussian
    can be many times wider than q). For the Gaussian family it equals max_i |mu_i| + 4 sigma_i.
    """
    mu, log_sigma, h = model.encode(x)
    a = torch.arange(directions, dtype=torch.float64) * (2 * math.pi / directions)
    eps = (radius * torch.stack([a.cos(), a.sin()], -1)).to(x.device, x.dtype)  # (A, 2)
    z0 = (mu + log_sigma.exp() * eps[:, None, :]).reshape(-1, mu.shape[-1])
    h = None if h is None else h.expand(directions, *h.shape).reshape(-1, h.shape[-1])
    z, _ = model.posterior.transform(z0, h)
    return z.abs().reshape(directions, -1, mu.shape[-1]).amax(dim=(0, 2))


SEARCH_NATS = 20.0  # a window holds every search point within this many nats of the image's best
TILE = 32  # lattice points per tile side: the decoder runs once per tile for all its images


@torch.no_grad()
def search_boxes(model: VAE, x: torch.Tensor, extent: float, spacing: float) -> torch.Tensor:
    """Per image, the box (N, 2, 2) = [low, high] per axis around every point of a midpoint
    lattice of ``spacing`` on [-extent, extent]^2 where log p(x, z) is within SEARCH_NATS of
    the image's largest value there, widened by one spacing: where p(z|x) has its mass.
    """
    z, log_w = lattice(extent, spacing, device=x.device, dtype=x.dtype)
    step = max(1, MAX_ELEMENTS // max(x.shape[0], x.shape[1]))
    lj = torch.cat([log_joint(model, x, z[i : i + step]) for i in range(0, z.shape[0], step)], 1)
    boxes, per = [], max(1, MAX_ELEMENTS // z.shape[0])
    for b in range(0, x.shape[0], per):
        near = lj[b : b + per]
        near = (near >= near.amax(1, keepdim=True) - SEARCH_NATS)[..., None]  # (B, G, 1)
        low = torch.where(near, z, math.inf).amin(1) - spacing
        high = torch.where(near, z, -math.inf).amax(1) + spacing
        boxes.append(torch.stack([low, high], 1))
    return torch.cat(boxes)


class _Sums:
    """Running log-sum-exp sums per image over blocks of lattice points (see _lattice_log_sum):
    log sum_p w_p p(x, z_p), sum (w p)^2 for n_eff, and the first two moments of z."""

    def __init__(self, n: int, like: torch.Tensor):
        self.top = torch.full((n,), -math.inf, device=like.device, dtype=like.dtype)
        self.s0, self.s00 = torch.zeros_like(self.top), torch.zeros_like(self.top)
        self.s1 = torch.zeros(n, 2, device=like.device, dtype=like.dtype)
        self.s2 = torch.zeros_like(self.s1)

    def add(self, rows: torch.Tensor, lj: torch.Tensor, z: torch.Tensor) -> None:
        """Images ``rows`` (B,), weighted log joints lj (B, P) (-inf: not theirs), points (P, 2)."""
        top = self.top[rows]
        new = torch.maximum(top, lj.amax(1))
        safe = torch.where(torch.isinf(new), torch.zeros_like(new), new)
        scale = torch.exp(top - safe)
        e = torch.exp(lj - safe[:, None])
        self.s0[rows] = self.s0[rows] * scale + e.sum(1)
        self.s00[rows] = self.s00[rows] * scale**2 + (e * e).sum(1)
        self.s1[rows] = self.s1[rows] * scale[:, None] + e @ z
        self.s2[rows] = self.s2[rows] * scale[:, None] + e @ z**2
        self.top[rows] = new

    def result(self, log_area: float) -> dict[str, torch.Tensor]:
        mean = self.s1 / self.s0[:, None]
        return {
            "log_sum": self.top + torch.log(self.s0) + log_area,
            "n_eff": self.s0**2 / self.s00,
            "mean": mean,
            "sd": (self.s2 / self.s0[:, None] - mean**2).clamp(min=0).sqrt(),
        }


def _tiles(low: torch.Tensor, high: torch.Tensor):
    """Tiles of TILE x TILE lattice indices covering the union of the boxes [low_b, high_b]
    (integer indices (N, 2), inclusive); yields the tile's index axes and the images it meets."""
    start, stop = low.amin(0).tolist(), high.amax(0).tolist()
    for k2 in range(start[1], stop[1] + 1, TILE):
        meets2 = (low[:, 1] < k2 + TILE) & (high[:, 1] >= k2)
        for k1 in range(start[0], stop[0] + 1, TILE):
            rows = (meets2 & (low[:, 0] < k1 + TILE) & (high[:, 0] >= k1)).nonzero()[:, 0]
            if rows.numel():
                axes = [torch.arange(k, k + TILE, device=low.device) for k in (k1, k2)]
                yield *axes, rows


@torch.no_grad()
def shared_windows(
    model: VAE, x: torch.Tensor, center: torch.Tensor, half: torch.Tensor, spacing: float
) -> dict[str, torch.Tensor]:
    """bounded_log_marginal on each image's own square window of one shared lattice: image b's
    window is (c_b + [-n_b, n_b]) h per axis (c_b integer (N, 2), n_b = half (N,)), its ring
    reaches n_b + max(1, n_b // 4) steps. All windows share the lattice's nodes, so the
    decoder runs once per tile of nodes for every image whose window (or ring) meets the tile.
    """
    center, half = center.to(x.device), half.to(x.device)
    ring = half + (half // 4).clamp(min=1)
    mid, outer = _Sums(x.shape[0], x), _Sums(x.shape[0], x)
    trap = _Sums(x.shape[0], x)
    log_half = math.log(0.5)
    # midpoint nodes (k + 1/2) h: window k - c in [-n, n - 1], ring [-m, m - 1] outside it
    for a1, a2, rows in _tiles(center - ring[:, None], center + ring[:, None] - 1):
        k = torch.stack(torch.meshgrid(a1, a2, indexing="xy"), -1).reshape(-1, 2)
        z = ((k + 0.5) * spacing).to(x.device, x.dtype)
        lj = log_joint(model, x[rows], z)
        u = k[None] - center[rows, None, :]  # (B, P, 2) steps from each image's centre
        n, m = half[rows, None, None], ring[rows, None, None]
        inside = ((u >= -n) & (u <= n - 1)).all(-1)
        in_ring = ((u >= -m) & (u <= m - 1)).all(-1) & ~inside
        mid.add(rows, lj.masked_fill(~inside, -math.inf), z)
        outer.add(rows, lj.masked_fill(~in_ring, -math.inf), z)
    # trapezoid nodes k h: k - c in [-n, n], weight 1/2 per axis on the window's edge
    for a1, a2, rows in _tiles(center - half[:, None], center + half[:, None]):
        k = torch.stack(torch.meshgrid(a1, a2, indexing="xy"), -1).reshape(-1, 2)
        z = (k * spacing).to(x.device, x.dtype)
        u = (k[None] - center[rows, None, :]).abs()
        n = half[rows, None, None]
        log_w = ((u == n) * log_half).sum(-1).to(x.dtype).masked_fill((u > n).any(-1), -math.inf)
        trap.add(rows, log_joint(model, x[rows], z) + log_w, z)
    h2 = 2 * math.log(spacing)
    return _bound(mid.result(h2), trap.result(h2)["log_sum"], outer.result(h2)["log_sum"])


@torch.no_grad()
def adaptive_log_marginal(
    model: VAE,
    x: torch.Tensor,
    extent: float | None = None,
    spacing: float | None = None,
    tol: float = 0.01,
    max_levels: int = 8,
) -> tuple[dict[str, torch.Tensor], dict]:
    """log p(x) with every image's bound (see ``bounded_log_marginal``) refined below ``tol``.

    1. Search: log p(x, z) of every image on a lattice of spacing 4h over [-E, E]^2, with E =
       the 99th percentile over images of how far q reaches (``posterior_reach``; at least 3)
       and h = 0.025 (or the given values); each image's box holds its points within
       SEARCH_NATS of its best one (``search_boxes``).
    2. Every image gets its own square window around its box on one shared lattice of spacing
       h, with the midpoint and trapezoid sums and a ring (``shared_windows``).
    3. Every image whose bound still exceeds tol, or whose peak spans fewer than MIN_N_EFF
       lattice points, gets a window of its own spacing, all such images at once: centre the
       posterior mean, spacing 0.8 posterior sd per axis (as seen on the lattice, at least
       h/4), half-width 5 steps. Up to ``max_levels`` times, per image: when the spacing
       error exceeds tol/2 the spacing shrinks by sqrt(tol / 4 / error) (in [0.25, 0.6]; a
       kink of a ReLU decoder makes the error ~ h^2), when n_eff < MIN_N_EFF it halves, else
       the window widens 1.5 times when the extent error exceeds tol/2; the window is
       re-centred each time and its result kept only where its bound is the smaller.
    Mass of p(z|x) beyond E + 4h that no search point sees is not counted.
    Returns the per-image arrays (plus the smaller ``spacing`` used per image) and a summary.
    """
    if extent is None:
        extent = max(3.0, math.ceil(2 * float(torch.quantile(posterior_reach(model, x), 0.99))) / 2)
    spacing = spacing or 0.025  # resolves most posteriors of the study: few windows
    boxes = search_boxes(model, x, extent, 4 * spacing)
    middle = torch.round(boxes.mean(1) / spacing).long()
    window = torch.ceil((boxes[:, 1] - boxes[:, 0]).amax(-1) / (2 * spacing)).long() + 1
    out = shared_windows(model, x, middle, window, spacing)
    out["spacing"] = torch.full_like(out["log_px"], spacing)
    bad = ((out["bound"] > tol) | (out["n_eff"] < MIN_N_EFF)).nonzero()[:, 0]
    # 0.8 sd: a Gaussian peak then spans n_eff ~= 4 pi / 0.64 > MIN_N_EFF lattice points (a
    # peak narrower than the lattice still shows its sd roughly; the checks below correct it)
    step = 0.8 * out["sd"][bad].clamp(min=spacing / 4)
    center = out["mean"][bad].clone()
    half = torch.full((bad.numel(),), 5, dtype=torch.long)  # half-width in steps: 4 sd
    active = torch.ones(bad.numel(), dtype=torch.bool)
    windows = 0
    for _ in range(max_levels):
        if not active.any():
            break
        for n in sorted(set(half[active].tolist())):
            sel = (active & (half == n)).nonzero()[:, 0]
            idx = bad[sel]
            new = _window_bound(model, x[idx], center[sel], step[sel], n)
            windows += sel.numel()
            # a window replaces the result unless that is resolved and has the smaller bound
            old_ok = out["n_eff"][idx] >= MIN_N_EFF
            better = ~old_ok | ((new["n_eff"] >= MIN_N_EFF) & (new["bound"] < out["bound"][idx]))
            for k in new:
                out[k][idx[better]] = new[k][better]
            out["spacing"][idx[better]] = step[sel[better]].amin(-1)
            resolved = new["n_eff"] >= MIN_N_EFF
            finer = (new["spacing_err"] > tol / 2) | ~resolved
            wider = ~finer & (new["extent_err"] > tol / 2)
            # a resolved peak with kinks (ReLU decoders) has a spacing error ~ h^2: aim at
            # tol / 4; an unresolved one halves the spacing
            f = torch.where(resolved, (tol / 4 / new["spacing_err"]).sqrt().clamp(0.25, 0.6), 0.5)
            f = f[finer].to(step.dtype)
            step[sel[finer]] *= f[:, None]
            half[sel[finer]] = torch.ceil(half[sel[finer]] / f.cpu()).long()
            half[sel[wider]] = (half[sel[wider]] * 3 + 1) // 2
            center[sel] = new["mean"]
            active[sel[~finer & ~wider]] = False
    worst = int(out["bound"].argmax())
    info = {
        "extent": float(extent),
        "spacing": float(spacing),
        "tol": tol,
        "max_bound": float(out["bound"][worst]),
        "worst_image": worst,
        "max_spacing_err": float(out["spacing_err"].max()),
        "max_extent_err": float(out["extent_err"].max()),
        "images_over_tol": int((out["bound"] > tol).sum()),
        "min_n_eff": float(out["n_eff"].min()),
        "window_half_width": [int(window.min()), int(window.max())],
        "max_levels": max_levels,
        "worst_spacing_err": float(out["spacing_err"][worst]),
        "worst_extent_err": float(out["extent_err"][worst]),
        "worst_spacing": float(out["spacing"][worst]),
        "refined_images": int(bad.numel()),
        "refinement_windows": windows,
        "min_spacing": float(out["spacing"].min()),
    }
    log.info(
        "quadrature: worst per-image bound %.4g nats (image %d), %d images over %.3g nats, "
        "%d images refined in %d windows",
        info["max_bound"],
        worst,
        info["images_over_tol"],
        tol,
        info["refined_images"],
        windows,
    )
    if info["images_over_tol"]:
        log.warning("quadrature: %d images above the %.3g nats bound", info["images_over_tol"], tol)
    return out, info


@torch.no_grad()
def iwae_convergence(
    model: VAE,
    x: torch.Tensor,
    log_px: torch.Tensor,
    ks: tuple[int, ...] = (1, 10, 100, 1000, 5000),
    repeats: int = 5,
    chunk: int = 65536,
    seed: int = 0,
):
    """IWAE lower bounds for growing K against the quadrature log p(x), per image.

    Each repeat draws max(K) samples once; the bound for K uses its first K samples
    (log (1/K) sum_{k<=K} p(x, z_k) / q(z_k|x)), so a repeat costs max(K), not sum(K), decoder
    evaluations. Returns a pandas DataFrame with one row per (image, K): the mean and standard
    error over ``repeats`` independent estimates, log p(x), and excess = bound - log p(x), which
    stays below about 3 standard errors if the grid is right.
    """
    import pandas as pd

    gen = torch.Generator(device=x.device).manual_seed(seed)
    ks = tuple(sorted(ks))
    mu, log_sigma, h = model.encode(x)
    per_chunk = max(1, chunk // x.shape[0])
    reps = []
    for _ in range(repeats):
        log_w = []
        for done in range(0, ks[-1], per_chunk):
            z, log_q = model.posterior.sample(mu, log_sigma, h, min(per_chunk, ks[-1] - done), gen)
            log_w.append(model.log_likelihood(x, z) + model.log_prior(z) - log_q)
        cum = torch.logcumsumexp(torch.cat(log_w), dim=0)  # (K_max, N)
        reps.append(torch.stack([cum[k - 1] - math.log(k) for k in ks]))  # (len(ks), N)
    stack = torch.stack(reps)  # (repeats, len(ks), N)
    mean, err = stack.mean(0), stack.std(0) / math.sqrt(repeats)
    rows = []
    for j, k in enumerate(ks):
        for i in range(x.shape[0]):
            rows.append(
                {
                    "image": i,
                    "k": k,
                    "iwae": mean[j, i].item(),
                    "stderr": err[j, i].item(),
                    "log_px": log_px[i].item(),
                    "excess": (mean[j, i] - log_px[i]).item(),
                }
            )
    return pd.DataFrame(rows)
