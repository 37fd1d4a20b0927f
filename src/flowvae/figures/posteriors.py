"""Posterior figures: contours of the true posterior and of q on the z grid (2-D latent only).

Their figure data (``.npz``) hold, per variant of the figure seed, each panel's log density
minus its maximum, clipped at -(DEPTH + 1) nats (float32: what the contours draw), the grid
axes z1, z2 and the test images (8-bit grey levels) with their positions and labels.
numpy, pandas and matplotlib are imported inside the functions: the workflow reads the
declarations without loading them.
"""

from __future__ import annotations

from pathlib import Path

from flowvae.errors import FlowvaeError
from flowvae.figures.registry import Input, figure, figure_data

BASE_KEYS = ("variant", "seed", "images", "image_index", "labels")
CONTOUR_KEYS = ("z1", "z2", "log_q", "log_joint")  # written only when the latent space is 2-D
DEPTH = 20.0  # nats below the maximum shown by the contour panels


def load_grid(path: Path, keys: tuple[str, ...]) -> dict:
    """A grid.npz as a dict of arrays (variant as str, seed as int); a missing key names it."""
    import numpy as np

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


def grey(images):
    """Pictures with values in [0, 1] as 8-bit grey levels (what the figures draw)."""
    import numpy as np

    return np.rint(np.clip(np.asarray(images, dtype=float), 0.0, 1.0) * 255).astype(np.uint8)


def stack_grids(paths: list[Path]) -> dict:
    """The contour arrays of one grid file per variant, stacked (variant, image, z2, z1)."""
    import numpy as np

    grids = [load_grid(Path(p), CONTOUR_KEYS) for p in paths]
    first = grids[0]
    for g in grids[1:]:
        if not np.array_equal(g["image_index"], first["image_index"]):
            raise FlowvaeError(f"grid files {first['path']} and {g['path']} hold different images")

    def rel(values):  # per panel: log density minus its maximum, clipped (style.relative)
        top = np.nanmax(values, axis=(-2, -1), keepdims=True)
        return np.clip(values - top, -DEPTH - 1.0, 0.0).astype(np.float32)

    return {
        "variant": np.array([g["variant"] for g in grids]),
        "seed": np.array([g["seed"] for g in grids]),
        "z1": np.asarray(first["z1"], dtype=float),
        "z2": np.asarray(first["z2"], dtype=float),
        "log_q": np.stack([rel(g["log_q"]) for g in grids]),
        "log_joint": np.stack([rel(g["log_joint"]) for g in grids]),
        "images": grey(first["images"]),
        "image_index": np.asarray(first["image_index"]),
        "labels": np.asarray(first["labels"]),
    }


PANEL_FIELDS = ("variant", "seed", *CONTOUR_KEYS, "images", "image_index", "labels")


@figure_data("posteriors", "npz", PANEL_FIELDS, grid=Input("grid", seeds="figure"))
def posteriors_data(inputs: dict[str, list[Path]], options: dict) -> dict:
    """The contour panels of every variant (figure seed) for the images ``evaluate.images``."""
    return stack_grids(inputs["grid"])


def _image_title(data: dict, i: int) -> str:
    return f"digit {int(data['labels'][i])}\n(test #{int(data['image_index'][i])})"


def _images_text(data: dict) -> str:
    """The test images drawn: '#0-#3' for a run of positions, else '#2267, #956, ...'."""
    index = [int(i) for i in data["image_index"]]
    if len(index) > 2 and index == list(range(index[0], index[0] + len(index))):
        return f"#{index[0]}-#{index[-1]}"
    return ", ".join(f"#{i}" for i in index)


def _which_images(data: dict) -> str:
    """How the images were picked: the first n of the test set, or the positions given."""
    index = [int(i) for i in data["image_index"]]
    if index == list(range(len(index))):
        return f"the first {len(index)} test images ({_images_text(data)}, not chosen by shape)"
    return f"test images {_images_text(data)} (evaluate.images)"


def _seeds_text(data: dict) -> str:
    """'seed 0 of every variant', or each variant's seed when they differ."""
    seeds = [int(s) for s in data["seed"]]
    if len(set(seeds)) == 1:
        return f"seed {seeds[0]} of every variant"
    return ", ".join(f"{v} seed {s}" for v, s in zip(data["variant"], seeds, strict=True))


