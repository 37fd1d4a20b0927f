"""Properties of the posterior families: log-dets, structure, convexity, inverses, normalization."""

import math

import pytest
import torch

from flowvae import posteriors
from flowvae.posteriors import iaf, pcpmap
from flowvae.posteriors.base import gaussian_log_prob

CTX = 6


@pytest.fixture(autouse=True)
def float64():
    """Double precision for these checks only (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def make(family: str, d: int, seed: int = 0):
    torch.manual_seed(seed)
    settings = {
        "gaussian": {},
        "iaf": {"context_dim": CTX, "steps": 3, "hidden": 16, "forget_bias": 1.0},
        "pcpmap": {"context_dim": CTX, "width": 16, "context_width": 8, "newton_tol": 1e-10},
    }[family]
    q = posteriors.build(family, d, **settings).double()
    if family == "iaf":  # move away from the zero-initialized output layers
        for step in q.steps:
            torch.nn.init.normal_(step.made.out.weight, std=0.5)
            torch.nn.init.normal_(step.made.out.bias, std=0.5)
    return q


def brute_force_logdet(q, z0, h):
    """log |det J| of the whole map, J from autograd one sample at a time."""
    out = []
    for i in range(z0.shape[0]):

        def f(z, i=i):
            return q.transform(z[None], h[i : i + 1])[0][0]

        jac = torch.autograd.functional.jacobian(f, z0[i])
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


@pytest.mark.parametrize("family", ["iaf", "pcpmap"])
@pytest.mark.parametrize("d", [2, 5])
def test_logdet_matches_autograd_jacobian(family, d):
    q = make(family, d)
    z0, h = torch.randn(7, d), torch.randn(7, CTX)
    _, logdet = q.transform(z0, h)
    assert torch.allclose(logdet, brute_force_logdet(q, z0, h), atol=1e-4)


@pytest.mark.parametrize("family", ["iaf", "pcpmap"])
@pytest.mark.parametrize("d", [1, 2, 5])
def test_inverse_of_forward_is_identity(family, d):
    q = make(family, d)
    z0, h = 1.5 * torch.randn(50, d), torch.randn(50, CTX)
    z, _ = q.transform(z0, h)
    assert torch.allclose(q.inverse(z, h), z0, atol=1e-4)


@pytest.mark.parametrize("d", [2, 5])
def test_iaf_step_jacobian_is_triangular_with_sigma_diagonal(d):
    q = make("iaf", d)
    step = q.steps[0]
    z, h = torch.randn(d), torch.randn(1, CTX)
    jac = torch.autograd.functional.jacobian(lambda v: step(v[None], h)[0][0], z)
    assert torch.all(jac.triu(diagonal=1).abs() < 1e-12), "output i depends on z_j, j > i"
    m, s = step.made(z[None], h)
    assert torch.allclose(jac.diagonal(), torch.sigmoid(s[0] + step.forget_bias))
    assert jac.tril(diagonal=-1).abs().sum() > 0, "no autoregressive coupling at all"


def test_iaf_outputs_depend_on_context_and_lower_coordinates_only():
    d = 4
    q = make("iaf", d)
    made = q.steps[0].made
    z, h = torch.randn(1, d, requires_grad=True), torch.randn(1, CTX, requires_grad=True)
    m, s = made(z, h)
    for i in range(d):
        gz, gh = torch.autograd.grad(m[0, i] + s[0, i], (z, h), retain_graph=True)
        assert torch.all(gz[0, i:] == 0)
        if i > 0:
            assert torch.all(gz[0, :i] != 0)
        assert gh.abs().sum() > 0


def _assert_spd_hessians(q, d, n=40):
    z0, h = 2 * torch.randn(n, d), 2 * torch.randn(n, CTX)
    _, hess = q.grad_hessian(z0, h, create_graph=False)
    assert torch.allclose(hess, hess.transpose(1, 2), atol=1e-10)
    assert torch.linalg.eigvalsh(hess).min() > 0


@pytest.mark.parametrize("d", [2, 5])
def test_pcpmap_hessian_is_spd_before_and_after_training(d):
    q = make("pcpmap", d, seed=1)
    _assert_spd_hessians(q, d)
    opt = torch.optim.Adam(q.parameters(), lr=0.05)
    for _ in range(30):  # push the map towards something far from the identity
        z0, h = torch.randn(64, d), torch.randn(64, CTX)
        z, logdet = q.transform(z0, h)
        loss = ((z - torch.sin(3 * z0) * 2) ** 2).sum(-1).mean() - 0.1 * logdet.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    _assert_spd_hessians(q, d)


def test_picnn_is_convex_along_random_segments():
    q = make("pcpmap", 3, seed=2)
    a, b, h = 3 * torch.randn(200, 3), 3 * torch.randn(200, 3), torch.randn(200, CTX)
    for t in torch.linspace(0.05, 0.95, 7):
        mid = q.picnn(t * a + (1 - t) * b, h)
        chord = t * q.picnn(a, h) + (1 - t) * q.picnn(b, h)
        assert torch.all(mid <= chord + 1e-10)


def test_pcpmap_logdet_closed_form_equals_cholesky():
    torch.manual_seed(0)
    a = torch.randn(20, 2, 2)
    spd = a @ a.transpose(1, 2) + 0.1 * torch.eye(2)
    chol = 2 * torch.log(torch.diagonal(torch.linalg.cholesky(spd), dim1=1, dim2=2)).sum(-1)
    assert torch.allclose(pcpmap.log_det_spd(spd), chol)
    assert torch.allclose(pcpmap.log_det_spd(spd), torch.logdet(spd))


@pytest.mark.parametrize("family", ["gaussian", "iaf", "pcpmap"])
def test_density_integrates_to_one_on_a_grid(family):
    q = make(family, 2, seed=3)
    mu, log_sigma = torch.tensor([[0.3, -0.2]]), torch.tensor([[-0.5, -0.2]])
    h = torch.randn(1, CTX) if q.context_dim else None
    n, extent = 300, 6.0
    axis = torch.linspace(-extent, extent, n)
    zz = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 1, 2)
    with torch.no_grad():
        log_q = q.log_prob(zz, mu, log_sigma, h)
    mass = torch.exp(log_q).sum() * (axis[1] - axis[0]) ** 2
    assert abs(mass.item() - 1) < 1e-2


@pytest.mark.parametrize("family", ["gaussian", "iaf", "pcpmap"])
def test_sample_log_q_equals_log_prob_at_the_sample(family):
    q = make(family, 2, seed=4)
    mu, log_sigma = torch.randn(5, 2), 0.3 * torch.randn(5, 2)
    h = torch.randn(5, CTX) if q.context_dim else None
    with torch.no_grad():
        z, log_q = q.sample(mu, log_sigma, h, n_samples=3)
        assert torch.allclose(q.log_prob(z, mu, log_sigma, h), log_q, atol=1e-6)


def test_gaussian_log_prob_formula():
    z, mu, ls = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, math.log(2)])
    expected = -0.5 - 0.5 * 0.25 - math.log(2) - math.log(2 * math.pi)
    assert torch.isclose(gaussian_log_prob(z, mu, ls), torch.tensor(expected))


def test_unknown_setting_or_family_is_named():
    from flowvae.errors import ConfigError

    with pytest.raises(ConfigError, match="stepz"):
        posteriors.build("iaf", 2, stepz=3)
    with pytest.raises(ConfigError, match="nope"):
        posteriors.build("nope", 2)


def test_iaf_made_degrees_for_one_dimension():
    q = iaf.Posterior(latent_dim=1, context_dim=3, hidden=8).double()
    z, h = torch.randn(4, 1), torch.randn(4, 3)
    zt, _ = q.transform(z, h)
    assert torch.allclose(q.inverse(zt, h), z)
