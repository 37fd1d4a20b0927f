"""The contract every posterior family keeps, run over every module ``families()`` discovers.

A new module in ``flowvae/posteriors`` is tested here without writing a test. Each family is
checked at a parameter state far from its initialisation (30 Adam steps on a random objective)
in float64: log-determinant against a brute-force autograd Jacobian, inverse round trip, density
integrating to one in 2-D, log q of a sample equal to log_prob at it, ELBO <= IWAE <= log p(x)
on a model small enough to integrate, determinism, and the training-loss hook. Families whose
log q comes from a fixed-step ODE solve (``exact_density = False``) get tolerances set by their
step count and a check that the error falls at the integrator's order when ``steps`` doubles.
"""

import copy
import inspect
import math

import pytest
import quadrature_reference as reference
import torch

from flowvae import posteriors
from flowvae.objectives import elbo_terms, iwae_nll
from flowvae.vae import VAE

CTX = 6
# Small sizes for the settings a family declares (by the shared names); the rest keep defaults.
SMALL = {"context_dim": CTX, "width": 16, "hidden": 16, "context_width": 8, "projection": 4}
PRECISE = {"newton_tol": 1e-10}
ODE_STEPS = 16  # RK4 steps of approximate-density families in these tests
REWARD = 0.5  # weight of the log-determinant in the random objective (keeps maps from collapsing)
FAMILIES = sorted(posteriors.families())
_CACHE: dict = {}


pytestmark = pytest.mark.usefixtures("float64")  # see conftest.py


def settings(name: str, **extra) -> dict:
    cls = posteriors.families()[name]
    out = {k: v for k, v in {**SMALL, **PRECISE}.items() if k in cls.SETTINGS}
    if not cls.exact_density:
        out["steps"] = ODE_STEPS
    return {**out, **extra}


def fresh(name: str, d: int, seed: int = 0, **extra):
    torch.manual_seed(seed)
    return posteriors.build(name, d, **settings(name, **extra)).double()


def context(q, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, q.context_dim, generator=g) if q.context_dim else None


def away_from_init(q, d: int, seed: int = 0):
    """30 Adam steps (lr 0.1) pulling z towards 1.5 sin(2 z0) + h-dependent shifts, with a
    log-determinant reward: a map far from the identity and from its initial weights. An ODE
    family trains with 4 steps (quicker) and is tested with its own."""
    g = torch.Generator().manual_seed(seed)
    params = list(q.parameters())
    if not params:
        return q
    steps = None if q.exact_density else q.steps
    if steps is not None:
        q.steps = 4
    opt = torch.optim.Adam(params, lr=0.1)
    for _ in range(30):
        z0 = torch.randn(64, d, generator=g)
        h = torch.randn(64, q.context_dim, generator=g) if q.context_dim else None
        target = 1.5 * torch.sin(2 * z0) + (0.5 * h[:, :1] if h is not None else 0.0)
        z, logdet = q.transform(z0, h)
        loss = ((z - target) ** 2).sum(-1).mean() - REWARD * logdet.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if steps is not None:
        q.steps = steps
    return q


def trained(name: str, d: int, **extra):
    """A family at a state far from initialisation (cached; tests must not change it)."""
    key = (name, d, tuple(sorted(extra.items())))
    if key not in _CACHE:
        _CACHE[key] = away_from_init(fresh(name, d, **extra), d)
    return _CACHE[key]


def tolerance(q) -> float:
    """Absolute tolerance on log-densities: float64 round-off, or the RK4 error at ODE_STEPS."""
    return 1e-7 if q.exact_density else 2e-3


def brute_force_logdet(q, z0, h):
    """log |det J| of the whole (discrete) map, J from autograd one sample at a time."""
    out = []
    for i in range(z0.shape[0]):
        hi = None if h is None else h[i : i + 1]
        jac = torch.autograd.functional.jacobian(
            lambda z, hi=hi: q.transform(z[None], hi)[0][0], z0[i]
        )
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


