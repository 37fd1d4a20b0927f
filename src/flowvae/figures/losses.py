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
    "error, nats, lower is better). Left: every variant, one point per seed (the seeds "
    "{seeds}), the lines joining the runs of one seed; the mean and standard deviation in "
    "black, the mean under each name. Right: the paired comparison the study's verdict rests "
    "on: each variant minus the first variant (the study's standard VAE) on the same seed, "
    "with the mean and its 95% t interval; below 0 is lower than the first variant.",
    "Losses",
)
def test_loss(df):
    """Left: test negative ELBO per variant, a point per seed, the mean ± sd. Right: each other
    variant minus the first on the same seed, the mean and its 95% t interval."""
    from scipy import stats

    from flowvae.figures import style as st

    np = st.np
    order = st.order(df["variant"])
    pal = st.palette(order)
    base, others = order[0], order[1:]
    wide = df.pivot_table(index="seed", columns="variant", values="test_neg_elbo")
    fig, (ax, bx) = st.plt.subplots(
        1, 2, figsize=(1.5 * len(order) + 1.2 * len(others) + 5, 4.6), layout="constrained",
        gridspec_kw={"width_ratios": [len(order), max(len(others), 1)]},
    )  # fmt: skip
    offsets = np.linspace(-0.12, 0.12, len(wide)) if len(wide) > 1 else np.zeros(1)
    for i, (_seed, row) in enumerate(wide.iterrows()):  # the runs of one seed, joined
        xs = [x for x, v in enumerate(order) if np.isfinite(row.get(v, np.nan))]
        ys = [row[order[x]] for x in xs]
        ax.plot(np.add(xs, offsets[i]), ys, color="grey", lw=0.6, alpha=0.5, zorder=1)
    for x, v in enumerate(order):
        values = wide[v].to_numpy()
        ok = np.isfinite(values)
        ax.scatter(x + offsets[ok], values[ok], color=pal[v], s=40, zorder=2)
        values = values[ok]
        ax.errorbar(x + 0.3, values.mean(), yerr=values.std(ddof=1) if len(values) > 1 else 0,
                    color="black", marker="D", ms=6, capsize=4, zorder=3)  # fmt: skip
    n = df.groupby("variant")["seed"].nunique()
    means = df.groupby("variant")["test_neg_elbo"].mean()
    ax.set_xticks(range(len(order)), [f"{v}\nmean {means[v]:.2f}\n({n[v]} seeds)" for v in order])
    ax.set_xlim(-0.5, len(order) - 0.3)
    ax.set(xlabel="", ylabel=st.LOSS_LABEL, title="Test loss: seeds (dots), mean ± sd (black)")
    for x, v in enumerate(others):
        diff = (wide[v] - wide[base]).to_numpy()
        ok = np.isfinite(diff)
        d = diff[ok]
        bx.scatter(x + offsets[ok], d, color=pal[v], s=40, zorder=2)
        if len(d) > 1:
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
            bx.errorbar(x + 0.3, d.mean(), yerr=half, color="black", marker="D", ms=6,
                        capsize=4, zorder=3)  # fmt: skip
            bx.annotate(f"{d.mean():+.2f}\n[{d.mean() - half:+.2f}, {d.mean() + half:+.2f}]",
                        (x + 0.3, d.mean() + half), xytext=(0, 4), textcoords="offset points",
                        ha="center", va="bottom", fontsize="small")  # fmt: skip
    bx.axhline(0, color="black", lw=1)
    bx.set_xticks(range(len(others)), [f"{v}\nminus {base}" for v in others])
    bx.set_xlim(-0.5, len(others) - 0.3)
    low, high = bx.get_ylim()
    bx.set_ylim(low, high + 0.15 * (high - low))  # room for the interval labels
    bx.set(xlabel="", ylabel="difference in test loss (nats)",
           title="Paired by seed: mean, 95% interval")  # fmt: skip
    return fig


@figure_data("loss_curves", "csv", CURVES, history=Input("history"))
def loss_curves_data(inputs: dict[str, list[Path]], options: dict):
    """The training and validation loss of every run and epoch."""
    return read_runs(inputs["history"], CURVES)


