"""Tests that fail when a formula is wrong: every check runs at parameter states far from the
initialisation (all parameters perturbed by noise of scale ~0.5-1) in float64, against autograd,
closed forms or torch.distributions, with relative tolerances.

tests/mutations.py applies deliberately wrong formulas to a copy of the package and checks that
this file (with the family tests) fails on each of them.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import quadrature_reference as reference
import torch
from torch import nn
from torch.nn import functional as F

from flowvae import config, posteriors, quadrature
from flowvae.objectives import elbo_terms, iwae_nll
from flowvae.posteriors.base import gaussian_log_prob
from flowvae.train import kl_weight, learning_rate
from flowvae.vae import VAE

CTX = 5
FLOWS = ["iaf", "pcpmap"]
FAMILIES = ["gaussian", *FLOWS]
SETTINGS = {
    "gaussian": {},
    "iaf": {"context_dim": CTX, "steps": 3, "hidden": 16, "depth": 2, "forget_bias": 1.0},
    "pcpmap": {
        "context_dim": CTX,
        "width": 16,
        "depth": 2,
        "context_width": 8,
        "newton_tol": 1e-11,
        "newton_iters": 100,
    },
}


pytestmark = pytest.mark.usefixtures("float64")  # see conftest.py


@torch.no_grad()
def perturb(module: nn.Module, scale: float, seed: int) -> nn.Module:
    """theta <- theta + scale * N(0, 1) for every parameter (masks and buffers untouched)."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def far_flow(family: str, d: int, seed: int = 0) -> posteriors.base.PosteriorFamily:
    """A posterior family with every parameter perturbed; PCP-Map's convex part made dominant
    (softplus(g1) = 2, relu(g2) + softplus(g3) = 0.2) so its map is far from the identity."""
    torch.manual_seed(seed)
    q = posteriors.build(family, d, **SETTINGS[family]).double()
    perturb(q, 0.3 if family == "iaf" else 0.6, seed + 100)  # IAF: keeps sigma above ~0.05
    if family == "pcpmap":
        with torch.no_grad():
            q.g1.fill_(math.log(math.expm1(2.0)))
            q.g2.fill_(-1.0)
            q.g3.fill_(math.log(math.expm1(0.2)))
    return q


def batch_jacobian(q, z0: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
    """dz/dz0 of the family's map, (N, d, d), by autograd (samples are independent)."""
    jac = torch.autograd.functional.jacobian(lambda v: q.transform(v, h)[0].sum(0), z0)
    return jac.permute(1, 0, 2)


def context(q, n: int, seed: int) -> torch.Tensor | None:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, q.context_dim, generator=gen) if q.context_dim else None


# ----------------------------------------------------------------------------- flows