@pytest.mark.parametrize("name", FAMILIES)
def test_module_declares_one_named_class_and_its_settings(name):
    cls = posteriors.families()[name]
    assert cls.__name__.endswith("Posterior") and cls.__name__ != "Posterior"
    params = inspect.signature(cls.__init__).parameters
    declared = {k: p.default for k, p in params.items() if k not in ("self", "latent_dim")}
    assert declared == {k: v["default"] for k, v in cls.SETTINGS.items()}
    schema = posteriors.settings_schema(name)
    assert schema["properties"]["family"] == {"const": name}
    built = posteriors.build(name, 2)  # every default is valid
    assert isinstance(built, posteriors.PosteriorFamily) and type(built) is cls
    if not cls.exact_density:
        assert "steps" in cls.SETTINGS, "an approximate-density family needs a step count"


@pytest.mark.parametrize("name", FAMILIES)
def test_the_map_is_far_from_the_identity(name):
    q = trained(name, 2)
    z0, h = torch.randn(200, 2), context(q, 200)
    z, logdet = q.transform(z0, h)
    if list(q.parameters()):
        assert (z - z0).abs().mean() > 0.2 and logdet.std() > 0.03
    else:
        assert torch.equal(z, z0) and torch.equal(logdet, torch.zeros(200))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("d", [2, 5])
def test_logdet_matches_autograd_jacobian(name, d):
    q = trained(name, d)
    z0, h = torch.randn(6, d), context(q, 6)
    _, logdet = q.transform(z0, h)
    bf = brute_force_logdet(q, z0, h)
    rtol = 1e-9 if q.exact_density else 1e-3
    assert torch.allclose(logdet, bf, rtol=rtol, atol=1e-9 if q.exact_density else 1e-3), (
        logdet,
        bf,
    )


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("d", [1, 2, 5])
def test_inverse_of_forward_is_identity(name, d):
    q = trained(name, d)
    z0, h = 1.5 * torch.randn(50, d), context(q, 50)
    z, logdet = q.transform(z0, h)
    back, logdet_back = q.inverse_with_logdet(z, h)
    atol = 1e-6 if q.exact_density else 2e-3
    assert torch.allclose(back, z0, atol=atol)
    assert torch.allclose(logdet_back, logdet, atol=atol)


@pytest.mark.parametrize("name", FAMILIES)
def test_density_integrates_to_one_on_a_grid(name):
    """Midpoint sum of q over [-5, 5]^2 (Gaussian tails outside: < 3e-4), refined once if needed."""
    q = trained(name, 2)
    mu, log_sigma = torch.tensor([[0.3, -0.2]]), torch.tensor([[0.1, 0.2]])
    h = context(q, 1, seed=3)
    extent = 5.0
    for n in (160, 320):
        step = 2 * extent / n
        axis = torch.linspace(-extent + step / 2, extent - step / 2, n)
        zz = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 1, 2)
        with torch.no_grad():
            mass = torch.exp(q.log_prob(zz, mu, log_sigma, h)).sum().item() * step**2
        if abs(mass - 1) < 2e-3:
            break
    assert abs(mass - 1) < 2e-3, (n, mass)


@pytest.mark.parametrize("name", FAMILIES)
def test_sample_log_q_equals_log_prob_at_the_sample(name):
    q = trained(name, 2)
    mu, log_sigma = torch.randn(5, 2), 0.3 * torch.randn(5, 2)
    h = context(q, 5)
    with torch.no_grad():
        z, log_q = q.sample(mu, log_sigma, h, n_samples=3)
        assert torch.allclose(q.log_prob(z, mu, log_sigma, h), log_q, atol=tolerance(q))


@pytest.mark.parametrize("name", FAMILIES)
def test_same_seed_same_result_other_seed_differs(name):
    runs = []
    for seed in (0, 0, 1):
        q = fresh(name, 2, seed=seed)
        mu, log_sigma = torch.zeros(4, 2), torch.zeros(4, 2)
        h = context(q, 4) if q.context_dim else None
        gen = torch.Generator().manual_seed(7)
        z, log_q = q.sample(mu, log_sigma, h, n_samples=2, generator=gen)
        runs.append((z, log_q, [p.detach().clone() for p in q.parameters()]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][2], runs[1][2], strict=True))
    if runs[0][2]:
        assert any(not torch.equal(a, b) for a, b in zip(runs[0][2], runs[2][2], strict=True))


