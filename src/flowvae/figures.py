"""Figures of the study, one function per figure name; ``render`` saves PNG and/or PDF.

Contour panels show a log density minus its maximum over the grid (nats), so the true
posterior log p(z|x) + const (from log p(x, z)) and the approximate posterior log q(z|x)
share one scale; levels more than ``DEPTH`` nats below the maximum are drawn in the darkest
colour of seaborn's "rocket" palette. When several seeds of a variant are given, posterior
figures use the lowest seed and say so in the title.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from flowvae import io  # noqa: E402
from flowvae.errors import FlowvaeError  # noqa: E402

log = logging.getLogger(__name__)

DPI = 150
DEPTH = 20.0  # nats below the maximum shown by the contour panels
LEVELS = np.linspace(-DEPTH, 0.0, 11)
BASE_KEYS = ("variant", "seed", "images", "image_index", "labels")
PICTURE_KEYS = ("recon_inputs", "recon", "samples")
CONTOUR_KEYS = ("z1", "z2", "log_q", "log_joint")  # written only when the latent space is 2-D
LOSS_LABEL = "test negative ELBO (nats)"


def _theme() -> dict:
    """Seaborn's theme as an rc dict, applied per figure (no global side effect)."""
    return {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.2)}


# ----------------------------------------------------------------------------- inputs


def _files(inputs: list[Path], suffix: str, what: str) -> list[Path]:
    """The inputs ending in ``suffix``; none -> FlowvaeError."""
    found = [Path(p) for p in inputs if str(p).endswith(suffix)]
    if not found:
        raise FlowvaeError(f"this figure needs {what} ({suffix}) among its inputs")
    return found


def _read_csvs(inputs: list[Path], what: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """Concatenate the .csv inputs; a missing column names the file."""
    frames = []
    for path in _files(inputs, ".csv", what):
        df = pd.read_csv(path)
        missing = [c for c in columns if c not in df]
        if missing:
            raise FlowvaeError(f"{what} {path} lacks the column(s) {', '.join(missing)}")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df["variant"] = df["variant"].astype(str)
    return df


def _load_grid(path: Path, keys: tuple[str, ...]) -> dict:
    """A grid.npz as a dict of arrays (variant as str, seed as int); missing key names the file."""
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in (*BASE_KEYS, *keys) if k not in npz]
        if missing:
            hint = (
                " (posterior grids need latent_dim 2)" if set(missing) & set(CONTOUR_KEYS) else ""
            )
            raise FlowvaeError(f"grid file {path} lacks the key(s) {', '.join(missing)}{hint}")
        grid = {k: npz[k] for k in npz.files}
    grid["variant"], grid["seed"], grid["path"] = str(grid["variant"]), int(grid["seed"]), path
    return grid


def _order(variants, cfg: dict) -> list[str]:
    """Variants in config order (reference first when the config has none), then the rest."""
    names = set(variants)
    configured = [v for v in (cfg.get("variants") or {}) if v in names]
    reference = cfg.get("reference", "standard")
    rest = sorted(names - set(configured), key=lambda v: (v != reference, v))
    return configured + rest


def _grids(inputs: list[Path], cfg: dict, keys: tuple[str, ...] = CONTOUR_KEYS) -> list[dict]:
    """One grid per variant (the lowest seed), in variant order."""
    by_variant: dict[str, dict] = {}
    for path in _files(inputs, ".npz", "grid.npz files"):
        g = _load_grid(path, keys)
        if g["variant"] not in by_variant or g["seed"] < by_variant[g["variant"]]["seed"]:
            by_variant[g["variant"]] = g
    return [by_variant[v] for v in _order(by_variant, cfg)]


def _palette(variants: list[str]) -> dict:
    return dict(zip(variants, sns.color_palette("colorblind", len(variants)), strict=True))


# ----------------------------------------------------------------------------- drawing helpers


