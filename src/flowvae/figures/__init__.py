"""The study's figures: each drawn from its figure data, a small file collected from the runs.

``write_data`` collects a figure data file from the runs' files (``flowvae figure-data``);
``render`` draws a figure from that file alone and saves PNG and/or PDF (``flowvae figure``).
The figures and their data are declared beside their functions (flowvae.figures.registry):

- ``posteriors``: contours of the true posterior and of q (2-D latent space only);
- ``checks``: the per-image posterior gap and the quadrature check;
- ``losses``: test loss, learning curves, compute cost, sweeps and tuning;
- ``curves``: the test loss per epoch beside the poster's curves;
- ``pictures``: reconstructions and prior samples;
- ``style``: the drawing helpers (matplotlib, seaborn), loaded only to draw;
- ``store``: reading and writing the figure data files.

Importing this package loads neither matplotlib nor pandas (the workflow plans every job
from the registry); the drawing and collecting functions import them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flowvae.errors import FlowvaeError
from flowvae.figures import checks, curves, losses, pictures, posteriors  # noqa: F401
from flowvae.figures.registry import DATA, REGISTRY, Figure, FigureData, FigureJob, jobs

__all__ = ["DATA", "REGISTRY", "Figure", "FigureData", "FigureJob", "jobs", "render", "write_data"]

log = logging.getLogger(__name__)


def _known(name: str, table: dict, what: str):
    if name not in table:
        raise FlowvaeError(f"unknown {what} '{name}' (known: {', '.join(sorted(table))})")
    return table[name]


def write_data(
    name: str, inputs: dict[str, list[Path]], out: Path, options: dict | None = None
) -> bool:
    """Collect the figure data ``name`` from ``inputs`` (input name -> files) into ``out``;
    the file is rewritten only if its content changes (returns whether it was)."""
    from flowvae.figures import store

    data = _known(name, DATA, "figure data")
    for path in (p for paths in inputs.values() for p in paths):
        if not Path(path).is_file():
            raise FlowvaeError(f"input file {path} of figure data {name} does not exist")
    content = data.collect({k: [Path(p) for p in v] for k, v in inputs.items()}, options or {})
    written = store.write(content, out)
    log.info("figure data %s -> %s (%s)", name, out, "written" if written else "unchanged")
    return written


def read_data(name: str, path: Path):
    """The figure data of figure ``name`` at ``path`` (a table or a dict of arrays)."""
    from flowvae.figures import store

    data = DATA[_known(name, REGISTRY, "figure").data]
    if data.ext == "npz":
        return store.read_arrays(path, name, data.fields)
    return store.read_table(path, name, data.fields)


def render(name: str, data_path: Path, outputs: list[Path], variant: str | None = None) -> None:
    """Draw the figure ``name`` from its figure data file and save it (atomically) to every
    output; a per-variant figure draws ``variant``."""
    import numpy as np

    from flowvae import io
    from flowvae.figures import style

    fig_decl = _known(name, REGISTRY, "figure")
    if not outputs:
        raise FlowvaeError(f"figure {name} has no output file")
    if fig_decl.per_variant and variant is None:
        raise FlowvaeError(f"figure {name} is drawn per variant: give the variant")
    content = read_data(name, Path(data_path))
    before = set(style.plt.get_fignums())
    try:
        with style.plt.rc_context(style.theme()):
            np.random.seed(0)  # seaborn's strip-plot jitter: the same figure every time
            fig = fig_decl.draw(content, *((variant,) if fig_decl.per_variant else ()))
            style.freeze_layout(fig)
            supported = fig.canvas.get_supported_filetypes()
            for out in outputs:
                if Path(out).suffix.lstrip(".").lower() not in supported:
                    raise FlowvaeError(f"output {out} of figure {name}: unsupported file type")
                io.save_figure(fig, out, dpi=style.DPI)
    finally:
        for num in set(style.plt.get_fignums()) - before:
            style.plt.close(num)
    log.info("figure %s -> %s", name, ", ".join(map(str, outputs)))
