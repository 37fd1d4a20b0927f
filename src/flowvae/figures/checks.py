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


@figure(
    "gap_distribution",
    "gap_distribution",
    "Distribution over the test images of the posterior gap KL(q(z|x) || p(z|x)) = log p(x) - "
    "ELBO(x), with log p(x) by quadrature on a grid, for every variant (all seeds pooled). The "
    "gap is the part of the test loss that a better posterior can remove.",
    "Posterior gap",
    latent_2d=True,
)
def gap_distribution(df):
    """Per variant the distribution (ECDF, symlog x) of the per-image posterior gap, mean marked."""
    from flowvae.figures import style as st

    order = st.order(df["variant"])
    pal = st.palette(order)
    fig, (ax, bx) = st.plt.subplots(
        1, 2, figsize=(12, 4.4), layout="constrained", gridspec_kw={"width_ratios": [1.4, 1]}
    )
    for v in order:
        gap = df.loc[df["variant"] == v, "gap"]
        big = (gap > 100).sum()
        label = f"{v}: mean {gap.mean():.2f}, median {gap.median():.2f}, images > 100 nats: {big}"
        st.sns.ecdfplot(x=gap, color=pal[v], label=label, ax=ax)
        ax.axvline(gap.mean(), color=pal[v], ls="--", lw=1)
    bx.boxplot(
        [df.loc[df["variant"] == v, "gap"] for v in order],
        orientation="horizontal", tick_labels=order, showmeans=True, patch_artist=True,
        flierprops={"markersize": 2},
        meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"},
        boxprops={"facecolor": "none"}, medianprops={"color": "black"},
    )  # fmt: skip
    for patch, v in zip(bx.patches, order, strict=True):
        patch.set_facecolor(pal[v])
    bx.invert_yaxis()
    for a in (ax, bx):
        a.set_xscale("symlog", linthresh=1.0)
        a.set_xlim(min(0.0, 1.3 * df["gap"].min()), 1.5 * max(df["gap"].max(), 1.0))
        a.set_xlabel("posterior gap KL(q || p(z|x)) (nats)")
    ax.set(ylabel="fraction of test images", title="ECDF (dashed: mean)")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    bx.set(ylabel="", title="box: quartiles, diamond: mean")
    seeds = df.groupby("variant")["seed"].nunique().max()
    fig.suptitle(
        f"Per-image posterior gap, test set (pooled over up to {seeds} seeds; "
        "x axis linear below 1 nat, logarithmic above)"
    )
    return fig


CHECK = ("variant", "seed", "image", "k", "excess", "stderr")


@figure_data("quadrature_check", "csv", CHECK, check=Input("check"))
def quadrature_check_data(inputs: dict[str, list[Path]], options: dict):
    """Per run, checked image and K: the IWAE bound's excess over log p(x) and its error."""
    df = read_runs(inputs["check"], CHECK)
    if df.empty:
        raise FlowvaeError("no quadrature check rows: it needs latent_dim 2 and check_images > 0")
    return df


@figure(
    "quadrature_check",
    "quadrature_check",
    "Validation of the exact evaluation. For a sample of test images (``evaluate.check_images``)"
    " the IWAE lower bound is estimated with growing K (``evaluate.check_ks``, several repeats "
    "each) and compared with log p(x) from the grid quadrature. Left: how far the bound lies "
    "below log p(x). Right: the excess of the bound over log p(x) in units of its standard "
    "error; above 3 would mean the grid misses mass.",
    "Posterior gap",
    latent_2d=True,
)
def quadrature_check(df):
    """log p(x) (quadrature) minus the IWAE bound against K, per variant: it must shrink to ~0."""
    from flowvae.figures import style as st

    df = df.assign(shortfall=-df["excess"])
    order = st.order(df["variant"])
    pal = st.palette(order)
    fig, (ax, bx) = st.plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    st.sns.lineplot(
        df, x="k", y="shortfall", hue="variant", hue_order=order, palette=pal,
        errorbar=("pi", 90), marker="o", ax=ax,
    )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.yaxis.set_major_formatter(st.matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set(
        xlabel="IWAE samples K",
        ylabel="log p(x) - IWAE bound (nats)",
        title="mean over images (band: 5-95% of images)",
    )
    df["z"] = (df["excess"] / df["stderr"].clip(lower=1e-12)).clip(lower=-10)
    st.sns.stripplot(
        df, x="k", y="z", hue="variant", hue_order=order, palette=pal, dodge=True, size=3,
        ax=bx, legend=False,
    )  # fmt: skip
    bx.axhline(3, color="black", ls="--", lw=1)
    bx.set_ylim(-10.5, max(5.0, df["z"].max() + 1))
    bx.set(
        xlabel="IWAE samples K",
        ylabel="(IWAE - log p(x)) / std. error (clipped at -10)",
        title="excess of the bound over log p(x) (dashed: 3 std. errors)",
    )
    fig.suptitle("Quadrature check: the IWAE bound rises towards the grid's log p(x)")
    return fig