@pytest.mark.parametrize("family", FLOWS)
@pytest.mark.parametrize("d", [2, 3])
def test_logdet_equals_autograd_jacobian_far_from_init(family, d):
    q = far_flow(family, d, seed=d)
    z0, h = 1.5 * torch.randn(64, d), context(q, 64, 1)
    _, logdet = q.transform(z0, h)
    exact = torch.linalg.slogdet(batch_jacobian(q, z0, h))
    assert torch.all(exact.sign > 0), "the map reverses orientation somewhere"
    assert exact.logabsdet.std() > 0.3, "test too weak: the log-det barely varies"
    assert exact.logabsdet.abs().mean() > 0.3, "test too weak: the map is nearly volume-preserving"
    torch.testing.assert_close(logdet, exact.logabsdet, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("family", FLOWS)
@pytest.mark.parametrize("d", [2, 3])
def test_inverse_both_ways_far_from_init(family, d):
    q = far_flow(family, d, seed=10 + d)
    z0, h = 1.5 * torch.randn(100, d), context(q, 100, 2)
    with torch.no_grad():
        z, _ = q.transform(z0, h)
        assert (z - z0).abs().mean() > 0.3, "test too weak: the map is close to the identity"
        torch.testing.assert_close(q.inverse(z, h), z0, rtol=1e-7, atol=1e-8)
        w = 2.0 * torch.randn(100, d)
        torch.testing.assert_close(q.transform(q.inverse(w, h), h)[0], w, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("d", [2, 3])
def test_iaf_composed_jacobian_couples_every_pair(d):
    """With the order reversed between steps, every output depends on every input; without it,
    the composed Jacobian of the steps stays triangular."""
    q = far_flow("iaf", d, seed=20 + d)
    jac = batch_jacobian(q, torch.randn(32, d), context(q, 32, 3))
    assert jac.abs().amax(0).min() > 1e-3, jac.abs().amax(0)
    assert jac.triu(1).abs().amax() > 1e-2 and jac.tril(-1).abs().amax() > 1e-2


@pytest.mark.parametrize("d", [2, 3])
def test_iaf_single_step_is_autoregressive_far_from_init(d):
    q = far_flow("iaf", d, seed=30 + d)
    step = q.steps[1]
    z, h = torch.randn(16, d), context(q, 16, 4)
    jac = torch.autograd.functional.jacobian(lambda v: step(v, h)[0].sum(0), z).permute(1, 0, 2)
    assert torch.all(jac.triu(1) == 0), "output i of one step depends on z_j, j >= i"
    assert jac.tril(-1).abs().amax() > 1e-2


@pytest.mark.parametrize("d", [2, 3])
def test_pcpmap_jacobian_symmetric_positive_definite_far_from_init(d):
    """z = grad G(z0) with G strictly convex: dz/dz0 = Hess G is symmetric positive definite,
    and the map is monotone, <T(a) - T(b), a - b> > 0."""
    q = far_flow("pcpmap", d, seed=40 + d)
    z0, h = 2.5 * torch.randn(200, d), context(q, 200, 5)
    jac = batch_jacobian(q, z0, h)
    torch.testing.assert_close(jac, jac.transpose(1, 2), rtol=1e-8, atol=1e-10)
    eig = torch.linalg.eigvalsh(jac)
    assert eig.min() > 0, eig.min()
    assert eig.max() / eig.min() > 3, "test too weak: the Hessian is nearly isotropic"
    a, b = 2.5 * torch.randn(200, d), 2.5 * torch.randn(200, d)
    with torch.no_grad():
        ta, tb = q.transform(a, h)[0], q.transform(b, h)[0]
    assert torch.all(((ta - tb) * (a - b)).sum(-1) > 0)


# ----------------------------------------------------------------------------- log q


def box_grid(z: torch.Tensor, n: int, margin: float = 3.0) -> tuple[torch.Tensor, float]:
    """Midpoint grid (n*n, 1, 2) of the box around the points z (.., 2) widened by ``margin``
    on each side, and its cell area."""
    lo, hi = z.reshape(-1, 2).amin(0) - margin, z.reshape(-1, 2).amax(0) + margin
    step = (hi - lo) / n
    axes = [lo[i] + step[i] * (torch.arange(n) + 0.5) for i in range(2)]
    zz = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 1, 2)
    return zz, step.prod().item()


@pytest.mark.parametrize("family", FAMILIES)
def test_log_q_normalizes_and_matches_the_sample_far_from_init(family):
    q = far_flow(family, 2, seed=50)
    mu, log_sigma = torch.tensor([[0.4, -0.3]]), torch.tensor([[-0.6, -0.2]])
    h = context(q, 1, 6)
    with torch.no_grad():
        z, log_q = q.sample(mu, log_sigma, h, n_samples=200)
        again = q.log_prob(z, mu, log_sigma, h)
        zz, area = box_grid(z, 150)
        mass = torch.exp(q.log_prob(zz, mu, log_sigma, h)).sum() * area
    assert abs(mass.item() - 1) < 5e-3, mass
    torch.testing.assert_close(log_q, again, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_log_q_is_base_density_minus_autograd_logdet(family):
    """sample(): log q(z) = log N(z0; mu, sigma^2) - log|det dT/dz0| with z0 = T^{-1}(z), checked
    with torch.distributions and the autograd Jacobian of the family's map."""
    q = far_flow(family, 2, seed=60)
    mu, log_sigma = torch.randn(3, 2), 0.5 * torch.randn(3, 2)
    h = context(q, 3, 7)
    with torch.no_grad():
        z, log_q = q.sample(mu, log_sigma, h, 4, torch.Generator().manual_seed(1))
    hh = None if h is None else h.expand(4, 3, CTX).reshape(12, CTX)
    z0 = q.inverse(z.reshape(12, 2), hh)
    base = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z0.reshape(4, 3, 2)).sum(-1)
    logdet = torch.linalg.slogdet(batch_jacobian(q, z0, hh)).logabsdet.reshape(4, 3)
    torch.testing.assert_close(log_q, base - logdet, rtol=1e-8, atol=1e-8)


def test_gaussian_log_density_matches_torch():
    mu, log_sigma, z = torch.randn(4, 3), torch.randn(4, 3), 3 * torch.randn(5, 4, 3)
    expected = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(z, mu, log_sigma), expected)
    q = posteriors.build("gaussian", 3)
    torch.testing.assert_close(q.log_prob(z, mu, log_sigma, None), expected)


