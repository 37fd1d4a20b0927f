"""Bounds on a model small enough to integrate: ELBO <= log p(x), IWAE rises towards log p(x)."""

import pytest
import quadrature_reference as reference
import torch

from flowvae import posteriors
from flowvae.objectives import elbo_terms, iwae_nll
from flowvae.vae import VAE

DATA_DIM = 12


FAMILIES = sorted(posteriors.families())
TINY = {"context_dim": 4, "hidden": 8, "width": 8, "context_width": 8, "steps": 2}


def small_model(family: str, seed: int = 0) -> VAE:
    """A 2-D VAE of ``family`` over 12 pixels, float64, small enough to integrate."""
    torch.manual_seed(seed)
    declared = posteriors.families()[family].SETTINGS
    settings = {k: v for k, v in TINY.items() if k in declared}
    model = VAE(posteriors.build(family, 2, **settings), hidden=[16], data_dim=DATA_DIM).double()
    return model.eval()


def data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, DATA_DIM), 0.4, dtype=torch.float64), generator=g)


def exact_log_px(model, x):
    return reference.log_marginal(model, x, extent=9.0, points=600)


@pytest.mark.parametrize("family", FAMILIES)
def test_elbo_is_below_log_marginal(family):
    model, x = small_model(family), data()
    log_px = exact_log_px(model, x)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        terms = elbo_terms(model, x, n_samples=4000, generator=gen)
    elbo = -terms["neg_elbo"]
    assert torch.all(elbo <= log_px + 0.05), (elbo, log_px)
    assert torch.allclose(terms["neg_elbo"], terms["rec"] + terms["reg"])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("draw", [1, 2])
def test_iwae_bound_rises_with_k_towards_log_marginal(family, draw):
    model, x = small_model(family, seed=2), data(seed=3)
    log_px = exact_log_px(model, x)
    gen = torch.Generator().manual_seed(draw)
    means, errors = [], []
    with torch.no_grad():
        for k in (1, 10, 100, 1000):
            n = max(10, 4000 // k)  # independent bounds per image: x repeated n times
            reps = -iwae_nll(model, x.repeat(n, 1), k, chunk=2**16, generator=gen)
            reps = reps.reshape(n, x.shape[0])
            means.append(reps.mean(0))
            errors.append(reps.std(0) / reps.shape[0] ** 0.5)
    means, errors = torch.stack(means), torch.stack(errors)
    noise = 4 * (errors[1:] ** 2 + errors[:-1] ** 2).sqrt() + 1e-3
    assert torch.all(means[1:] >= means[:-1] - noise), "IWAE bound fell as K grew"
    assert torch.all(means[-1] <= log_px + 4 * errors[-1] + 1e-3), "IWAE above log p(x)"
    # K = 1000 closes most of the K = 1 gap (how much depends on how close q is to p(z|x))
    assert torch.all(log_px - means[-1] < 0.5 * (log_px - means[0]) + 4 * errors[-1] + 1e-3)


def test_iwae_chunking_does_not_change_the_value():
    model, x = small_model("gaussian"), data()
    a = iwae_nll(model, x, 300, chunk=10_000, generator=torch.Generator().manual_seed(5))
    b = iwae_nll(model, x, 300, chunk=10_000, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    c = iwae_nll(model, x, 300, chunk=7 * x.shape[0], generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a, c, atol=0.5)  # same bound, other draws: only MC noise differs


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_products_round_the_networks_only(family):
    """With products=bfloat16 the encoder and decoder run in bfloat16 and nothing else: every
    term comes back float32, close to the float32 terms (rounding of 8-bit mantissas: a few
    tenths of a percent), but not equal to them; the gradient reaches the weights it reaches
    in float32, in float32."""
    torch.manual_seed(3)
    declared = posteriors.families()[family].SETTINGS
    settings = {k: v for k, v in TINY.items() if k in declared}
    model = VAE(posteriors.build(family, 2, **settings), hidden=[64], data_dim=784)
    g = torch.Generator().manual_seed(4)
    x = torch.bernoulli(torch.full((32, 784), 0.3), generator=g)
    full = elbo_terms(model, x, generator=torch.Generator().manual_seed(5))
    half = elbo_terms(model, x, generator=torch.Generator().manual_seed(5), products=torch.bfloat16)
    for k in ("loss", "neg_elbo", "rec", "reg"):
        assert half[k].dtype == torch.float32, k
    rel = ((half["neg_elbo"] - full["neg_elbo"]) / full["neg_elbo"]).abs().detach()
    assert float(rel.max()) < 5e-3 and float(rel.max()) > 0, rel
    full["loss"].mean().backward()
    used = {name for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    half["loss"].mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == used and all(g.dtype == torch.float32 for g in grads.values())
