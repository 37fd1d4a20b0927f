"""aggregate.aggregate and report.summarize on small hand-made metrics files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from flowvae import aggregate, budgets, config, io, report
from flowvae.errors import FlowvaeError, StaleRunError

REPO_ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {"standard": "gaussian", "iaf": "iaf", "pcpmap": "pcpmap"}
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def metrics_record(variant: str, seed: int, loss: float, **extra) -> dict:
    """A complete metrics.json record with ``loss`` as test_neg_elbo."""
    return {
        "variant": variant, "seed": seed, "family": VARIANTS.get(variant, "gaussian"),
        "n_test": 100, "test_neg_elbo": loss, "test_rec": loss - 5.0, "test_kl": 5.0,
        "test_iwae_nll": loss - 2.0, "exact_nll": loss - 2.5, "mean_gap": 2.5,
        "eval_seconds": 10.0, "eval_seconds_per_image": 0.1, "train_seconds": 60.0,
        "seconds_per_epoch": 6.0, "epochs": 10, "n_params": 1000,
        "final_train_loss": loss + 1, "final_val_loss": loss + 0.5,
        "quadrature": {"extent": 6.0, "points": 300}, **extra,
    }  # fmt: skip


def write_metrics(root: Path, record: dict) -> Path:
    path = root / "eval" / record["variant"] / f"seed{record['seed']}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def write_benchmark(path: Path, seconds: float, rss: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    row = f"{seconds}\t0:00:{int(seconds)}\t{rss}\t2000\t{rss}\t{rss}\t1.0\t2.0\t95.0\t{seconds}\n"
    path.write_text(BENCH_HEADER + row)
    return path


# ----------------------------------------------------------------------------- aggregate


def test_aggregate_sorts_rows_and_matches_benchmarks(tmp_path: Path) -> None:
    root = tmp_path / "results"
    evals, train, ev = [], [], []
    for v in ["pcpmap", "standard", "iaf"]:
        for seed in [2, 0, 1]:
            code = {"standard": 100, "iaf": 200, "pcpmap": 300}[v] + seed
            evals.append(write_metrics(root, metrics_record(v, seed, 120.0 + code / 1000)))
            b = tmp_path / "benchmarks"
            train.append(write_benchmark(b / "train" / v / f"seed{seed}.tsv", code, code + 0.5))
            ev.append(write_benchmark(b / "evaluate" / v / f"seed{seed}.tsv", code / 10, 1.0))
    out = tmp_path / "metrics.csv"
    df = aggregate.aggregate(evals, out, train_benchmarks=train, eval_benchmarks=ev)

    assert len(df) == 9
    assert list(zip(df["variant"], df["seed"], strict=True)) == [
        (v, s) for v in ["iaf", "pcpmap", "standard"] for s in [0, 1, 2]
    ]
    assert set(aggregate.METRIC_KEYS) <= set(df.columns)
    assert df["quadrature_points"].tolist() == [300] * 9  # nested dicts are flattened
    for _, row in df.iterrows():
        code = {"standard": 100, "iaf": 200, "pcpmap": 300}[row["variant"]] + row["seed"]
        assert row["train_benchmark_s"] == pytest.approx(code)
        assert row["eval_benchmark_s"] == pytest.approx(code / 10)
        assert row["train_max_rss_mb"] == pytest.approx(code + 0.5)
    again = pd.read_csv(out)
    assert again["variant"].tolist() == df["variant"].tolist()
    assert again["train_benchmark_s"].tolist() == pytest.approx(df["train_benchmark_s"].tolist())


def test_aggregate_without_benchmarks_has_no_benchmark_columns(tmp_path: Path) -> None:
    evals = [write_metrics(tmp_path, metrics_record("standard", 0, 120.0))]
    df = aggregate.aggregate(evals, tmp_path / "m.csv")
    assert "train_benchmark_s" not in df.columns
    assert len(df) == 1


def test_aggregate_sweep_columns_first_and_benchmarks_by_position(tmp_path: Path) -> None:
    evals, train, ev = [], [], []
    for value in [0.01, 0.001]:
        for seed in [1, 0]:
            rec = metrics_record("iaf", seed, 120.0, sweep="lr", sweep_value=value)
            evals.append(write_metrics(tmp_path / "results" / "sweep" / "lr" / str(value), rec))
            bench = tmp_path / "results" / "sweep" / "lr" / str(value) / "benchmarks"
            train.append(write_benchmark(bench / "train" / "iaf" / f"seed{seed}.tsv", value, 5))
            ev.append(write_benchmark(bench / "evaluate" / "iaf" / f"seed{seed}.tsv", 1, 5))
    df = aggregate.aggregate(
        evals, tmp_path / "sweep.csv", train_benchmarks=train, eval_benchmarks=ev
    )
    assert list(df.columns[:2]) == ["sweep", "sweep_value"]
    assert df["sweep_value"].tolist() == [0.001, 0.001, 0.01, 0.01]
    assert df["seed"].tolist() == [0, 1, 0, 1]
    assert df["train_benchmark_s"].tolist() == pytest.approx(df["sweep_value"].tolist())


def test_aggregate_missing_key_names_the_file(tmp_path: Path) -> None:
    good = write_metrics(tmp_path / "a", metrics_record("standard", 0, 120.0))
    record = metrics_record("iaf", 0, 119.0)
    del record["test_kl"]
    bad = write_metrics(tmp_path / "b", record)
    with pytest.raises(FlowvaeError, match="test_kl") as info:
        aggregate.aggregate([good, bad], tmp_path / "m.csv")
    assert str(bad) in str(info.value)
    assert not (tmp_path / "m.csv").exists()


def test_aggregate_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "eval" / "iaf" / "seed0" / "metrics.json"
    with pytest.raises(FlowvaeError, match=str(missing)):
        aggregate.aggregate([missing], tmp_path / "m.csv")


# ----------------------------------------------------------------------------- summarize

STANDARD = [120.0, 121.0, 119.5, 120.4]
IAF = [119.0, 120.2, 119.1, 119.0]
PCPMAP = [118.5, 120.5, 118.0, 119.9]


def write_table(path: Path, losses: dict[str, list[float]]) -> Path:
    rows = [
        metrics_record(v, seed, loss)
        for v, values in losses.items()
        for seed, loss in enumerate(values)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def claim_of(text: str) -> str:
    """The last line of the summary's claim section: the per-seed sentence."""
    section = text.split("## The claim\n")[1].split("\n## ")[0]
    return section.strip().splitlines()[-1]