def _window(grid: dict, *arrays: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """A square zoom around every cell within DEPTH nats of its array's maximum (25% margin)."""
    mask = np.zeros_like(arrays[0], dtype=bool)
    for values in arrays:
        mask |= values - np.nanmax(values) > -DEPTH
    rows, cols = np.nonzero(mask)
    z1, z2 = np.asarray(grid["z1"]), np.asarray(grid["z2"])
    if rows.size == 0:
        return (z1[0], z1[-1]), (z2[0], z2[-1])
    c1, c2 = (z1[cols].min() + z1[cols].max()) / 2, (z2[rows].min() + z2[rows].max()) / 2
    half = 1.25 * max(np.ptp(z1[cols]), np.ptp(z2[rows]), 0.8) / 2
    lo, hi = min(z1[0], z2[0]), max(z1[-1], z2[-1])
    if 2 * half >= hi - lo:
        return (z1[0], z1[-1]), (z2[0], z2[-1])
    c1, c2 = np.clip([c1, c2], lo + half, hi - half)  # keep the window on the grid
    return (c1 - half, c1 + half), (c2 - half, c2 + half)


def _contour(ax, grid: dict, values: np.ndarray, window=None):
    """Filled contours of ``values - max`` (rocket) clipped at -DEPTH nats; returns the mappable.

    ``window`` ((x0, x1), (y0, y1)) zooms in; by default the zoom fits this panel's mass.
    """
    rel = np.clip(values - np.nanmax(values), -DEPTH - 1.0, 0.0)
    cs = ax.contourf(grid["z1"], grid["z2"], rel, levels=LEVELS, cmap="rocket", extend="min")
    ax.contour(
        grid["z1"], grid["z2"], rel, levels=LEVELS[1:-1], colors="white", linewidths=0.3, alpha=0.5
    )
    ax.set_aspect("equal")
    xlim, ylim = window if window is not None else _window(grid, values)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    return cs


def _digit(ax, image: np.ndarray, title: str = "") -> None:
    ax.imshow(np.asarray(image).reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title)


def _mosaic(images: np.ndarray, cols: int) -> np.ndarray:
    """Tile (n, 784) images into one array, ``cols`` per row, with a 2-pixel gap."""
    images = np.asarray(images, dtype=float).reshape(-1, 28, 28)
    rows = math.ceil(len(images) / cols)
    out = np.ones((rows * 30 - 2, cols * 30 - 2))
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        out[r * 30 : r * 30 + 28, c * 30 : c * 30 + 28] = 1.0 - img
    return out


def _colorbar(fig, mappable, axes) -> None:
    cb = fig.colorbar(mappable, ax=axes, shrink=0.8, pad=0.02)
    cb.set_label(f"log density − max over grid\n(nats; clipped at −{DEPTH:g})")


def _label_axes(ax, left: bool, bottom: bool) -> None:
    ax.set_xlabel("$z_1$" if bottom else "")
    ax.set_ylabel("$z_2$" if left else "")


def _image_title(grid: dict, i: int) -> str:
    return f"digit {int(grid['labels'][i])} (test #{int(grid['image_index'][i])})"


# ----------------------------------------------------------------------------- posterior figures


def posterior_true(inputs: list[Path], cfg: dict):
    """Rows = variants, cols = images: true posterior log p(z|x) + const under each decoder."""
    grids = _grids(inputs, cfg)
    n_img = len(grids[0]["image_index"])
    fig, axes = plt.subplots(
        len(grids) + 1,
        n_img,
        figsize=(2.6 * n_img + 1.2, 2.5 * len(grids) + 1.6),
        gridspec_kw={"height_ratios": [0.55] + [1] * len(grids)},
        squeeze=False,
        layout="constrained",
    )
    for i in range(n_img):
        _digit(axes[0, i], grids[0]["images"][i], _image_title(grids[0], i))
    for r, g in enumerate(grids, start=1):
        for i in range(min(n_img, len(g["image_index"]))):
            cs = _contour(axes[r, i], g, g["log_joint"][i])
            _label_axes(axes[r, i], i == 0, r == len(grids))
        axes[r, 0].set_ylabel(f"{g['variant']} (seed {g['seed']})\n$z_2$")
    _colorbar(fig, cs, axes[1:, :])
    fig.suptitle(
        "True posterior log p(z|x) + const under each variant's decoder "
        "(each panel zoomed to its mass)"
    )
    return fig


def posterior_q(inputs: list[Path], cfg: dict):
    """Cols = images: one variant's approximate posterior log q(z|x)."""
    grids = _grids(inputs, cfg)
    if len(grids) > 1:
        names = ", ".join(g["variant"] for g in grids)
        raise FlowvaeError(f"posterior_q draws one variant; its inputs hold {names}")
    g = grids[0]
    n_img = len(g["image_index"])
    fig, axes = plt.subplots(
        2,
        n_img,
        figsize=(2.6 * n_img + 1.4, 5.0),
        squeeze=False,
        gridspec_kw={"height_ratios": [0.55, 1]},
        layout="constrained",
    )
    for i in range(n_img):
        _digit(axes[0, i], g["images"][i], _image_title(g, i))
        cs = _contour(axes[1, i], g, g["log_q"][i])
        _label_axes(axes[1, i], i == 0, True)
    _colorbar(fig, cs, axes[1, :])
    fig.suptitle(f"Approximate posterior log q(z|x): {g['variant']} (seed {g['seed']})")
    return fig


def _panel(grids: list[dict], titles: Callable[[dict, int], str] | None = None):
    """Rows = images; the digit, then per variant true posterior and q on the same axes."""
    index = grids[0]["image_index"]
    for g in grids[1:]:
        if not np.array_equal(g["image_index"], index):
            raise FlowvaeError(
                f"grid files {grids[0]['path']} and {g['path']} hold different images"
            )
    n_img, n_col = len(index), 1 + 2 * len(grids)
    fig, axes = plt.subplots(
        n_img,
        n_col,
        figsize=(2.3 * n_col + 1.0, 2.3 * n_img + 0.8),
        squeeze=False,
        layout="constrained",
        gridspec_kw={"width_ratios": [0.7] + [1] * (n_col - 1)},
    )
    for i in range(n_img):
        _digit(axes[i, 0], grids[0]["images"][i], _image_title(grids[0], i))
        for k, g in enumerate(grids):
            window = _window(g, g["log_joint"][i], g["log_q"][i])  # same zoom for p and q
            for j, (key, name) in enumerate((("log_joint", "log p(z|x)"), ("log_q", "log q(z|x)"))):
                ax = axes[i, 1 + 2 * k + j]
                cs = _contour(ax, g, g[key][i], window)
                _label_axes(ax, k == 0 and j == 0, i == n_img - 1)
                head = f"{g['variant']}: {name}" if i == 0 else ""
                extra = titles(g, i) if titles else ""
                ax.set_title("\n".join(filter(None, [head, extra])), fontsize="medium")
    _colorbar(fig, cs, axes[:, 1:])
    return fig


def posterior_panel(inputs: list[Path], cfg: dict):
    """The study's side-by-side panel: true posterior and q per variant, per image."""
    grids = _grids(inputs, cfg)
    fig = _panel(grids)
    seeds = ", ".join(f"{g['variant']} seed {g['seed']}" for g in grids)
    fig.suptitle(
        f"True posterior vs approximate posterior ({seeds})\n"
        f"each p/q pair shares its axes, zoomed to where either is within {DEPTH:g} nats of its "
        "maximum"
    )
    return fig


def _gap_text(gap: float) -> str:
    return "gap n/a" if np.isnan(gap) else f"gap {gap:.2f} nats"


def gap_contours(inputs: list[Path], cfg: dict):
    """True posterior vs q per variant, titled with each image's gap, largest reference gap first.

    The pipeline passes the gap_grid.npz files (``flowvae gap-grids``: the test images with
    the largest gap under the config's ``reference`` variant) and the per_image.csv files of
    the same seed; each panel's gap is looked up by variant, seed and image index.
    """
    grids = _grids(inputs, cfg)
    per_image = _read_csvs(inputs, "per_image.csv files", ("variant", "seed", "index", "gap"))
    gaps = per_image.set_index(["variant", "seed", "index"])["gap"]
    gaps = gaps[~gaps.index.duplicated()]

    def gap_of(g: dict, i: int) -> float:
        return float(gaps.get((g["variant"], g["seed"], int(g["image_index"][i])), np.nan))

    reference = cfg.get("reference", "standard")
    ref = next((g for g in grids if g["variant"] == reference), grids[0])
    order = sorted(
        range(len(ref["image_index"])), key=lambda i: -np.nan_to_num(gap_of(ref, i), nan=-np.inf)
    )
    keys = ("log_q", "log_joint", "images", "image_index", "labels")
    sorted_grids = [{**g, **{k: g[k][order] for k in keys}} for g in grids]
    fig = _panel(sorted_grids, lambda g, i: _gap_text(gap_of(g, i)))
    top = per_image[(per_image["variant"] == ref["variant"]) & (per_image["seed"] == ref["seed"])]
    top = top.nlargest(5, "gap")
    listing = ", ".join(f"#{int(r['index'])} ({r['gap']:.1f})" for _, r in top.iterrows())
    fig.suptitle(
        "Posterior gap KL(q || p(z|x)) (per-image -ELBO minus exact NLL), rows "
        f"by {ref['variant']}'s gap\nLargest {ref['variant']} gaps in the test set (nats): "
        f"{listing or 'n/a'}; each p/q pair shares its zoomed axes"
    )
    return fig


# ----------------------------------------------------------------------------- image grids


def reconstructions(inputs: list[Path], cfg: dict):
    """Per variant a row of test inputs above a row of their reconstructions."""
    grids = _grids(inputs, cfg, PICTURE_KEYS)
    fig, axes = plt.subplots(
        len(grids), 1, figsize=(11, 1.5 * len(grids) + 0.7), squeeze=False, layout="constrained"
    )
    for ax, g in zip(axes[:, 0], grids, strict=True):
        n = min(16, len(g["recon"]))
        ax.imshow(
            _mosaic(np.concatenate([g["recon_inputs"][:n], g["recon"][:n]]), n),
            cmap="gray",
            vmin=0,
            vmax=1,
        )
        ax.set_xticks([])
        ax.set_yticks([14, 44], ["input", "reconstruction"])
        ax.grid(False)
        ax.set_title(f"{g['variant']} (seed {g['seed']})", loc="left", fontsize="medium")
    fig.suptitle("Test images and their reconstructions (Bernoulli means)")
    return fig


def samples(inputs: list[Path], cfg: dict):
    """Per variant an 8 x 8 grid of decoder means at z ~ N(0, I)."""
    grids = _grids(inputs, cfg, PICTURE_KEYS)
    fig, axes = plt.subplots(
        1, len(grids), figsize=(3.6 * len(grids), 4.0), squeeze=False, layout="constrained"
    )
    for ax, g in zip(axes[0], grids, strict=True):
        ax.imshow(_mosaic(g["samples"][:64], 8), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        ax.set_title(f"{g['variant']} (seed {g['seed']})")
    fig.suptitle("Decoder means at prior samples z ~ N(0, I)")
    return fig


# ----------------------------------------------------------------------------- metrics figures


def test_loss(inputs: list[Path], cfg: dict):
    """Test negative ELBO per variant: a point per seed and the mean ± sd."""
    df = _read_csvs(inputs, "metrics.csv", ("variant", "seed", "test_neg_elbo"))
    order = _order(df["variant"].unique(), cfg)
    fig, ax = plt.subplots(figsize=(1.6 * len(order) + 2.5, 4.2), layout="constrained")
    pal = _palette(order)
    sns.stripplot(
        df,
        x="variant",
        y="test_neg_elbo",
        hue="variant",
        order=order,
        palette=pal,
        size=7,
        alpha=0.6,
        jitter=0.12,
        legend=False,
        ax=ax,
    )
    sns.pointplot(
        df,
        x="variant",
        y="test_neg_elbo",
        order=order,
        errorbar="sd",
        color="black",
        markers="D",
        markersize=7,
        linestyle="none",
        capsize=0.1,
        ax=ax,
    )
    for x, v in enumerate(order):
        mean = df.loc[df["variant"] == v, "test_neg_elbo"].mean()
        ax.annotate(
            f"{mean:.2f}", (x, mean), xytext=(14, 0), textcoords="offset points", va="center"
        )
    n = df.groupby("variant")["seed"].nunique()
    ax.set_xticks(range(len(order)), [f"{v}\n({n[v]} seeds)" for v in order])
    ax.set(xlabel="", ylabel=LOSS_LABEL, title="Test loss: seeds (dots), mean ± sd (black diamond)")
    return fig


def loss_curves(inputs: list[Path], cfg: dict):
    """Train and validation loss per epoch: mean and ± sd band over seeds per variant."""
    df = _read_csvs(
        inputs, "history.csv files", ("variant", "seed", "epoch", "train_loss", "val_loss")
    )
    order = _order(df["variant"].unique(), cfg)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, layout="constrained")
    for ax, col, name in zip(
        axes, ("train_loss", "val_loss"), ("training", "validation"), strict=True
    ):
        sns.lineplot(
            df,
            x="epoch",
            y=col,
            hue="variant",
            hue_order=order,
            palette=_palette(order),
            errorbar="sd",
            ax=ax,
            legend=ax is axes[1],
        )
        ax.set(
            xlabel="epoch",
            ylabel="negative ELBO (nats)",
            title=f"{name} loss (mean ± sd over seeds)",
        )
    n_epochs = df["epoch"].nunique()
    skip = max(2, n_epochs // 10) if n_epochs > 4 else 0  # early epochs would flatten the rest
    late = df[df["epoch"] >= df["epoch"].min() + skip][["train_loss", "val_loss"]].to_numpy()
    lo, hi = np.nanmin(late), np.nanmax(late)
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    axes[0].set_ylim(lo - pad, hi + pad)
    axes[0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if skip:
        fig.text(
            0.01, 0.01, f"y range fitted from epoch {df['epoch'].min() + skip} on", fontsize="small"
        )
    return fig


def gap_distribution(inputs: list[Path], cfg: dict):
    """Per variant the distribution (ECDF, symlog x) of the per-image posterior gap, mean marked."""
    df = _read_csvs(inputs, "per_image.csv files", ("variant", "seed", "gap"))
    df = df.dropna(subset=["gap"])
    if df.empty:
        raise FlowvaeError(
            "every posterior gap is empty: this figure needs the exact evaluation (latent_dim 2)"
        )
    order = _order(df["variant"].unique(), cfg)
    pal = _palette(order)
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(12, 4.4), layout="constrained", gridspec_kw={"width_ratios": [1.4, 1]}
    )
    for v in order:
        gap = df.loc[df["variant"] == v, "gap"]
        big = (gap > 100).sum()
        label = f"{v}: mean {gap.mean():.2f}, median {gap.median():.2f}, images > 100 nats: {big}"
        sns.ecdfplot(x=gap, color=pal[v], label=label, ax=ax)
        ax.axvline(gap.mean(), color=pal[v], ls="--", lw=1)
    bx.boxplot(
        [df.loc[df["variant"] == v, "gap"] for v in order],
        orientation="horizontal",
        tick_labels=order,
        showmeans=True,
        patch_artist=True,
        flierprops={"markersize": 2},
        meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"},
        boxprops={"facecolor": "none"},
        medianprops={"color": "black"},
    )
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


def cost_tradeoff(inputs: list[Path], cfg: dict):
    """Left: the learning curve in seconds (validation -ELBO against cumulative training time,
    a line per seed). Right: test loss against total training time, a point per seed and the
    variant means."""
    tables = [p for p in inputs if Path(p).name == "metrics.csv"]
    df = _read_csvs(tables, "metrics.csv", ("variant", "seed", "test_neg_elbo", "train_seconds"))
    hist = _read_csvs(
        [p for p in inputs if p not in tables], "history.csv",
        ("variant", "seed", "epoch", "val_loss", "seconds"),
    )  # fmt: skip
    order = _order(df["variant"].unique(), cfg)
    pal = _palette(order)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    hist = hist.sort_values(["variant", "seed", "epoch"])
    hist["elapsed"] = hist.groupby(["variant", "seed"])["seconds"].cumsum()
    for (variant, _seed), run in hist.groupby(["variant", "seed"], sort=False):
        left.plot(run["elapsed"], run["val_loss"], color=pal[variant], lw=1, alpha=0.7)
    low = hist.groupby(["variant", "seed"])["val_loss"].min().min()
    high = hist.groupby(["variant", "seed"])["val_loss"].quantile(0.5).max()
    left.set_ylim(low - 0.5, max(high, low + 1) + 0.5)
    for v in order:
        left.plot([], [], color=pal[v], label=v)
    left.legend(fontsize="small")
    left.set(
        xlabel="training time (seconds)",
        ylabel="validation -ELBO (nats)",
        title="Learning curve in seconds (a line per seed)",
    )
    sns.scatterplot(
        df, x="train_seconds", y="test_neg_elbo", hue="variant", hue_order=order,
        palette=pal, s=45, alpha=0.6, ax=right, legend=False,
    )  # fmt: skip
    means = df.groupby("variant")[["train_seconds", "test_neg_elbo"]].agg(["mean", "std"])
    for v in order:
        m = means.loc[v]
        right.errorbar(
            m[("train_seconds", "mean")],
            m[("test_neg_elbo", "mean")],
            xerr=np.nan_to_num(m[("train_seconds", "std")]),
            yerr=np.nan_to_num(m[("test_neg_elbo", "std")]),
            color=pal[v],
            marker="X",
            markersize=12,
            markeredgecolor="black",
            capsize=3,
            lw=1.2,
            label=v,
        )
    right.legend(fontsize="small")
    right.set(
        xlabel="total training time (seconds)",
        ylabel=LOSS_LABEL,
        title="Test loss reached (dots: seeds; X: mean ± sd)",
    )
    return fig


def sweep(inputs: list[Path], cfg: dict):
    """Test loss against the swept value per variant (one panel per sweep), points and means."""
    df = _read_csvs(
        inputs, "sweep metrics.csv", ("sweep", "sweep_value", "variant", "seed", "test_neg_elbo")
    )
    names = list(dict.fromkeys(df["sweep"].astype(str)))
    order = _order(df["variant"].unique(), cfg)
    pal = _palette(order)
    fig, axes = plt.subplots(
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
        sns.lineplot(
            sub,
            x="x",
            y="test_neg_elbo",
            hue="variant",
            hue_order=order,
            palette=pal,
            errorbar="sd",
            marker="o",
            markersize=8,
            ax=ax,
            legend=ax is axes[0, -1],
        )
        sns.scatterplot(
            sub,
            x="x",
            y="test_neg_elbo",
            hue="variant",
            hue_order=order,
            palette=pal,
            alpha=0.4,
            s=20,
            legend=False,
            ax=ax,
        )
        key = ((cfg.get("sweeps") or {}).get(name) or {}).get("key", name)
        ax.set(xlabel=key, ylabel=LOSS_LABEL, title=f"sweep {name}: mean ± sd, dots = seeds")
        values = sorted(numeric.unique()) if numeric.notna().all() else []
        if 0 < len(values) <= 10:  # label exactly the swept values
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    return fig


def tuning(inputs: list[Path], cfg: dict):
    """Validation loss against each tuned value, one line per variant: at each value the best
    candidate with it (lowest mean over the tuning seeds), error bars its sd over the seeds."""
    df = _read_csvs(inputs, "selection.csv", ("variant", "candidate", "mean_val_loss"))
    seeds = [c for c in df.columns if c.startswith("val_loss_seed")]
    skip = {"variant", "candidate", "mean_val_loss", "sd_val_loss", "n_seeds", "train_seconds"}
    skip |= {"seconds_per_epoch", "overrides", "rank", "selected", *seeds}
    keys = [c for c in df.columns if c not in skip and df[c].nunique() > 1]
    if not keys:
        raise FlowvaeError("selection.csv varies no setting: nothing to draw")
    order = _order(df["variant"].unique(), cfg)
    pal = _palette(order)
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.6 * cols + 1.2, 3.8 * rows), squeeze=False, layout="constrained"
    )
    for ax, key in zip(axes.flat, keys, strict=False):
        for variant in order:
            sub = df[(df["variant"] == variant) & df[key].notna()]
            if sub[key].nunique() < 2:
                continue
            best = sub.loc[sub.groupby(key)["mean_val_loss"].idxmin()]
            x = pd.to_numeric(best[key], errors="coerce")
            x = x if x.notna().all() else best[key].astype(str)
            ax.errorbar(
                x,
                best["mean_val_loss"],
                yerr=best["sd_val_loss"].fillna(0),
                color=pal[variant],
                marker="o",
                capsize=3,
                label=variant,
            )
            chosen = best[best["selected"].astype(bool)]
            if len(chosen):
                cx = pd.to_numeric(chosen[key], errors="coerce")
                cx = cx if cx.notna().all() else chosen[key].astype(str)
                ax.scatter(
                    cx,
                    chosen["mean_val_loss"],
                    s=160,
                    facecolors="none",
                    edgecolors=pal[variant],
                    linewidths=1.5,
                )
        numeric = pd.to_numeric(df[key], errors="coerce").dropna()
        if len(numeric) and numeric.min() > 0 and numeric.max() / numeric.min() >= 3:
            ax.set_xscale("log")
        values = sorted(numeric.unique())
        if values:  # label exactly the tried values
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set(xlabel=key, ylabel="validation -ELBO (nats)")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"Tuning stage: best candidate at each value, mean ± sd over {len(seeds)} tuning "
        "seed(s); ring = selected"
    )
    return fig


