"""The study's summary across seeds, from the table of every evaluation (:mod:`.aggregate`).

``summarize`` writes the markdown report, the answer first: the claim, judged from the numbers
(each flow minus the reference variant, paired over seeds: 95% t interval, paired t-test and
the difference the seeds detect with 80% power; and, stricter, whether every seed is lower),
then mean +- sd per variant and the paired differences, the claim per training budget, the
loss spikes, the hyperparameter protocol, and last the checks of every model.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from flowvae import budgets, io
from flowvae.aggregate import SWEEP_KEYS
from flowvae.errors import FlowvaeError

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = {
    "test_neg_elbo": "test loss (-ELBO, nats)",
    "test_rec": "reconstruction (nats)",
    "test_kl": "KL term (nats)",
    "test_iwae_nll": "IWAE NLL (nats)",
    "exact_nll": "exact NLL (nats)",
    "mean_gap": "posterior gap (nats)",
    "median_gap": "median gap (nats)",
    "trimmed_mean_gap": "5%-trimmed mean gap (nats)",
    "seconds_per_epoch": "s / epoch",
    "eval_seconds_per_image": "eval s / image",
}
CLAIM = "both flows reach a lower test loss than the standard VAE"
CHECK_PREFIX = "checks_"
# Checks of metrics files written before metrics.json had "checks": column -> (name, what)
LEGACY_CHECKS = {
    "iwae_check_bound_below_log_px": ("iwae_below_log_px", "IWAE <= log p(x) + 3 SE + 0.01"),
}
LEGACY_REFINEMENT_TOL = 0.01  # nats: the old quadrature's tolerance on its refinement delta


# ----------------------------------------------------------------------------- aggregate


# ----------------------------------------------------------------------------- summarize


def _fmt(value: float) -> str:
    """A number for the tables: 2 decimals, or 3 significant digits when small."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def _mean_sd(values: pd.Series) -> str:
    """'mean ± sd' with the sd at the mean's precision; the mean alone for one value."""
    values = values.dropna()
    if values.empty:
        return "n/a"
    mean = values.mean()
    if len(values) < 2:
        return _fmt(mean)
    spec = ".2f" if abs(mean) >= 1 else ".3g"
    return f"{mean:{spec}} ± {values.std(ddof=1):{spec}}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _variant_table(df: pd.DataFrame, variants: list[str]) -> list[str]:
    """Mean ± sd over seeds of every summary column that has a value."""
    cols = [c for c in SUMMARY_COLUMNS if c in df and df[c].notna().any()]
    rows = []
    for v in variants:
        sub = df[df["variant"] == v]
        rows.append([v, str(sub["seed"].nunique())] + [_mean_sd(sub[c]) for c in cols])
    header = ["variant", "seeds"] + [SUMMARY_COLUMNS[c] for c in cols]
    return _table(header, rows)


def paired_difference(df: pd.DataFrame, variant: str, reference: str, column: str) -> dict:
    """Per-seed difference variant - reference in ``column``: mean, 95% t interval, paired p."""
    a = df[df["variant"] == variant].set_index("seed")[column]
    b = df[df["variant"] == reference].set_index("seed")[column]
    result = budgets.paired(a.sort_index(), b.sort_index())
    result["unpaired"] = sorted(set(a.index) ^ set(b.index))
    return result


def _difference_lines(df: pd.DataFrame, variant: str, reference: str, column: str) -> list[str]:
    """The per-seed table and the interval / test sentence for one column."""
    r = paired_difference(df, variant, reference, column)
    name = SUMMARY_COLUMNS[column].split(" (")[0]
    if r["n"] == 0:
        return [f"No seed has both {variant} and {reference} for {name}."]
    rows = [
        [
            str(seed),
            _fmt(p["reference"]),
            _fmt(p["variant"]),
            f"{p['variant'] - p['reference']:+.2f}",
        ]
        for seed, p in r["pairs"].iterrows()
    ]
    header = ["seed", reference, variant, f"{variant} - {reference}"]
    title = SUMMARY_COLUMNS[column]
    lines = [f"{title[0].upper()}{title[1:]} by seed:", ""] + _table(header, rows) + [""]
    if r["n"] < 2:
        lines.append(
            f"Difference in {name}: {r['mean']:+.2f} nats from 1 seed; the interval and the "
            "paired t-test need 2+ seeds."
        )
    else:
        p = "undefined (identical differences)" if math.isnan(r["p"]) else f"{r['p']:.3g}"
        lines.append(
            f"Mean difference in {name} ({variant} - {reference}): {r['mean']:+.2f} nats, "
            f"95% t interval [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] over {r['n']} seeds; "
            f"paired t-test p = {p}."
        )
    if r["unpaired"]:
        lines.append(f"Seeds without a pair (left out): {', '.join(map(str, r['unpaired']))}.")
    return lines