# ----------------------------------------------------------------------------- the VAE's terms


def test_prior_and_bernoulli_likelihood_match_torch():
    torch.manual_seed(0)
    model = perturb(VAE(posteriors.build("gaussian", 2), [8], data_dim=7).double(), 0.5, 1)
    z, x = 2 * torch.randn(5, 3, 2), torch.bernoulli(torch.full((3, 7), 0.4))
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(model.log_prior(z), prior)
    lik = torch.distributions.Bernoulli(logits=model.decoder(z)).log_prob(x).sum(-1)
    torch.testing.assert_close(model.log_likelihood(x, z), lik)


def test_elbo_terms_formula_and_warmup_weight():
    """neg_elbo = -E[log p(x|z) + log p(z) - log q(z|x)] whatever beta; loss = rec + beta reg."""
    torch.manual_seed(1)
    model = perturb(VAE(far_flow("iaf", 2, 1), [8], data_dim=7).double(), 0.5, 2)
    x = torch.bernoulli(torch.full((4, 7), 0.4))
    terms = elbo_terms(model, x, 6, beta=0.3, generator=torch.Generator().manual_seed(3))
    mu, log_sigma, h = model.encode(x)
    z, log_q = model.posterior.sample(mu, log_sigma, h, 6, torch.Generator().manual_seed(3))
    log_lik = torch.distributions.Bernoulli(logits=model.decoder(z)).log_prob(x).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    rec, reg = -log_lik.mean(0), (log_q - log_p).mean(0)
    assert reg.abs().min() > 0.1, "test too weak: reg ~ 0 cannot tell beta apart"
    torch.testing.assert_close(terms["rec"], rec)
    torch.testing.assert_close(terms["reg"], reg)
    torch.testing.assert_close(terms["neg_elbo"], rec + reg)
    torch.testing.assert_close(terms["loss"], rec + 0.3 * reg)


def test_lr_schedule_and_kl_warmup():
    default = config.resolve(config.validate({}), "standard", 0).train
    cfg = dataclasses.replace(
        default, schedule="cosine", lr=1e-3, lr_min=1e-5, epochs=10, kl_warmup_epochs=4
    )
    lrs = [learning_rate(cfg, e) for e in range(11)]
    assert math.isclose(lrs[0], 1e-3) and math.isclose(lrs[10], 1e-5)
    assert math.isclose(lrs[5], (1e-3 + 1e-5) / 2)
    assert math.isclose(lrs[2], 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(0.2 * math.pi)) / 2)
    assert all(a > b for a, b in zip(lrs[:-1], lrs[1:], strict=True))
    assert learning_rate(dataclasses.replace(cfg, schedule="constant"), 7) == 1e-3
    betas = [kl_weight(cfg, e) for e in range(12)]
    assert all(0 <= b <= 1 for b in betas)
    assert betas[0] < 0.5 and all(b == 1.0 for b in betas[4:])
    ramp = betas[: betas.index(1.0) + 1]
    steps = {round(b - a, 12) for a, b in zip(ramp[:-1], ramp[1:], strict=True)}
    assert steps == {0.25}, "beta does not rise linearly by 1/W over the warm-up"
    assert kl_weight(dataclasses.replace(cfg, kl_warmup_epochs=0), 0) == 1.0