def quadrature_check(inputs: list[Path], cfg: dict):
    """log p(x) (quadrature) minus the IWAE bound against K, per variant: it must shrink to ~0."""
    df = _read_csvs(inputs, "quadrature_check.csv files", ("variant", "k", "excess", "stderr"))
    if df.empty:
        raise FlowvaeError("no quadrature check rows: it needs latent_dim 2 and check_images > 0")
    df["shortfall"] = -df["excess"]
    order = _order(df["variant"].unique(), cfg)
    pal = _palette(order)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    sns.lineplot(
        df,
        x="k",
        y="shortfall",
        hue="variant",
        hue_order=order,
        palette=pal,
        errorbar=("pi", 90),
        marker="o",
        ax=ax,
    )
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set(
        xlabel="IWAE samples K",
        ylabel="log p(x) - IWAE bound (nats)",
        title="mean over images (band: 5-95% of images)",
    )
    df["z"] = (df["excess"] / df["stderr"].clip(lower=1e-12)).clip(lower=-10)
    sns.stripplot(
        df,
        x="k",
        y="z",
        hue="variant",
        hue_order=order,
        palette=pal,
        dodge=True,
        size=3,
        ax=bx,
        legend=False,
    )
    bx.axhline(3, color="black", ls="--", lw=1)
    bx.set_ylim(-10.5, max(5.0, df["z"].max() + 1))
    bx.set(
        xlabel="IWAE samples K",
        ylabel="(IWAE - log p(x)) / std. error (clipped at -10)",
        title="excess of the bound over log p(x) (dashed: 3 std. errors)",
    )
    fig.suptitle("Quadrature check: the IWAE bound rises towards the grid's log p(x)")
    return fig


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Figure:
    """One figure of the study: the workflow makes a rule, a target and a report entry of it.

    ``inputs`` lists (file kind, seeds): a key of flowvae.study.RUN_FILES (read for every
    variant and for the first seed or every seed) or of flowvae.study.STUDY_FILES.
    ``caption`` is reStructuredText with Jinja (``snakemake.config``) for the HTML report;
    ``@VARIANT@`` stands for the variant of a per-variant figure.
    """

    name: str
    draw: Callable[[list[Path], dict], plt.Figure]
    inputs: tuple[tuple[str, str], ...]
    caption: str
    category: str
    latent_2d: bool = False  # needs the 2-D quadrature or contour grids
    per_variant: bool = False  # one figure NAME_<variant> per variant
    needs_reference: bool = False  # left out when the reference variant is not run
    needs_tuning: bool = False  # only with a tuning stage (config key `tuning`)


