"""The claim per training budget: each flow minus the reference, paired over seeds, read from
the per-epoch test curve of every run (history.csv) at budgets in epochs and in CPU seconds.

The test curve is the fixed-noise one-sample -ELBO on the test set after each epoch (the same
noise at every epoch; flowvae.train.TEST_NOISE). At a budget B the run's value is its curve at
epoch B, or, for a budget in CPU seconds, at the last epoch whose cumulative training CPU
seconds are at most B (none when its first epoch costs more). For n paired seeds with
differences d_s = flow_s - reference_s:

    mean = sum_s d_s / n,  95% interval mean +- t_{0.975, n-1} sd(d) / sqrt(n),
    p from the paired t-test, and the smallest difference the seeds detect with 80% power
    (two-sided, level 0.05): (t_{0.975, n-1} + t_{0.80, n-1}) sd(d) / sqrt(n).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from flowvae import io
from flowvae.errors import FlowvaeError

DESCRIPTION = (
    "Each flow minus the reference on the test curve (the fixed-noise one-sample test -ELBO "
    "after each epoch), paired over seeds, at epoch budgets and at the reference's training "
    "CPU seconds of each (a flow's value: its last epoch within them); the evaluated "
    "checkpoint's row is the full RQMC test -ELBO of metrics.csv. Verdict: lower or higher "
    "when the 95% interval excludes 0; 'detectable' is the difference the seeds would detect "
    "with 80% power."
)
SPIKE = 2.0  # nats above the lowest training loss of the epochs before: a spike
SPIKE_DESCRIPTION = (
    f"A spike: a run of epochs whose training -ELBO is more than {SPIKE:g} nats above the "
    "lowest training -ELBO of the epochs before them (history.csv of each run); it is named "
    "by its first epoch, and 'epochs above' counts every such epoch."
)
#: The epoch budgets of the table (those beyond the runs' last epoch are left out).
EPOCHS = (10, 20, 50, 100, 200, 500)
CURVE = ("variant", "seed", "epoch", "train_loss", "test_loss", "cpu_seconds")
#: The parts of the evaluated difference (unit ``best``): column of metrics.csv for each.
SPLIT = {
    "decoder": "exact_nll",
    "posterior": "mean_gap",
    "posterior_median": "median_gap",
    "posterior_trimmed": "trimmed_mean_gap",
}
COLUMNS = (
    "budget", "unit", "epoch", "variant", "reference", "n", "mean", "ci_low", "ci_high", "p",
    "detectable", "variant_loss", "reference_loss", *SPLIT,
)  # fmt: skip


def read_curves(paths: Sequence[Path]) -> pd.DataFrame:
    """The test curves of every run, with ``cpu_total`` (cumulative training CPU seconds)."""
    frames = []
    for path in map(Path, paths):
        try:
            df = pd.read_csv(path, dtype={"variant": str})
        except (OSError, ValueError) as exc:
            raise FlowvaeError(f"cannot read the history {path}: {exc}") from exc
        if missing := [c for c in CURVE if c not in df]:
            raise FlowvaeError(
                f"{path} lacks {', '.join(missing)}: it was trained by a flowvae without the "
                "per-epoch test curve; train it again"
            )
        frames.append(df[list(CURVE)])
    curves = pd.concat(frames, ignore_index=True)
    first = {v: i for i, v in enumerate(dict.fromkeys(curves["variant"]))}  # the runs' order
    curves = curves.sort_values(
        ["variant", "seed", "epoch"], key=lambda c: c.map(first) if c.name == "variant" else c
    )
    curves["cpu_total"] = curves.groupby(["variant", "seed"])["cpu_seconds"].cumsum()
    return curves.reset_index(drop=True)


def paired(variant: pd.Series, reference: pd.Series) -> dict:
    """Mean difference, 95% t interval, paired p and the 80%-power detectable difference of
    two per-seed series (indexed by seed; seeds missing in either are left out), with the
    ``pairs`` (columns variant, reference) and their differences ``diff``."""
    pairs = pd.concat({"v": variant, "r": reference}, axis=1, join="inner").dropna()
    d = pairs["v"] - pairs["r"]
    n = len(d)
    out = {"n": n, "mean": float(d.mean()) if n else math.nan}
    out.update(ci_low=math.nan, ci_high=math.nan, p=math.nan, detectable=math.nan)
    out.update(variant_loss=float(pairs["v"].mean()), reference_loss=float(pairs["r"].mean()))
    if n >= 2:
        se = d.std(ddof=1) / math.sqrt(n)
        t975, t80 = stats.t.ppf(0.975, n - 1), stats.t.ppf(0.80, n - 1)
        out.update(ci_low=out["mean"] - t975 * se, ci_high=out["mean"] + t975 * se)
        out["detectable"] = (t975 + t80) * se
        if d.std(ddof=1) > 1e-9 * max(1.0, abs(out["mean"])):  # else p is undefined
            out["p"] = float(stats.ttest_rel(pairs["v"], pairs["r"]).pvalue)
    return {**out, "pairs": pairs.rename(columns={"v": "variant", "r": "reference"}), "diff": d}


def at_epoch(curves: pd.DataFrame, variant: str, epoch: int) -> pd.Series:
    rows = curves[(curves["variant"] == variant) & (curves["epoch"] == epoch)]
    return rows.set_index("seed")["test_loss"]


def at_cpu(curves: pd.DataFrame, variant: str, seconds: float) -> pd.Series:
    """Per seed: the test loss at the last epoch within ``seconds`` of training CPU time."""
    rows = curves[(curves["variant"] == variant) & (curves["cpu_total"] <= seconds)]
    return rows.groupby("seed")["test_loss"].last()


def budget_table(
    curves: pd.DataFrame,
    reference: str,
    best: pd.DataFrame | None = None,
    epochs: Sequence[int] = EPOCHS,
) -> pd.DataFrame:
    """Rows per budget and flow: at each epoch budget, at the reference's mean CPU seconds of
    that epoch (unit ``cpu_s``), and with ``best`` (metrics.csv: the full RQMC -ELBO of the
    evaluated weights) at the evaluated checkpoint (unit ``best``)."""
    flows = [v for v in dict.fromkeys(curves["variant"]) if v != reference]
    if reference not in set(curves["variant"]) or not flows:  # nothing to compare
        return pd.DataFrame(columns=list(COLUMNS))
    last = int(curves.groupby(["variant", "seed"])["epoch"].max().min())
    rows = []
    for v in flows:
        for epoch in [e for e in epochs if e < last] + [last]:
            ref = curves[(curves["variant"] == reference) & (curves["epoch"] == epoch)]
            cpu = round(float(ref["cpu_total"].mean()), 1)
            at = {"variant": v, "epoch": epoch}
            own = _numbers(paired(at_epoch(curves, v, epoch), at_epoch(curves, reference, epoch)))
            rows.append({**at, "budget": epoch, "unit": "epoch", **own})
            own = _numbers(paired(at_cpu(curves, v, cpu), at_cpu(curves, reference, cpu)))
            rows.append({**at, "budget": cpu, "unit": "cpu_s", **own})
        if best is not None:
            rows.append({"variant": v, "epoch": math.nan, "budget": math.nan, "unit": "best",
                         **_numbers(paired(*_of(best, "test_neg_elbo", v, reference))),
                         **split(best, v, reference)})  # fmt: skip
    table = pd.DataFrame(rows).assign(reference=reference)
    return table.reindex(columns=list(COLUMNS))


def spikes(history: pd.DataFrame, jump: float = SPIKE) -> pd.DataFrame:
    """Per run (variant, seed): the epochs spent spiked, those whose training loss is more
    than ``jump`` nats above the lowest training loss of the epochs before them
    (``epochs_above``), and the spikes, runs of such epochs, by their first epoch."""
    rows = []
    for (variant, seed), run in history.groupby(["variant", "seed"], sort=False):
        loss = run.sort_values("epoch")
        above = (loss["train_loss"] > loss["train_loss"].cummin() + jump).to_numpy()
        starts = above & ~np.concatenate([[False], above[:-1]])
        first = loss["epoch"].to_numpy()[starts].astype(int).tolist()
        rows.append({"variant": variant, "seed": seed, "spikes": len(first),
                     "spike_epochs": " ".join(map(str, first)),
                     "epochs_above": int(above.sum())})  # fmt: skip
    return pd.DataFrame(rows)


def _numbers(result: dict) -> dict:
    """A ``paired`` result without its tables: one row of the budget table."""
    return {k: v for k, v in result.items() if k not in ("pairs", "diff")}


def _of(metrics: pd.DataFrame, column: str, variant: str, reference: str):
    if column not in metrics:
        return pd.Series(dtype=float), pd.Series(dtype=float)
    return tuple(
        metrics[metrics["variant"] == v].set_index("seed")[column] for v in (variant, reference)
    )


def split(metrics: pd.DataFrame, variant: str, reference: str) -> dict[str, float]:
    """The evaluated difference in test -ELBO split as -ELBO = exact NLL + gap: the decoder's
    part (exact NLL), the posterior's (mean gap KL(q || p(z|x))) and the gap's median and 5%
    trimmed mean, each a mean over paired seeds."""
    return {
        name: paired(*_of(metrics, column, variant, reference))["mean"]
        for name, column in SPLIT.items()
    }


def verdict(row: pd.Series) -> str:
    """'lower', 'higher' or 'not detected' (the 95% interval excludes 0, or not)."""
    if row["n"] < 2 or not np.isfinite(row["ci_high"]):
        return "not decided (fewer than 2 seeds)"
    if row["ci_high"] < 0:
        return "lower"
    if row["ci_low"] > 0:
        return "higher"
    return "not detected"


def budget_label(row: pd.Series) -> str:
    if row["unit"] == "epoch":
        return f"epoch {int(row['budget'])}"
    if row["unit"] == "cpu_s":
        return f"{row['budget']:.3g} CPU s (the reference's epoch {int(row['epoch'])})"
    return "evaluated checkpoint"


def claim_lines(table: pd.DataFrame) -> list[str]:
    """A markdown table of every budget and one sentence per flow: where it is lower."""
    if table.empty:
        return ["No comparison: the reference variant or every flow is missing from the runs."]
    lines = [
        "| budget | flow | flow's loss | reference's | flow - reference | 95% interval | p "
        "| detectable (80%) | verdict |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for _, r in table.iterrows():
        lines.append(
            f"| {budget_label(r)} | {r['variant']} | {r['variant_loss']:.2f} | "
            f"{r['reference_loss']:.2f} | {r['mean']:+.2f} | [{r['ci_low']:+.2f}, "
            f"{r['ci_high']:+.2f}] | {r['p']:.3g} | {r['detectable']:.2f} | {verdict(r)} |"
        )
    lines.append("")
    for v in dict.fromkeys(table["variant"]):
        sub = table[table["variant"] == v]
        lower = [budget_label(r) for _, r in sub.iterrows() if verdict(r) == "lower"]
        higher = [budget_label(r) for _, r in sub.iterrows() if verdict(r) == "higher"]
        ref = sub["reference"].iloc[0]
        text = f"{v} is lower than {ref} at: {', '.join(lower) or 'no budget'}"
        text += f"; higher at: {', '.join(higher) or 'no budget'}; elsewhere no difference "
        text += "was detected."
        lines.append(f"- {text}")
    best = table[table["unit"] == "best"]
    if not best.empty:
        lines += ["", "Why, at the evaluated checkpoint (-ELBO = exact NLL + gap; mean over "
                  "paired seeds of flow - reference):", ""]  # fmt: skip
        for r in best.itertuples():
            lines.append(
                f"- {r.variant}: {r.mean:+.2f} nats = decoder (exact NLL) {r.decoder:+.2f} + "
                f"posterior (mean gap) {r.posterior:+.2f}; the gap's median differs by "
                f"{r.posterior_median:+.2f}, its 5%-trimmed mean by {r.posterior_trimmed:+.2f}"
            )
    return lines


def spike_lines(table: pd.DataFrame) -> list[str]:
    """One line per variant: how many of its runs spiked, when, and for how many epochs."""
    lines = []
    for v, sub in table.groupby("variant", sort=False):
        runs = [
            f"seed {r.seed} (from epoch {r.spike_epochs.replace(' ', ', ')}; "
            f"{r.epochs_above} epochs above)"
            for r in sub.itertuples()
            if r.spikes
        ]
        text = f"- {v}: {len(runs)} of {len(sub)} runs spiked"
        lines.append(text + (f": {'; '.join(runs)}" if runs else ""))
    return lines


def write_budgets(
    histories: Sequence[Path],
    out: Path,
    reference: str,
    metrics_csv: Path | None = None,
    spikes_out: Path | None = None,
) -> pd.DataFrame:
    """budgets.csv from the runs' histories (and metrics.csv for the evaluated checkpoint);
    with ``spikes_out`` the spikes of every run too."""
    curves = read_curves(histories)
    best = pd.read_csv(metrics_csv, dtype={"variant": str}) if metrics_csv else None
    table = budget_table(curves, reference, best)
    io.write_csv(table, out)
    if spikes_out is not None:
        io.write_csv(spikes(curves), spikes_out)
    return table