# ----------------------------------------------------------------------------- exact models


class QuadraticDecoder(nn.Module):
    """Logits whose Bernoulli log-likelihood is Gaussian in z, so log p(x) has a closed form.

    Pixels 0..m-1 are 0 in every image and get logit log(expm1(q_j(z))), q_j = (a_j.z - b_j)^2/2
    + c_j, so they contribute -softplus(logit) = -q_j(z); the other pixels have constant logits k.
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, k: torch.Tensor):
        super().__init__()
        self.a, self.b, self.c, self.k = a, b, c, k

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        quad = 0.5 * (z @ self.a.T - self.b) ** 2 + self.c
        inner = quad + torch.log(-torch.expm1(-quad))  # log(expm1(quad)), stable
        return torch.cat([inner, self.k.expand(*z.shape[:-1], -1)], -1)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """sum_k [x k - softplus(k)] - sum c + (m/2) log 2 pi + log N(b; 0, I + A A^T)."""
        m = self.a.shape[0]
        const = (x[:, m:] * self.k - F.softplus(self.k)).sum(-1) - self.c.sum()
        cov = torch.eye(m) + self.a @ self.a.T
        gauss = torch.distributions.MultivariateNormal(torch.zeros(m), cov).log_prob(self.b)
        return const + 0.5 * m * math.log(2 * math.pi) + gauss


def exact_model(
    family: str, seed: int = 0, m: int = 3, n_const: int = 4
) -> tuple[VAE, torch.Tensor]:
    """A VAE with a far-from-init posterior family and a QuadraticDecoder; 6 images."""
    gen = torch.Generator().manual_seed(seed)
    q = far_flow(family, 2, seed)
    model = VAE(q, [16], data_dim=m + n_const).double()
    perturb(model.encoder, 0.3, seed + 1)
    a = 1.2 * torch.randn(m, 2, generator=gen)
    b, k = 1.5 * torch.randn(m, generator=gen), torch.randn(n_const, generator=gen)
    model.decoder = QuadraticDecoder(a, b, 0.5 + torch.rand(m, generator=gen), k)
    x = torch.zeros(6, m + n_const)
    x[:, m:] = torch.bernoulli(torch.full((6, n_const), 0.5), generator=gen)
    return model.eval(), x


@pytest.mark.parametrize("points", [280, 333])
def test_quadrature_matches_closed_form_log_marginal(points):
    """Midpoint rule on [-7, 7]^2 with non-unit cells (h = 0.05, 0.042) against the closed form."""
    model, x = exact_model("gaussian", seed=3)
    exact = model.decoder.log_marginal(x)
    got = reference.log_marginal(model, x, extent=7.0, points=points)
    torch.testing.assert_close(got, exact, rtol=1e-9, atol=1e-7)


def test_the_studys_adaptive_quadrature_matches_the_closed_form():
    """The evaluation's path (search, shared windows, then windows of their own) on a model
    with a real decoder and prior: a first spacing too coarse for every peak, so the own
    windows (log_joint_paired) decide; every image right to its bound and to 0.01."""
    model, x = exact_model("gaussian", seed=3)
    exact = model.decoder.log_marginal(x)
    out, info = quadrature.adaptive_log_marginal(model, x, extent=5.0, spacing=1.0, tol=0.01)
    assert info["refinement_windows"] >= x.shape[0]
    err = (out["log_px"] - exact).abs()
    assert torch.all(err <= out["bound"] + 1e-9) and torch.all(err <= 0.01), (err, out["bound"])


def constant_weight_model() -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """q(z|x) = p(z) and logits independent of z: every importance weight equals p(x) exactly."""
    torch.manual_seed(4)
    model = VAE(posteriors.build("gaussian", 2), [8], data_dim=9).double().eval()
    with torch.no_grad():
        model.encoder.head.weight.zero_()
        model.encoder.head.bias.zero_()
        last = model.decoder.net[-1]
        last.weight.zero_()
        last.bias.normal_(0.0, 1.5)
        x = torch.bernoulli(torch.full((5, 9), 0.5), generator=torch.Generator().manual_seed(5))
        log_px = torch.distributions.Bernoulli(logits=last.bias).log_prob(x).sum(-1)
    return model, x, log_px


@pytest.mark.parametrize("k", [1, 7, 100])
def test_iwae_with_identical_weights_equals_the_single_sample_value(k):
    model, x, log_px = constant_weight_model()
    gen = torch.Generator().manual_seed(k)
    with torch.no_grad():
        for chunk in (3 * x.shape[0], 10_000):  # several chunks, and one
            torch.testing.assert_close(-iwae_nll(model, x, k, chunk, gen), log_px)
        terms = elbo_terms(model, x, 5, generator=gen)
    torch.testing.assert_close(-terms["neg_elbo"], log_px)
    torch.testing.assert_close(terms["reg"], torch.zeros_like(log_px), atol=1e-12, rtol=0)
    torch.testing.assert_close(reference.log_marginal(model, x, 8.5, 170), log_px)


def fit(model: VAE, x: torch.Tensor, steps: int, seed: int) -> VAE:
    """Adam steps on the negative ELBO (encoder and posterior), so q is close to p(z|x)."""
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = elbo_terms(model, x, 16, generator=gen)["neg_elbo"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_elbo_below_iwae_below_exact_log_marginal(family):
    """On the closed-form model: E ELBO = E IWAE_1 <= E IWAE_K rising with K <= log p(x), and
    IWAE_K closes most of the gap by K = 1000 (the weights p(x, z)/q(z) have mean p(x))."""
    model, x = exact_model(family, seed=7)
    fit(model, x, 25, seed=8)
    log_px = model.decoder.log_marginal(x)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        elbo_draws = torch.stack(
            [-elbo_terms(model, x, 50, generator=gen)["neg_elbo"] for _ in range(40)]
        )
        iwae = {}
        for k, reps in ((1, 200), (10, 60), (100, 20), (1000, 12)):
            draws = torch.stack([-iwae_nll(model, x, k, 6000, gen) for _ in range(reps)])
            iwae[k] = (draws.mean(0), draws.std(0) / math.sqrt(reps))
    elbo, elbo_se = elbo_draws.mean(0), elbo_draws.std(0) / math.sqrt(elbo_draws.shape[0])
    gap = log_px - elbo
    assert gap.min() > 0.02, f"test too weak: q is nearly exact (gap {gap})"
    # 4 standard errors plus 0.02 nats: log-mean-exp estimates are skewed, their spread uncertain
    assert torch.all(elbo <= log_px + 4 * elbo_se + 0.02), (elbo, log_px)
    noise_1 = 4 * (elbo_se**2 + iwae[1][1] ** 2).sqrt() + 0.02
    assert torch.all((iwae[1][0] - elbo).abs() <= noise_1), "E IWAE_1 differs from E ELBO"
    ks = sorted(iwae)
    for lo, hi in zip(ks[:-1], ks[1:], strict=True):
        noise = 4 * (iwae[lo][1] ** 2 + iwae[hi][1] ** 2).sqrt() + 0.02
        assert torch.all(iwae[hi][0] >= iwae[lo][0] - noise), f"IWAE fell from K={lo} to {hi}"
        above = iwae[hi][0] - log_px - 4 * iwae[hi][1] - 0.02
        assert torch.all(above <= 0), f"IWAE_{hi} above log p(x)"
    closing = log_px - iwae[1000][0] - 0.6 * gap - 4 * iwae[1000][1] - 0.02
    assert torch.all(closing < 0), f"IWAE_1000 does not close the gap {gap}: {iwae[1000]}"
