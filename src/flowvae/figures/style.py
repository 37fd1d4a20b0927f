"""Drawing helpers shared by the figures: theme, palette, contour panels, digit pictures.

Contour panels show a log density minus its maximum over the grid (nats), so the true
posterior log p(z|x) + const and the approximate posterior log q(z|x) share one scale; levels
more than ``DEPTH`` nats below the maximum are drawn in the darkest colour of seaborn's
"rocket" palette.
"""

from __future__ import annotations

import math

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from flowvae.figures.posteriors import DEPTH  # noqa: E402

DPI = 150
LEVELS = np.linspace(-DEPTH, 0.0, 11)
LOSS_LABEL = "test negative ELBO (nats)"

__all__ = ["matplotlib", "np", "plt", "sns"]


def theme() -> dict:
    """Seaborn's theme as an rc dict, applied per figure (no global side effect)."""
    return {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.2)}


def order(variants) -> list[str]:
    """The variants in the order they first appear (the figure data keep the config's)."""
    return list(dict.fromkeys(str(v) for v in variants))


#: Colours of seaborn's colour-blind palette, in the order variants take them: blue, orange,
#: green, purple, brown, ... (its vermillion, next to orange, is left out).
PALETTE_ORDER = (0, 1, 2, 4, 5, 7, 8, 9, 6)


def palette(variants: list[str]) -> dict:
    colours = sns.color_palette("colorblind", 10)
    picked = [colours[PALETTE_ORDER[i % len(PALETTE_ORDER)]] for i in range(len(variants))]
    return dict(zip(variants, picked, strict=True))


def freeze_layout(fig, digits: int = 6) -> None:
    """Run the figure's layout engine once and fix every axes where it put them, rounded to
    ``digits`` decimals of the figure's size. Constrained layout's positions varied between
    processes in their last digits, so the same data gave PDFs of two kinds; fixed and
    rounded, the PNG and the PDF are drawn from one layout, the same in every run."""
    engine = fig.get_layout_engine()
    if engine is None:
        return
    engine.execute(fig)
    fig.set_layout_engine("none")
    for ax in fig.axes:
        ax.set_axes_locator(None)
        ax.set_position(np.round(ax.get_position().bounds, digits))


def relative(values: np.ndarray) -> np.ndarray:
    """``values - max`` clipped at -DEPTH - 1 nats: what a contour panel draws."""
    return np.clip(values - np.nanmax(values), -DEPTH - 1.0, 0.0)


def window(z1, z2, *arrays: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """A square zoom around every cell within DEPTH nats of its array's maximum (25% margin)."""
    mask = np.zeros_like(arrays[0], dtype=bool)
    for values in arrays:
        mask |= values - np.nanmax(values) > -DEPTH
    rows, cols = np.nonzero(mask)
    z1, z2 = np.asarray(z1), np.asarray(z2)
    if rows.size == 0:
        return (z1[0], z1[-1]), (z2[0], z2[-1])
    c1, c2 = (z1[cols].min() + z1[cols].max()) / 2, (z2[rows].min() + z2[rows].max()) / 2
    half = 1.25 * max(np.ptp(z1[cols]), np.ptp(z2[rows]), 0.8) / 2
    lo, hi = min(z1[0], z2[0]), max(z1[-1], z2[-1])
    if 2 * half >= hi - lo:
        return (z1[0], z1[-1]), (z2[0], z2[-1])
    c1, c2 = np.clip([c1, c2], lo + half, hi - half)  # keep the window on the grid
    return (c1 - half, c1 + half), (c2 - half, c2 + half)


def contour(ax, z1, z2, values: np.ndarray, zoom=None):
    """Filled contours of ``values - max`` (rocket) clipped at -DEPTH nats; returns the mappable.

    ``zoom`` ((x0, x1), (y0, y1)) sets the axes; by default they fit this panel's mass.
    """
    rel = relative(values)
    cs = ax.contourf(z1, z2, rel, levels=LEVELS, cmap="rocket", extend="min")
    ax.contour(z1, z2, rel, levels=LEVELS[1:-1], colors="white", linewidths=0.3, alpha=0.5)
    ax.set_aspect("equal")
    xlim, ylim = zoom if zoom is not None else window(z1, z2, values)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    return cs


def digit(ax, image: np.ndarray, title: str = "") -> None:
    """A 28 x 28 picture, 8-bit grey levels (0 = white, 255 = black)."""
    ax.imshow(np.asarray(image).reshape(28, 28), cmap="gray_r", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title)


def mosaic(images: np.ndarray, cols: int) -> np.ndarray:
    """Tile (n, 784) 8-bit images into one array of white-to-black values, ``cols`` per row,
    with a 2-pixel white gap."""
    images = np.asarray(images, dtype=float).reshape(-1, 28, 28) / 255.0
    rows = math.ceil(len(images) / cols)
    out = np.ones((rows * 30 - 2, cols * 30 - 2))
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        out[r * 30 : r * 30 + 28, c * 30 : c * 30 + 28] = 1.0 - img
    return out


def colorbar(fig, mappable, axes) -> None:
    cb = fig.colorbar(mappable, ax=axes, shrink=0.8, pad=0.02)
    cb.set_label(f"log density − max over grid\n(nats; clipped at −{DEPTH:g})")


def label_axes(ax, left: bool, bottom: bool) -> None:
    ax.set_xlabel("$z_1$" if bottom else "")
    ax.set_ylabel("$z_2$" if left else "")
