"""Loss figures: test loss per variant, learning curves, compute cost, sweeps and tuning.

Their figure data are CSV tables with a row per run (variant, seed), per epoch or per
candidate, in the variants' config order. numpy, pandas and matplotlib are imported inside
the functions: the workflow reads the declarations without loading them.
"""

from __future__ import annotations

import json
from pathlib import Path

from flowvae.errors import FlowvaeError
from flowvae.figures.registry import Input, figure, figure_data


def read_runs(paths: list[Path], columns: tuple[str, ...]):
    """``columns`` of every run, from metrics.json files (one run each) or CSV tables (a run
    per row, e.g. results/metrics.csv), in the order given; a missing column names the file."""
    import pandas as pd

    frames = []
    for path in map(Path, paths):
        if path.suffix == ".json":
            df = pd.DataFrame([json.loads(path.read_text())])
        else:
            df = pd.read_csv(path, dtype={"variant": str})
        if missing := [c for c in columns if c not in df]:
            raise FlowvaeError(f"{path} lacks the column(s) {', '.join(missing)}")
        frames.append(df[list(columns)])
    return pd.concat(frames, ignore_index=True)


TEST_LOSS = ("variant", "seed", "test_neg_elbo")
CURVES = ("variant", "seed", "epoch", "train_loss", "val_loss")
COST = ("kind", "variant", "seed", "epoch", "seconds", "loss", "clock")
SWEEP = ("sweep", "key", "sweep_value", "variant", "seed", "test_neg_elbo")
TUNING = ("variant", "candidate", "mean_val_loss", "sd_val_loss", "selected")


@figure_data("test_loss", "csv", TEST_LOSS, metrics=Input("metrics"))
def test_loss_data(inputs: dict[str, list[Path]], options: dict):
    """The test loss of every run."""
    return read_runs(inputs["metrics"], TEST_LOSS)


@figure(
    "test_loss",
    "test_loss",
    "Test loss (negative ELBO per image, by randomized quasi-Monte Carlo to a stated standard "
    "error, nats, lower is better) of every variant: one point per seed, and mean and standard "
    "deviation over the seeds {seeds}.",
    "Losses",
)
def test_loss(df):
    """Test negative ELBO per variant: a point per seed and the mean ± sd."""
    from flowvae.figures import style as st

    order = st.order(df["variant"])
    fig, ax = st.plt.subplots(figsize=(1.6 * len(order) + 2.5, 4.2), layout="constrained")
    st.sns.stripplot(
        df, x="variant", y="test_neg_elbo", hue="variant", order=order,
        palette=st.palette(order), size=7, alpha=0.6, jitter=0.12, legend=False, ax=ax,
    )  # fmt: skip
    st.sns.pointplot(
        df, x="variant", y="test_neg_elbo", order=order, errorbar="sd", color="black",
        markers="D", markersize=7, linestyle="none", capsize=0.1, ax=ax,
    )  # fmt: skip
    for x, v in enumerate(order):
        mean = df.loc[df["variant"] == v, "test_neg_elbo"].mean()
        ax.annotate(
            f"{mean:.2f}", (x, mean), xytext=(14, 0), textcoords="offset points", va="center"
        )
    n = df.groupby("variant")["seed"].nunique()
    ax.set_xticks(range(len(order)), [f"{v}\n({n[v]} seeds)" for v in order])
    ax.set(
        xlabel="", ylabel=st.LOSS_LABEL, title="Test loss: seeds (dots), mean ± sd (black diamond)"
    )
    return fig


@figure_data("loss_curves", "csv", CURVES, history=Input("history"))
def loss_curves_data(inputs: dict[str, list[Path]], options: dict):
    """The training and validation loss of every run and epoch."""
    return read_runs(inputs["history"], CURVES)