def test_summarize_claim_holds_and_statistics_match_scipy(tmp_path: Path) -> None:
    csv = write_table(tmp_path / "m.csv", {"standard": STANDARD, "iaf": IAF, "pcpmap": PCPMAP})
    text = report.summarize(csv, tmp_path / "summary.md")
    assert (tmp_path / "summary.md").read_text() == text
    assert "holds on this run" in text and "does not hold" not in text

    diff = np.array(IAF) - np.array(STANDARD)
    mean = diff.mean()
    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
    p = stats.ttest_rel(IAF, STANDARD).pvalue
    expected = f"{mean:+.2f} nats, 95% t interval [{mean - half:+.2f}, {mean + half:+.2f}]"
    assert expected in text
    assert f"p = {p:.3g}" in text
    r = report.paired_difference(pd.read_csv(csv), "iaf", "standard", "test_neg_elbo")
    assert r["mean"] == pytest.approx(mean)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((mean - half, mean + half))
    assert r["p"] == pytest.approx(p)
    # The per-seed table: seed 1 of iaf vs standard.
    assert "| 1 | 121.00 | 120.20 | -0.80 |" in text
    # Mean ± sd per variant.
    assert f"{np.mean(STANDARD):.2f} ± {np.std(STANDARD, ddof=1):.2f}" in text


def test_summarize_one_seed_higher_does_not_hold_and_names_it(tmp_path: Path) -> None:
    iaf = list(IAF)
    iaf[3] = STANDARD[3] + 0.3  # seed 3 is worse; the mean is still lower
    csv = write_table(tmp_path / "m.csv", {"standard": STANDARD, "iaf": iaf, "pcpmap": PCPMAP})
    text = report.summarize(csv, tmp_path / "summary.md")
    claim = claim_of(text)
    assert "does not hold" in claim
    assert "iaf is not lower than standard for seed 3" in claim
    assert "pcpmap is not lower" not in claim


def test_summarize_higher_mean_does_not_hold(tmp_path: Path) -> None:
    worse = [x + 2 + 0.1 * i for i, x in enumerate(STANDARD)]
    csv = write_table(tmp_path / "m.csv", {"standard": STANDARD, "iaf": worse, "pcpmap": PCPMAP})
    text = report.summarize(csv, tmp_path / "s.md")
    claim = claim_of(text)
    assert "does not hold on this run" in claim and "seeds 0, 1, 2, 3" in claim
    assert "| iaf | +2.15 |" in text and "| 0 of 4 | higher |" in text
    assert "shown only in part: lower for pcpmap; not for iaf." in text


