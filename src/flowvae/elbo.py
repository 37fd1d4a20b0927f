"""The per-image ELBO by randomized quasi-Monte Carlo in the base space of q(z|x).

    ELBO(x) = E_{eps ~ N(0, I)}[f(eps)],  f = log p(x|z) + log p(z) + log|det dT| + H,
    z = T(mu + sigma eps; h)

With a control variate: c(eps) is the polynomial (degree 2 per axis) through f at the 3^d
nodes of the 3-point Gauss-Hermite rule, whose expectation is that rule's sum GH(f), so

    ELBO = GH(f) + E[f - c]

and each replica (one scrambling of ELBO_POINTS Sobol points) estimates the second term
without bias. Where f is nearly quadratic over q, f - c is small: the replicas spread several
times less than those of f itself. The replicas' spread gives a standard error per image, and
images whose error exceeds the target get more replicas.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from flowvae.vae import VAE

BATCH = 500  # images per decoder pass
ELBO_POINTS = 8  # scrambled Sobol points per replica of the per-image ELBO (with the control)
ELBO_REPLICAS = 8  # replicas per round (the standard error has ELBO_REPLICAS - 1 dof)
ELBO_MAX_REPLICAS = 4096  # the few images with a rough integrand get up to 32768 points
ELBO_TOL = 0.05  # nats: largest stated error of a per-image -ELBO (evaluate.elbo_tol)


def base_points(rule: str, n: int, seed: int = 0, dtype=torch.float32, dim: int = 2):
    """Points eps (M, dim) and weights (M,) for E_{eps ~ N(0, I)}[f(eps)] ~= sum_m w_m f(eps_m).

    "gh": the product Gauss-Hermite rule of n nodes per axis (probabilists' nodes; M = n^dim).
    "sobol": n scrambled Sobol points (seed = the scrambling) mapped by the normal inverse CDF,
    equal weights: one randomized quasi-Monte Carlo replica, unbiased for every f.
    """
    if rule == "gh":
        t, w = np.polynomial.hermite_e.hermegauss(n)
        t, w = torch.as_tensor(t, dtype=dtype), torch.as_tensor(w / w.sum(), dtype=dtype)
        axes = torch.meshgrid(*[t] * dim, indexing="ij")
        weights = torch.meshgrid(*[w] * dim, indexing="ij")
        eps = torch.stack([a.reshape(-1) for a in axes[::-1]], -1)  # axis 0 varies fastest
        return eps, torch.stack([v.reshape(-1) for v in weights], -1).prod(-1)
    engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
    u = engine.draw(n, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    eps = (math.sqrt(2) * torch.erfinv(2 * u - 1)).to(dtype)
    return eps, torch.full((n,), 1.0 / n, dtype=dtype)


@torch.no_grad()
def point_terms(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
    """The integrands (M, B) of the -ELBO terms at base points eps (M, d), per image.

    With z = T(mu + sigma eps; h) and eps ~ N(0, I), log q(z|x) = log N(eps) - sum log sigma
    - log|det dT|, so

        -ELBO = E_eps[rec + reg],  rec = -log p(x|z),  reg = -log p(z) - log|det dT| - H
        H = sum_i log sigma_i + d (1 + log 2 pi) / 2

    (the entropy of the base Gaussian in closed form). Only the forward map T is used, so any
    family works.
    """
    eps = eps.to(x.device, x.dtype)
    mu, log_sigma, h = model.encode(x)
    z0 = mu + torch.exp(log_sigma) * eps[:, None, :]  # (M, B, d)
    h_flat = None if h is None else h.expand(eps.shape[0], *h.shape).reshape(-1, h.shape[-1])
    z, logdet = model.posterior.transform(z0.reshape(-1, z0.shape[-1]), h_flat)
    z, logdet = z.reshape(z0.shape), logdet.reshape(z0.shape[:-1])
    entropy = log_sigma.sum(-1) + 0.5 * model.latent_dim * (1 + math.log(2 * math.pi))
    rec = -model.log_likelihood(x, z)
    reg = -(model.log_prior(z) + logdet) - entropy
    return {"neg_elbo": rec + reg, "rec": rec, "reg": reg}


@torch.no_grad()
def elbo_rule(
    model: VAE, x: torch.Tensor, eps: torch.Tensor, weights: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-image -ELBO terms by a rule (eps (M, d), weights (M,)): sum_m w_m terms(eps_m)."""
    weights = weights.to(x.device, x.dtype)
    return {k: weights @ v for k, v in point_terms(model, x, eps).items()}


def _lagrange(e: torch.Tensor) -> torch.Tensor:
    """The 3 Lagrange polynomials at the 3-point Gauss-Hermite nodes (-sqrt 3, 0, sqrt 3),
    at e (M,) -> (M, 3): e (e - sqrt 3) / 6, 1 - e^2 / 3, e (e + sqrt 3) / 6."""
    r3 = math.sqrt(3.0)
    return torch.stack([e * (e - r3) / 6, 1 - e**2 / 3, e * (e + r3) / 6], -1)


def control_basis(eps: torch.Tensor) -> torch.Tensor:
    """Tensor-product Lagrange basis (M, 3^d) at eps (M, d), in the node order of
    ``base_points("gh", 3)`` (axis 0 fastest): c(eps) = basis @ f(nodes) interpolates f."""
    basis = _lagrange(eps[:, 0])
    for j in range(1, eps.shape[1]):
        basis = (_lagrange(eps[:, j])[:, :, None] * basis[:, None, :]).reshape(eps.shape[0], -1)
    return basis


@torch.no_grad()
def control_anchor(model: VAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The control variate of every term: f at the 3^d Gauss-Hermite nodes (3^d, B) and its
    expectation GH(f) (B,), under the keys k and k + "_gh"."""
    eps, w = base_points("gh", 3, dtype=x.dtype, dim=model.latent_dim)
    terms = point_terms(model, x, eps)
    return {**terms, **{k + "_gh": w.to(x.device) @ v for k, v in terms.items()}}


@torch.no_grad()
def controlled_rule(
    model: VAE, x: torch.Tensor, eps: torch.Tensor, weights: torch.Tensor, anchor: dict
) -> dict[str, dict[str, torch.Tensor]]:
    """Per-image -ELBO terms from the same points by two unbiased estimators (one replica of
    RQMC each): "control", GH(f) + sum_m w_m (f - c)(eps_m) with c the control variate of
    ``control_anchor``, and "plain", sum_m w_m f(eps_m) (better where f is far from
    quadratic, so that c adds spread)."""
    c = control_basis(eps.to(x.device, x.dtype))  # (M, 3^d)
    weights = weights.to(x.device, x.dtype)
    terms = point_terms(model, x, eps)
    return {
        "control": {k: anchor[k + "_gh"] + weights @ (v - c @ anchor[k]) for k, v in terms.items()},
        "plain": {k: weights @ v for k, v in terms.items()},
    }


class Replicas:
    """Float64 sums over replicas per image, of both estimators of ``controlled_rule``: their
    means, and standard errors std / sqrt(count) (float32 sums of squares lose a ~0.05-nat
    spread around ~100 nats to cancellation). Per image the estimator with the smaller
    standard error is reported: for near-Gaussian replicas the sample mean is independent of
    the sample variance, so choosing by variance leaves the mean unbiased."""

    def __init__(self, n: int, device):
        self.count = torch.zeros(n, dtype=torch.float64, device=device)
        self.sums: dict[str, dict[str, torch.Tensor]] = {}
        self.sq: dict[str, torch.Tensor] = {}

    def add(self, idx: torch.Tensor, est: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, terms in est.items():
            sums = self.sums.setdefault(name, {})
            for k, v in terms.items():
                sums.setdefault(k, torch.zeros_like(self.count)).index_add_(0, idx, v.double())
            sq = self.sq.setdefault(name, torch.zeros_like(self.count))
            sq.index_add_(0, idx, terms["neg_elbo"].double() ** 2)
        self.count[idx] += 1

    def result(self, dtype) -> dict[str, torch.Tensor]:
        n, err = self.count, {}
        for name, sums in self.sums.items():
            mean = sums["neg_elbo"] / n
            var = (self.sq[name] / n - mean**2).clamp(min=0) * n / (n - 1)
            err[name] = (var / n).sqrt()
        control = err["control"] <= err["plain"]
        out = {
            k: torch.where(control, v, self.sums["plain"][k]) / n
            for k, v in self.sums["control"].items()
        }
        out["neg_elbo_err"] = torch.where(control, err["control"], err["plain"])
        out["replicas"], out["controlled"] = n, control.double()
        return {k: v.to(dtype) for k, v in out.items()}


@torch.no_grad()
def rqmc_elbo(
    model: VAE, x: torch.Tensor, points: int, replicas: int, seed: int
) -> dict[str, torch.Tensor]:
    """-ELBO and its terms per image by randomized QMC, with a standard error per image.

    Error model: each of ``replicas`` independent scramblings of ``points`` Sobol points gives
    an unbiased estimate of every term (``controlled_rule``); the result is their mean and
    ``neg_elbo_err`` their standard deviation / sqrt(replicas) (a standard error with
    replicas - 1 degrees of freedom), of the estimator with the smaller one (``Replicas``).
    """
    anchor, acc = control_anchor(model, x), Replicas(x.shape[0], x.device)
    rows = torch.arange(x.shape[0], device=x.device)
    for r in range(replicas):
        rule = base_points("sobol", points, seed + r, x.dtype, model.latent_dim)
        acc.add(rows, controlled_rule(model, x, *rule, anchor))
    return acc.result(x.dtype)


@torch.no_grad()
def adaptive_elbo(
    model: VAE, x: torch.Tensor, seed: int, progress: bool = False, tol: float = ELBO_TOL
) -> dict:
    """``rqmc_elbo`` with ELBO_REPLICAS replicas of ELBO_POINTS points per image, then more
    replicas (ELBO_REPLICAS at a time, up to ELBO_MAX_REPLICAS) for the images whose standard
    error still exceeds 0.8 tol; every replica of an image uses its own scrambling."""
    parts = [control_anchor(model, x[i : i + BATCH]) for i in range(0, x.shape[0], BATCH)]
    anchor = {k: torch.cat([p[k] for p in parts], -1) for k in parts[0]}
    acc, todo, r0 = Replicas(x.shape[0], x.device), torch.arange(x.shape[0], device=x.device), 0
    while todo.numel() and r0 < ELBO_MAX_REPLICAS:
        for i in tqdm(range(0, todo.numel(), BATCH), desc="ELBO", disable=not progress):
            idx = todo[i : i + BATCH]
            own = {k: v[..., idx] for k, v in anchor.items()}
            for r in range(r0, r0 + ELBO_REPLICAS):
                rule = base_points("sobol", ELBO_POINTS, seed + r, dim=model.latent_dim)
                acc.add(idx, controlled_rule(model, x[idx], *rule, own))
        r0 += ELBO_REPLICAS
        out = acc.result(torch.float64)
        todo = (out["neg_elbo_err"] > 0.8 * tol).nonzero()[:, 0]
    return acc.result(x.dtype)
