"""Properties particular to one family (structure, convexity, closed forms, warnings, settings).

The properties every family shares are in test_families.py.
"""

import math
import warnings

import pytest
import torch

from flowvae import posteriors
from flowvae.errors import ConfigError
from flowvae.posteriors import cotflow, iaf, pcpmap
from flowvae.posteriors.base import gaussian_log_prob

CTX = 6


pytestmark = pytest.mark.usefixtures("float64")  # see conftest.py


def make(family: str, d: int, seed: int = 0):
    torch.manual_seed(seed)
    settings = {
        "gaussian": {},
        "iaf": {"context_dim": CTX, "steps": 3, "hidden": 16, "forget_bias": 1.0},
        "pcpmap": {"context_dim": CTX, "width": 16, "context_width": 8, "newton_tol": 1e-10},
        "cotflow": {"context_dim": CTX, "width": 16, "layers": 3, "projection": 4},
    }[family]
    q = posteriors.build(family, d, **settings).double()
    if family == "iaf":  # move away from the zero-initialized output layers
        for step in q.steps:
            torch.nn.init.normal_(step.made.out.weight, std=0.5)
            torch.nn.init.normal_(step.made.out.bias, std=0.5)
    if family == "cotflow":  # give every parameter a push away from its initial value
        for p in q.parameters():
            p.data += 0.5 * torch.randn_like(p)
    return q


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


def test_iaf_gate_scale_scales_the_gate_and_inverts():
    """sigma = sigmoid(a s + b): the Jacobian's diagonal and the inverse follow a."""
    torch.manual_seed(3)
    q = iaf.IAFPosterior(latent_dim=2, context_dim=CTX, steps=2, hidden=16, gate_scale=0.1)
    q = q.double()
    for step in q.steps:
        torch.nn.init.normal_(step.made.out.weight, std=2.0)
        torch.nn.init.normal_(step.made.out.bias, std=2.0)
    step, z, h = q.steps[0], torch.randn(2), torch.randn(1, CTX)
    jac = torch.autograd.functional.jacobian(lambda v: step(v[None], h)[0][0], z)
    m, s = step.made(z[None], h)
    assert s.abs().max() > 1  # a scale of 0.1 against 1 makes a difference
    assert torch.allclose(jac.diagonal(), torch.sigmoid(0.1 * s[0] + step.forget_bias))
    z0, hs = torch.randn(5, 2), torch.randn(5, CTX)
    zt, _ = q.transform(z0, hs)
    assert torch.allclose(q.inverse(zt, hs), z0, atol=1e-10)


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


@pytest.mark.parametrize("context_norm", [True, False])
def test_iaf_context_norm_makes_the_flow_blind_to_the_context_scale(context_norm):
    """With context_norm the flow reads (h - mean h) / sd h: a*h + b gives the same z and log
    det for any a > 0 and b; without it, the scale of h reaches the MADEs."""
    torch.manual_seed(0)
    q = posteriors.build("iaf", 2, context_dim=CTX, steps=2, hidden=16, context_norm=context_norm)
    q = q.double()
    for p in q.parameters():  # away from the zero-initialized output layers
        p.data += 0.2 * torch.randn_like(p)
    z0, h = torch.randn(20, 2), torch.randn(20, CTX)
    z, logdet = q.transform(z0, h)
    z_scaled, logdet_scaled = q.transform(z0, 3.0 * h - 1.0)
    close = torch.allclose(z, z_scaled, atol=1e-4) and torch.allclose(
        logdet, logdet_scaled, atol=1e-4
    )
    assert close == context_norm
    assert torch.allclose(q.inverse(z_scaled, 3.0 * h - 1.0), z0, atol=1e-6)


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


def test_gaussian_log_prob_formula():
    z, mu, ls = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, math.log(2)])
    expected = -0.5 - 0.5 * 0.25 - math.log(2) - math.log(2 * math.pi)
    assert torch.isclose(gaussian_log_prob(z, mu, ls), torch.tensor(expected))


def test_unknown_setting_or_family_is_named():
    with pytest.raises(ConfigError, match="stepz"):
        posteriors.build("iaf", 2, stepz=3)
    with pytest.raises(ConfigError, match="nope"):
        posteriors.build("nope", 2)


