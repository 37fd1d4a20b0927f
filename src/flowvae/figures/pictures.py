"""Picture figures: test images with their reconstructions, and decoder means at prior samples.

Their figure data (``.npz``) hold the pictures of every variant (figure seed) as 8-bit grey
levels, the resolution the figures draw them at.
"""

from __future__ import annotations

from pathlib import Path

from flowvae.figures.posteriors import grey, load_grid
from flowvae.figures.registry import Input, figure, figure_data

RECONSTRUCTIONS = 16  # test images per variant
SAMPLES = 64  # prior samples per variant (an 8 x 8 grid)


def _pictures(paths: list[Path], keys: dict[str, int]) -> dict:
    """Per variant the first ``keys[k]`` pictures of each key ``k`` of its grid file."""
    import numpy as np

    grids = [load_grid(Path(p), tuple(keys)) for p in paths]
    out = {
        "variant": np.array([g["variant"] for g in grids]),
        "seed": np.array([g["seed"] for g in grids]),
    }
    for key, n in keys.items():
        out[key] = np.stack([grey(g[key][:n]) for g in grids])
    return out


@figure_data(
    "reconstructions",
    "npz",
    ("variant", "seed", "recon_inputs", "recon"),
    grid=Input("grid", seeds="figure"),
)
def reconstructions_data(inputs: dict[str, list[Path]], options: dict) -> dict:
    return _pictures(inputs["grid"], {"recon_inputs": RECONSTRUCTIONS, "recon": RECONSTRUCTIONS})


@figure_data("samples", "npz", ("variant", "seed", "samples"), grid=Input("grid", seeds="figure"))
def samples_data(inputs: dict[str, list[Path]], options: dict) -> dict:
    return _pictures(inputs["grid"], {"samples": SAMPLES})


@figure(
    "reconstructions",
    "reconstructions",
    "Test images and their reconstructions (Bernoulli means of the decoder at one posterior "
    "sample) by each variant, seed {seed}.",
    "Samples",
)
def reconstructions(data: dict):
    """Per variant a row of test inputs above a row of their reconstructions."""
    import numpy as np

    from flowvae.figures import style as st

    n_var = len(data["variant"])
    fig, axes = st.plt.subplots(
        n_var, 1, figsize=(11, 1.5 * n_var + 0.7), squeeze=False, layout="constrained"
    )
    for k, ax in enumerate(axes[:, 0]):
        n = data["recon"].shape[1]
        pictures = np.concatenate([data["recon_inputs"][k], data["recon"][k]])
        ax.imshow(st.mosaic(pictures, n), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([14, 44], ["input", "reconstruction"])
        ax.grid(False)
        title = f"{data['variant'][k]} (seed {data['seed'][k]})"
        ax.set_title(title, loc="left", fontsize="medium")
    fig.suptitle("Test images and their reconstructions (Bernoulli means)")
    return fig


@figure(
    "samples",
    "samples",
    "Decoder means at samples z from the prior N(0, I) for each variant, seed {seed}.",
    "Samples",
)
def samples(data: dict):
    """Per variant an 8 x 8 grid of decoder means at z ~ N(0, I)."""
    from flowvae.figures import style as st

    n_var = len(data["variant"])
    fig, axes = st.plt.subplots(
        1, n_var, figsize=(3.6 * n_var, 4.0), squeeze=False, layout="constrained"
    )
    for k, ax in enumerate(axes[0]):
        ax.imshow(st.mosaic(data["samples"][k], 8), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        ax.set_title(f"{data['variant'][k]} (seed {data['seed'][k]})")
    fig.suptitle("Decoder means at prior samples z ~ N(0, I)")
    return fig
