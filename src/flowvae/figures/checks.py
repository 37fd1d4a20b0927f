"""Figures of the exact evaluation (2-D latent only): the per-image posterior gap of every run
and the check of the IWAE bound against the quadrature's log p(x).

The gap table has a row per run and test image, so its figure data are compressed
(``.csv.gz``). numpy, pandas and matplotlib are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

from flowvae.errors import FlowvaeError
from flowvae.figures.losses import read_runs
from flowvae.figures.registry import Input, figure, figure_data


@figure_data("gap_distribution", "csv.gz", ("variant", "seed", "gap"), per_image=Input("per_image"))
def gap_distribution_data(inputs: dict[str, list[Path]], options: dict):
    """The posterior gap of every run and test image (images without one are left out)."""
    df = read_runs(inputs["per_image"], ("variant", "seed", "index", "gap")).dropna(subset=["gap"])
    if df.empty:
        raise FlowvaeError(
            "every posterior gap is empty: this figure needs the exact evaluation (latent_dim 2)"
        )
    return df


FLOOR = 0.01  # nats: the gap axis is logarithmic; gaps below this are drawn at it


@figure(
    "gap_distribution",
    "gap_distribution",
    "Distribution over the test images of the posterior gap KL(q(z|x) || p(z|x)) = log p(x) - "
    "ELBO(x), with log p(x) by quadrature on a grid, for every variant, all seeds' images "
    "pooled (the legend's mean and median are of the pooled images). The gap axis is "
    "logarithmic; gaps below 0.01 nats (zero within their stated error) are drawn at 0.01. "
    "The gap is the part of the test loss that a better posterior can remove.",
    "Posterior gap",
    latent_2d=True,
)
def gap_distribution(df):
    """Per variant the distribution of the per-image posterior gap (pooled over seeds) on a
    logarithmic axis: its ECDF with the mean marked, and a box with whiskers at 5% and 95%."""
    from flowvae.figures import style as st

    np = st.np
    order = st.order(df["variant"])
    pal = st.palette(order)
    fig, (ax, bx) = st.plt.subplots(
        1, 2, figsize=(12, 4.8), layout="constrained", gridspec_kw={"width_ratios": [1.4, 1]}
    )
    gaps = {v: df.loc[df["variant"] == v, "gap"].to_numpy() for v in order}
    for v in order:
        gap = gaps[v]
        label = (
            f"{v}: pooled mean {gap.mean():.2f}, pooled median {np.median(gap):.2f}, "
            f"> 100 nats: {(gap > 100).sum()} of {gap.size}"
        )
        st.sns.ecdfplot(x=np.maximum(gap, FLOOR), color=pal[v], label=label, ax=ax)
        ax.axvline(gap.mean(), color=pal[v], ls="--", lw=1)
    bx.boxplot(
        [np.maximum(gaps[v], FLOOR) for v in order],
        orientation="horizontal", tick_labels=order, showmeans=True, patch_artist=True,
        whis=(5, 95), showfliers=False,
        meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"},
        boxprops={"facecolor": "none"}, medianprops={"color": "black"},
    )  # fmt: skip
    for k, (patch, v) in enumerate(zip(bx.patches, order, strict=True)):
        patch.set_facecolor(pal[v])
        top = gaps[v].max()
        bx.plot([top], [k + 1], marker="|", color="black", ms=10)
        bx.annotate(f"max {top:.0f}", (top, k + 1), xytext=(0, 7), textcoords="offset points",
                    ha="center", fontsize="x-small")  # fmt: skip
    bx.invert_yaxis()
    high = 5 * max(df["gap"].max(), 1.0)
    for a in (ax, bx):
        a.set_xscale("log")
        a.set_xlim(FLOOR / 1.5, high)
        a.set_xlabel("posterior gap KL(q || p(z|x)) (nats, log scale)")
    ax.set(ylabel="fraction of test images", title="ECDF (dashed: mean)")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    bx.set(ylabel="", title="box: quartiles, whiskers: 5% to 95%,\ndiamond: mean, bar: largest gap")
    seeds = df.groupby("variant")["seed"].nunique().max()
    fig.suptitle(f"Per-image posterior gap, test set (every image of {seeds} seeds pooled)")
    return fig


CHECK = ("variant", "seed", "image", "k", "excess", "stderr")


@figure_data("quadrature_check", "csv", CHECK, check=Input("check"))
def quadrature_check_data(inputs: dict[str, list[Path]], options: dict):
    """Per run, checked image and K: the IWAE bound's excess over log p(x) and its error."""
    df = read_runs(inputs["check"], CHECK)
    if df.empty:
        raise FlowvaeError("no quadrature check rows: it needs latent_dim 2 and check_images > 0")
    return df


