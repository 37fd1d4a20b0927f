"""Evaluation of a trained model on the test set.

Per image: the negative ELBO with S samples and its two terms, the IWAE bound with K samples,
and (for a 2-D latent space) log p(x) by quadrature, hence the posterior gap
KL(q(z|x) || p(z|x)) = log p(x) - ELBO(x). For the figures: log q(z|x) and log p(x, z) on a
grid of z for chosen test images, reconstructions and prior samples.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm import tqdm

from flowvae import data as data_mod
from flowvae import io, quadrature
from flowvae.checks import CHECK_COLUMNS, QUAD_TOL, check_summary, run_checks
from flowvae.elbo import (
    BATCH,
    ELBO_MAX_REPLICAS,
    ELBO_POINTS,
    ELBO_REPLICAS,
    adaptive_elbo,
    base_points,
    elbo_rule,
)
from flowvae.errors import ConfigError
from flowvae.modelfile import TrainedModel, check_key, load_model, pick_device
from flowvae.objectives import iwae_convergence, iwae_nll
from flowvae.spec import EvaluateSpec, RunSpec
from flowvae.vae import VAE

log = logging.getLogger(__name__)

GAP_TRIM = 0.05  # fraction cut from each end for the trimmed mean gap


@contextmanager
def timed(seconds: dict[str, float], step: str):
    """Add the CPU seconds of the block to ``seconds[step]`` (= wall seconds on an idle thread)."""
    t0 = time.process_time()
    try:
        yield
    finally:
        seconds[step] = seconds.get(step, 0.0) + time.process_time() - t0


@torch.no_grad()
def test_terms(
    model: VAE,
    x: torch.Tensor,
    ecfg: EvaluateSpec,
    gen: torch.Generator,
    progress: bool,
    seconds: dict,
) -> dict[str, np.ndarray]:
    """Per image: -ELBO and its terms with a standard error (``adaptive_elbo``), IWAE NLL."""
    with timed(seconds, "elbo"):
        out = adaptive_elbo(model, x, ecfg.seed, progress, ecfg.elbo_tol)
    with timed(seconds, "iwae"):
        iwae = [
            iwae_nll(model, x[i : i + BATCH], ecfg.iwae_k, ecfg.chunk, gen)
            for i in tqdm(range(0, x.shape[0], BATCH), desc="IWAE", disable=not progress)
        ]
    return {
        "neg_elbo": out["neg_elbo"].cpu().numpy(),
        "neg_elbo_err": out["neg_elbo_err"].cpu().numpy(),
        "neg_elbo_replicas": out["replicas"].cpu().numpy(),
        "rec": out["rec"].cpu().numpy(),
        "kl": out["reg"].cpu().numpy(),
        "iwae_nll": torch.cat(iwae).cpu().numpy(),
    }


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


def _spacing(ecfg: EvaluateSpec) -> float | None:
    """Starting quadrature spacing: from quadrature_points when extent and points are set."""
    if ecfg.quadrature_extent is None or ecfg.quadrature_points is None:
        return None
    return 2 * ecfg.quadrature_extent / ecfg.quadrature_points


def _load(spec: RunSpec, model_path: Path, data_path: Path):
    """Thread count, device, the trained model (checked to have ``spec``'s training key, with
    its record: variant, seed, the training summary and family) and the prepared data (checked
    to have the spec's data key)."""
    torch.set_num_threads(spec.evaluate.threads)
    device = pick_device(spec.train.device)
    trained: TrainedModel = load_model(model_path, device)
    check_key(trained, spec, model_path)
    record = {
        "variant": spec.variant,
        "seed": spec.seed,
        "summary": {**trained.summary, "family": spec.posterior.family},
    }
    return trained.model, record, data_mod.load_prepared(data_path, spec.data), device


def _grid_arrays(record: dict, data: dict, images: list[int], x: torch.Tensor) -> dict:
    """The identification and image part of a grid file, for test positions ``images``."""
    return {
        "variant": np.array(record["variant"]),
        "seed": np.array(record["seed"]),
        "family": np.array(record["summary"]["family"]),
        "images": x.cpu().numpy(),
        "image_index": np.array(images),
        "labels": data["test_labels"][images].numpy(),
    }


def exact_steps(model: VAE, x: torch.Tensor, ecfg: EvaluateSpec, images: list[int], seconds: dict):
    """The steps of a 2-D latent space: log p(x) by quadrature (with its bound and summary),
    the IWAE convergence check against it, and the posterior grids of ``images``."""
    with timed(seconds, "quadrature"):
        quad, info = quadrature.adaptive_log_marginal(
            model, x, ecfg.quadrature_extent, _spacing(ecfg), tol=QUAD_TOL
        )
    check, n_check = pd.DataFrame(columns=CHECK_COLUMNS), min(ecfg.check_images, x.shape[0])
    with timed(seconds, "iwae_check"):
        if n_check:
            check = iwae_convergence(
                model, x[:n_check], quad["log_px"][:n_check], tuple(ecfg.check_ks),
                ecfg.check_repeats, ecfg.chunk, ecfg.seed,
            )  # fmt: skip
    with timed(seconds, "posterior_grids"):
        grids = posterior_grids(model, x[images], ecfg.grid_extent, ecfg.grid_points)
    return quad, info, check, grids


def per_image_table(record: dict, data: dict, per_image: dict, quad: dict | None):
    """per_image.csv.gz: the test terms, the exact NLL with its bound, the gap with its error."""
    table = pd.DataFrame(
        {
            "variant": record["variant"],
            "seed": record["seed"],
            "index": np.arange(len(per_image["neg_elbo"])),
            "label": data["test_labels"].numpy(),
            **per_image,
            "exact_nll": np.nan if quad is None else -quad["log_px"].cpu().numpy(),
            "exact_nll_bound": np.nan if quad is None else quad["bound"].cpu().numpy(),
        }
    )
    table["gap"] = table["neg_elbo"] - table["exact_nll"]
    table["gap_err"] = table["neg_elbo_err"] + table["exact_nll_bound"]
    return table


TRAIN_KEYS = (
    "train_seconds", "seconds_per_epoch", "epochs", "n_params", "final_train_loss",
    "final_val_loss",
)  # fmt: skip


def metrics_of(record: dict, table: pd.DataFrame, info: dict, check: pd.DataFrame, extra: dict):
    """metrics.json: means of the table, the gap statistics, the checks, the step summaries and
    the training record's figures (``extra``: seconds, the step doubling, evaluate.elbo_tol)."""
    exact = table["exact_nll"].notna().any()
    iwae_check = check_summary(check)
    gap = table["gap"].dropna()
    return {
        "variant": record["variant"],
        "seed": record["seed"],
        "family": record["summary"]["family"],
        "n_test": len(table),
        "test_neg_elbo": float(table["neg_elbo"].mean()),
        "test_neg_elbo_max_err": float(table["neg_elbo_err"].max()),
        "test_rec": float(table["rec"].mean()),
        "test_kl": float(table["kl"].mean()),
        "test_iwae_nll": float(table["iwae_nll"].mean()),
        "exact_nll": float(table["exact_nll"].mean()) if exact else None,
        "exact_nll_max_bound": float(table["exact_nll_bound"].max()) if exact else None,
        "mean_gap": None if gap.empty else float(gap.mean()),
        "median_gap": None if gap.empty else float(gap.median()),
        "trimmed_mean_gap": None if gap.empty else float(stats.trim_mean(gap, GAP_TRIM)),
        "negative_gaps": int((table["gap"] < 0).sum()),
        **extra["seconds"],
        "elbo_rule": {
            "points": ELBO_POINTS,
            "tol": extra["elbo_tol"],
            "replicas": ELBO_REPLICAS,
            "max_replicas": ELBO_MAX_REPLICAS,
            "images_with_more_replicas": int((table["neg_elbo_replicas"] > ELBO_REPLICAS).sum()),
        },
        "quadrature": {k: v for k, v in info.items() if k != "grids"},
        "iwae_check": iwae_check,
        "checks": run_checks(table, iwae_check, info, extra["elbo_tol"]),
        **({"step_doubling": extra["doubling"]} if extra["doubling"] else {}),
        **{k: record["summary"][k] for k in TRAIN_KEYS},
    }


def evaluate(
    spec: RunSpec, model_path: Path, data_path: Path, out_dir: Path, progress: bool = True
) -> dict:
    """Evaluate one trained model; write metrics.json, per_image.csv.gz and grid.npz into out_dir.

    metrics.json records the evaluation's key (``spec.key("evaluate")``)."""
    ecfg = spec.evaluate
    model, record, data, device = _load(spec, model_path, data_path)
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
    quad, info, check, grids = None, {}, pd.DataFrame(columns=CHECK_COLUMNS), {}
    if model.latent_dim == 2:
        quad, info, check, grids = exact_steps(model, x, ecfg, images, seconds)
    else:
        log.info("latent dimension %d: no quadrature and no posterior grids", model.latent_dim)
    with timed(seconds, "pictures"):
        pics = pictures(model, x, gen)
    doubling = None
    if not model.posterior.exact_density:
        with timed(seconds, "step_doubling"):
            doubling = step_doubling(model, x, None if quad is None else quad["log_px"], ecfg.seed)
    timing = {
        "eval_seconds": time.process_time() - t0,
        "eval_wall_seconds": time.perf_counter() - wall0,
        "eval_seconds_per_image": seconds["elbo"] / x.shape[0],
        "seconds": seconds,
    }
    table = per_image_table(record, data, per_image, quad)
    extra = {"seconds": timing, "doubling": doubling, "elbo_tol": ecfg.elbo_tol}
    metrics = metrics_of(record, table, info, check, extra)
    metrics = {"key": spec.key("evaluate"), **metrics}
    io.write_csv(table, out_dir / "per_image.csv.gz")
    check.insert(0, "seed", record["seed"])
    check.insert(0, "variant", record["variant"])
    io.write_csv(check, out_dir / "quadrature_check.csv")
    arrays = {**_grid_arrays(record, data, images, x[images]), **grids, **pics}
    io.write_npz(out_dir / "grid.npz", arrays)
    io.write_json(out_dir / "metrics.json", metrics)
    log.info(
        "%s seed %d: test -ELBO %.3f, IWAE NLL %.3f, exact NLL %s", record["variant"],
        record["seed"], metrics["test_neg_elbo"], metrics["test_iwae_nll"], metrics["exact_nll"],
    )  # fmt: skip
    log.info("seconds per step: %s", ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    for name, c in metrics["checks"].items():
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

    ``reference`` is the per_image.csv.gz of the reference variant (the standard VAE); the grid
    file has the layout of grid.npz, so the same figures read it. Returns the image positions.
    """
    ecfg = spec.evaluate
    model, record, data, device = _load(spec, model_path, data_path)
    if model.latent_dim != 2:
        raise ConfigError("config key 'model.latent_dim': the gap grids need a 2-D latent space")
    table = pd.read_csv(reference)
    if table["gap"].isna().all():
        raise ConfigError(f"{reference} has no posterior gaps (exact evaluation missing)")
    images = [int(i) for i in table.nlargest(top, "gap")["index"]]
    x = data["test"].to(device)[images]
    grids = posterior_grids(model, x, ecfg.grid_extent, ecfg.grid_points)
    io.write_npz(out, {**_grid_arrays(record, data, images, x), **grids})
    log.info("%s: grids of the %d largest-gap images %s", record["variant"], top, images)
    return images
