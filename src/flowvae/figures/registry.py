"""The study's figures and the data each draws: declared beside their functions, planned here.

A figure is drawn in two steps, each a job of the workflow:

1. its **figure data** (``FigureData``, one file ``<results>/figdata/<name>.<ext>``) is
   collected from the runs' files: exactly the points, curves, per-image values and grids the
   figure draws, with the variant and seed of each row, in the variants' config order;
2. the **figure** (``Figure``) is drawn from that one file alone (no config, no other file).

The figure data are committed, so a fresh clone redraws any figure without the runs. This
module imports nothing heavy: the workflow plans every job from it without loading matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FIGDATA = "figdata"  # the folder of the figure data, under the results folder


@dataclass(frozen=True)
class Input:
    """Files of one kind that figure data read.

    ``kind``: a key of flowvae.study.RUN_FILES (one file per run), of STUDY_FILES (one file),
    or ``sweep_table`` (the metrics table of the sweep of the figure). ``seeds``: ``all`` or
    ``figure`` (the study's first seed only). ``variants``: ``all`` (config order) or
    ``reference``. ``runs``: ``study`` or ``tuning`` (every candidate's runs on the tuning
    seeds, in the tuning plan's order). ``ancient``: a study file whose time says nothing (a
    settings file rewritten at each parse); the data are rebuilt when another input changes.
    """

    kind: str
    seeds: str = "all"
    variants: str = "all"
    runs: str = "study"
    ancient: bool = False


@dataclass(frozen=True)
class FigureData:
    """What one or more figures draw; ``collect(inputs, options)`` builds it from the runs'
    files (``inputs``: input name -> paths, ``options``: name -> string, e.g. a sweep's key),
    as a table (csv, csv.gz) or a dict of arrays (npz)."""

    name: str
    ext: str
    fields: tuple[str, ...]  # the columns (csv) or arrays (npz) the file must hold
    inputs: dict[str, Input]
    collect: Callable[..., Any]


@dataclass(frozen=True)
class Figure:
    """One figure: ``draw(data)`` (``draw(data, variant)`` for a per-variant figure) returns a
    matplotlib figure. ``caption`` is reStructuredText with ``str.format`` fields named in
    CAPTION_FIELDS, filled by ``caption()``."""

    name: str
    data: str
    draw: Callable[..., Any]
    caption: str
    category: str
    latent_2d: bool = False  # needs the 2-D quadrature or contour grids
    per_variant: bool = False  # one figure NAME_<variant> per variant
    needs_reference: bool = False  # left out when the reference variant is not run
    needs_tuning: bool = False  # only with a tuning stage (config key `tuning`)
    per_sweep: bool = False  # one figure sweep_<sweep> per sweep (workflow/rules/sweeps.smk)


#: Every figure and every figure data by name; the workflow, the report and the tests read
#: these (filled by the decorators below when flowvae.figures is imported).
REGISTRY: dict[str, Figure] = {}
DATA: dict[str, FigureData] = {}
#: The fields a caption may use (values from the config, see ``caption_values``).
CAPTION_FIELDS = ("seed", "seeds", "grid_extent", "tuning_seeds", "select", "variant")


def figure_data(name: str, ext: str, fields: tuple[str, ...], **inputs: Input):
    """Declare the decorated function as the collector of the figure data ``name``: a file
    ``<name>.<ext>`` holding at least ``fields``, collected from ``inputs``."""

    def register(collect):
        if name in DATA:
            raise ValueError(f"figure data {name!r} declared twice")
        DATA[name] = FigureData(name, ext, fields, inputs, collect)
        return collect

    return register


def figure(name: str, data: str, caption: str, category: str, **flags: bool):
    """Declare the decorated function as the figure ``name``, drawn from the data ``data``."""

    def register(draw):
        if name in REGISTRY:
            raise ValueError(f"figure {name!r} declared twice")
        REGISTRY[name] = Figure(name, data, draw, caption, category, **flags)
        return draw

    return register


# ----------------------------------------------------------------------------- planning


@dataclass
class DataJob:
    """One figure data file of the study and the files it is collected from."""

    data: FigureData
    path: str
    inputs: dict[str, list[str]]
    ancient: list[str] = field(default_factory=list)  # input names whose times say nothing


@dataclass
class FigureJob:
    """One figure of the study: its files, its data job and its caption (filled)."""

    name: str
    figure: Figure
    variant: str | None
    data: DataJob
    png: str
    pdf: str
    caption: str


def data_path(results: str, data: FigureData, stem: str | None = None) -> str:
    return os.path.join(results, FIGDATA, f"{stem or data.name}.{data.ext}")


def caption_values(study) -> dict[str, str]:
    """The caption fields of ``study`` (see CAPTION_FIELDS), except the variant."""
    tuning = study.cfg.get("tuning") or {}
    return {
        "seed": str(study.figure_seed),
        "seeds": ", ".join(map(str, study.seeds)),
        "grid_extent": f"{study.cfg['evaluate']['grid_extent']:g}",
        "tuning_seeds": ", ".join(map(str, tuning.get("seeds") or [])),
        "select": str(tuning.get("select", "")),
    }


def caption(fig: Figure, values: dict[str, str], data_file: str, variant: str | None) -> str:
    """The figure's caption with its fields filled and a link to its data in the report."""
    text = fig.caption.format(**values, variant=variant or "")
    name = os.path.basename(data_file)
    return f"{text}\n\nDrawn from its figure data `{name}`_ (``{data_file}``).\n"


def _input_files(study, spec: Input) -> list[str]:
    from flowvae.layout import RUN_FILES

    if spec.kind not in RUN_FILES:
        return [study.study_file(spec.kind)]
    if spec.runs == "tuning":
        return study.tuning_runs(spec.kind)
    variants = [study.reference] if spec.variants == "reference" else study.variants
    seeds = [study.figure_seed] if spec.seeds == "figure" else study.seeds
    return study.run_files(spec.kind, variants, seeds)


def data_job(study, data: FigureData) -> DataJob:
    """The job that writes ``data`` for ``study`` (files in config order of the variants)."""
    inputs = {key: _input_files(study, spec) for key, spec in data.inputs.items()}
    ancient = [key for key, spec in data.inputs.items() if spec.ancient]
    return DataJob(data, data_path(study.results, data), inputs, ancient)


def planned(study, fig: Figure) -> bool:
    """Whether ``study`` draws ``fig`` (its latent space, reference run and tuning stage)."""
    return not (
        fig.per_sweep
        or (fig.latent_2d and not study.latent_2d)
        or (fig.needs_reference and study.reference is None)
        or (fig.needs_tuning and not study.candidates)
    )


def jobs(study) -> list[FigureJob]:
    """Every figure of ``study`` (a flowvae.study.Study: its variants, seeds, figure_seed,
    reference, latent_2d, candidates, cfg and file paths), in registry order."""
    values = caption_values(study)
    data_jobs: dict[str, DataJob] = {}
    out = []
    for fig in REGISTRY.values():
        if not planned(study, fig):
            continue
        if fig.data not in data_jobs:
            data_jobs[fig.data] = data_job(study, DATA[fig.data])
        job = data_jobs[fig.data]
        for variant in study.variants if fig.per_variant else [None]:
            name = f"{fig.name}_{variant}" if variant else fig.name
            out.append(
                FigureJob(
                    name, fig, variant, job,
                    study.figure_file(name, "png"), study.figure_file(name, "pdf"),
                    caption(fig, values, job.path, variant),
                )
            )  # fmt: skip
    return out