def test_variant_settings_are_checked_against_the_family_schema_and_filled():
    out = posteriors.validate_variants(
        {"a": {"family": "iaf", "steps": 2}, "b": {"family": "gaussian"}}
    )
    assert out["a"] == {
        "family": "iaf",
        "steps": 2,
        "context_dim": 128,
        "hidden": 128,
        "depth": 2,
        "forget_bias": 1.5,
        "context_norm": True,
        "gate_scale": 1.0,
    }
    assert out["b"] == {"family": "gaussian"}
    for bad, message in [
        ({"family": "iaf", "steps": 0}, "'variants.a.steps': 0 is less than the minimum of 1"),
        ({"family": "iaf", "steps": 2.5}, "'variants.a.steps': 2.5 is not of type 'integer'"),
        ({"family": "pcpmap", "stepz": 1}, "'variants.a.stepz': not a setting of family 'pcpmap'"),
        ({"family": "nope"}, "'variants.a.family': no posterior family 'nope'"),
        ({"steps": 2}, "'variants.a': needs a 'family'"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            posteriors.validate_variants({"a": bad})


def test_config_validation_uses_the_family_schemas():
    from flowvae import config

    cfg = config.validate({"variants": {"cot": {"family": "cotflow", "steps": 6}}})
    assert cfg["variants"]["cot"]["steps"] == 6
    assert cfg["variants"]["cot"]["width"] == cotflow.COTFlowPosterior.SETTINGS["width"]["default"]
    with pytest.raises(ConfigError, match="'variants.cot.width'"):
        config.validate({"variants": {"cot": {"family": "cotflow", "width": 0}}})


def test_iaf_made_degrees_for_one_dimension():
    q = iaf.IAFPosterior(latent_dim=1, context_dim=3, hidden=8).double()
    z, h = torch.randn(4, 1), torch.randn(4, 3)
    zt, _ = q.transform(z, h)
    assert torch.allclose(q.inverse(zt, h), z)


def test_iaf_starts_as_the_documented_contraction():
    q = iaf.IAFPosterior(latent_dim=2, context_dim=3, steps=4, forget_bias=1.5).double()
    z0, h = torch.randn(6, 2), torch.randn(6, 3)
    z, logdet = q.transform(z0, h)
    scale = torch.sigmoid(torch.tensor(1.5)) ** 4
    assert torch.allclose(z, scale * z0.flip(-1))  # three reversals between four steps
    assert torch.allclose(logdet, torch.full((6,), 2 * math.log(scale.item())))


def test_pcpmap_newton_inverse_counts_and_warns_when_it_stops_early():
    q = make("pcpmap", 2, seed=5)
    with torch.no_grad():
        q.g1.fill_(2.0)  # a strongly curved potential: one Newton step is not enough
    q.newton_iters = 1
    z, h = 2 * torch.randn(30, 2), torch.randn(30, CTX)
    with pytest.warns(pcpmap.NewtonWarning, match=r"\d+ of 30 points not converged"):
        q.inverse(z, h)
    assert 0 < q.newton_failures <= 30
    q.newton_iters, before = 50, q.newton_failures
    with warnings.catch_warnings():
        warnings.simplefilter("error", pcpmap.NewtonWarning)
        q.inverse(z, h)
    assert q.newton_failures == before


def _cot_potential(q, z, t, h):
    """Phi(z, t; h) written out plainly, for autograd."""
    s = torch.cat([z, t, q.proj(h)], dim=1)
    u = cotflow.log_cosh(q.opening(s))
    for layer in q.residual:
        u = u + cotflow.log_cosh(layer(u)) / len(q.residual)
    return u @ q.w + 0.5 * ((s @ q.A.T) ** 2).sum(1) + s @ q.c


@pytest.mark.parametrize("d", [2, 5])
def test_cotflow_closed_form_gradient_trace_and_time_derivative_match_autograd(d):
    q = make("cotflow", d, seed=6)
    z, h = 1.5 * torch.randn(9, d), torch.randn(9, CTX)
    t = torch.full((9, 1), 0.37)
    v, div, dt_phi = q.velocity(z, 0.37, q._context(h), with_dt=True)
    zz, tt = z.clone().requires_grad_(True), t.clone().requires_grad_(True)
    gz, gt = torch.autograd.grad(_cot_potential(q, zz, tt, h).sum(), (zz, tt), create_graph=True)
    hess_tr = sum(
        torch.autograd.grad(gz[:, i].sum(), zz, retain_graph=True)[0][:, i] for i in range(d)
    )
    assert hess_tr.abs().min() > 0.1, "a trace this small tests little"
    assert torch.allclose(v, -gz, rtol=1e-10, atol=1e-12)
    assert torch.allclose(div, -hess_tr, rtol=1e-10, atol=1e-12)
    assert torch.allclose(dt_phi, gt[:, 0], rtol=1e-10, atol=1e-12)


def test_cotflow_penalty_for_a_constant_velocity_field():
    """Phi = a'z + b t (N and A switched off): z = z0 - a, log det = 0, transport |a|^2 / 2,
    HJB residual |-b + |a|^2 / 2|."""
    q = cotflow.COTFlowPosterior(
        2, context_dim=3, width=8, steps=3, transport_weight=0.7, hjb_weight=0.2
    ).double()
    a, b = torch.tensor([0.8, -1.3]), 0.4
    with torch.no_grad():
        q.w.zero_()
        q.A.zero_()
        q.c.zero_()
        q.c[:2] = a
        q.c[2] = b
    z0, h = torch.randn(5, 2), torch.randn(5, 3)
    z, logdet, penalty = q.transform_with_penalty(z0, h)
    assert torch.allclose(z, z0 - a) and torch.allclose(logdet, torch.zeros(5))
    speed = 0.5 * (a**2).sum()
    assert torch.allclose(penalty, torch.full((5,), 0.7 * speed + 0.2 * abs(speed - b)))


def test_cotflow_starts_as_documented():
    """w = 1, c = 0, A = 0.1 x Xavier: a smooth non-identity map, no contraction to a point."""
    torch.manual_seed(0)
    q = cotflow.COTFlowPosterior(2, context_dim=8).double()
    assert torch.equal(q.w, torch.ones_like(q.w)) and torch.equal(q.c, torch.zeros_like(q.c))
    z0, h = torch.randn(50, 2), torch.randn(50, 8)
    z, logdet = q.transform(z0, h)
    assert (z - z0).abs().mean() > 0.05 and logdet.abs().max() < 2.0
