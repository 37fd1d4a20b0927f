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


def _at_epoch(curve, epoch: float) -> float:
    """A poster curve's value at ``epoch`` (linear interpolation; NaN outside its epochs)."""
    import numpy as np

    x, y = curve["epoch"].to_numpy(float), curve["test_loss"].to_numpy(float)
    if not len(x) or epoch < x.min() or epoch > x.max():
        return float("nan")
    return float(np.interp(epoch, x, y))


@figure(
    "test_curve",
    "test_curve",
    "Test loss during training, the poster's figure reproduced. Left: the test negative ELBO "
    "(one fixed-noise sample per test image, nats) after every epoch: solid, the mean over "
    "the seeds {seeds}; shaded, their range (lowest to highest seed); dashed, the poster's "
    "curves as read from its PDF (one run each, another architecture, all ten digits: "
    "compare shapes and differences, not levels); epochs on a logarithmic axis. The dotted "
    "line marks this study's last epoch. Right: this study's curves against the training "
    "CPU seconds spent so far (mean over seeds).",
    "Losses",
)
def test_curve(df):
    """Left: test -ELBO per epoch (mean and range over seeds), the poster's curves dashed, on a
    y range that holds both. Right: the study's curves against cumulative training CPU seconds."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from flowvae.figures import style as st

    np = st.np
    study, poster = df[df["source"] == "study"], df[df["source"] == "poster"]
    order = st.order(study["variant"])
    pal = st.palette(order)
    fig, (left, right) = st.plt.subplots(
        1, 2, figsize=(12.5, 5.6), layout="constrained", gridspec_kw={"width_ratios": [1.35, 1]}
    )
    band = study.groupby(["variant", "epoch"], sort=False)["test_loss"].agg(["mean", "min", "max"])
    cpu = study.groupby(["variant", "epoch"], sort=False)["cpu_total"].mean()
    n_seeds = study.groupby("variant")["seed"].nunique()
    for v in order:
        b = band.loc[v]
        left.plot(b.index, b["mean"], color=pal[v], lw=2)
        left.fill_between(b.index, b["min"], b["max"], color=pal[v], alpha=0.2, lw=0)
        right.plot(cpu.loc[v].to_numpy(), b["mean"].to_numpy(), color=pal[v], lw=2)
    for v, curve in poster.groupby("variant", sort=False):
        left.plot(curve["epoch"], curve["test_loss"], color=pal.get(v, "grey"), ls="--", lw=1.3)
    last = int(study["epoch"].max())
    end = max(last, int(poster["epoch"].max()) if len(poster) else last)
    left.axvline(last, color="grey", ls=":", lw=1.2)
    left.annotate(
        f"this study\nstops at epoch {last}", (last, 1), xycoords=("data", "axes fraction"),
        xytext=(4, -4), textcoords="offset points", va="top", fontsize="small", color="dimgrey",
    )  # fmt: skip
    # The poster's differences to its standard VAE where they are read (epoch 100, its end).
    curves = {v: c.sort_values("epoch") for v, c in poster.groupby("variant", sort=False)}
    if "standard" in curves and len(curves) > 1 and end >= 100:
        ref = _at_epoch(curves["standard"], 100)
        gaps = [
            f"{v} {_at_epoch(c, 100) - ref:+.1f}"
            for v, c in curves.items()
            if v != "standard" and np.isfinite(_at_epoch(c, 100))
        ]
        for c in curves.values():
            if np.isfinite(_at_epoch(c, 100)):
                left.plot([100], [_at_epoch(c, 100)], "o", color="black", ms=4, zorder=5)
        left.text(
            0.02, 0.03, "the poster at epoch 100 (dots), minus its standard VAE:\n"
            + ", ".join(gaps) + " nats", transform=left.transAxes, fontsize="small",
            va="bottom", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        )  # fmt: skip
    shown = [study["test_loss"].min()]
    shown += [poster.loc[poster["epoch"] >= 1, "test_loss"].min()] if len(poster) else []
    low = min(v for v in shown if np.isfinite(v))
    high = band.loc[band.index.get_level_values("epoch") >= min(2, last), "max"].max()
    left.set_xscale("log")
    left.set_xlim(1, end)
    left.set_ylim(low - 3, high + 3)
    left.set(xlabel="epoch (log scale)", ylabel=st.LOSS_LABEL,
             title="Test loss per epoch: this study and the poster")  # fmt: skip
    study_low, study_high = study["test_loss"].min(), band["mean"].loc[:, min(2, last)].max()
    pad = 0.04 * (study_high - study_low)
    right.set_ylim(study_low - pad, study_high + pad)
    right.set(xlabel="training CPU seconds (cumulative, mean over seeds)",
              ylabel=st.LOSS_LABEL, title="This study against training compute")  # fmt: skip
    handles = [Line2D([], [], color=pal[v], lw=2, label=f"{v}") for v in order]
    handles += [
        Line2D([], [], color="black", lw=2, label=f"this study: mean of {n_seeds.max()} seeds"),
        Patch(color="black", alpha=0.2, lw=0, label="this study: range over the seeds"),
        Line2D([], [], color="black", ls="--", lw=1.3, label="the poster: one run"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize="small")
    return fig