def test_summarize_one_seed_says_test_needs_two(tmp_path: Path) -> None:
    csv = write_table(tmp_path / "m.csv", {"standard": [120.0], "iaf": [119.0], "pcpmap": [119.5]})
    text = report.summarize(csv, tmp_path / "s.md")
    assert "need 2+ seeds" in text
    assert "p =" not in text
    assert "holds on this run" in text


def test_summarize_without_reference(tmp_path: Path) -> None:
    csv = write_table(tmp_path / "m.csv", {"iaf": IAF, "pcpmap": PCPMAP})
    text = report.summarize(csv, tmp_path / "s.md")
    assert "Comparison not possible" in text
    assert "cannot be checked" in text


def test_summarize_constant_difference_has_no_p_value(tmp_path: Path) -> None:
    csv = write_table(tmp_path / "m.csv", {"standard": STANDARD, "iaf": [x - 1 for x in STANDARD]})
    text = report.summarize(csv, tmp_path / "s.md")
    assert "p = undefined" in text
    assert "holds on this run" in text


def test_summarize_skips_all_nan_columns(tmp_path: Path) -> None:
    csv = write_table(tmp_path / "m.csv", {"standard": STANDARD, "iaf": IAF})
    df = pd.read_csv(csv)
    df["exact_nll"] = np.nan
    df["mean_gap"] = np.nan
    df.to_csv(csv, index=False)
    text = report.summarize(csv, tmp_path / "s.md")
    assert "exact NLL" not in text and "posterior gap" not in text
    assert "IWAE NLL" in text


# ----------------------------------------------------------------------------- checks


def check(value: float, threshold: float, op: str = "<=") -> dict:
    passed = value <= threshold if op == "<=" else value >= threshold
    why = f"worst image 3 at {value}"
    return {"value": value, "threshold": threshold, "op": op, "passed": passed, "what": "w",
            "why": why}  # fmt: skip


def test_the_summary_states_the_claim_first_and_the_checks_last(tmp_path: Path) -> None:
    csv = write_table(tmp_path / "m.csv", {"standard": STANDARD, "iaf": IAF, "pcpmap": PCPMAP})
    text = report.summarize(csv, tmp_path / "summary.md")
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == ["## The claim", "## Results", "## Checks"]
    claim = text.split("## The claim\n")[1].split("\n## ")[0]
    assert "**Verdict from the intervals: shown on this run" in claim
    assert "| iaf | -0.90 | [" in claim and "| 4 of 4 | lower |" in claim
    assert "### Claim" not in text  # stated once, first


def test_the_committed_summary_is_what_the_report_writes_from_the_committed_data(
    tmp_path: Path, monkeypatch
) -> None:
    """results/summary.md, written again from committed files alone: metrics.csv, the
    selection, the configs, and the runs' curves as the figure data hold them (test_curve.csv:
    the test curve and its cumulative CPU seconds; loss_curves.csv: the training loss)."""
    monkeypatch.chdir(REPO_ROOT)
    study = pd.read_csv("results/figdata/test_curve.csv", dtype={"variant": str})
    study = study[study["source"] == "study"].drop(columns="source")
    study = study.astype({"seed": int, "epoch": int})
    train = pd.read_csv("results/figdata/loss_curves.csv", dtype={"variant": str})
    curves = study.merge(train[["variant", "seed", "epoch", "train_loss"]], how="left")
    metrics = pd.read_csv("results/metrics.csv", dtype={"variant": str})
    io.write_csv(budgets.budget_table(curves, "standard", metrics), tmp_path / "budgets.csv")
    io.write_csv(budgets.spikes(curves), tmp_path / "spikes.csv")
    cfg = config.load([Path("config/config.yaml"), Path("config/selected.yaml")])
    text = report.summarize(
        Path("results/metrics.csv"), tmp_path / "summary.md", "standard", (),
        Path("results/selection.csv"), cfg, None, tmp_path / "budgets.csv",
        tmp_path / "spikes.csv",
    )  # fmt: skip
    assert text == Path("results/summary.md").read_text()


