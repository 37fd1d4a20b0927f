"""The checks of one evaluation: each a value against a threshold, with why it failed.

The -ELBO error and the quadrature bound per image, the ordering of the bounds
(-ELBO >= IWAE NLL >= exact NLL on average), the gap log p(x) - ELBO >= 0 within its error,
and the IWAE convergence check (no IWAE bound above log p(x) beyond its noise).
"""

from __future__ import annotations

import math

import pandas as pd

from flowvae.elbo import ELBO_MAX_REPLICAS, ELBO_POINTS, ELBO_TOL

CHECK_COLUMNS = ["image", "k", "iwae", "stderr", "log_px", "excess"]
CHECK_TOL = 0.01  # nats: float32 round-off of a log-sum-exp over ~1e5 terms near -100
QUAD_TOL = 0.01  # nats: largest per-image quadrature bound on log p(x)


def check_summary(check: pd.DataFrame) -> dict:
    """Largest K: mean log p(x) - IWAE; over all K: the largest excess of IWAE over log p(x)."""
    if check.empty:
        return {}
    top = check[check["k"] == check["k"].max()]
    z = check["excess"] / check["stderr"].clip(lower=1e-12)
    worst = check.loc[(check["excess"] - 3 * check["stderr"]).idxmax()]
    return {
        "k_max": int(top["k"].iloc[0]),
        "mean_gap_at_k_max": float(-top["excess"].mean()),
        "max_excess_nats": float(check["excess"].max()),
        "max_excess_in_stderr": float(z.max()),
        # a bound may exceed log p(x) only by its noise: 3 standard errors + float32 round-off
        "max_excess_beyond_noise": float((check["excess"] - 3 * check["stderr"]).max()),
        "bound_below_log_px": bool((check["excess"] <= 3 * check["stderr"] + CHECK_TOL).all()),
        "worst": (
            f"image {int(worst['image'])} at K = {int(worst['k'])}: excess "
            f"{worst['excess']:.4g} nats, standard error {worst['stderr']:.3g}"
        ),
    }


def _check(value: float, threshold: float, op: str, what: str, why: str = "") -> dict:
    """One check: passed when ``value op threshold`` (op '<=' or '>='); ``why`` names the
    images behind the value (the summary prints it when the check fails)."""
    passed = value <= threshold if op == "<=" else value >= threshold
    return {
        "value": value,
        "threshold": threshold,
        "op": op,
        "passed": bool(passed),
        "what": what,
        "why": why,
    }


def run_checks(
    table: pd.DataFrame, iwae_check: dict, quad: dict | None = None, elbo_tol: float = ELBO_TOL
) -> dict[str, dict]:
    """Every check of one evaluation: name -> value, threshold, op, passed, what it means, and
    why (which images, what limit they reached); ``elbo_tol`` is evaluate.elbo_tol."""
    over = table[table["neg_elbo_err"] > elbo_tol]
    capped = int((over["neg_elbo_replicas"] >= ELBO_MAX_REPLICAS).sum())
    worst = table.loc[table["neg_elbo_err"].idxmax()]
    checks = {
        "elbo_error": _check(
            float(table["neg_elbo_err"].max()),
            elbo_tol,
            "<=",
            "largest per-image -ELBO error",
            f"{len(over)} images over {elbo_tol} nats, {capped} of them at the cap of "
            f"{ELBO_MAX_REPLICAS} replicas of {ELBO_POINTS} points; worst image "
            f"{int(worst['index'])} (error {worst['neg_elbo_err']:.4g} after "
            f"{int(worst['neg_elbo_replicas'])} replicas)",
        ),
        "bounds_ordered": _check(
            float(table["neg_elbo"].mean() - table["iwae_nll"].mean()),
            -CHECK_TOL,
            ">=",
            "mean -ELBO minus mean IWAE NLL",
        ),
    }
    if table["exact_nll"].notna().any():
        q = {"max_levels": "?", "worst_image": "?", **(quad or {})}
        spacing_err, extent_err, step = (
            q.get(k, math.nan) for k in ("worst_spacing_err", "worst_extent_err", "worst_spacing")
        )
        checks["quadrature_bound"] = _check(
            float(table["exact_nll_bound"].max()),
            QUAD_TOL,
            "<=",
            "largest per-image bound",
            f"{int((table['exact_nll_bound'] > QUAD_TOL).sum())} images over {QUAD_TOL} nats "
            f"after {q['max_levels']} refinement levels; worst image {q['worst_image']} "
            f"(spacing error {spacing_err:.3g}, extent error {extent_err:.3g}, smallest "
            f"spacing {step:.3g})",
        )
        low = table.loc[(table["gap"] + table["gap_err"]).idxmin()]
        checks["gap_nonnegative"] = _check(
            float((table["gap"] + table["gap_err"]).min()),
            0.0,
            ">=",
            "smallest gap plus its error",
            f"image {int(low['index'])}: gap {low['gap']:.4g}, -ELBO error "
            f"{low['neg_elbo_err']:.3g}, quadrature bound {low['exact_nll_bound']:.3g}",
        )
        checks["iwae_above_exact"] = _check(
            float(table["iwae_nll"].mean() - table["exact_nll"].mean()),
            -CHECK_TOL,
            ">=",
            "mean IWAE NLL minus mean exact NLL",
        )
    if iwae_check:
        checks["iwae_below_log_px"] = _check(
            iwae_check["max_excess_beyond_noise"],
            CHECK_TOL,
            "<=",
            f"largest IWAE excess over log p(x) beyond 3 SE, K <= {iwae_check['k_max']}",
            iwae_check.get("worst", ""),
        )
    return checks