@figure(
    "loss_curves",
    "loss_curves",
    "Training and validation loss (negative ELBO, nats) per epoch, mean and spread over seeds "
    "for every variant.",
    "Losses",
)
def loss_curves(df):
    """Train and validation loss per epoch: mean and ± sd band over seeds per variant."""
    from flowvae.figures import style as st

    order = st.order(df["variant"])
    fig, axes = st.plt.subplots(
        1, 2, figsize=(11, 4.2), sharex=True, sharey=True, layout="constrained"
    )
    for ax, col, name in zip(
        axes, ("train_loss", "val_loss"), ("training", "validation"), strict=True
    ):
        st.sns.lineplot(
            df, x="epoch", y=col, hue="variant", hue_order=order, palette=st.palette(order),
            errorbar="sd", ax=ax, legend=ax is axes[1],
        )  # fmt: skip
        ax.set(xlabel="epoch", ylabel="negative ELBO (nats)", title=f"{name} loss (mean ± sd)")
    n_epochs = df["epoch"].nunique()
    skip = max(2, n_epochs // 10) if n_epochs > 4 else 0  # early epochs would flatten the rest
    late = df[df["epoch"] >= df["epoch"].min() + skip][["train_loss", "val_loss"]].to_numpy()
    lo, hi = st.np.nanmin(late), st.np.nanmax(late)
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    axes[0].set_ylim(lo - pad, hi + pad)
    axes[0].xaxis.set_major_locator(st.matplotlib.ticker.MaxNLocator(integer=True))
    if skip:
        fig.text(
            0.01, 0.01, f"y range fitted from epoch {df['epoch'].min() + skip} on", fontsize="small"
        )
    return fig


@figure_data("cost_tradeoff", "csv", COST, metrics=Input("metrics"), history=Input("history"))
def cost_tradeoff_data(inputs: dict[str, list[Path]], options: dict):
    """Per run and epoch the validation loss at the training seconds spent so far (``kind``
    val_loss), and per run the test loss at its total training seconds (test_neg_elbo). The
    seconds are the training process's CPU seconds (``clock`` cpu) where every run recorded
    them, else wall seconds (``clock`` wall, runs trained before flowvae recorded CPU time)."""
    import pandas as pd

    try:
        cols = ("variant", "seed", "epoch", "val_loss", "cpu_seconds")
        hist = read_runs(inputs["history"], cols).rename(columns={"cpu_seconds": "seconds"})
        runs = read_runs(
            inputs["metrics"], ("variant", "seed", "test_neg_elbo", "train_cpu_seconds")
        )
        runs, clock = runs.rename(columns={"train_cpu_seconds": "seconds"}), "cpu"
    except FlowvaeError:
        hist = read_runs(inputs["history"], ("variant", "seed", "epoch", "val_loss", "seconds"))
        runs = read_runs(inputs["metrics"], ("variant", "seed", "test_neg_elbo", "train_seconds"))
        runs, clock = runs.rename(columns={"train_seconds": "seconds"}), "wall"
    hist["seconds"] = hist.groupby(["variant", "seed"], sort=False)["seconds"].cumsum()
    curves = hist.rename(columns={"val_loss": "loss"}).assign(kind="val_loss", clock=clock)
    totals = runs.rename(columns={"test_neg_elbo": "loss"})
    totals = totals.assign(kind="test_neg_elbo", epoch=pd.NA, clock=clock)
    return pd.concat([curves[list(COST)], totals[list(COST)]], ignore_index=True)


@figure(
    "cost_tradeoff",
    "cost_tradeoff",
    "What the flows' lower loss costs in compute. Left: the learning curve in seconds, the "
    "validation loss (negative ELBO on the validation split) against the training time spent "
    "so far, a line per seed. Right: the test loss reached against the total training time, "
    "one point per seed and the mean and sd of each variant. Times are the training "
    "process's CPU seconds (one thread per job), or wall seconds for runs trained before "
    "flowvae recorded CPU time (the axis says which).",
    "Losses",
)
def cost_tradeoff(df):
    """Left: the learning curve in seconds (validation -ELBO against cumulative training time,
    a line per seed). Right: test loss against total training time, a point per seed and the
    variant means."""
    from flowvae.figures import style as st

    hist, runs = df[df["kind"] == "val_loss"], df[df["kind"] == "test_neg_elbo"]
    unit = "CPU seconds" if (df["clock"] == "cpu").all() else "wall seconds"
    order = st.order(runs["variant"])
    pal = st.palette(order)
    fig, (left, right) = st.plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for (variant, _seed), run in hist.groupby(["variant", "seed"], sort=False):
        left.plot(run["seconds"], run["loss"], color=pal[variant], lw=1, alpha=0.7)
    low = hist.groupby(["variant", "seed"])["loss"].min().min()
    high = hist.groupby(["variant", "seed"])["loss"].quantile(0.5).max()
    left.set_ylim(low - 0.5, max(high, low + 1) + 0.5)
    for v in order:
        left.plot([], [], color=pal[v], label=v)
    left.legend(fontsize="small")
    left.set(
        xlabel=f"training time ({unit})", ylabel="validation -ELBO (nats)",
        title="Learning curve in seconds (a line per seed)",
    )  # fmt: skip
    st.sns.scatterplot(
        runs, x="seconds", y="loss", hue="variant", hue_order=order, palette=pal, s=45,
        alpha=0.6, ax=right, legend=False,
    )  # fmt: skip
    means = runs.groupby("variant")[["seconds", "loss"]].agg(["mean", "std"])
    for v in order:
        m = means.loc[v]
        right.errorbar(
            m[("seconds", "mean")], m[("loss", "mean")],
            xerr=st.np.nan_to_num(m[("seconds", "std")]),
            yerr=st.np.nan_to_num(m[("loss", "std")]),
            color=pal[v], marker="X", markersize=12, markeredgecolor="black", capsize=3, lw=1.2,
            label=v,
        )  # fmt: skip
    right.legend(fontsize="small")
    right.set(
        xlabel=f"total training time ({unit})", ylabel=st.LOSS_LABEL,
        title="Test loss reached (dots: seeds; X: mean ± sd)",
    )  # fmt: skip
    return fig


@figure_data("sweep", "csv", SWEEP, metrics=Input("sweep_table"))
def sweep_data(inputs: dict[str, list[Path]], options: dict):
    """The test loss of every run of one sweep at its value, and the swept key (option key)."""
    df = read_runs(inputs["metrics"], ("sweep", "sweep_value", "variant", "seed", "test_neg_elbo"))
    df.insert(1, "key", options.get("key", df["sweep"].iloc[0]))
    return df


@figure(
    "sweep",
    "sweep",
    "Test loss against the value of the swept key for every variant: one point per seed and "
    "the mean and standard deviation over seeds.",
    "Sweeps",
    per_sweep=True,
)
def sweep(df):
    """Test loss against the swept value per variant (one panel per sweep), points and means."""
    import pandas as pd

    from flowvae.figures import style as st

    names = list(dict.fromkeys(df["sweep"].astype(str)))
    order = st.order(df["variant"])
    pal = st.palette(order)
    fig, axes = st.plt.subplots(
        1, len(names), figsize=(5.5 * len(names) + 1.5, 4.4), squeeze=False, layout="constrained"
    )
    for ax, name in zip(axes[0], names, strict=True):
        sub = df[df["sweep"].astype(str) == name].copy()
        numeric = pd.to_numeric(sub["sweep_value"], errors="coerce")
        if numeric.notna().all():
            sub["x"] = numeric
            if numeric.min() > 0 and numeric.max() / numeric.min() >= 10:
                ax.set_xscale("log")
        else:
            sub["x"] = sub["sweep_value"].astype(str)
        st.sns.lineplot(
            sub, x="x", y="test_neg_elbo", hue="variant", hue_order=order, palette=pal,
            errorbar="sd", marker="o", markersize=8, ax=ax, legend=ax is axes[0, -1],
        )  # fmt: skip
        st.sns.scatterplot(
            sub, x="x", y="test_neg_elbo", hue="variant", hue_order=order, palette=pal,
            alpha=0.4, s=20, legend=False, ax=ax,
        )  # fmt: skip
        key = str(sub["key"].iloc[0])
        ax.set(xlabel=key, ylabel=st.LOSS_LABEL, title=f"sweep {name}: mean ± sd, dots = seeds")
        values = sorted(numeric.unique()) if numeric.notna().all() else []
        if 0 < len(values) <= 10:  # label exactly the swept values
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.xaxis.set_minor_formatter(st.matplotlib.ticker.NullFormatter())
    return fig


#: Columns of the selection table that are not a tuned setting.
SELECTION_COLUMNS = {
    "variant", "candidate", "mean_val_loss", "sd_val_loss", "n_seeds", "train_seconds",
    "seconds_per_epoch", "overrides", "rank", "selected",
}  # fmt: skip


def tuning_table(selection):
    """What the tuning figure draws of a selection table (flowvae.selection): per candidate
    its validation losses, their mean and sd, whether it was selected, and every setting that
    differs between candidates."""
    seeds = [c for c in selection.columns if c.startswith("val_loss_seed")]
    keys = [
        c
        for c in selection.columns
        if c not in SELECTION_COLUMNS | set(seeds) and selection[c].nunique() > 1
    ]
    if not keys:
        raise FlowvaeError("the selection table varies no setting: nothing to draw")
    columns = ["variant", "candidate", *keys, *seeds, "mean_val_loss", "sd_val_loss", "selected"]
    return selection[columns]


@figure_data(
    "tuning",
    "csv",
    TUNING,
    plan=Input("tuning_plan", ancient=True),
    summaries=Input("train_summary", runs="tuning"),
)
def tuning_data(inputs: dict[str, list[Path]], options: dict):
    """The tuning figure's columns of the selection table, from the tuning plan's runs (as
    ``flowvae select`` builds it), or from a selection table given as input ``selection``."""
    from flowvae import selection

    if "selection" in inputs:
        return tuning_table(selection.read(Path(inputs["selection"][0])))
    return tuning_table(selection.from_plan(Path(inputs["plan"][0])))


@figure(
    "tuning",
    "tuning",
    "Tuning stage of the hyperparameter study: the validation loss (negative ELBO on the "
    "validation split, nats) against each tuned setting, one line per variant. At each value "
    "the line shows the best candidate with that value (lowest mean over the tuning seeds "
    "{tuning_seeds}), error bars its standard deviation over those seeds; the ring marks the "
    "candidate selected (``tuning.select``: {select}). The test set plays no part in it.",
    "Tuning",
    needs_tuning=True,
)
def tuning(df):
    """Validation loss against each tuned value, one line per variant: at each value the best
    candidate with it (lowest mean over the tuning seeds), error bars its sd over the seeds."""
    import pandas as pd

    from flowvae.figures import style as st

    seeds = [c for c in df.columns if c.startswith("val_loss_seed")]
    keys = [c for c in df.columns if c not in SELECTION_COLUMNS | set(seeds)]
    order = st.order(df["variant"])
    pal = st.palette(order)
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = st.plt.subplots(
        rows, cols, figsize=(4.6 * cols + 1.2, 3.8 * rows), squeeze=False, layout="constrained"
    )

    def x_of(frame, key):
        x = pd.to_numeric(frame[key], errors="coerce")
        return x if x.notna().all() else frame[key].astype(str)

    for ax, key in zip(axes.flat, keys, strict=False):
        for variant in order:
            sub = df[(df["variant"] == variant) & df[key].notna()]
            if sub[key].nunique() < 2:
                continue
            best = sub.loc[sub.groupby(key)["mean_val_loss"].idxmin()]
            ax.errorbar(
                x_of(best, key), best["mean_val_loss"], yerr=best["sd_val_loss"].fillna(0),
                color=pal[variant], marker="o", capsize=3, label=variant,
            )  # fmt: skip
            chosen = best[best["selected"].astype(bool)]
            if len(chosen):
                ax.scatter(
                    x_of(chosen, key), chosen["mean_val_loss"], s=160, facecolors="none",
                    edgecolors=pal[variant], linewidths=1.5,
                )  # fmt: skip
        numeric = pd.to_numeric(df[key], errors="coerce").dropna()
        if len(numeric) and numeric.min() > 0 and numeric.max() / numeric.min() >= 3:
            ax.set_xscale("log")
        values = sorted(numeric.unique())
        if values:  # label exactly the tried values
            ticker = st.matplotlib.ticker
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set(xlabel=key, ylabel="validation -ELBO (nats)")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"Tuning stage: best candidate at each value, mean ± sd over {len(seeds)} tuning "
        "seed(s); ring = selected"
    )
    return fig