DATA_DIM = 12


def small_vae(name: str) -> VAE:
    torch.manual_seed(0)
    model = VAE(fresh(name, 2), hidden=[16], data_dim=DATA_DIM).double()
    away_from_init(model.posterior, 2, seed=1)
    return model.eval()


def binary_data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, DATA_DIM), 0.4), generator=g)


@pytest.mark.parametrize("name", FAMILIES)
def test_elbo_below_iwae_below_log_marginal(name):
    model, x = small_vae(name), binary_data()
    log_px = reference.log_marginal(model, x, extent=9.0, points=500)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        elbo = -elbo_terms(model, x, n_samples=2000, generator=gen)["neg_elbo"]
        reps = torch.stack([-iwae_nll(model, x, 250, generator=gen) for _ in range(8)])
    iwae, err = reps.mean(0), reps.std(0) / math.sqrt(reps.shape[0])
    slack = 4 * err + tolerance(model.posterior)
    assert torch.all(elbo <= iwae + slack), (elbo, iwae)
    assert torch.all(iwae <= log_px + slack), (iwae, log_px)
    assert torch.all(log_px - elbo > 0.01), "the posterior is exact: a weak test"


@pytest.mark.parametrize("name", FAMILIES)
def test_training_penalty_enters_the_loss_only(name, monkeypatch):
    model, x = small_vae(name), binary_data()
    model.train()

    def run():
        gen = torch.Generator().manual_seed(3)
        terms = elbo_terms(model, x, n_samples=3, beta=0.5, generator=gen)
        iwae = iwae_nll(model, x, 20, generator=torch.Generator().manual_seed(4))
        return terms, iwae

    base, iwae = run()
    gen = torch.Generator().manual_seed(3)
    mu, log_sigma, h = model.encode(x)
    _, _, penalty = model.posterior.sample_with_penalty(mu, log_sigma, h, 3, gen)
    assert torch.allclose(base["loss"], base["rec"] + 0.5 * base["reg"] + penalty.mean(0))
    assert torch.allclose(base["neg_elbo"], base["rec"] + base["reg"])
    real = type(model.posterior).transform_with_penalty

    def heavier(self, z0, h):
        z, logdet, pen = real(self, z0, h)
        return z, logdet, pen + 1000.0

    monkeypatch.setattr(type(model.posterior), "transform_with_penalty", heavier)
    shifted, iwae2 = run()
    assert torch.allclose(shifted["loss"], base["loss"] + 1000.0)
    for key in ("neg_elbo", "rec", "reg"):
        assert torch.equal(shifted[key], base[key])
    assert torch.equal(iwae2, iwae)


APPROXIMATE = [n for n in FAMILIES if not posteriors.families()[n].exact_density]


@pytest.mark.parametrize("name", APPROXIMATE)
def test_discretization_error_falls_when_steps_double(name):
    """log q at fixed z, the log-determinant and the round trip converge at RK4's order."""
    d = 2
    q = trained(name, d)
    z0, h = torch.randn(6, d), context(q, 6)
    mu, log_sigma = torch.zeros(6, d), torch.zeros(6, d)
    z_fixed = 1.2 * torch.randn(1, 6, d)
    ref = copy.deepcopy(q)
    ref.steps = 128
    with torch.no_grad():
        lq_ref = ref.log_prob(z_fixed, mu, log_sigma, h)
    errors = []
    for steps in (4, 8, 16):
        q2 = copy.deepcopy(q)
        q2.steps = steps
        _, logdet = q2.transform(z0, h)
        with torch.no_grad():
            z, _ = q2.transform(z0, h)
            back = q2.inverse(z, h)
            lq = q2.log_prob(z_fixed, mu, log_sigma, h)
        errors.append(
            [
                (logdet - brute_force_logdet(q2, z0, h)).abs().max().item(),
                (back - z0).abs().max().item(),
                (lq - lq_ref).abs().max().item(),
            ]
        )
    for coarse, fine in zip(errors[:-1], errors[1:], strict=True):
        for e_coarse, e_fine in zip(coarse, fine, strict=True):
            assert e_fine < e_coarse / 4 or e_fine < 1e-9, errors