@figure(
    "loss_curves",
    "loss_curves",
    "Training and validation loss (negative ELBO, nats) per epoch for every variant: the "
    "median over the seeds {seeds} (line) and their range, lowest to highest seed (band). "
    "The training loss of an epoch is the mean over its steps, so an unstable first epoch "
    "(one IAF seed) lies far above the axis; the y range is fitted from the third epoch on.",
    "Losses",
)
def loss_curves(df):
    """Train and validation loss per epoch: median and range (min to max) over seeds."""
    from flowvae.figures import style as st

    np = st.np
    order = st.order(df["variant"])
    pal = st.palette(order)
    fig, axes = st.plt.subplots(
        1, 2, figsize=(11, 4.6), sharex=True, sharey=True, layout="constrained"
    )
    for ax, col, name in zip(
        axes, ("train_loss", "val_loss"), ("training", "validation"), strict=True
    ):
        stats = df.groupby(["variant", "epoch"], sort=False)[col].agg(["median", "min", "max"])
        for v in order:
            b = stats.loc[v]
            ax.plot(b.index, b["median"], color=pal[v], lw=1.8, label=v)
            ax.fill_between(b.index, b["min"], b["max"], color=pal[v], alpha=0.2, lw=0)
        ax.set(xlabel="epoch", ylabel="negative ELBO (nats)",
               title=f"{name} loss (median, band: range over seeds)")  # fmt: skip
    axes[1].legend(fontsize="small")
    n_epochs = df["epoch"].nunique()
    skip = 2 if n_epochs > 4 else 0  # the first epochs would flatten the rest
    late = df[df["epoch"] >= df["epoch"].min() + skip][["train_loss", "val_loss"]].to_numpy()
    lo, hi = np.nanmin(late), np.nanmax(late)
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    axes[0].set_ylim(lo - pad, hi + pad)
    axes[0].xaxis.set_major_locator(st.matplotlib.ticker.MaxNLocator(integer=True))
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
    "Loss against training time. Left: the validation loss (negative ELBO on the validation "
    "split) against the cumulative training seconds after each epoch: the mean over the "
    "seeds {seeds} of both (bold line), each seed's curve faint. Right: the test loss reached "
    "against the total training time, one point per seed, and the mean and standard deviation "
    "of each variant (cross). Times are the training process's CPU seconds (one thread per "
    "job), or wall seconds for runs trained before flowvae recorded CPU time (the axis says "
    "which).",
    "Losses",
)
def cost_tradeoff(df):
    """Left: validation -ELBO against cumulative training time, the mean over seeds bold and
    each seed faint. Right: test loss against total training time, a point per seed and the
    variant means."""
    from flowvae.figures import style as st

    hist, runs = df[df["kind"] == "val_loss"], df[df["kind"] == "test_neg_elbo"]
    unit = "CPU seconds" if (df["clock"] == "cpu").all() else "wall seconds"
    order = st.order(runs["variant"])
    pal = st.palette(order)
    fig, (left, right) = st.plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for (variant, _seed), run in hist.groupby(["variant", "seed"], sort=False):
        left.plot(run["seconds"], run["loss"], color=pal[variant], lw=0.6, alpha=0.3)
    mean = hist.groupby(["variant", "epoch"], sort=False)[["seconds", "loss"]].mean()
    for v in order:
        left.plot(mean.loc[v, "seconds"], mean.loc[v, "loss"], color=pal[v], lw=2.2, label=v)
    low = hist.groupby(["variant", "seed"])["loss"].min().min()
    high = mean["loss"].groupby(level="variant").quantile(0.5).max()
    left.set_ylim(low - 0.5, max(high, low + 1) + 0.5)
    left.legend(fontsize="small")
    left.set(
        xlabel=f"cumulative training time ({unit})", ylabel="validation -ELBO (nats)",
        title="Validation loss after each epoch (bold: mean of seeds)",
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
    "validation split, nats), one line per variant. A panel per setting that every variant "
    "tunes (the learning rate, the training length): at each value the best candidate with "
    "that value (lowest mean over the tuning seeds {tuning_seeds}; error bars their standard "
    "deviation when there are several). The last panel: each variant's own options, whose "
    "knobs are switched together (the IAF's steps with its width, COT-Flow's width with its "
    "RK4 steps, PCP-Map's depth with its width), so it shows one effect per variant, not one "
    "per knob. The ring marks the candidate selected (``tuning.select``: {select}). The test "
    "set plays no part in it.",
    "Tuning",
    needs_tuning=True,
)
def tuning(df):
    """Validation loss against each shared tuned value (the best candidate with it), and
    against each variant's own options (its knobs switched together), one line per variant."""
    import pandas as pd

    from flowvae.figures import style as st

    np = st.np
    seeds = [c for c in df.columns if c.startswith("val_loss_seed")]
    keys = [c for c in df.columns if c not in SELECTION_COLUMNS | set(seeds)]
    order = st.order(df["variant"])
    pal = st.palette(order)
    tuned = [k for k in keys if df[k].nunique() > 1]
    shared = [k for k in tuned if df.groupby("variant")[k].nunique().min() > 1]
    own = {
        v: [k for k in tuned if k not in shared and df.loc[df["variant"] == v, k].nunique() > 1]
        for v in order
    }
    panels = shared + (["own"] if any(own.values()) else [])
    fig, axes = st.plt.subplots(
        1, len(panels), figsize=(4.6 * len(panels) + 1.4, 4.4), squeeze=False,
        layout="constrained", gridspec_kw={"width_ratios": [1] * len(shared) + [1.5] * (
            len(panels) - len(shared))},
    )  # fmt: skip

    def x_of(frame, key):
        x = pd.to_numeric(frame[key], errors="coerce")
        return x if x.notna().all() else frame[key].astype(str)

    def ring(ax, x, y, colour):
        ax.scatter(x, y, s=170, facecolors="none", edgecolors=colour, linewidths=1.5, zorder=3)

    for ax, key in zip(axes[0], shared, strict=False):
        for variant in order:
            sub = df[(df["variant"] == variant) & df[key].notna()]
            best = sub.loc[sub.groupby(key)["mean_val_loss"].idxmin()]
            ax.errorbar(
                x_of(best, key), best["mean_val_loss"], yerr=best["sd_val_loss"].fillna(0),
                color=pal[variant], marker="o", capsize=3, label=variant,
            )  # fmt: skip
            chosen = best[best["selected"].astype(bool)]
            if len(chosen):
                ring(ax, x_of(chosen, key), chosen["mean_val_loss"], pal[variant])
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
    if "own" in panels:
        ax = axes[0, -1]
        for i, variant in enumerate(order):
            knobs = own[variant]
            sub = df[df["variant"] == variant]
            if not knobs:
                continue
            best = sub.loc[sub.groupby(knobs, dropna=False)["mean_val_loss"].idxmin()]
            best = best.sort_values(knobs)
            xs = i + np.linspace(-0.22, 0.22, len(best))
            ax.plot(xs, best["mean_val_loss"], color=pal[variant], marker="o")
            for x, (_, row) in zip(xs, best.iterrows(), strict=True):
                text = "\n".join(f"{k} {row[k]:g}" for k in knobs)
                ax.annotate(text, (x, row["mean_val_loss"]), xytext=(0, 6),
                            textcoords="offset points", ha="center", va="bottom",
                            fontsize="x-small")  # fmt: skip
                if bool(row["selected"]):
                    ring(ax, [x], [row["mean_val_loss"]], pal[variant])
        ax.set_xticks(range(len(order)), order)
        ax.set_xlim(-0.6, len(order) - 0.4)
        low, high = ax.get_ylim()
        ax.set_ylim(low, high + 0.25 * (high - low))  # room for the labels
        ax.set(xlabel="each variant's own options (knobs switched together)",
               ylabel="validation -ELBO (nats)")  # fmt: skip
    axes[0, 0].legend(fontsize="small")
    spread = (
        f"mean ± sd over {len(seeds)} tuning seeds"
        if len(seeds) > 1
        else f"one tuning seed ({seeds[0].removeprefix('val_loss_seed')}), so no spread"
        if seeds
        else "no tuning seed"
    )
    fig.suptitle(f"Tuning stage: best candidate at each value, {spread}; ring = selected")
    return fig