def _cost_line(df: pd.DataFrame, variant: str, reference: str) -> str | None:
    """Training cost of ``variant`` relative to the reference (mean seconds per epoch)."""
    if "seconds_per_epoch" not in df:
        return None
    a = df.loc[df["variant"] == variant, "seconds_per_epoch"].mean()
    b = df.loc[df["variant"] == reference, "seconds_per_epoch"].mean()
    if not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
        return None
    return f"Training cost: {a:.3g} s/epoch vs {b:.3g} s/epoch for {reference} ({a / b:.2f}x)."


def claim_sentence(df: pd.DataFrame, reference: str, flows: list[str]) -> str:
    """One sentence, from the numbers, on whether every flow beats the reference test loss."""
    head = f'The claim "{CLAIM}"'
    if reference not in set(df["variant"]):
        return f"{head} cannot be checked: the reference variant {reference} is not in the metrics."
    if not flows:
        return f"{head} cannot be checked: there is no variant besides {reference}."
    fails, mean_fails, empty = [], [], []
    for v in flows:
        r = paired_difference(df, v, reference, "test_neg_elbo")
        if r["n"] == 0:
            empty.append(v)
            continue
        bad = [str(s) for s, d in r["diff"].items() if not d < 0]
        if bad:
            word = "seed" if len(bad) == 1 else "seeds"
            fails.append(f"{v} is not lower than {reference} for {word} {', '.join(bad)}")
        if not r["mean"] < 0:
            mean_fails.append(v)
    if empty:
        return f"{head} cannot be checked: no seed pairs {', '.join(empty)} with {reference}."
    if not fails:
        return (
            f"{head} holds on this run: every flow ({', '.join(flows)}) has a lower mean test "
            f"loss than {reference}, and lower for every seed."
        )
    if not mean_fails:
        return (
            f"{head} does not hold for every seed (only partially): every flow has a lower mean "
            f"test loss than {reference}, but {'; '.join(fails)}."
        )
    return f"{head} does not hold on this run: {'; '.join(fails)}."


def claim_verdict_lines(df: pd.DataFrame, reference: str, flows: list[str]) -> list[str]:
    """The claim judged from the paired statistics (each flow minus the reference in test
    loss: mean, 95% t interval, p, the 80%-power detectable difference, the seeds it is lower
    on), a verdict from the intervals, then the stricter per-seed sentence (claim_sentence)."""
    per_seed = f"Per seed (stricter: every seed lower): {claim_sentence(df, reference, flows)}"
    if reference not in set(df["variant"]) or not flows:
        return [per_seed]
    rows, lower, higher, undecided = [], [], [], []
    for v in flows:
        r = paired_difference(df, v, reference, "test_neg_elbo")
        if r["n"] == 0:
            continue
        word = budgets.verdict(pd.Series(r))
        {"lower": lower, "higher": higher}.get(word, undecided).append(v)
        n_lower = int((r["diff"] < 0).sum())
        p = "n/a" if math.isnan(r["p"]) else f"{r['p']:.3g}"
        interval = "n/a" if r["n"] < 2 else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        detect = "n/a" if r["n"] < 2 else f"{r['detectable']:.2f}"
        rows.append([v, f"{r['mean']:+.2f}", interval, p, detect, f"{n_lower} of {r['n']}", word])
    header = [
        "flow", f"flow - {reference} (nats)", "95% interval", "p", "detectable (80%)",
        "seeds lower", "verdict",
    ]  # fmt: skip
    if lower and not (higher or undecided):
        verdict = f"shown on this run: every flow's 95% interval lies below {reference}'s."
    elif lower:
        verdict = (
            f"shown only in part: lower for {', '.join(lower)}; not for "
            f"{', '.join(higher + undecided)}."
        )
    else:
        verdict = f"not shown on this run: no flow's 95% interval lies below {reference}'s"
        verdict += f" (higher: {', '.join(higher)})." if higher else "."
    return [
        f'Claim tested: "{CLAIM}". Each flow minus {reference} in test loss (-ELBO, nats), '
        "paired over seeds: the mean, its 95% t interval, the paired t-test's p, the difference "
        "these seeds would detect with 80% power, and the seeds on which the flow is lower.",
        "",
        *_table(header, rows),
        "",
        f"**Verdict from the intervals: {verdict}**",
        "",
        per_seed,
    ]


