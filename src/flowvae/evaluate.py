"""Evaluation of a trained model on the test set.

Per image: the negative ELBO with S samples and its two terms, the IWAE bound with K samples,
and (for a 2-D latent space) log p(x) by quadrature, hence the posterior gap
KL(q(z|x) || p(z|x)) = log p(x) - ELBO(x). For the figures: log q(z|x) and log p(x, z) on a
grid of z for chosen test images, reconstructions and prior samples.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm import tqdm

from flowvae import data as data_mod
from flowvae import io, quadrature
from flowvae.errors import ConfigError
from flowvae.modelfile import TrainedModel, check_key, load_model, pick_device
from flowvae.objectives import iwae_nll
from flowvae.spec import EvaluateSpec, RunSpec
from flowvae.vae import VAE

log = logging.getLogger(__name__)

BATCH = 500
ELBO_POINTS = 32  # scrambled Sobol points per replica of the per-image ELBO
ELBO_REPLICAS = 8  # replicas per round (the standard error has ELBO_REPLICAS - 1 dof)
ELBO_MAX_REPLICAS = 1024  # the few images with a rough integrand get up to 32768 points
CHECK_COLUMNS = ["image", "k", "iwae", "stderr", "log_px", "excess"]
CHECK_TOL = 0.01  # nats: float32 round-off of a log-sum-exp over ~1e5 terms near -100
ELBO_TOL = 0.05  # nats: largest stated error of a per-image -ELBO
QUAD_TOL = 0.01  # nats: largest per-image quadrature bound on log p(x)
GAP_TRIM = 0.05  # fraction cut from each end for the trimmed mean gap


def base_points(rule: str, n: int, seed: int = 0, dtype=torch.float32, dim: int = 2):
    """Points eps (M, dim) and weights (M,) for E_{eps ~ N(0, I)}[f(eps)] ~= sum_m w_m f(eps_m).

    "gh": the n x n product Gauss-Hermite rule (probabilists' nodes; M = n^2; dim 2 only).
    "sobol": n scrambled Sobol points (seed = the scrambling) mapped by the normal inverse CDF,
    equal weights: one randomized quasi-Monte Carlo replica, unbiased for every f.
    """
    if rule == "gh":
        if dim != 2:
            raise ValueError("the Gauss-Hermite rule here is 2-D only")
        t, w = np.polynomial.hermite_e.hermegauss(n)
        t, w = torch.as_tensor(t, dtype=dtype), torch.as_tensor(w / w.sum(), dtype=dtype)
        e2, e1 = torch.meshgrid(t, t, indexing="ij")
        eps = torch.stack([e1.reshape(-1), e2.reshape(-1)], -1)
        return eps, (w[:, None] * w[None, :]).reshape(-1)
    engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
    u = engine.draw(n, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    eps = (math.sqrt(2) * torch.erfinv(2 * u - 1)).to(dtype)
    return eps, torch.full((n,), 1.0 / n, dtype=dtype)


@torch.no_grad()
def elbo_rule(
    model: VAE, x: torch.Tensor, eps: torch.Tensor, weights: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-image ELBO terms by a rule (eps (M, d), weights (M,)) in the base space of q.

    With z = T(mu + sigma eps; h) and eps ~ N(0, I), log q(z|x) = log N(eps) - sum log sigma
    - log|det dT|, so

        ELBO = E_eps[log p(x|z) + log p(z) + log|det dT|] + H
        H = sum_i log sigma_i + d (1 + log 2 pi) / 2

    (the entropy of the base Gaussian in closed form). Only the forward map T is used, so any
    family works.
    """
    eps, weights = eps.to(x.device, x.dtype), weights.to(x.device, x.dtype)
    mu, log_sigma, h = model.encode(x)
    z0 = mu + torch.exp(log_sigma) * eps[:, None, :]  # (M, B, d)
    h_flat = None if h is None else h.expand(eps.shape[0], *h.shape).reshape(-1, h.shape[-1])
    z, logdet = model.posterior.transform(z0.reshape(-1, z0.shape[-1]), h_flat)
    z, logdet = z.reshape(z0.shape), logdet.reshape(z0.shape[:-1])
    entropy = log_sigma.sum(-1) + 0.5 * model.latent_dim * (1 + math.log(2 * math.pi))
    rec = -(weights @ model.log_likelihood(x, z))
    reg = -(weights @ (model.log_prior(z) + logdet)) - entropy
    return {"neg_elbo": rec + reg, "rec": rec, "reg": reg}


@torch.no_grad()
def rqmc_elbo(
    model: VAE, x: torch.Tensor, points: int, replicas: int, seed: int
) -> dict[str, torch.Tensor]:
    """-ELBO and its terms per image by randomized QMC, with a standard error per image.

    Error model: each of ``replicas`` independent scramblings of ``points`` Sobol points gives
    an unbiased estimate of every term; the result is their mean and ``neg_elbo_err`` their
    standard deviation / sqrt(replicas) (a standard error with replicas - 1 degrees of freedom).
    """
    reps = [
        elbo_rule(model, x, *base_points("sobol", points, seed + r, x.dtype, model.latent_dim))
        for r in range(replicas)
    ]
    out = {k: torch.stack([r[k] for r in reps]).mean(0) for k in reps[0]}
    out["neg_elbo_err"] = torch.stack([r["neg_elbo"] for r in reps]).std(0) / math.sqrt(replicas)
    return out


@torch.no_grad()
def test_terms(
    model: VAE,
    x: torch.Tensor,
    ecfg: EvaluateSpec,
    gen: torch.Generator,
    progress: bool,
    seconds: dict[str, float],
) -> dict[str, np.ndarray]:
    """Per image: -ELBO and its terms with a standard error (``adaptive_elbo``), IWAE NLL."""
    t0 = time.process_time()
    out = adaptive_elbo(model, x, ecfg.seed, progress)
    seconds["elbo"] = time.process_time() - t0
    t0 = time.process_time()
    iwae = [
        iwae_nll(model, x[i : i + BATCH], ecfg.iwae_k, ecfg.chunk, gen)
        for i in tqdm(range(0, x.shape[0], BATCH), desc="IWAE", disable=not progress)
    ]
    seconds["iwae"] = time.process_time() - t0
    return {
        "neg_elbo": out["neg_elbo"].cpu().numpy(),
        "neg_elbo_err": out["neg_elbo_err"].cpu().numpy(),
        "neg_elbo_replicas": out["replicas"].cpu().numpy(),
        "rec": out["rec"].cpu().numpy(),
        "kl": out["reg"].cpu().numpy(),
        "iwae_nll": torch.cat(iwae).cpu().numpy(),
    }


@torch.no_grad()
def adaptive_elbo(model: VAE, x: torch.Tensor, seed: int, progress: bool = False) -> dict:
    """``rqmc_elbo`` with ELBO_REPLICAS replicas of ELBO_POINTS points per image, then more
    replicas (ELBO_REPLICAS at a time, up to ELBO_MAX_REPLICAS) for the images whose standard
    error still exceeds ELBO_TOL * 0.8; every replica of an image uses its own scrambling."""
    # float64 sums: the variance of ~0.05-nat replica spreads around values of ~100 nats is
    # lost to cancellation in float32 sums of squares (it came out 0 or quantized)
    sums: dict[str, torch.Tensor] = {}
    sq = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    count = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    todo = torch.arange(x.shape[0], device=x.device)
    r0 = 0
    while todo.numel() and r0 < ELBO_MAX_REPLICAS:
        for i in tqdm(range(0, todo.numel(), BATCH), desc="ELBO", disable=not progress):
            idx = todo[i : i + BATCH]
            for r in range(r0, r0 + ELBO_REPLICAS):
                rule = base_points("sobol", ELBO_POINTS, seed + r, dim=model.latent_dim)
                terms = elbo_rule(model, x[idx], *rule)
                for k, v in terms.items():
                    sums.setdefault(k, torch.zeros_like(sq)).index_add_(0, idx, v.double())
                sq.index_add_(0, idx, terms["neg_elbo"].double() ** 2)
                count[idx] += 1
        r0 += ELBO_REPLICAS
        mean = sums["neg_elbo"] / count
        var = (sq / count - mean**2).clamp(min=0) * count / (count - 1)
        err = (var / count).sqrt()
        todo = (err > 0.8 * ELBO_TOL).nonzero()[:, 0]
    out = {k: (v / count).to(x.dtype) for k, v in sums.items()}
    out["neg_elbo_err"], out["replicas"] = err.to(x.dtype), count.to(x.dtype)
    return out


STEP_IMAGES = 500  # test images of the step-doubling measurement (ODE families)


@torch.no_grad()
def step_doubling(model: VAE, x: torch.Tensor, log_px: torch.Tensor | None, seed: int) -> dict:
    """How log q, the -ELBO and the IWAE-vs-log p(x) excess move when a family that solves an
    ODE with a fixed step count (``exact_density`` False) uses twice the steps.

    On the first STEP_IMAGES images: z ~ q (at the trained step count) and |log q_2S(z) -
    log q_S(z)| (mean and max); the -ELBO by one rule of ELBO_POINTS Sobol points at S and 2S
    (same points: the mean change); and with log p(x), the mean IWAE (K = 100) excess over
    log p(x) at S and 2S (same draws).
    """
    post = model.posterior
    steps = post.steps
    x = x[:STEP_IMAGES]
    mu, log_sigma, h = model.encode(x)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    z, log_q = post.sample(mu, log_sigma, h, 1, gen)
    rule = base_points("sobol", ELBO_POINTS, seed, dim=model.latent_dim)
    out = {"steps": steps}
    try:
        elbo = elbo_rule(model, x, *rule)["neg_elbo"]
        iwae = None if log_px is None else iwae_nll(model, x, 100, 16384, gen.manual_seed(seed))
        post.steps = 2 * steps
        log_q2 = post.log_prob(z, mu, log_sigma, h)
        elbo2 = elbo_rule(model, x, *rule)["neg_elbo"]
        iwae2 = None if log_px is None else iwae_nll(model, x, 100, 16384, gen.manual_seed(seed))
    finally:
        post.steps = steps
    diff = (log_q2 - log_q).abs()
    out.update(
        {
            "images": int(x.shape[0]),
            "log_q_mean_abs_change": float(diff.mean()),
            "log_q_max_abs_change": float(diff.max()),
            "neg_elbo_change": float((elbo2 - elbo).mean()),
        }
    )
    if log_px is not None:
        lp = log_px[: x.shape[0]]
        out["iwae_excess"] = float((-iwae - lp).mean())
        out["iwae_excess_doubled"] = float((-iwae2 - lp).mean())
    log.info("step doubling %d -> %d: %s", steps, 2 * steps, out)
    return out


@torch.no_grad()
def posterior_grids(model: VAE, x: torch.Tensor, extent: float, points: int) -> dict:
    """log q(z|x) and log p(x, z) on a points x points grid; [i, j, k] is at z = (z1[k], z2[j])."""
    z, axis, _ = quadrature.latent_grid(extent, points, device=x.device, dtype=x.dtype)
    mu, log_sigma, h = model.encode(x)
    log_q = []
    for i in range(x.shape[0]):
        hi = None if h is None else h[i : i + 1]
        lq = model.posterior.log_prob(z[:, None, :], mu[i : i + 1], log_sigma[i : i + 1], hi)
        log_q.append(lq[:, 0])
    shape = (x.shape[0], points, points)
    return {
        "z1": axis.cpu().numpy(),
        "z2": axis.cpu().numpy(),
        "log_q": torch.stack(log_q).reshape(shape).cpu().numpy(),
        "log_joint": quadrature.log_joint(model, x, z).reshape(shape).cpu().numpy(),
    }


@torch.no_grad()
def pictures(model: VAE, x: torch.Tensor, gen: torch.Generator, n_recon=16, n_samples=64) -> dict:
    """Bernoulli means of reconstructions (one posterior sample each) and of prior samples."""
    xr = x[:n_recon]
    mu, log_sigma, h = model.encode(xr)
    z, _ = model.posterior.sample(mu, log_sigma, h, 1, gen)
    z_prior = torch.randn(n_samples, model.latent_dim, generator=gen, device=x.device)
    return {
        "recon_inputs": xr.cpu().numpy(),
        "recon": torch.sigmoid(model.decoder(z[0])).cpu().numpy(),
        "samples": torch.sigmoid(model.decoder(z_prior)).cpu().numpy(),
    }


def _check_summary(check: pd.DataFrame) -> dict:
    """Largest K: mean log p(x) - IWAE; over all K: the largest excess of IWAE over log p(x)."""
    if check.empty:
        return {}
    top = check[check["k"] == check["k"].max()]
    z = check["excess"] / check["stderr"].clip(lower=1e-12)
    worst = check.loc[(check["excess"] - 3 * check["stderr"]).idxmax()]
    return {
        "k_max": int(top["k"].iloc[0]),
        "mean_gap_at_k_max": float(-top["excess"].mean()),
        "max_excess_nats": float(check["excess"].max()),
        "max_excess_in_stderr": float(z.max()),
        # a bound may exceed log p(x) only by its noise: 3 standard errors + float32 round-off
        "max_excess_beyond_noise": float((check["excess"] - 3 * check["stderr"]).max()),
        "bound_below_log_px": bool((check["excess"] <= 3 * check["stderr"] + CHECK_TOL).all()),
        "worst": (
            f"image {int(worst['image'])} at K = {int(worst['k'])}: excess "
            f"{worst['excess']:.4g} nats, standard error {worst['stderr']:.3g}"
        ),
    }


def _check(value: float, threshold: float, op: str, what: str, why: str = "") -> dict:
    """One check: passed when ``value op threshold`` (op '<=' or '>='); ``why`` names the
    images behind the value (the summary prints it when the check fails)."""
    passed = value <= threshold if op == "<=" else value >= threshold
    return {
        "value": value,
        "threshold": threshold,
        "op": op,
        "passed": bool(passed),
        "what": what,
        "why": why,
    }


def run_checks(table: pd.DataFrame, iwae_check: dict, quad: dict | None = None) -> dict[str, dict]:
    """Every check of one evaluation: name -> value, threshold, op, passed, what it means, and
    why (which images, what limit they reached)."""
    over = table[table["neg_elbo_err"] > ELBO_TOL]
    capped = int((over["neg_elbo_replicas"] >= ELBO_MAX_REPLICAS).sum())
    worst = table.loc[table["neg_elbo_err"].idxmax()]
    checks = {
        "elbo_error": _check(
            float(table["neg_elbo_err"].max()),
            ELBO_TOL,
            "<=",
            "largest per-image -ELBO error",
            f"{len(over)} images over {ELBO_TOL} nats, {capped} of them at the cap of "
            f"{ELBO_MAX_REPLICAS} replicas of {ELBO_POINTS} points; worst image "
            f"{int(worst['index'])} (error {worst['neg_elbo_err']:.4g} after "
            f"{int(worst['neg_elbo_replicas'])} replicas)",
        ),
        "bounds_ordered": _check(
            float(table["neg_elbo"].mean() - table["iwae_nll"].mean()),
            -CHECK_TOL,
            ">=",
            "mean -ELBO minus mean IWAE NLL",
        ),
    }
    if table["exact_nll"].notna().any():
        q = {"max_levels": "?", "worst_image": "?", **(quad or {})}
        spacing_err, extent_err, step = (
            q.get(k, math.nan) for k in ("worst_spacing_err", "worst_extent_err", "worst_spacing")
        )
        checks["quadrature_bound"] = _check(
            float(table["exact_nll_bound"].max()),
            QUAD_TOL,
            "<=",
            "largest per-image bound",
            f"{int((table['exact_nll_bound'] > QUAD_TOL).sum())} images over {QUAD_TOL} nats "
            f"after {q['max_levels']} refinement levels; worst image {q['worst_image']} "
            f"(spacing error {spacing_err:.3g}, extent error {extent_err:.3g}, smallest "
            f"spacing {step:.3g})",
        )
        low = table.loc[(table["gap"] + table["gap_err"]).idxmin()]
        checks["gap_nonnegative"] = _check(
            float((table["gap"] + table["gap_err"]).min()),
            0.0,
            ">=",
            "smallest gap plus its error",
            f"image {int(low['index'])}: gap {low['gap']:.4g}, -ELBO error "
            f"{low['neg_elbo_err']:.3g}, quadrature bound {low['exact_nll_bound']:.3g}",
        )
        checks["iwae_above_exact"] = _check(
            float(table["iwae_nll"].mean() - table["exact_nll"].mean()),
            -CHECK_TOL,
            ">=",
            "mean IWAE NLL minus mean exact NLL",
        )
    if iwae_check:
        checks["iwae_below_log_px"] = _check(
            iwae_check["max_excess_beyond_noise"],
            CHECK_TOL,
            "<=",
            f"largest IWAE excess over log p(x) beyond 3 SE, K <= {iwae_check['k_max']}",
            iwae_check.get("worst", ""),
        )
    return checks


def _spacing(ecfg: EvaluateSpec) -> float | None:
    """Starting quadrature spacing: from quadrature_points when extent and points are set."""
    if ecfg.quadrature_extent is None or ecfg.quadrature_points is None:
        return None
    return 2 * ecfg.quadrature_extent / ecfg.quadrature_points


def _load(spec: RunSpec, model_path: Path, data_path: Path):
    """Thread count, device, the trained model (checked to have ``spec``'s training key) and
    the prepared data (checked to have its data key)."""
    torch.set_num_threads(spec.evaluate.threads)
    device = pick_device(spec.train.device)
    trained = load_model(model_path, device)
    check_key(trained, spec, model_path)
    return trained, data_mod.load_prepared(data_path, spec.data), device


def _grid_arrays(trained: TrainedModel, data: dict, images: list[int], x: torch.Tensor) -> dict:
    """The identification and image part of a grid file, for test positions ``images``."""
    return {
        "variant": np.array(trained.spec.variant),
        "seed": np.array(trained.spec.seed),
        "family": np.array(trained.spec.posterior.family),
        "images": x.cpu().numpy(),
        "image_index": np.array(images),
        "labels": data["test_labels"][images].numpy(),
    }


def evaluate(
    spec: RunSpec, model_path: Path, data_path: Path, out_dir: Path, progress: bool = True
) -> dict:
    """Evaluate one trained model; write metrics.json, per_image.csv and grid.npz into out_dir.

    metrics.json records the evaluation's key (``spec.key("evaluate")``)."""
    ecfg = spec.evaluate
    trained, data, device = _load(spec, model_path, data_path)
    model = trained.model
    x = data["test"].to(device)
    images = list(ecfg.images)
    if max(images) >= x.shape[0]:
        raise ConfigError(
            f"config key 'evaluate.images': position {max(images)} is beyond the "
            f"{x.shape[0]} test images"
        )
    gen = torch.Generator(device=device).manual_seed(ecfg.seed)

    seconds: dict[str, float] = {}  # CPU seconds per step (= wall seconds on an idle thread)
    wall0, t0 = time.perf_counter(), time.process_time()
    per_image = test_terms(model, x, ecfg, gen, progress, seconds)
    exact, bound, grid_info, check = None, None, {}, pd.DataFrame(columns=CHECK_COLUMNS)
    grids: dict = {}
    if model.latent_dim == 2:
        t1 = time.process_time()
        quad, grid_info = quadrature.adaptive_log_marginal(
            model, x, ecfg.quadrature_extent, _spacing(ecfg), tol=QUAD_TOL
        )
        log_px = quad["log_px"]
        exact, bound = -log_px.cpu().numpy(), quad["bound"].cpu().numpy()
        seconds["quadrature"] = time.process_time() - t1
        t1 = time.process_time()
        n_check = min(ecfg.check_images, x.shape[0])
        if n_check:
            check = quadrature.iwae_convergence(
                model,
                x[:n_check],
                log_px[:n_check],
                tuple(ecfg.check_ks),
                ecfg.check_repeats,
                ecfg.chunk,
                ecfg.seed,
            )
        seconds["iwae_check"] = time.process_time() - t1
        t1 = time.process_time()
        grids = posterior_grids(model, x[images], ecfg.grid_extent, ecfg.grid_points)
        seconds["posterior_grids"] = time.process_time() - t1
    else:
        log.info("latent dimension %d: no quadrature and no posterior grids", model.latent_dim)
    t1 = time.process_time()
    pics = pictures(model, x, gen)
    seconds["pictures"] = time.process_time() - t1
    doubling = None
    if not model.posterior.exact_density:
        t1 = time.process_time()
        doubling = step_doubling(
            model,
            x,
            None if exact is None else -torch.as_tensor(exact, device=x.device, dtype=x.dtype),
            ecfg.seed,
        )
        seconds["step_doubling"] = time.process_time() - t1
    eval_seconds = time.process_time() - t0
    wall_seconds = time.perf_counter() - wall0

    variant, seed = spec.variant, spec.seed
    table = pd.DataFrame(
        {
            "variant": variant,
            "seed": seed,
            "index": np.arange(x.shape[0]),
            "label": data["test_labels"].numpy(),
            **per_image,
            "exact_nll": exact if exact is not None else np.nan,
            "exact_nll_bound": bound if bound is not None else np.nan,
        }
    )
    table["gap"] = table["neg_elbo"] - table["exact_nll"]
    table["gap_err"] = table["neg_elbo_err"] + table["exact_nll_bound"]
    summary = trained.summary
    iwae_check = _check_summary(check)
    checks = run_checks(table, iwae_check, grid_info)
    gap = table["gap"].dropna()
    metrics = {
        "variant": variant,
        "seed": seed,
        "family": spec.posterior.family,
        "key": spec.key("evaluate"),
        "n_test": int(x.shape[0]),
        "test_neg_elbo": float(table["neg_elbo"].mean()),
        "test_neg_elbo_max_err": float(table["neg_elbo_err"].max()),
        "test_rec": float(table["rec"].mean()),
        "test_kl": float(table["kl"].mean()),
        "test_iwae_nll": float(table["iwae_nll"].mean()),
        "exact_nll": None if exact is None else float(table["exact_nll"].mean()),
        "exact_nll_max_bound": None if bound is None else float(bound.max()),
        "mean_gap": None if gap.empty else float(gap.mean()),
        "median_gap": None if gap.empty else float(gap.median()),
        "trimmed_mean_gap": None if gap.empty else float(stats.trim_mean(gap, GAP_TRIM)),
        "negative_gaps": int((table["gap"] < 0).sum()),
        "eval_seconds": eval_seconds,
        "eval_wall_seconds": wall_seconds,
        "eval_seconds_per_image": seconds["elbo"] / x.shape[0],
        "seconds": seconds,
        "elbo_rule": {
            "points": ELBO_POINTS,
            "replicas": ELBO_REPLICAS,
            "max_replicas": ELBO_MAX_REPLICAS,
            "images_with_more_replicas": int((table["neg_elbo_replicas"] > ELBO_REPLICAS).sum()),
        },
        "quadrature": {k: v for k, v in grid_info.items() if k != "grids"},
        "iwae_check": iwae_check,
        "checks": checks,
        **({"step_doubling": doubling} if doubling else {}),
        **{
            k: summary[k]
            for k in (
                "train_seconds",
                "seconds_per_epoch",
                "epochs",
                "n_params",
                "final_train_loss",
                "final_val_loss",
            )
        },
    }
    arrays = {**_grid_arrays(trained, data, images, x[images]), **grids, **pics}
    io.write_csv(table, out_dir / "per_image.csv")
    check.insert(0, "seed", seed)
    check.insert(0, "variant", variant)
    io.write_csv(check, out_dir / "quadrature_check.csv")
    io.write_npz(out_dir / "grid.npz", arrays)
    io.write_json(out_dir / "metrics.json", metrics)
    log.info(
        "%s seed %d: test -ELBO %.3f, IWAE NLL %.3f, exact NLL %s",
        variant,
        seed,
        metrics["test_neg_elbo"],
        metrics["test_iwae_nll"],
        metrics["exact_nll"],
    )
    log.info("seconds per step: %s", ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    for name, c in checks.items():
        if not c["passed"]:
            log.warning(
                "check %s failed: %s = %.4g, needs %s %.4g",
                name, c["what"], c["value"], c["op"], c["threshold"],
            )  # fmt: skip
    return metrics


def gap_grids(
    spec: RunSpec, model_path: Path, data_path: Path, reference: Path, out: Path, top: int = 4
) -> list[int]:
    """Posterior grids of the ``top`` test images with the largest gap in ``reference``.

    ``reference`` is the per_image.csv of the reference variant (the standard VAE); the grid
    file has the layout of grid.npz, so the same figures read it. Returns the image positions.
    """
    ecfg = spec.evaluate
    trained, data, device = _load(spec, model_path, data_path)
    model = trained.model
    if model.latent_dim != 2:
        raise ConfigError("config key 'model.latent_dim': the gap grids need a 2-D latent space")
    table = pd.read_csv(reference)
    if table["gap"].isna().all():
        raise ConfigError(f"{reference} has no posterior gaps (exact evaluation missing)")
    images = [int(i) for i in table.nlargest(top, "gap")["index"]]
    x = data["test"].to(device)[images]
    grids = posterior_grids(model, x, ecfg.grid_extent, ecfg.grid_points)
    io.write_npz(out, {**_grid_arrays(trained, data, images, x), **grids})
    log.info("%s: grids of the %d largest-gap images %s", spec.variant, top, images)
    return images
