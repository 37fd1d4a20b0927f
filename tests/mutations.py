"""Mutation check: does the test suite fail when a formula is wrong?

For each row of MUTATIONS the script copies src/flowvae to a temporary folder, applies one
deliberately wrong formula (a text substitution that must match exactly ``count`` times, else the
script stops: re-point the pattern), runs the row's test files against the copy
(PYTHONPATH=<copy>, ``pytest -x -q``) and records whether a test failed. It prints a table
mutation | tests run | result | seconds | first failure, and exits non-zero if any mutation was
missed (or the unmutated copy fails its tests).

    python tests/mutations.py                    # every mutation, its own test files
    python tests/mutations.py --only iwae_no_log_k --only iaf_no_reversal
    python tests/mutations.py --tests test_math.py   # the same mutations, one test file
    python tests/mutations.py -k convex --only pcpmap_gate_signed   # does this test catch it?
    python tests/mutations.py --check            # only check that every pattern still matches

To add a mutation, append a row: (name, file under src/flowvae, old text, new text, test files).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "flowvae"

POST = ("test_math.py", "test_posteriors.py")
OBJ = ("test_math.py", "test_objectives.py")
QUAD = ("test_math.py", "test_quadrature.py")
TRAIN = ("test_math.py", "test_train.py")
FAM = ("test_families.py", "test_math.py")
BUDGETS = ("test_budgets.py",)


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` by ``new`` in src/flowvae/``file`` (``count`` occurrences, exactly)."""

    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    count: int = 1


