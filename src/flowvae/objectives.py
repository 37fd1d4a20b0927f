"""Training and evaluation objectives: the negative ELBO and the IWAE bound, per image."""

from __future__ import annotations

import math

import torch

from flowvae.vae import VAE


def elbo_terms(
    model: VAE,
    x: torch.Tensor,
    n_samples: int = 1,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image Monte Carlo terms with S samples z ~ q(z|x):

    rec = -E log p(x|z),  reg = E[log q(z|x) - log p(z)],  neg_elbo = rec + reg,
    loss = rec + beta * reg + E[penalty] (beta < 1 during KL warm-up),

    where penalty is the posterior family's training penalty (``transform_with_penalty``; 0 for
    most families). Only ``loss`` contains it; ``neg_elbo``, ``rec`` and ``reg`` never do.
    """
    mu, log_sigma, h = model.encode(x)
    z, log_q, penalty = model.posterior.sample_with_penalty(mu, log_sigma, h, n_samples, generator)
    rec = -model.log_likelihood(x, z).mean(0)
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