TOLERANCE = 0.01  # nats: the iwae_below_log_px check's allowance beyond 3 standard errors


@figure(
    "quadrature_check",
    "quadrature_check",
    "Validation of the exact evaluation. For a sample of test images (``evaluate.check_images``)"
    " the IWAE lower bound is estimated with growing K (``evaluate.check_ks``, several repeats "
    "each) and compared with log p(x) from the grid quadrature. Left: how far the bound lies "
    "below log p(x), the median over images and seeds with whiskers from 5% to 95%; it must "
    "shrink towards 0 as K grows. Right: the quantity the ``iwae_below_log_px`` check tests, "
    "the bound's excess over log p(x) minus 3 standard errors, one point per image, seed and K; "
    "a point above the dashed line at +0.01 nats would fail the check. The grey band is the "
    "0.01-nat tolerance around 0.",
    "Posterior gap",
    latent_2d=True,
)
def quadrature_check(df):
    """Left: log p(x) (quadrature) minus the IWAE bound against K per variant (median, 5-95%).
    Right: the checked quantity, IWAE excess over log p(x) minus 3 SE, against its 0.01 limit."""
    from flowvae.figures import style as st

    np = st.np
    df = df.assign(shortfall=-df["excess"], margin=df["excess"] - 3 * df["stderr"])
    order = st.order(df["variant"])
    pal = st.palette(order)
    ks = sorted(df["k"].unique())
    shift = np.geomspace(0.75, 1.33, len(order)) if len(order) > 1 else np.ones(1)
    fig, (ax, bx) = st.plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for a in (ax, bx):
        a.axhspan(-TOLERANCE, TOLERANCE, color="grey", alpha=0.25, lw=0)
        a.axhline(0, color="black", lw=0.8)
        a.set_xscale("log")
        a.set_yscale("symlog", linthresh=TOLERANCE)
        a.yaxis.set_major_formatter(st.matplotlib.ticker.FormatStrFormatter("%g"))
        a.set_xticks(ks, [f"{k:g}" for k in ks])
        a.xaxis.set_minor_locator(st.matplotlib.ticker.NullLocator())
        a.set_xlabel("IWAE samples K")
    for j, v in enumerate(order):
        sub = df[df["variant"] == v].groupby("k")["shortfall"]
        med, lo, hi = sub.median(), sub.quantile(0.05), sub.quantile(0.95)
        x = med.index.to_numpy(float) * shift[j]
        ax.errorbar(x, med, yerr=[med - lo, hi - med], color=pal[v], marker="o", capsize=3,
                    lw=1.5, label=v)  # fmt: skip
        pts = df[df["variant"] == v]
        rng = np.random.default_rng(j)  # a fixed jitter: the same figure every time
        jitter = np.exp(rng.uniform(-0.06, 0.06, len(pts)))
        bx.scatter(pts["k"].to_numpy(float) * shift[j] * jitter, pts["margin"], s=6,
                   color=pal[v], alpha=0.6, lw=0, label=v)  # fmt: skip
    bx.axhline(TOLERANCE, color="black", ls="--", lw=1)
    bx.annotate(
        "fails above (+0.01)", (1, TOLERANCE), xycoords=("axes fraction", "data"),
        xytext=(-4, 4), textcoords="offset points", ha="right", fontsize="small",
    )  # fmt: skip
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(order), fontsize="small")
    ax.set(ylabel="log p(x) - IWAE bound (nats, symlog)",
           title="shortfall of the bound (median, 5-95% of images)")  # fmt: skip
    bx.set(ylabel="IWAE - log p(x) - 3 std. errors (nats, symlog)",
           title="the check: excess beyond 3 standard errors")  # fmt: skip
    fig.suptitle("Quadrature check: the IWAE bound against the grid's log p(x) "
                 "(grey: within 0.01 nats)")  # fmt: skip
    return fig
