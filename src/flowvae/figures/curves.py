"""The poster's figure: test -ELBO against training epoch, beside the poster's own curves.

Each run's curve is its history's ``test_loss`` (the fixed-noise one-sample -ELBO on the test
set after each epoch). The poster's three curves (read from its PDF, one run each, another
architecture and all ten digits) ship with the package as ``poster_test_neg_elbo.csv``.
"""

from __future__ import annotations

from pathlib import Path

from flowvae.figures.registry import Input, figure, figure_data

POSTER_CURVES = Path(__file__).with_name("poster_test_neg_elbo.csv")
TEST_CURVE = ("source", "variant", "seed", "epoch", "test_loss", "cpu_total")


@figure_data("test_curve", "csv", TEST_CURVE, history=Input("history"))
def test_curve_data(inputs: dict[str, list[Path]], options: dict):
    """Every run's test curve with its cumulative training CPU seconds (source ``study``),
    then the poster's curves (source ``poster``: no seed, no CPU time)."""
    import pandas as pd

    from flowvae.budgets import read_curves

    runs = read_curves(inputs["history"]).assign(source="study")
    poster = pd.read_csv(POSTER_CURVES, dtype={"variant": str})
    poster = poster.rename(columns={"test_neg_elbo": "test_loss"})
    poster = poster.assign(source="poster", seed=pd.NA, cpu_total=pd.NA)
    return pd.concat([runs[list(TEST_CURVE)], poster[list(TEST_CURVE)]], ignore_index=True)


@figure(
    "test_curve",
    "test_curve",
    "Test loss during training, the poster's figure reproduced. Left: the test negative ELBO "
    "(one fixed-noise sample per test image, nats) after every epoch, mean over the seeds "
    "{seeds} (line) and their range (band), on a logarithmic epoch axis; dashed, the "
    "poster's curves as read from its PDF (one run each, another architecture, all ten "
    "digits: compare shapes and crossings, not levels). Right: the same curves against the "
    "training CPU seconds spent so far (mean over seeds).",
    "Losses",
)
def test_curve(df):
    """Left: test -ELBO per epoch (mean and range over seeds), the poster's curves dashed.
    Right: the same against cumulative training CPU seconds."""
    from flowvae.figures import style as st

    study, poster = df[df["source"] == "study"], df[df["source"] == "poster"]
    order = st.order(study["variant"])
    pal = st.palette(order)
    fig, (left, right) = st.plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    band = study.groupby(["variant", "epoch"], sort=False)["test_loss"].agg(["mean", "min", "max"])
    cpu = study.groupby(["variant", "epoch"], sort=False)["cpu_total"].mean()
    n_seeds = study.groupby("variant")["seed"].nunique()
    for v in order:
        b = band.loc[v]
        left.plot(b.index, b["mean"], color=pal[v], lw=1.8, label=f"{v} ({n_seeds[v]} seeds)")
        left.fill_between(b.index, b["min"], b["max"], color=pal[v], alpha=0.25, lw=0)
        right.plot(cpu.loc[v].to_numpy(), b["mean"].to_numpy(), color=pal[v], lw=1.8, label=v)
    for v, curve in poster.groupby("variant", sort=False):
        color = pal.get(v, "grey")
        left.plot(curve["epoch"], curve["test_loss"], color=color, ls="--", lw=1.2,
                  label=f"{v}, poster")  # fmt: skip
    last = study["epoch"].max()
    lows = [study["test_loss"].min(), poster.loc[poster["epoch"] <= last, "test_loss"].min()]
    late = study[study["epoch"] >= min(5, last)]["test_loss"].max()
    low, high = min(v for v in lows if st.np.isfinite(v)), max(late, 115.0)
    pad = 0.04 * (high - low)
    left.set_xscale("log")
    left.set_xlim(1, max(last, poster["epoch"].max()))
    for ax in (left, right):
        ax.set_ylim(low - pad, high + pad)
        ax.legend(fontsize="small", ncol=2 if ax is left else 1)
    left.set(xlabel="epoch (log scale)", ylabel=st.LOSS_LABEL,
             title="Test loss per epoch: this study (solid) and the poster (dashed)")  # fmt: skip
    right.set(xlabel="training CPU seconds (cumulative, mean over seeds)",
              ylabel=st.LOSS_LABEL, title="Test loss against training compute")  # fmt: skip
    return fig
