"""The claim per budget: paired statistics, budgets in epochs and CPU seconds, spikes."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from flowvae import budgets
from flowvae.errors import FlowvaeError


def curves(losses: dict[str, np.ndarray], cpu: dict[str, float]) -> pd.DataFrame:
    """Curves of variant -> (seeds, epochs) test losses, each epoch costing cpu[variant] s."""
    rows = []
    for v, table in losses.items():
        for seed, run in enumerate(table):
            for e, loss in enumerate(run, start=1):
                rows.append({"variant": v, "seed": seed, "epoch": e, "train_loss": loss + 1,
                             "test_loss": loss, "cpu_seconds": cpu[v]})  # fmt: skip
    df = pd.DataFrame(rows)
    df["cpu_total"] = df.groupby(["variant", "seed"])["cpu_seconds"].cumsum()
    return df


def test_paired_statistics_match_the_t_distribution():
    ref = pd.Series([100.0, 101.0, 99.5, 100.5, 102.0])
    diff = np.array([-1.0, -2.5, -0.5, -1.5, -2.0])
    r = budgets.paired(ref + diff, ref)
    sd, n = diff.std(ddof=1), 5
    assert r["n"] == n and r["mean"] == pytest.approx(diff.mean())
    assert r["ci_high"] == pytest.approx(diff.mean() + 2.776445 * sd / math.sqrt(n), rel=1e-6)
    assert r["p"] == pytest.approx(stats.ttest_1samp(diff, 0).pvalue)
    assert r["detectable"] == pytest.approx((2.776445 + 0.940965) * sd / math.sqrt(n), rel=1e-5)
    assert r["variant_loss"] - r["reference_loss"] == pytest.approx(diff.mean())


def test_paired_leaves_out_seeds_without_a_pair():
    r = budgets.paired(
        pd.Series([1.0, 2.0, 4.0], index=[0, 1, 2]), pd.Series([0.0, 0.5], index=[1, 2])
    )
    assert r["n"] == 2 and r["mean"] == pytest.approx((2.0 + 3.5) / 2)


def test_cpu_budget_takes_the_last_epoch_within_it():
    df = curves({"standard": np.array([[5.0, 4.0, 3.0]]), "iaf": np.array([[6.0, 2.0, 1.0]])},
                {"standard": 1.0, "iaf": 2.0})  # fmt: skip
    assert budgets.at_cpu(df, "iaf", 4.5).tolist() == [2.0]  # epoch 2 ends at 4 s
    assert budgets.at_cpu(df, "iaf", 1.5).empty  # its first epoch costs more
    assert budgets.at_cpu(df, "standard", 3.0).tolist() == [3.0]


def test_budget_table_finds_a_flow_lower_at_epochs_but_not_at_equal_cpu():
    rng = np.random.default_rng(0)
    epochs = np.arange(1, 31)
    ref = 100 + 50 / epochs + rng.normal(0, 0.05, (5, 30))
    flow = ref - 3.0 + rng.normal(0, 0.05, (5, 30))  # 3 nats lower at every epoch ...
    df = curves({"standard": ref, "iaf": flow}, {"standard": 1.0, "iaf": 10.0})  # ... 10x cost
    table = budgets.budget_table(df, "standard")
    by = {(r.unit, r.epoch): r for r in table.itertuples()}
    assert set(table["epoch"]) == {10, 20, 30}  # 10, 20 and the last epoch
    assert by[("epoch", 20)].mean == pytest.approx(-3.0, abs=0.1)
    row = table[(table["unit"] == "epoch") & (table["epoch"] == 20)].iloc[0]
    assert budgets.verdict(row) == "lower"
    # at the standard VAE's 20 CPU seconds the flow has trained 2 epochs: far higher
    cpu = by[("cpu_s", 20)]
    assert cpu.budget == pytest.approx(20.0) and cpu.mean > 15
    assert "lower than standard at: epoch 10, epoch 20, epoch 30;" in "\n".join(
        budgets.claim_lines(table)
    )


def test_budget_table_without_the_reference_is_empty():
    df = curves({"iaf": np.ones((2, 3))}, {"iaf": 1.0})
    assert budgets.budget_table(df, "standard").empty


def test_spikes_are_epochs_far_above_the_best_before():
    history = pd.DataFrame({"variant": "iaf", "seed": 0, "epoch": [1, 2, 3, 4, 5],
                            "train_loss": [10.0, 9.0, 12.0, 8.5, 11.0]})  # fmt: skip
    table = budgets.spikes(history, jump=2.0)
    assert table["spikes"].tolist() == [2] and table["spike_epochs"].tolist() == ["3 5"]
    assert table["epochs_above"].tolist() == [2]
    stuck = history.assign(train_loss=[10.0, 9.0, 12.0, 11.5, 11.2])  # one jump, 3 epochs above
    table = budgets.spikes(stuck, jump=2.0)
    assert (table["spikes"].iloc[0], table["epochs_above"].iloc[0]) == (1, 3)
    assert "from epoch 3; 3 epochs above" in budgets.spike_lines(table)[0]


def test_history_without_the_test_curve_is_named(tmp_path):
    path = tmp_path / "history.csv"
    pd.DataFrame({"variant": ["a"], "seed": [0], "epoch": [1], "train_loss": [1.0]}).to_csv(path)
    with pytest.raises(FlowvaeError, match=r"history.csv lacks test_loss, cpu_seconds"):
        budgets.read_curves([path])


def test_evaluated_difference_splits_into_decoder_and_posterior_parts():
    rng = np.random.default_rng(1)
    rows = []
    for v, nll_shift, gap in (("standard", 0.0, 3.0), ("iaf", -1.5, 1.0)):
        for seed in range(5):
            nll = 120 + nll_shift + rng.normal(0, 0.3)
            g = gap + rng.normal(0, 0.1)
            rows.append({"variant": v, "seed": seed, "exact_nll": nll, "mean_gap": g,
                         "median_gap": g - 0.5, "trimmed_mean_gap": g - 0.2,
                         "test_neg_elbo": nll + g})  # fmt: skip
    metrics = pd.DataFrame(rows)
    df = curves({"standard": np.ones((5, 3)), "iaf": np.ones((5, 3))}, {"standard": 1, "iaf": 1})
    best = budgets.budget_table(df, "standard", metrics).query("unit == 'best'").iloc[0]
    assert best["mean"] == pytest.approx(best["decoder"] + best["posterior"])
    assert best["decoder"] == pytest.approx(-1.5, abs=0.5) and best["posterior"] == pytest.approx(
        -2.0, abs=0.2
    )
    assert "decoder (exact NLL) " in "\n".join(budgets.claim_lines(pd.DataFrame([best])))
