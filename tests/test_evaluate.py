"""The per-image ELBO rule and the checks of an evaluation, on small models far from init."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from flowvae import posteriors, quadrature
from flowvae.evaluate import _elbo_rule, run_checks
from flowvae.vae import VAE

DATA_DIM = 12
SETTINGS = {
    "gaussian": {},
    "iaf": {"context_dim": 4, "hidden": 8},
    "pcpmap": {"context_dim": 4, "width": 8, "context_width": 8},
}


def trained_like_model(family: str, seed: int = 0) -> VAE:
    """A small double-precision VAE whose weights are pushed far from their initialisation."""
    torch.manual_seed(seed)
    model = VAE(posteriors.build(family, 2, **SETTINGS[family]), [16], data_dim=DATA_DIM)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.double().eval()


def images(n: int = 5, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, DATA_DIM), 0.4, dtype=torch.float64), generator=g)


@pytest.mark.parametrize("family", ["gaussian", "iaf", "pcpmap"])
def test_elbo_rule_equals_grid_expectation(family):
    """ELBO by the Gauss-Hermite rule = sum_g q(z_g) [log p(x, z_g) - log q(z_g)] h^2 on a grid,
    which uses log q at given z (the inverse map) instead of the forward map: two routes."""
    model, x = trained_like_model(family), images()
    rule = _elbo_rule(model, x, 24)
    z, _, log_area = quadrature.latent_grid(7.0, 500, dtype=x.dtype)
    with torch.no_grad():
        mu, log_sigma, h = model.encode(x)
        log_q = model.posterior.log_prob(z[:, None, :].expand(-1, x.shape[0], -1), mu, log_sigma, h)
        log_joint = quadrature.log_joint(model, x, z).T  # (G, N)
    q = torch.exp(log_q + log_area)
    assert torch.allclose(q.sum(0), torch.ones(x.shape[0], dtype=x.dtype), atol=1e-4)
    grid_elbo = (q * (log_joint - log_q)).sum(0)
    rec = -(q * (log_joint - VAE.log_prior(z)[:, None])).sum(0)
    assert torch.allclose(-rule["neg_elbo"], grid_elbo, atol=2e-3), (rule["neg_elbo"], grid_elbo)
    assert torch.allclose(rule["rec"], rec, atol=2e-3)
    assert torch.allclose(rule["neg_elbo"], rule["rec"] + rule["reg"])


@pytest.mark.parametrize("family", ["gaussian", "iaf", "pcpmap"])
def test_elbo_rule_agrees_with_monte_carlo_and_is_below_log_px(family):
    model, x = trained_like_model(family, seed=3), images(seed=4)
    rule = -_elbo_rule(model, x, 16)["neg_elbo"]
    with torch.no_grad():
        mu, log_sigma, h = model.encode(x)
        z, log_q = model.posterior.sample(mu, log_sigma, h, 40000, torch.Generator().manual_seed(0))
        w = model.log_likelihood(x, z) + model.log_prior(z) - log_q
    stderr = w.std(0) / math.sqrt(w.shape[0])
    assert torch.all((w.mean(0) - rule).abs() < 4 * stderr + 1e-3), (w.mean(0), rule, stderr)
    log_px = quadrature.bounded_log_marginal(model, x, 8.0, 0.05)["log_px"]
    assert torch.all(rule < log_px)


def test_elbo_rule_converges_with_nodes():
    model, x = trained_like_model("iaf", seed=5), images(seed=6)
    values = [_elbo_rule(model, x, n)["neg_elbo"] for n in (4, 6, 10, 24)]
    errors = [(v - values[-1]).abs().max().item() for v in values[:-1]]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def table(**columns) -> pd.DataFrame:
    base = {
        "neg_elbo": [120.0, 130.0],
        "neg_elbo_err": [0.01, 0.02],
        "iwae_nll": [119.0, 128.0],
        "exact_nll": [118.0, 127.5],
        "exact_nll_bound": [0.001, 0.002],
    }
    df = pd.DataFrame({**base, **columns})
    df["gap"] = df["neg_elbo"] - df["exact_nll"]
    df["gap_err"] = df["neg_elbo_err"] + df["exact_nll_bound"]
    return df


def test_checks_pass_on_consistent_numbers_and_name_each_failure():
    iwae = {"k_max": 100, "max_excess_beyond_noise": -0.2}
    checks = run_checks(table(), iwae)
    assert set(checks) == {
        "elbo_error", "bounds_ordered", "quadrature_bound", "gap_nonnegative",
        "iwae_above_exact", "iwae_below_log_px",
    }  # fmt: skip
    assert all(c["passed"] for c in checks.values())
    bad = run_checks(
        table(neg_elbo_err=[0.2, 0.0], exact_nll_bound=[0.05, 0.0], exact_nll=[121.0, 127.5]),
        {"k_max": 100, "max_excess_beyond_noise": 0.5},
    )
    failed = {k for k, c in bad.items() if not c["passed"]}
    assert failed == {
        "elbo_error", "quadrature_bound", "gap_nonnegative", "iwae_above_exact", "iwae_below_log_px"
    }  # fmt: skip
    assert bad["gap_nonnegative"]["value"] == pytest.approx(120.0 - 121.0 + 0.25)
    assert np.isclose(bad["elbo_error"]["value"], 0.2)