def _summary_lines(df: pd.DataFrame, reference: str, claim: bool = True) -> list[str]:
    """The markdown of one group of runs (the whole study, or one value of a sweep), ending
    with the claim unless ``claim`` is false (the study's summary states it first)."""
    variants = sorted(df["variant"].unique(), key=lambda v: (v != reference, v))
    lines = ["Mean ± sd over seeds (lower is better for the losses).", ""]
    lines += _variant_table(df, variants) + [""]
    flows = [v for v in variants if v != reference]
    if reference not in variants:
        lines.append(f"Comparison not possible: the reference variant {reference} is not here.")
        return lines + ["", claim_sentence(df, reference, flows)]
    for v in flows:
        lines += [f"### {v} vs {reference}", ""]
        lines += _difference_lines(df, v, reference, "test_neg_elbo") + [""]
        if (
            "exact_nll" in df
            and df.loc[df["variant"].isin([v, reference]), "exact_nll"].notna().any()
        ):
            lines += _difference_lines(df, v, reference, "exact_nll") + [""]
        cost = _cost_line(df, v, reference)
        if cost:
            lines += [cost, ""]
    if not claim:
        while lines and not lines[-1]:
            lines.pop()
        return lines
    return lines + ["### Claim", "", *claim_verdict_lines(df, reference, flows)]


def _checks_of_row(row: pd.Series) -> list[dict]:
    """The checks of one run: from the metrics.json "checks" (JSON text per check in the CSV),
    else from the columns of older metrics files."""
    found = []
    for col in row.index:
        if col.startswith(CHECK_PREFIX) and isinstance(row[col], str):
            c = json.loads(row[col])
            found.append({"check": col[len(CHECK_PREFIX) :], **c})
    if found:
        return found
    for col, (name, what) in LEGACY_CHECKS.items():
        if col in row and pd.notna(row[col]):
            passed = str(row[col]).strip().lower() in ("true", "1", "1.0")
            value = row.get("iwae_check_max_excess_in_stderr", math.nan)
            found.append(
                {"check": name, "value": value, "threshold": math.nan, "op": "",
                 "passed": passed, "what": what + " (value: largest excess in SE)"}
            )  # fmt: skip
    delta = row.get("quadrature_refinement_delta", math.nan)
    if pd.notna(delta):
        found.append(
            {"check": "quadrature_refinement", "value": float(delta),
             "threshold": LEGACY_REFINEMENT_TOL, "op": "<=",
             "passed": float(delta) <= LEGACY_REFINEMENT_TOL,
             "what": "change of the mean log p(x) under refinement"}
        )  # fmt: skip
    return found