def test_checks_table_lists_every_check_and_warns_on_a_failure(tmp_path: Path, caplog) -> None:
    paths = []
    for variant, bound in (("standard", 0.004), ("iaf", 0.03)):
        for seed in (0, 1):
            checks = {
                "quadrature_bound": check(bound if seed == 1 else 0.002, 0.01),
                "elbo_error": check(0.03, 0.05),
            }
            rec = metrics_record(variant, seed, 120.0 + seed, checks=checks, median_gap=1.5)
            paths.append(write_metrics(tmp_path / "r", rec))
    csv = tmp_path / "metrics.csv"
    aggregate.aggregate(paths, csv)
    with caplog.at_level("WARNING"):
        text = report.summarize(csv, tmp_path / "summary.md")
    table = text.split("## Checks")[1].split("## Results")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 8  # header + 2 variants x 2 seeds x 2 checks
    fails = [r for r in rows if "**FAIL**" in r]
    assert len(fails) == 1 and "| iaf | 1 | quadrature_bound | 0.03 | <= 0.01 |" in fails[0]
    assert "1 of 8 checks FAIL: quadrature_bound for iaf seed 1" in table
    assert "- quadrature_bound, iaf seed 1: worst image 3 at 0.03" in table  # and why
    assert "quadrature_bound for iaf seed 1" in caplog.text
    assert "median gap (nats)" in text


def test_summary_reports_median_and_trimmed_mean_gap(tmp_path: Path) -> None:
    rows = [
        metrics_record(v, s, 120.0, mean_gap=10.0 + s, median_gap=1.0 + s, trimmed_mean_gap=2.0)
        for v in ("standard", "iaf")
        for s in (0, 1)
    ]
    csv = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    text = report.summarize(csv, tmp_path / "s.md")
    header = next(line for line in text.splitlines() if line.startswith("| variant | seeds"))
    names = [c.strip() for c in header.strip("|").split("|")]
    row = next(line for line in text.splitlines() if line.startswith("| standard |"))
    cells = dict(zip(names, [c.strip() for c in row.strip("|").split("|")], strict=True))
    assert cells["posterior gap (nats)"] == "10.50 ± 0.71"
    assert cells["median gap (nats)"] == "1.50 ± 0.71"
    assert cells["5%-trimmed mean gap (nats)"] == "2.00 ± 0.00"
    assert "No checks were recorded" in text


def test_equal_compute_runs_have_their_checks_in_the_summary_and_the_warning(
    tmp_path: Path, caplog
) -> None:
    """The equal-time runs trained only for that comparison are checked like the final runs;
    a run shared with the final comparison (same epochs) is not listed twice."""

    def table(name: str, epochs: dict, failing: tuple | None) -> Path:
        rows = []
        for v, e in epochs.items():
            for seed in (0, 1):
                bad = (v, seed) == failing
                checks = {"elbo_error": check(0.08 if bad else 0.03, 0.05)}
                rows.append(metrics_record(v, seed, 120.0 + seed, checks=checks, epochs=e))
        paths = [write_metrics(tmp_path / name, r) for r in rows]
        aggregate.aggregate(paths, tmp_path / f"{name}.csv")
        return tmp_path / f"{name}.csv"

    final = table("final", {"standard": 10, "iaf": 10}, None)
    ec = table("ec", {"standard": 20, "iaf": 10}, ("standard", 1))
    with caplog.at_level("WARNING"):
        text = report.summarize(final, tmp_path / "s.md", equal_compute_csv=ec)
    section = text.split("## Equal training time")[1].split("\n## Checks")[0]
    checked = [r for r in section.split("| check |")[1].splitlines() if "| elbo_error |" in r]
    assert [r.split("|")[1:3] for r in checked] == [[" standard ", " 0 "], [" standard ", " 1 "]]
    assert "1 of 2 checks FAIL: elbo_error for standard seed 1" in section
    assert "All 4 checks pass." in text.split("\n## Checks")[1]  # the final comparison's
    assert "elbo_error for standard seed 1" in caplog.text
    flagged = report.failed_checks(tmp_path / "s.md")
    assert any("elbo_error for standard seed 1" in line for line in flagged)


def test_an_evaluation_of_another_key_is_refused(tmp_path):
    ev = tmp_path / "eval" / "metrics.json"
    ev.parent.mkdir()
    ev.write_text(json.dumps({"key": "abc"}))
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"stage": "evaluate", "key": "abc"}))
    aggregate.check_evaluations([ev], [expected])
    expected.write_text(json.dumps({"stage": "evaluate", "key": "def"}))
    with pytest.raises(StaleRunError, match="key abc, not def"):
        aggregate.check_evaluations([ev], [expected])
