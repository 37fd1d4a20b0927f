"""Exact evaluation in a 2-D latent space by quadrature on lattices of z, with a bound per image.

    log p(x) ~= log sum_g w_g p(x|z_g) p(z_g) + log(cell area)

On a lattice shared by all images the decoder runs once per node, and log p(x|z_g) =
x . l_g - sum_j softplus(l_gj) for all images is one matrix product X L^T; an image whose
peak the shared lattice does not resolve gets windows of its own spacing
(``adaptive_log_marginal``).
"""

from __future__ import annotations

import logging
import math

import torch
from torch.nn import functional as F

from flowvae.vae import VAE

log = logging.getLogger(__name__)

MIN_N_EFF = 4 * math.pi  # lattice points under a peak of width h (see _bound)
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


def _bound(mid: dict, trapezoid: torch.Tensor, ring: torch.Tensor) -> dict[str, torch.Tensor]:
    """log p(x) per image with its error bound from three sums of p(x, z) h^2 (``Sums``): A by
    the midpoint rule and A' by the trapezoid rule on the square c + [-E, E]^2 (nodes shifted
    by h/2), R by the midpoint rule on the ring around it, E < max|z_i - c_i| <= E + ring.

        log p(x) ~= log((A + A') / 2 + R)
        spacing error <= |log A - log A'|   (the two rules' leading errors have opposite signs,
                                             so their mean lies between them)
        extent error  <= log(1 + R / (A + A')/2)  (mass beyond E + ring assumed below the mass
                                             in the ring: tails that decay outward, which holds
                                             once the square holds the image's search box)

    The spacing estimate can miss a peak narrower than h (both rules alias alike), so n_eff =
    (sum p)^2 / sum p^2 comes with it: a Gaussian peak of width sigma has n_eff ~= 4 pi
    sigma^2 / h^2, and for sigma >= h the midpoint rule's relative error is below
    2 exp(-2 pi^2) ~= 5e-9. Returns log_px, spacing_err, extent_err, bound (their sum), n_eff
    and the midpoint moments mean and sd (N,) or (N, 2)."""
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
    n_eff and the moments of z under the weights (``Sums``). The window's points z_bp =
    c_b + u_p h_b go in parts of WINDOW_POINTS (no whole (images, points, 2) array)."""
    u, log_w = lattice(float(n), 1.0, rule, inner=float(inner), device=x.device, dtype=x.dtype)
    per = max(1, MAX_ELEMENTS // (u.shape[0] * max(1, x.shape[1])))  # images per decoder block
    out = []
    for b in range(0, x.shape[0], per):
        c, h = center[b : b + per, None, :], step[b : b + per, None, :]
        sums, rows = Sums(c.shape[0], x), torch.arange(c.shape[0], device=x.device)
        for i in range(0, u.shape[0], WINDOW_POINTS):
            z = c + u[None, i : i + WINDOW_POINTS] * h
            lj = log_joint_paired(model, x[b : b + per], z) + log_w[i : i + WINDOW_POINTS]
            sums.add(rows, lj, z)
        log_area = torch.log(step[b : b + per]).sum(-1)
        out.append(sums.result(log_area))
    return {k: torch.cat([o[k] for o in out]) for k in out[0]}


def _window_bound(model, x, center, step, n) -> dict[str, torch.Tensor]:
    """``_bound`` on each image's own window (midpoint, trapezoid, ring of n/4 steps)."""
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


MAX_SEARCH_EXTENT = 64.0  # the search square doubles up to this half-width


@torch.no_grad()
def search_all(model: VAE, x: torch.Tensor, extent: float, spacing: float) -> torch.Tensor:
    """``search_boxes`` on [-E, E]^2, then on a square twice as wide for every image whose box
    reaches the square's edge (its posterior has mass beyond it), until every box lies inside
    or E reaches MAX_SEARCH_EXTENT: p(z|x) can lie far from where q(z|x) reaches."""
    boxes = search_boxes(model, x, extent, spacing)
    edge = (boxes[:, 0] < -extent).any(-1) | (boxes[:, 1] > extent).any(-1)
    while edge.any() and extent < MAX_SEARCH_EXTENT:
        extent = min(2 * extent, MAX_SEARCH_EXTENT)
        idx = edge.nonzero()[:, 0]
        boxes[idx] = search_boxes(model, x[idx], extent, spacing)
        edge[idx] = (boxes[idx, 0] < -extent).any(-1) | (boxes[idx, 1] > extent).any(-1)
    return boxes


COVER_NATS = 12.0  # a refinement window (with its ring) holds the search points this near the top