@figure(
    "posterior_true",
    "posteriors",
    "The true posterior log p(z|x) + const = log p(x|z) + log p(z) of the test images chosen "
    "by ``evaluate.images`` over the z grid (half-width {grid_extent}); one row per variant, "
    "because each variant trains its own decoder. Seed {seed}. Contours are nats below the "
    "maximum of each panel.",
    "Posteriors",
    latent_2d=True,
)
def posterior_true(data: dict):
    """Rows = variants, cols = images: true posterior log p(z|x) + const under each decoder."""
    from flowvae.figures import style as st

    n_var, n_img = data["log_joint"].shape[:2]
    fig, axes = st.plt.subplots(
        n_var + 1,
        n_img,
        figsize=(2.6 * n_img + 1.2, 2.5 * n_var + 1.6),
        gridspec_kw={"height_ratios": [0.55] + [1] * n_var},
        squeeze=False,
        layout="constrained",
    )
    for i in range(n_img):
        st.digit(axes[0, i], data["images"][i], _image_title(data, i))
    for r in range(n_var):
        for i in range(n_img):
            cs = st.contour(axes[r + 1, i], data["z1"], data["z2"], data["log_joint"][r, i])
            st.label_axes(axes[r + 1, i], i == 0, r == n_var - 1)
        axes[r + 1, 0].set_ylabel(f"{data['variant'][r]} (seed {data['seed'][r]})\n$z_2$")
    st.colorbar(fig, cs, axes[1:, :])
    fig.suptitle(
        "True posterior log p(z|x) + const under each variant's decoder "
        "(each panel zoomed to its mass)"
    )
    return fig


@figure(
    "posterior",
    "posteriors",
    "The approximate posterior log q(z|x) of the variant **{variant}** for the test images "
    "chosen by ``evaluate.images``, over the same z grid as the true posterior. Seed {seed}. "
    "Contours are nats below the maximum of each panel.",
    "Posteriors",
    latent_2d=True,
    per_variant=True,
)
def posterior_q(data: dict, variant: str):
    """Cols = images: one variant's approximate posterior log q(z|x)."""
    from flowvae.figures import style as st

    names = [str(v) for v in data["variant"]]
    if variant not in names:
        raise FlowvaeError(f"no variant {variant!r} in the figure data (they hold {names})")
    r = names.index(variant)
    n_img = data["log_q"].shape[1]
    fig, axes = st.plt.subplots(
        2,
        n_img,
        figsize=(2.6 * n_img + 1.4, 5.0),
        squeeze=False,
        gridspec_kw={"height_ratios": [0.55, 1]},
        layout="constrained",
    )
    for i in range(n_img):
        st.digit(axes[0, i], data["images"][i], _image_title(data, i))
        cs = st.contour(axes[1, i], data["z1"], data["z2"], data["log_q"][r, i])
        st.label_axes(axes[1, i], i == 0, True)
    st.colorbar(fig, cs, axes[1, :])
    fig.suptitle(f"Approximate posterior log q(z|x): {variant} (seed {data['seed'][r]})")
    return fig


def _panel(data: dict, titles=None):
    """Rows = images; the digit, then per variant true posterior and q on the same axes."""
    from flowvae.figures import style as st

    n_var, n_img = data["log_q"].shape[:2]
    n_col = 1 + 2 * n_var
    fig, axes = st.plt.subplots(
        n_img,
        n_col,
        figsize=(2.3 * n_col + 1.0, 2.3 * n_img + 0.8),
        squeeze=False,
        layout="constrained",
        gridspec_kw={"width_ratios": [0.7] + [1] * (n_col - 1)},
    )
    z1, z2 = data["z1"], data["z2"]
    for i in range(n_img):
        st.digit(axes[i, 0], data["images"][i], _image_title(data, i))
        for k in range(n_var):
            joint, q = data["log_joint"][k, i], data["log_q"][k, i]
            zoom = st.window(z1, z2, joint, q)  # the same zoom for p and q
            for j, (values, name) in enumerate(((joint, "log p(z|x)"), (q, "log q(z|x)"))):
                ax = axes[i, 1 + 2 * k + j]
                cs = st.contour(ax, z1, z2, values, zoom)
                st.label_axes(ax, k == 0 and j == 0, i == n_img - 1)
                head = f"{data['variant'][k]}: {name}" if i == 0 else ""
                extra = titles(k, i) if titles else ""
                ax.set_title("\n".join(filter(None, [head, extra])), fontsize="medium")
    st.colorbar(fig, cs, axes[:, 1:])
    return fig