_SEED = 'seed {{ snakemake.config["seeds"][0] }}'
_ALL = (
    Figure(
        "posterior_true",
        posterior_true,
        (("grid", "figure_seed"),),
        "The true posterior log p(z|x) + const = log p(x|z) + log p(z) of the test images chosen "
        "by ``evaluate.images`` over the z grid (half-width "
        '{{ snakemake.config["evaluate"]["grid_extent"] }}); one row per variant, because each '
        f"variant trains its own decoder. {_SEED.capitalize()}. Contours are nats below the "
        "maximum of each panel.",
        "Posteriors",
        latent_2d=True,
    ),
    Figure(
        "posterior",
        posterior_q,
        (("grid", "figure_seed"),),
        "The approximate posterior log q(z|x) of the variant **@VARIANT@** for the test images "
        "chosen by ``evaluate.images``, over the same z grid as the true posterior. "
        f"{_SEED.capitalize()}. Contours are nats below the maximum of each panel.",
        "Posteriors",
        latent_2d=True,
        per_variant=True,
    ),
    Figure(
        "posterior_panel",
        posterior_panel,
        (("grid", "figure_seed"),),
        "True posterior log p(z|x) + const and approximate posterior log q(z|x) of every "
        "variant, side by side, for the test images chosen by ``evaluate.images`` "
        f"({_SEED}). A flexible posterior follows the shape of the true one; a Gaussian can "
        "only match an ellipse.",
        "Posteriors",
        latent_2d=True,
    ),
    Figure(
        "gap_contours",
        gap_contours,
        (("gap_grid", "figure_seed"), ("per_image", "figure_seed")),
        "True posterior log p(z|x) + const and approximate posterior log q(z|x) of every "
        f"variant for the test images with the largest gap under the reference variant ({_SEED}),"
        " each panel titled with that image's posterior gap KL(q(z|x) || p(z|x)) = log p(x) - "
        "ELBO(x) in nats, rows sorted by the reference variant's gap.",
        "Posterior gap",
        latent_2d=True,
        needs_reference=True,
    ),
    Figure(
        "gap_distribution",
        gap_distribution,
        (("per_image", "all_seeds"),),
        "Distribution over the test images of the posterior gap KL(q(z|x) || p(z|x)) = "
        "log p(x) - ELBO(x), with log p(x) by quadrature on a grid, for every variant (all "
        "seeds pooled). The gap is the part of the test loss that a better posterior can remove.",
        "Posterior gap",
        latent_2d=True,
    ),
    Figure(
        "test_loss",
        test_loss,
        (("table", "all_seeds"),),
        "Test loss (negative ELBO per image, by randomized quasi-Monte Carlo to a stated standard"
        " error, nats, lower is better) of every variant: one point per seed, and mean and "
        'standard deviation over the seeds {{ snakemake.config["seeds"] | join(", ") }}.',
        "Losses",
    ),
    Figure(
        "loss_curves",
        loss_curves,
        (("history", "all_seeds"),),
        "Training and validation loss (negative ELBO, nats) per epoch, mean and spread over "
        "seeds for every variant.",
        "Losses",
    ),
    Figure(
        "cost_tradeoff",
        cost_tradeoff,
        (("table", "all_seeds"), ("history", "all_seeds")),
        "What the flows' lower loss costs in compute. Left: the learning curve in seconds, the "
        "validation loss (negative ELBO on the validation split) against the training time "
        "spent so far, a line per seed. Right: the test loss reached against the total "
        "training time, one point per seed and the mean and sd of each variant. Times are "
        "wall seconds of the training epochs on the machine that ran the study.",
        "Losses",
    ),
    Figure(
        "quadrature_check",
        quadrature_check,
        (("check", "all_seeds"),),
        "Validation of the exact evaluation. For a sample of test images "
        "(``evaluate.check_images``) the IWAE lower bound is estimated with growing K "
        "(``evaluate.check_ks``, several repeats each) and compared with log p(x) from the grid "
        "quadrature. Left: how far the bound lies below log p(x). Right: the excess of the bound "
        "over log p(x) in units of its standard error; above 3 would mean the grid misses mass.",
        "Posterior gap",
        latent_2d=True,
    ),
    Figure(
        "reconstructions",
        reconstructions,
        (("grid", "figure_seed"),),
        "Test images and their reconstructions (Bernoulli means of the decoder at one posterior "
        f"sample) by each variant, {_SEED}.",
        "Samples",
    ),
    Figure(
        "samples",
        samples,
        (("grid", "figure_seed"),),
        f"Decoder means at samples z from the prior N(0, I) for each variant, {_SEED}.",
        "Samples",
    ),
    Figure(
        "tuning",
        tuning,
        (("selection", "all_seeds"),),
        "Tuning stage of the hyperparameter study: the validation loss (negative ELBO on the "
        "validation split, nats) against each tuned setting, one line per variant. At each "
        "value the line shows the best candidate with that value (lowest mean over the tuning "
        'seeds {{ snakemake.config["tuning"]["seeds"] | join(", ") }}), error bars its standard '
        "deviation over those seeds; the ring marks the candidate selected "
        '(``tuning.select``: {{ snakemake.config["tuning"]["select"] }}). The test set plays no '
        "part in it.",
        "Tuning",
        needs_tuning=True,
    ),
    Figure(
        "sweep",
        sweep,
        (),
        "Test loss against the value of the swept key for every variant: one point per seed "
        "and the mean and standard deviation over seeds.",
        "Sweeps",
    ),
)
#: Every figure by name; the workflow, the report and the tests read this and nothing else.
REGISTRY: dict[str, Figure] = {f.name: f for f in _ALL}


def render(name: str, inputs: list[Path], outputs: list[Path], cfg: dict) -> None:
    """Draw the figure ``name`` from ``inputs`` and save it (atomically) to every output."""
    if name not in REGISTRY:
        raise FlowvaeError(f"unknown figure '{name}' (known: {', '.join(sorted(REGISTRY))})")
    for path in inputs:
        if not Path(path).is_file():
            raise FlowvaeError(f"input file {path} of figure {name} does not exist")
    if not outputs:
        raise FlowvaeError(f"figure {name} has no output file")
    before = set(plt.get_fignums())
    try:
        with plt.rc_context(_theme()):
            np.random.seed(0)  # seaborn's strip-plot jitter: the same figure every time
            fig = REGISTRY[name].draw([Path(p) for p in inputs], cfg or {})
            supported = fig.canvas.get_supported_filetypes()
            for out in outputs:
                if Path(out).suffix.lstrip(".").lower() not in supported:
                    raise FlowvaeError(f"output {out} of figure {name}: unsupported file type")
                io.save_figure(fig, out, dpi=DPI)
    finally:
        for num in set(plt.get_fignums()) - before:
            plt.close(num)
    log.info("figure %s -> %s", name, ", ".join(map(str, outputs)))
