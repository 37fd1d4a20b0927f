"""Training and evaluation objectives: the negative ELBO and the IWAE bound, per image."""

from __future__ import annotations

import contextlib
import math

import torch

from flowvae.vae import VAE

#: train.precision -> the dtype of the encoder's and decoder's matrix products
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


def reduced_products(x: torch.Tensor, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``x``'s device (None: no autocast, float32 throughout)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=dtype)


def elbo_terms(
    model: VAE,
    x: torch.Tensor,
    n_samples: int = 1,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    products: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image Monte Carlo terms with S samples z ~ q(z|x):

    rec = -E log p(x|z),  reg = E[log q(z|x) - log p(z)],  neg_elbo = rec + reg,
    loss = rec + beta * reg + E[penalty] (beta < 1 during KL warm-up),

    where penalty is the posterior family's training penalty (``transform_with_penalty``; 0 for
    most families). Only ``loss`` contains it; ``neg_elbo``, ``rec`` and ``reg`` never do.

    With ``products`` (e.g. torch.bfloat16) the encoder's and decoder's layers run under
    autocast to that dtype; their outputs return to x's dtype (a no-op without autocast), and
    the posterior family, the pixel sum of log p(x|z) and every term stay in it.
    """
    with reduced_products(x, products):
        mu, log_sigma, h = model.encode(x)
    mu, log_sigma = mu.to(x.dtype), log_sigma.to(x.dtype)
    h = None if h is None else h.to(x.dtype)
    z, log_q, penalty = model.posterior.sample_with_penalty(mu, log_sigma, h, n_samples, generator)
    with reduced_products(x, products):
        logits = model.decoder(z)
    rec = -model.bernoulli_log_likelihood(x, logits.to(x.dtype)).mean(0)
    reg = (log_q - model.log_prior(z)).mean(0)
    loss = rec + beta * reg + penalty.mean(0)
    return {"loss": loss, "neg_elbo": rec + reg, "rec": rec, "reg": reg}


def iwae_nll(
    model: VAE,
    x: torch.Tensor,
    k: int,
    chunk: int = 65536,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """-log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x), per image (B,).

    The K samples are drawn in chunks of at most ``chunk`` decoder evaluations, combined by a
    running log-sum-exp, so memory does not grow with K.
    """
    mu, log_sigma, h = model.encode(x)
    per_chunk = max(1, chunk // x.shape[0])
    total = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=x.dtype)
    done = 0
    while done < k:
        n = min(per_chunk, k - done)
        z, log_q = model.posterior.sample(mu, log_sigma, h, n, generator)
        log_w = model.log_likelihood(x, z) + model.log_prior(z) - log_q
        total = torch.logaddexp(total, torch.logsumexp(log_w, dim=0))
        done += n
    return -(total - math.log(k))


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
    """IWAE lower bounds for growing K against an exact log p(x) (the quadrature), per image.

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