def check_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, check): variant, seed (and sweep), check, value, op, threshold, passed."""
    keys = [k for k in (*SWEEP_KEYS, "variant", "seed") if k in df]
    rows = [{**{k: r[k] for k in keys}, **c} for _, r in df.iterrows() for c in _checks_of_row(r)]
    columns = [*keys, "check", "value", "op", "threshold", "passed", "what", "why"]
    return pd.DataFrame(rows, columns=columns)


def _check_lines(checks: pd.DataFrame) -> list[str]:
    """The markdown checks table and a sentence naming every failure."""
    if checks.empty:
        return ["No checks were recorded in the metrics."]
    keys = [k for k in (*SWEEP_KEYS, "variant", "seed") if k in checks]
    rows = [
        [str(r[k]) for k in keys]
        + [
            r["check"],
            f"{r['value']:.4g}" if pd.notna(r["value"]) else "n/a",
            f"{r['op']} {r['threshold']:.4g}" if pd.notna(r["threshold"]) else "n/a",
            "pass" if r["passed"] else "**FAIL**",
            str(r["what"]),
        ]
        for _, r in checks.iterrows()
    ]
    lines = _table([*keys, "check", "value", "threshold", "result", "meaning"], rows) + [""]
    failed = checks[~checks["passed"].astype(bool)]
    if failed.empty:
        lines.append(f"All {len(checks)} checks pass.")
    else:
        lines.append(f"{len(failed)} of {len(checks)} checks FAIL: {_failure_list(failed)}.")
        lines += ["", "Why each failed (from the evaluation's own record):", ""]
        lines += [
            f"- {r['check']}, {r['variant']} seed {r['seed']}: "
            + (r["why"] if isinstance(r["why"], str) and r["why"] else "no record")
            for _, r in failed.iterrows()
        ]
    return lines


def _failure_list(failed: pd.DataFrame) -> str:
    return "; ".join(
        f"{r['check']} for {r['variant']} seed {r['seed']} (value {r['value']:.4g})"
        for _, r in failed.iterrows()
    )


NOT_SELECTED = "The config does not carry the selected settings"


def failed_checks(summary: Path) -> list[str]:
    """The summary's sentence naming its failed checks ([] when every check passes), for the
    end of a Snakemake run."""
    try:
        text = Path(summary).read_text()
    except OSError:
        return []
    flagged = (" checks FAIL: ", NOT_SELECTED)
    return [line for line in text.splitlines() if any(f in line for f in flagged)]


def protocol_lines(selection_csv: Path, cfg: dict) -> list[str]:
    """The hyperparameter protocol in two sentences, the selected settings, and whether the
    config (hence the final comparison) uses them."""
    from flowvae import adopt, selection

    table = selection.read(selection_csv)
    chosen = table[table["selected"].astype(bool)]
    per_variant = table.groupby("variant").size()
    seeds = [c.removeprefix("val_loss_seed") for c in table if c.startswith("val_loss_seed")]
    lines = [
        f"Every variant trained the same number of candidate settings ({per_variant.iloc[0]}: "
        "the shared learning rates and training lengths crossed with settings of its own "
        f"knobs) on the tuning seed(s) {', '.join(seeds)}, and the one with the lowest mean "
        "final validation -ELBO was selected; the test set played no part in it. The final "
        f"comparison (the results above) trains each variant at its selected setting on the seeds "
        f"{', '.join(map(str, cfg['seeds']))}, none of them a tuning seed, and evaluates the "
        f"test set once (`{selection_csv}` holds every candidate).",
        "",
        "| variant | selected setting | validation -ELBO (mean over tuning seeds) |",
        "|---|---|---:|",
    ]
    for row in chosen.itertuples():
        lines.append(f"| {row.variant} | `{row.candidate}` | {row.mean_val_loss:.2f} |")
    differs = adopt.difference(cfg, table)
    lines.append("")
    if differs:
        lines.append(
            f"**{NOT_SELECTED}** ({', '.join(differs)} "
            "differ): the results of this summary are not the protocol's. Run "
            "`python -m flowvae adopt`, then `snakemake` again."
        )
    else:
        lines.append("The config carries these settings: the results above are the protocol's.")
    return lines


def own_runs(df: pd.DataFrame, ec: pd.DataFrame) -> pd.DataFrame:
    """The equal-compute runs that are not final-comparison runs (their epochs differ)."""
    if "epochs" not in df or "epochs" not in ec:
        return ec
    final = df.groupby("variant")["epochs"].first()
    return ec[ec["epochs"].to_numpy() != ec["variant"].map(final).to_numpy()]


def equal_compute_lines(
    df: pd.DataFrame, ec: pd.DataFrame, checks: pd.DataFrame, reference: str
) -> list[str]:
    """The equal-compute comparison (every variant the same training seconds), the checks of
    its own runs (``checks``), and which of the two comparisons the claim survives."""
    variants = sorted(ec["variant"].unique(), key=lambda v: (v != reference, v))
    flows = [v for v in variants if v != reference]
    rows = [
        [
            v,
            f"{df.loc[df['variant'] == v, 'epochs'].mean():.0f}" if "epochs" in df else "?",
            f"{ec.loc[ec['variant'] == v, 'epochs'].mean():.0f}" if "epochs" in ec else "?",
            f"{ec.loc[ec['variant'] == v, 'train_seconds'].mean():.0f}",
        ]
        for v in variants
    ]
    lines = [
        "## Equal training time",
        "",
        "Every variant trains for the same seconds (`equal_compute`, from the seconds per "
        "epoch measured in the tuning stage), so faster variants train for more epochs.",
        "",
        *_table(["variant", "epochs (equal epochs)", "epochs (equal time)", "train s"], rows),
        "",
        "Checks of the runs trained only for this comparison (the others are the final "
        "comparison's runs, checked in the last section):",
        "",
        *_check_lines(checks),
        "",
        *_summary_lines(ec, reference),
        "",
        "## Which comparison the claim survives",
        "",
        f"- Equal epochs: {claim_sentence(df, reference, flows)}",
        f"- Equal training time: {claim_sentence(ec, reference, flows)}",
        "",
    ]
    return lines


def summarize(
    metrics_csv: Path,
    out: Path,
    reference: str = "standard",
    notes: Sequence[str] = (),
    selection_csv: Path | None = None,
    cfg: dict | None = None,
    equal_compute_csv: Path | None = None,
    budgets_csv: Path | None = None,
    spikes_csv: Path | None = None,
) -> str:
    """Markdown summary of metrics.csv (per sweep value when present); written to ``out``.

    The claim comes first and the table of every check of every run last; each failed check
    is also logged as a warning at the end (stderr, hence the rule's log). ``notes`` (e.g.
    which steps a latent size other than 2 leaves out) follow the source line, and so does a
    warning when the config does not carry the tuning stage's selection.
    """
    try:
        df = pd.read_csv(metrics_csv)
    except FileNotFoundError as exc:
        raise FlowvaeError(f"metrics table {metrics_csv} does not exist") from exc
    missing = [c for c in ("variant", "seed", "test_neg_elbo") if c not in df]
    if missing or df.empty:
        raise FlowvaeError(f"metrics table {metrics_csv} lacks rows or the columns {missing}")
    df["variant"] = df["variant"].astype(str)
    lines = ["# Summary", "", f"Source: `{metrics_csv}`; reference variant: {reference}.", ""]
    lines += [*(f"Note: {n}" for n in notes), ""] if notes else []
    protocol = []
    if selection_csv is not None:
        if cfg is None:
            raise FlowvaeError("the protocol section needs the config the runs were made with")
        protocol = protocol_lines(selection_csv, cfg)
        lines += [line for line in protocol if line.startswith(f"**{NOT_SELECTED}")]
        lines += [""] if lines[-1] else []
    checks = check_table(df)
    sweeps = "sweep" in df and df["sweep"].notna().any()
    if sweeps:
        groups = df.groupby(["sweep", "sweep_value"], sort=False, dropna=False)
        for (sweep, value), sub in groups:
            lines += [f"## Sweep {sweep} = {value}", ""] + _summary_lines(sub, reference) + [""]
    else:
        variants = sorted(df["variant"].unique(), key=lambda v: (v != reference, v))
        flows = [v for v in variants if v != reference]
        lines += ["## The claim", ""] + claim_verdict_lines(df, reference, flows) + [""]
        lines += ["## Results", ""] + _summary_lines(df, reference, claim=False) + [""]
    if budgets_csv is not None:
        table = pd.read_csv(budgets_csv, dtype={"variant": str})
        lines += ["## The claim per training budget", "", budgets.DESCRIPTION, ""]
        lines += budgets.claim_lines(table) + [""]
    if spikes_csv is not None:
        table = pd.read_csv(spikes_csv, dtype={"variant": str, "spike_epochs": str})
        lines += ["## Loss spikes", "", budgets.SPIKE_DESCRIPTION, ""]
        lines += budgets.spike_lines(table.fillna({"spike_epochs": ""})) + [""]
    if equal_compute_csv is not None:
        ec = pd.read_csv(equal_compute_csv)
        ec["variant"] = ec["variant"].astype(str)
        ec_checks = check_table(own_runs(df, ec))
        lines += equal_compute_lines(df, ec, ec_checks, reference)
        checks = pd.concat([checks, ec_checks], ignore_index=True)
    if protocol:
        lines += ["## Hyperparameter protocol", ""] + protocol + [""]
    lines += ["## Checks", ""] + _check_lines(check_table(df)) + [""]
    text = "\n".join(lines).rstrip() + "\n"
    io.write_text(out, text)
    failed = checks[~checks["passed"].astype(bool)] if not checks.empty else checks
    if not failed.empty:
        message = f"{len(failed)} check(s) FAILED: {_failure_list(failed)} (see {out})"
        log.warning(message)
    return text
