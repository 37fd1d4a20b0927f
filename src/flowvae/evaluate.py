"""Evaluation of a trained model on the test set.

Per image: the negative ELBO with S samples and its two terms, the IWAE bound with K samples,
and (for a 2-D latent space) log p(x) by quadrature, hence the posterior gap
KL(q(z|x) || p(z|x)) = log p(x) - ELBO(x). For the figures: log q(z|x) and log p(x, z) on a
grid of z for chosen test images, reconstructions and prior samples.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from flowvae import data as data_mod
from flowvae import io, quadrature
from flowvae.errors import ConfigError
from flowvae.objectives import elbo_terms, iwae_nll
from flowvae.train import load_model, pick_device
from flowvae.vae import VAE

log = logging.getLogger(__name__)

BATCH = 500
CHECK_COLUMNS = ["image", "k", "iwae", "stderr", "log_px", "excess"]
CHECK_TOL = 0.01  # nats: float32 round-off of a log-sum-exp over ~1e5 terms near -100


@torch.no_grad()
def test_terms(model: VAE, x: torch.Tensor, ecfg: dict, gen: torch.Generator, progress: bool):
    """Per-image negative ELBO, its terms and the IWAE bound, in batches."""
    rows = {"neg_elbo": [], "rec": [], "kl": [], "iwae_nll": []}
    for i in tqdm(
        range(0, x.shape[0], BATCH), desc="test set", disable=not progress, mininterval=2
    ):
        xb = x[i : i + BATCH]
        terms = elbo_terms(model, xb, ecfg["samples"], generator=gen)
        rows["neg_elbo"].append(terms["neg_elbo"])
        rows["rec"].append(terms["rec"])
        rows["kl"].append(terms["reg"])
        rows["iwae_nll"].append(iwae_nll(model, xb, ecfg["iwae_k"], ecfg["chunk"], gen))
    return {k: torch.cat(v).cpu().numpy() for k, v in rows.items()}


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
    return {
        "k_max": int(top["k"].iloc[0]),
        "mean_gap_at_k_max": float(-top["excess"].mean()),
        "max_excess_nats": float(check["excess"].max()),
        "max_excess_in_stderr": float(z.max()),
        # a bound may exceed log p(x) only by its noise: 3 standard errors + float32 round-off
        "bound_below_log_px": bool((check["excess"] <= 3 * check["stderr"] + CHECK_TOL).all()),
    }


def _load(cfg: dict, model_path: Path, data_path: Path, threads: int | None):
    """Thread count, device, the trained model (with its record) and the prepared data."""
    torch.set_num_threads(threads or cfg["evaluate"]["threads"])
    device = pick_device(cfg["train"]["device"])
    model, record = load_model(model_path, device)
    return model, record, data_mod.load_prepared(data_path), device


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


def evaluate(
    cfg: dict,
    model_path: Path,
    data_path: Path,
    out_dir: Path,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate one trained model; write metrics.json, per_image.csv and grid.npz into out_dir."""
    ecfg = cfg["evaluate"]
    model, record, data, device = _load(cfg, model_path, data_path, threads)
    x = data["test"].to(device)
    images = ecfg["images"]
    if max(images) >= x.shape[0]:
        raise ConfigError(
            f"config key 'evaluate.images': position {max(images)} is beyond the "
            f"{x.shape[0]} test images"
        )
    gen = torch.Generator(device=device).manual_seed(ecfg["seed"])

    t0 = time.perf_counter()
    per_image = test_terms(model, x, ecfg, gen, progress)
    t_test = time.perf_counter() - t0
    exact, grid_info = None, {}
    if model.latent_dim == 2:
        t1 = time.perf_counter()
        log_px, grid_info = quadrature.auto_log_marginal(
            model, x, ecfg["quadrature_extent"], ecfg["quadrature_points"]
        )
        exact = -log_px.cpu().numpy()
        grid_info["seconds"] = time.perf_counter() - t1
        n_check = min(ecfg["check_images"], x.shape[0])
        check = (
            quadrature.iwae_convergence(
                model,
                x[:n_check],
                log_px[:n_check],
                tuple(ecfg["check_ks"]),
                ecfg["check_repeats"],
                ecfg["chunk"],
                ecfg["seed"],
            )
            if n_check
            else pd.DataFrame(columns=CHECK_COLUMNS)
        )
        grids = posterior_grids(model, x[images], ecfg["grid_extent"], ecfg["grid_points"])
    else:
        log.info("latent dimension %d: no quadrature and no posterior grids", model.latent_dim)
        grids, check = {}, pd.DataFrame(columns=CHECK_COLUMNS)
    eval_seconds = time.perf_counter() - t0

    variant, seed = record["variant"], record["seed"]
    table = pd.DataFrame(
        {
            "variant": variant,
            "seed": seed,
            "index": np.arange(x.shape[0]),
            "label": data["test_labels"].numpy(),
            **per_image,
            "exact_nll": exact if exact is not None else np.nan,
        }
    )
    table["gap"] = table["neg_elbo"] - table["exact_nll"]
    summary = record["summary"]
    metrics = {
        "variant": variant,
        "seed": seed,
        "family": summary["family"],
        "n_test": int(x.shape[0]),
        "test_neg_elbo": float(table["neg_elbo"].mean()),
        "test_rec": float(table["rec"].mean()),
        "test_kl": float(table["kl"].mean()),
        "test_iwae_nll": float(table["iwae_nll"].mean()),
        "exact_nll": None if exact is None else float(table["exact_nll"].mean()),
        "mean_gap": None if exact is None else float(table["gap"].mean()),
        "eval_seconds": eval_seconds,
        "eval_seconds_per_image": t_test / x.shape[0],
        "quadrature": grid_info,
        "iwae_check": _check_summary(check),
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
    arrays = {**_grid_arrays(record, data, images, x[images]), **grids, **pictures(model, x, gen)}
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
    return metrics


def gap_grids(
    cfg: dict,
    model_path: Path,
    data_path: Path,
    reference: Path,
    out: Path,
    top: int = 4,
    threads: int | None = None,
) -> list[int]:
    """Posterior grids of the ``top`` test images with the largest gap in ``reference``.

    ``reference`` is the per_image.csv of the reference variant (the standard VAE); the grid
    file has the layout of grid.npz, so the same figures read it. Returns the image positions.
    """
    ecfg = cfg["evaluate"]
    model, record, data, device = _load(cfg, model_path, data_path, threads)
    if model.latent_dim != 2:
        raise ConfigError("config key 'model.latent_dim': the gap grids need a 2-D latent space")
    table = pd.read_csv(reference)
    if table["gap"].isna().all():
        raise ConfigError(f"{reference} has no posterior gaps (exact evaluation missing)")
    images = [int(i) for i in table.nlargest(top, "gap")["index"]]
    x = data["test"].to(device)[images]
    grids = posterior_grids(model, x, ecfg["grid_extent"], ecfg["grid_points"])
    io.write_npz(out, {**_grid_arrays(record, data, images, x), **grids})
    log.info("%s: grids of the %d largest-gap images %s", record["variant"], top, images)
    return images