# fmt: off
MUTATIONS = [Mutation(*row) for row in [
    # PCP-Map: log q = log q0 - log det Hess G; G convex in z0; inverse by Newton on grad G = z
    ("pcpmap_logdet_half", "posteriors/pcpmap.py",
     "logdet = log_det_spd(hess)", "logdet = 0.5 * log_det_spd(hess)", POST),
    ("pcpmap_logdet_zero", "posteriors/pcpmap.py",
     "logdet = log_det_spd(hess)", "logdet = 0.0 * log_det_spd(hess)", POST),
    ("pcpmap_det_offdiag_sign", "posteriors/pcpmap.py", "- off**2)", "+ off**2)", POST),
    ("pcpmap_weights_signed", "posteriors/pcpmap.py",
     "u @ F.softplus(self.raw).T", "u @ self.raw.T", POST),
    ("pcpmap_gate_signed", "posteriors/pcpmap.py",
     "u * F.relu(self.gate_u(v))", "u * self.gate_u(v)", POST),
    ("pcpmap_activation_nonconvex", "posteriors/pcpmap.py",
     "u = F.softplus(layer(u, y, v))", "u = torch.tanh(layer(u, y, v))", POST),
    ("pcpmap_newton_residual_sign", "posteriors/pcpmap.py", "r = g - za", "r = g + za", POST),
    # IAF: z_t = sigma z + (1 - sigma) m, log-det sum log sigma, order reversed between steps
    ("iaf_no_reversal", "posteriors/iaf.py", "z.flip(-1)", "z", POST, 2),
    ("iaf_logdet_sign", "posteriors/iaf.py", "log_sigma.sum(-1)", "-log_sigma.sum(-1)", POST),
    ("iaf_mask_not_strict", "posteriors/iaf.py",
     "(deg_in[:, None] > deg_hidden[None, :])", "(deg_in[:, None] >= deg_hidden[None, :])", POST),
    ("iaf_update_without_gate", "posteriors/iaf.py",
     "sigma * z + (1 - sigma) * m", "sigma * z + m", POST),
    ("iaf_inverse_multiplies", "posteriors/iaf.py", "m[:, i]) / sigma", "m[:, i]) * sigma", POST),
    ("iaf_gate_unscaled", "posteriors/iaf.py",
     "F.logsigmoid(self.gate_scale * s", "F.logsigmoid(s", POST),
    ("iaf_inverse_gate_unscaled", "posteriors/iaf.py",
     "torch.sigmoid(self.gate_scale * s[:, i]", "torch.sigmoid(s[:, i]", POST),
    # base family: log q = log N(z0; mu, sigma^2) - log|det dT/dz0|
    ("sample_logdet_sign", "posteriors/base.py", "log_q0 - logdet", "log_q0 + logdet", POST),
    ("log_prob_logdet_sign", "posteriors/base.py",
     "log_sigma) - logdet", "log_sigma) + logdet", POST),
    ("logdet_sign_sample_and_log_prob", "posteriors/base.py",
     "- logdet.reshape(", "+ logdet.reshape(", POST, 2),
    ("sample_no_2pi_constant", "posteriors/base.py",
     "log_q0 = (-0.5 * eps**2 - log_sigma - 0.5 * LOG_2PI)",
     "log_q0 = (-0.5 * eps**2 - log_sigma)", POST),
    ("sample_log_sigma_sign", "posteriors/base.py",
     "log_q0 = (-0.5 * eps**2 - log_sigma", "log_q0 = (-0.5 * eps**2 + log_sigma", POST),
    ("sample_scales_by_variance", "posteriors/base.py",
     "z0 = mu + torch.exp(log_sigma) * eps", "z0 = mu + torch.exp(2 * log_sigma) * eps", POST),
    ("gaussian_constant_log_pi", "posteriors/base.py",
     "LOG_2PI = math.log(2 * math.pi)", "LOG_2PI = math.log(math.pi)", POST),
    ("gaussian_log_prob_no_log_sigma", "posteriors/base.py",
     "return (-0.5 * eps**2 - log_sigma - 0.5 * LOG_2PI)", "return (-0.5 * eps**2 - 0.5 * LOG_2PI)",
     POST),
    # VAE: p(z) = N(0, I), log p(x|z) = sum x l - softplus(l)
    ("prior_no_constant", "vae.py",
     "(-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)", "(-0.5 * z**2).sum(-1)", OBJ),
    ("bernoulli_labels_swapped", "vae.py",
     "(x * logits - F.softplus(logits))", "((1 - x) * logits - F.softplus(logits))", OBJ),
    # objectives: -ELBO = rec + reg, loss = rec + beta reg, IWAE = log mean_k w_k
    ("elbo_reg_sign", "objectives.py",
     "reg = (log_q - model.log_prior(z))", "reg = (log_q + model.log_prior(z))", OBJ),
    ("elbo_rec_sign", "objectives.py",
     "rec = -model.bernoulli_log_likelihood(x, logits.to(x.dtype))",
     "rec = model.bernoulli_log_likelihood(x, logits.to(x.dtype))", OBJ),
    ("neg_elbo_with_warmup_beta", "objectives.py",
     '"neg_elbo": rec + reg', '"neg_elbo": rec + beta * reg', OBJ),
    ("loss_without_warmup_beta", "objectives.py",
     "loss = rec + beta * reg + penalty.mean(0)", "loss = rec + reg + penalty.mean(0)", OBJ),
    ("penalty_in_reported_neg_elbo", "objectives.py",
     '"neg_elbo": rec + reg,', '"neg_elbo": rec + reg + penalty.mean(0),', FAM),
    ("iwae_no_log_k", "objectives.py", "total - math.log(k)", "total", OBJ),
    ("iwae_weight_sign", "objectives.py",
     "model.log_prior(z) - log_q", "model.log_prior(z) + log_q", OBJ, 2),
    ("iwae_chunks_max_not_logaddexp", "objectives.py",
     "torch.logaddexp(total,", "torch.maximum(total,", OBJ),
    ("iwae_mean_not_logsumexp", "objectives.py",
     "torch.logsumexp(log_w, dim=0)", "(log_w.mean(0) + math.log(n))", OBJ),
    # quadrature: log p(x) = log sum_g w_g p(x, z_g) + log(cell area)
    ("quad_cell_area_factor", "quadrature.py", "2 * math.log(h)", "math.log(h)", QUAD),
    ("quad_no_cell_area", "quadrature.py",
     "self.top + torch.log(self.s0) + log_area", "self.top + torch.log(self.s0)", QUAD),
    ("quad_grid_endpoints", "quadrature.py",
     "-extent + h / 2, extent - h / 2", "-extent, extent", QUAD),
    ("quad_bernoulli_sign", "quadrature.py",
     "x @ logits.T - F.softplus", "x @ logits.T + F.softplus", QUAD),
    ("quad_window_area_sign", "quadrature.py",
     "log_area = torch.log(step[b : b + per]).sum(-1)",
     "log_area = -torch.log(step[b : b + per]).sum(-1)", QUAD),
    ("quad_no_prior", "quadrature.py",
     "F.softplus(logits).sum(-1) + model.log_prior(z)", "F.softplus(logits).sum(-1)", QUAD),
    ("quad_window_no_prior", "quadrature.py",
     "blocks.append(log_lik + model.log_prior(z[:, i : i + cols]))", "blocks.append(log_lik)",
     QUAD),
    # the study's path: per-image windows of one shared lattice (shared_windows)
    ("quad_shared_cell_area", "quadrature.py",
     "h2 = 2 * math.log(spacing)\n    return _bound", "h2 = math.log(spacing)\n    return _bound",
     QUAD),
    ("quad_shared_ring_dropped", "quadrature.py",
     "outer.add(rows, lj.masked_fill(~in_ring, -math.inf), z)",
     "outer.add(rows, lj.masked_fill(in_ring | ~in_ring, -math.inf), z)", QUAD),
    # the evaluation's -ELBO: GH(f) + E[f - c], c interpolating f at the Gauss-Hermite nodes
    ("elbo_control_basis_off_nodes", "elbo.py",
     "1 - e**2 / 3", "1 - e**2 / 2", ("test_evaluate.py",)),
    ("elbo_control_mean_dropped", "elbo.py",
     'anchor[k + "_gh"] + weights @ (v', "weights @ (v", ("test_evaluate.py",)),
    # COT-Flow: dz/dt = -grad Phi, d l/dt = -tr Hess Phi (closed form), RK4, penalty L and R
    ("cotflow_trace_half", "posteriors/cotflow.py", "-trace", "-0.5 * trace", FAM, 2),
    ("cotflow_trace_no_quadratic", "posteriors/cotflow.py",
     "@ (k0z**2).sum(1) + (az**2).sum()", "@ (k0z**2).sum(1)", FAM),
    ("cotflow_logdet_sign", "posteriors/cotflow.py",
     "        return z, logdet\n", "        return z, -logdet\n", FAM),
    ("cotflow_hjb_dt_sign", "posteriors/cotflow.py",
     "(speed - dt_phi).abs()", "(speed + dt_phi).abs()", (*FAM, "test_posteriors.py")),
    ("cotflow_half_time_step", "posteriors/cotflow.py",
     "1.0) / self.steps", "0.5) / self.steps", FAM),
    # training schedule: cosine lr, linear KL warm-up
    ("lr_cosine_sign", "train.py",
     "(1 + math.cos(math.pi * frac))", "(1 - math.cos(math.pi * frac))", TRAIN),
    ("lr_cosine_no_half", "train.py",
     "0.5 * (t.lr - t.lr_min)", "(t.lr - t.lr_min)", TRAIN),
    ("kl_warmup_max_not_min", "train.py",
     "min(1.0, (epoch + 1) / w)", "max(1.0, (epoch + 1) / w)", TRAIN),
    ("kl_warmup_twice_as_long", "train.py", "(epoch + 1) / w)", "(epoch + 1) / (2 * w))", TRAIN),
    # train.precision: bfloat16 for the networks' products only
    ("precision_not_passed", "train.py",
     "t.samples, beta, state.noise_gen, products)", "t.samples, beta, state.noise_gen)",
     ("test_train.py",)),
    ("posterior_in_bfloat16", "objectives.py",
     "mu, log_sigma = mu.to(x.dtype), log_sigma.to(x.dtype)", "mu, log_sigma = mu, log_sigma", OBJ),
    # best-validation weights and early stopping
    ("best_weights_not_copied", "train.py", "v.detach().clone()", "v.detach()", TRAIN),
    ("patience_one_epoch_late", "train.py",
     'self.epoch - self.best["epoch"] >= patience', 'self.epoch - self.best["epoch"] > patience',
     TRAIN),
    ("iaf_context_not_normalized", "posteriors/iaf.py",
     "return h if self.norm is None else self.norm(h)", "return h", POST),
    # the claim per budget: paired statistics, CPU budgets, spikes, the decoder/gap split
    ("detectable_without_power_term", "budgets.py", "(t975 + t80) * se", "t975 * se", BUDGETS),
    ("cpu_budget_exclusive", "budgets.py",
     '(curves["cpu_total"] <= seconds)', '(curves["cpu_total"] < seconds)', BUDGETS),
    ("spike_below_the_best", "budgets.py", ".cummin() + jump", ".cummin() - jump", BUDGETS),
    ("split_decoder_from_gap", "budgets.py", '"decoder": "exact_nll"', '"decoder": "mean_gap"',
     BUDGETS),
]]
# fmt: on