@figure(
    "posterior_panel",
    "posteriors",
    "True posterior log p(z|x) + const and approximate posterior log q(z|x) of every variant, "
    "side by side, for the test images at the positions ``evaluate.images`` names (by default "
    "the first four of the test set, taken as they come, not chosen for their shape), under "
    "the model of seed {seed} of every variant. A flexible posterior can follow the shape of "
    "the true one; a Gaussian can only match an ellipse.",
    "Posteriors",
    latent_2d=True,
)
def posterior_panel(data: dict):
    """The study's side-by-side panel: true posterior and q per variant, per image."""
    fig = _panel(data)
    fig.suptitle(
        f"True posterior vs approximate posterior: {_which_images(data)}, {_seeds_text(data)}\n"
        f"each p/q pair shares its axes, zoomed to where either is within {DEPTH:g} nats of its "
        "maximum"
    )
    return fig


@figure_data(
    "gap_contours",
    "npz",
    (*PANEL_FIELDS, "gap", "reference", "top_index", "top_gap"),
    gap_grid=Input("gap_grid", seeds="figure"),
    per_image=Input("per_image", seeds="figure"),
    reference=Input("per_image", seeds="figure", variants="reference"),
)
def gap_contours_data(inputs: dict[str, list[Path]], options: dict) -> dict:
    """The grids of the images with the largest gap under the reference variant, rows sorted by
    its gap, each panel's gap (``gap``), and the reference's five largest gaps of the test set
    (``top_index``, ``top_gap``)."""
    import numpy as np
    import pandas as pd

    data = stack_grids(inputs["gap_grid"])
    gaps = pd.concat([pd.read_csv(p, dtype={"variant": str}) for p in inputs["per_image"]])
    gaps = gaps.set_index(["variant", "seed", "index"])["gap"]
    gaps = gaps[~gaps.index.duplicated()]
    gap = np.array(
        [
            [gaps.get((str(v), int(s), int(i)), np.nan) for i in data["image_index"]]
            for v, s in zip(data["variant"], data["seed"], strict=True)
        ],
        dtype=float,
    )
    ref_table = pd.read_csv(inputs["reference"][0], dtype={"variant": str})
    reference = str(ref_table["variant"].iloc[0])
    names = [str(v) for v in data["variant"]]
    ref = names.index(reference) if reference in names else 0
    rows = np.argsort(-np.nan_to_num(gap[ref], nan=-np.inf), kind="stable")
    for key in ("log_q", "log_joint"):
        data[key] = data[key][:, rows]
    for key in ("images", "image_index", "labels"):
        data[key] = data[key][rows]
    top = ref_table.nlargest(5, "gap")
    return {
        **data,
        "gap": gap[:, rows],
        "reference": np.array(names[ref]),
        "top_index": top["index"].to_numpy(dtype=int),
        "top_gap": top["gap"].to_numpy(dtype=float),
    }


@figure(
    "gap_contours",
    "gap_contours",
    "True posterior log p(z|x) + const and approximate posterior log q(z|x) of every variant "
    "for the test images with the largest gap under the reference variant (seed {seed}), each "
    "panel titled with that image's posterior gap KL(q(z|x) || p(z|x)) = log p(x) - ELBO(x) in "
    "nats, rows sorted by the reference variant's gap. Every variant's model is its seed "
    "{seed}.",
    "Posterior gap",
    latent_2d=True,
    needs_reference=True,
)
def gap_contours(data: dict):
    """True posterior vs q per variant, titled with each image's gap, largest reference gap
    first (the figure data hold the rows in that order)."""
    import numpy as np

    def gap_text(k: int, i: int) -> str:
        gap = data["gap"][k, i]
        return "gap n/a" if np.isnan(gap) else f"gap {gap:.2f} nats"

    fig = _panel(data, gap_text)
    ref = str(data["reference"])
    n_img = data["log_q"].shape[1]
    shown = set(int(i) for i in data["image_index"])
    names = [str(v) for v in data["variant"]]
    drawn = data["gap"][names.index(ref)] if ref in names else np.array([])
    smallest = np.nanmin(drawn) if np.isfinite(drawn).any() else np.inf
    larger = ", ".join(  # images of the test set with a larger gap that are not drawn
        f"#{int(i)} ({g:.1f} nats)"
        for i, g in zip(data["top_index"], data["top_gap"], strict=True)
        if int(i) not in shown and g > smallest
    )
    fig.suptitle(
        f"Posterior gap KL(q || p(z|x)) (per-image -ELBO minus exact NLL) of the {n_img} test "
        f"images with the largest {ref} gap, rows by that gap; {_seeds_text(data)}\n"
        + (f"larger {ref} gaps not drawn: {larger}; " if larger else "")
        + "each p/q pair shares its zoomed axes"
    )
    return fig