@torch.no_grad()
def near_points(model: VAE, x: torch.Tensor, boxes: torch.Tensor, spacing: float):
    """The points of a midpoint lattice of ``spacing`` over the union of the boxes (N, 2, 2)
    where log p(x, z) is within COVER_NATS of each image's largest value there: the points z
    (G, 2) and the mask (N, G) of each image's own."""
    low, high = boxes[:, 0].amin(0), boxes[:, 1].amax(0)
    c, e = (low + high) / 2, float((high - low).amax()) / 2
    z, _ = lattice(e, spacing, device=x.device, dtype=x.dtype, center=tuple(c.tolist()))
    step = max(1, MAX_ELEMENTS // max(x.shape[0], x.shape[1]))
    lj = torch.cat([log_joint(model, x, z[i : i + step]) for i in range(0, z.shape[0], step)], 1)
    return z, lj >= lj.amax(1, keepdim=True) - COVER_NATS


def covering(near: tuple, center: torch.Tensor, step: torch.Tensor, n: torch.Tensor):
    """Half-widths in steps (N,), at least n, of windows c_b + [-n h_b, n h_b] whose rings
    (to 1.25 n steps) hold every near point of image b (``near_points``): so that a lobe of
    p(z|x) far from the peak is not left outside, where the ring's assumption (tails that
    decay outward) fails. For a Gaussian peak the near points reach 4.9 sd: 5 steps of 0.8 sd
    hold them, as before."""
    z, mask = near
    reach = ((z[None] - center[:, None, :]).abs() / step[:, None, :]).amax(-1)  # (N, G)
    reach = torch.where(mask, reach, torch.zeros_like(reach)).amax(1)
    return torch.maximum(n, torch.ceil(reach / 1.25).long().cpu())


class Sums:
    """Running sums per image over blocks of lattice points, with weights w_p p(x, z_p) kept
    relative to the largest so far (log-sum-exp): log sum_p w_p p(x, z_p) * area, n_eff =
    (sum w p)^2 / sum (w p)^2 (lattice points under the peak), and the mean and sd of z under
    the weights. The one accumulator of every rule: midpoint, trapezoid and ring."""

    def __init__(self, n: int, like: torch.Tensor):
        self.top = torch.full((n,), -math.inf, device=like.device, dtype=like.dtype)
        self.s0, self.s00 = torch.zeros_like(self.top), torch.zeros_like(self.top)
        self.s1 = torch.zeros(n, 2, device=like.device, dtype=like.dtype)
        self.s2 = torch.zeros_like(self.s1)

    def add(self, rows: torch.Tensor, lj: torch.Tensor, z: torch.Tensor) -> None:
        """Images ``rows`` (B,), weighted log joints lj (B, P) (-inf: not theirs), points z
        (P, 2) shared by the images or (B, P, 2) their own."""
        top = self.top[rows]
        new = torch.maximum(top, lj.amax(1))
        safe = torch.where(torch.isinf(new), torch.zeros_like(new), new)
        scale = torch.exp(top - safe)
        e = torch.exp(lj - safe[:, None])
        self.s0[rows] = self.s0[rows] * scale + e.sum(1)
        self.s00[rows] = self.s00[rows] * scale**2 + (e * e).sum(1)
        ez = e @ z if z.dim() == 2 else torch.einsum("bp,bpd->bd", e, z)
        ez2 = e @ z**2 if z.dim() == 2 else torch.einsum("bp,bpd->bd", e, z**2)
        self.s1[rows] = self.s1[rows] * scale[:, None] + ez
        self.s2[rows] = self.s2[rows] * scale[:, None] + ez2
        self.top[rows] = new

    def result(self, log_area: float | torch.Tensor) -> dict[str, torch.Tensor]:
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
    """``_bound`` on each image's own square window of one shared lattice: image b's
    window is (c_b + [-n_b, n_b]) h per axis (c_b integer (N, 2), n_b = half (N,)), its ring
    reaches n_b + max(1, n_b // 4) steps. All windows share the lattice's nodes, so the
    decoder runs once per tile of nodes for every image whose window (or ring) meets the tile.
    """
    center, half = center.to(x.device), half.to(x.device)
    ring = half + (half // 4).clamp(min=1)
    mid, outer = Sums(x.shape[0], x), Sums(x.shape[0], x)
    trap = Sums(x.shape[0], x)
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
    """log p(x) with every image's bound (see ``_bound``) refined below ``tol``.

    1. Search: log p(x, z) of every image on a lattice of spacing 4h over [-E, E]^2, with E =
       the 99th percentile over images of how far q reaches (``posterior_reach``; at least 3)
       and h = 0.025 (or the given values); each image's box holds its points within
       SEARCH_NATS of its best one (``search_boxes``); an image whose box reaches the
       square's edge is searched again on a square twice as wide (``search_all``).
    2. Every image gets its own square window around its box on one shared lattice of spacing
       h, with the midpoint and trapezoid sums and a ring (``shared_windows``).
    3. Every image whose bound still exceeds tol, or whose peak spans fewer than MIN_N_EFF
       lattice points, gets a window of its own spacing, all such images at once: centre the
       posterior mean, spacing 0.8 posterior sd per axis (as seen on the lattice, at least
       h/4), half-width 5 steps or more, so that the window with its ring holds the search
       points within COVER_NATS of the top (``covering``: a lobe of p(z|x) far from its peak
       is not left out). Up to
       ``max_levels`` times, per image: when the spacing error exceeds tol/2 the spacing
       shrinks by sqrt(tol / 4 / error) (in [0.25, 0.6]; a kink of a ReLU decoder makes the
       error ~ h^2), when n_eff < MIN_N_EFF it halves, else the window widens 1.5 times when
       the extent error exceeds tol/2; the window is re-centred each time and its result kept
       only where its bound is the smaller.
    Mass of p(z|x) that no search point sees (beyond MAX_SEARCH_EXTENT, or in a peak narrower
    than the search spacing between its points) is not counted.
    Returns the per-image arrays (plus the smaller ``spacing`` used per image) and a summary.
    """
    if extent is None:
        extent = max(3.0, math.ceil(2 * float(torch.quantile(posterior_reach(model, x), 0.99))) / 2)
    spacing = spacing or 0.025  # resolves most posteriors of the study: few windows
    boxes = search_all(model, x, extent, 4 * spacing)
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
    near = near_points(model, x[bad], boxes[bad], 4 * spacing) if bad.numel() else None
    windows = 0
    for _ in range(max_levels):
        if not active.any():
            break
        half = covering(near, center, step, half)
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