class PatternError(RuntimeError):
    """A mutation's pattern no longer matches the source the expected number of times."""


def mutated_text(m: Mutation, package: Path = PACKAGE) -> str:
    """The text of ``m.file`` with the mutation applied; PatternError if the count is off."""
    text = (package / m.file).read_text()
    found = text.count(m.old)
    if found != m.count:
        raise PatternError(
            f"mutation '{m.name}': {m.old!r} occurs {found} times in src/flowvae/{m.file}, "
            f"expected {m.count}; re-point the pattern in tests/mutations.py"
        )
    return text.replace(m.old, m.new)


def copy_package(dest: Path) -> Path:
    """Copy src/flowvae to dest/src/flowvae (no bytecode) beside links to the repository's other
    top-level entries (the package finds workflow/schemas there); returns dest/src."""
    shutil.copytree(PACKAGE, dest / "src" / "flowvae", ignore=shutil.ignore_patterns("__pycache__"))
    for entry in ROOT.iterdir():
        if entry.name != "src" and not entry.name.startswith("."):
            (dest / entry.name).symlink_to(entry)
    return dest / "src"


def run_tests(
    src: Path, tests: tuple[str, ...], timeout: float, select: str | None = None
) -> tuple[int, str, float]:
    """pytest -x -q [-k select] on ``tests``, ``src`` first on the path: (exit, output, s)."""
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", "import flowvae; print(flowvae.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    if not probe.stdout.strip().startswith(str(src)):
        raise RuntimeError(f"the copy is not imported: flowvae from {probe.stdout.strip()}")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    cmd += [str(ROOT / "tests" / t) for t in tests] + (["-k", select] if select else [])
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        code, out = -1, f"timed out after {timeout:.0f} s"
    return code, out, time.perf_counter() - start


def first_failure(output: str) -> str:
    """The first 'FAILED tests/...::test' id in pytest's summary, or ''."""
    hit = re.search(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)
    return hit.group(1).replace("tests/", "") if hit else ""


def verdict(code: int) -> str:
    """pytest exit 1 = a test failed (caught); 0 = all passed (MISSED); else an ERROR."""
    return {0: "MISSED", 1: "caught"}.get(code, f"ERROR (pytest exit {code})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only this mutation (repeatable)")
    parser.add_argument("--tests", nargs="+", help="test files (in tests/) instead of each row's")
    parser.add_argument("-k", dest="select", help="pytest -k expression for every run")
    parser.add_argument("--check", action="store_true", help="only check that patterns match")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    args = parser.parse_args(argv)

    names = {m.name for m in MUTATIONS}
    if len(names) != len(MUTATIONS):
        raise SystemExit("duplicate mutation names in MUTATIONS")
    unknown = sorted(set(args.only or []) - names)
    if unknown:
        raise SystemExit(f"unknown mutation(s): {', '.join(unknown)}")
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    try:  # every pattern must match before anything runs
        for m in chosen:
            mutated_text(m)
    except PatternError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if args.check:
        print(f"{len(chosen)} mutation patterns match src/flowvae")
        return 0

    def files(m: Mutation) -> tuple[str, ...]:
        return tuple(args.tests) if args.tests else m.tests

    rows, failed = [], 0
    with tempfile.TemporaryDirectory(prefix="flowvae-mut-") as tmp:
        if not args.no_baseline:
            union = tuple(dict.fromkeys(t for m in chosen for t in files(m)))
            src = copy_package(Path(tmp) / "baseline")
            code, out, secs = run_tests(src, union, args.timeout, args.select)
            print(f"baseline (no mutation): {' '.join(union)}: pytest exit {code}, {secs:.0f} s")
            if code != 0:
                print(out[-4000:])
                print("the unmutated package fails its tests: no mutation result would mean much")
                return 2
        for i, m in enumerate(chosen):
            src = copy_package(Path(tmp) / f"m{i}")
            (src / "flowvae" / m.file).write_text(mutated_text(m))
            code, out, secs = run_tests(src, files(m), args.timeout, args.select)
            result = verdict(code)
            failed += result != "caught"
            rows.append((m.name, " ".join(files(m)), result, f"{secs:.1f}", first_failure(out)))
            print(f"{m.name}: {result} in {secs:.1f} s {rows[-1][4]}", flush=True)
            if result.startswith("ERROR"):
                print(out[-2000:])
            shutil.rmtree(src)

    header = ("mutation", "tests run", "result", "seconds", "first failing test")
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n{len(rows) - failed} of {len(rows)} mutations caught")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
