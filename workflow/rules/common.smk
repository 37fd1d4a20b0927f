# Everything the rules read from the config, in one place: output paths, the --settings
# each command gets, the package files each stage depends on, and the sweeps.
# The config has been validated (and its defaults filled) by the Snakefile before this runs.

import copy
import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError

R = config["results"]
F = config["figures"]
VARIANTS = list(config["variants"])
SEEDS = list(config["seeds"])
# The posterior figures draw one seed: the first one listed.
FIGURE_SEED = SEEDS[0]
# The variant the flows are compared with: the first Gaussian one (else the first listed).
REFERENCE = next(
    (v for v in VARIANTS if config["variants"][v]["family"] == "gaussian"), VARIANTS[0]
)
MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
# Software of every rule (for --software-deployment-method conda); see environment.yml.
ENV = "../../environment.yml"


class ConfigProblem(WorkflowError):
    """A config value the schema cannot check; the message names the key."""

    def __init__(self, key, problem):
        super().__init__(f"config key '{key}': {problem}")


# Variant names become folder names and the {variant} wildcard, which must not be confused
# with the other figure names (F/posterior_true.png, F/posterior_panel.png).
for _name in VARIANTS:
    if not isinstance(_name, str) or not re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9_-]*", _name
    ):
        raise ConfigProblem(
            "variants", f"name {_name!r} may use only letters, digits, '_' and '-'"
        )
    if _name in ("true", "panel"):
        raise ConfigProblem(
            "variants", f"name {_name!r} is taken by the figure posterior_{_name}"
        )


# The output folders must be creatable: say so now rather than in a traceback mid-run.
for _key in ("results", "figures"):
    _path = Path(config[_key]).absolute()
    _existing = _path
    while not _existing.exists():
        _existing = _existing.parent
    if not _existing.is_dir() or not os.access(_existing, os.W_OK | os.X_OK):
        raise ConfigProblem(
            _key, f"cannot create {_path}: {_existing} is not a writable folder"
        )


# ----------------------------------------------------------------------------- paths


def results(*parts):
    """A path under the results folder of the main study."""
    return os.path.join(R, *parts)


def sweep_results(*parts):
    """A path under the results folder of one value of one sweep."""
    return os.path.join(R, "sweeps", "{sweep}", "{value}", *parts)


def figure(name, ext):
    """A figure file: every figure rule writes NAME.png and NAME.pdf."""
    return os.path.join(F, f"{name}.{ext}")


def parent(wildcards, output):
    """The folder of a rule's first output (the --out of train and evaluate)."""
    return os.path.dirname(output[0])


def raw_folder(wildcards, input):
    """The folder holding the raw MNIST files."""
    return os.path.dirname(input.raw[0])


# ----------------------------------------------------------------------------- settings
# Each command gets only the config sections it reads, as JSON, through params: Snakemake
# reruns a job when its params change, so a section a command does not read must not be in
# its params (changing `evaluate` must not retrain). Keys that never change a result are
# dropped too: the mirror (the files are checksummed) and the thread counts (passed with
# --threads, so that a profile's set-threads takes effect).
UNTRACKED = {"data": ("mirror",), "train": ("threads",), "evaluate": ("threads",)}


def section(name):
    return {k: v for k, v in config[name].items() if k not in UNTRACKED.get(name, ())}


def settings(*sections, variant=None):
    """JSON for --settings with the given config sections (and one variant's entry)."""
    out = {name: section(name) for name in sections}
    if variant is not None:
        out["variants"] = {variant: config["variants"][variant]}
    return json.dumps(out, sort_keys=True)


def train_settings(wildcards):
    return settings("data", "model", "train", variant=wildcards.variant)


def evaluate_settings(wildcards):
    return settings("data", "model", "evaluate", variant=wildcards.variant)


def mirror_option(wildcards):
    """--mirror from data.mirror; without it the package reads $FLOWVAE_MNIST_MIRROR."""
    mirror = config["data"]["mirror"]
    return "" if mirror is None else f"--mirror {shlex.quote(str(mirror))}"


# Figures order their panels as the config orders the variants (so no sort_keys here); the
# sweep figure also reads its sweep.
FIGURE_SETTINGS = json.dumps({"variants": config["variants"]})


def sweep_figure_settings(wildcards):
    sweep = {wildcards.sweep: config["sweeps"][wildcards.sweep]}
    return json.dumps({"variants": config["variants"], "sweeps": sweep})


# ----------------------------------------------------------------------------- code
# Package files each stage depends on: editing one reruns the stage (and what follows).
# Training depends on every module except those of later stages and the command-line
# wrappers, so a new module is a training dependency until it is listed below; an extra
# rerun is cheaper than a stale result.
PACKAGE = Path(workflow.basedir) / "src" / "flowvae"
NOT_TRAINING = {
    "__init__.py",
    "__main__.py",
    "cli.py",
    "errors.py",
    "evaluate.py",
    "quadrature.py",
    "report.py",
    "figures.py",
}


def package_files(*names, exclude=()):
    """Existing package files matching the glob patterns, relative to the working folder."""
    found = {p for pattern in names for p in PACKAGE.glob(pattern)}
    return sorted(
        os.path.relpath(p)
        for p in found
        if p.relative_to(PACKAGE).as_posix() not in exclude
    )


CODE = {
    "prepare": package_files("data.py", "config.py", "io.py"),
    "train": package_files("**/*.py", exclude=NOT_TRAINING),
    "evaluate": package_files(
        "**/*.py",
        exclude=NOT_TRAINING - {"evaluate.py", "quadrature.py"},
    ),
    "report": package_files("report.py", "io.py"),
    "figures": package_files("figures.py", "io.py"),
}


# ----------------------------------------------------------------------------- targets

# The posterior grids of every variant at the figure seed (input of several figures).
GRIDS_AT_FIGURE_SEED = expand(
    results("eval/{variant}/seed{seed}/grid.npz"), variant=VARIANTS, seed=FIGURE_SEED
)


def all_figures():
    """Every figure of the study (and of its sweeps), PNG and PDF."""
    names = [
        "posterior_true",
        "posterior_panel",
        "gap_contours",
        "gap_distribution",
        "test_loss",
        "loss_curves",
        "cost_tradeoff",
        "quadrature_check",
        "reconstructions",
        "samples",
    ]
    names += [f"posterior_{v}" for v in VARIANTS]
    names += [f"sweep_{s}" for s in SWEEPS]
    return [figure(name, ext) for name in names for ext in ("png", "pdf")]


# ----------------------------------------------------------------------------- sweeps
# A sweep re-runs the study (its variants x seeds) once per value of one config key, in
# R/sweeps/{sweep}/{value}/ with the layout of the main study; each job gets the value with
# --set KEY=VALUE on top of its usual --settings. A sweep over a data.* key prepares its own
# data; a sweep over variants.NAME.* runs only the variant NAME.

SWEEP_SECTIONS = ("data", "model", "train", "evaluate", "variants")
SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"


def value_folder(value):
    """A folder name for a sweep value: 0.001 -> '0.001', [256, 256] -> '256-256'."""
    if isinstance(value, list | tuple):
        text = "-".join(value_folder(v) for v in value)
    elif isinstance(value, dict):
        text = "-".join(f"{k}={value_folder(v)}" for k, v in sorted(value.items()))
    else:
        text = json.dumps(value).strip('"')
    return re.sub(r"[^-+=.\w]", "_", text, flags=re.ASCII) or "_"


def check_sweep(name, spec):
    """The sweep's values by folder, variants and seeds; ConfigProblem names the bad key."""
    where = f"sweeps.{name}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ConfigProblem(
            where, "a sweep name may use only letters, digits, '_' and '-'"
        )
    keys = spec["key"].split(".")
    if keys[0] not in SWEEP_SECTIONS or len(keys) < 2:
        raise ConfigProblem(
            f"{where}.key",
            f"{spec['key']!r} is not a dotted key in one of {', '.join(SWEEP_SECTIONS)}",
        )
    variants = spec.get("variants", VARIANTS)
    if keys[0] == "variants":
        if len(keys) < 3 or keys[1] not in config["variants"]:
            raise ConfigProblem(
                f"{where}.key", f"{spec['key']!r} names no configured variant"
            )
        variants = spec.get("variants", [keys[1]])
        if variants != [keys[1]]:
            raise ConfigProblem(
                f"{where}.variants", f"a sweep of {spec['key']} runs only {keys[1]}"
            )
    unknown = [v for v in variants if v not in config["variants"]]
    if unknown:
        raise ConfigProblem(
            f"{where}.variants", f"unknown variant(s) {', '.join(unknown)}"
        )
    schema = yaml.safe_load(SCHEMA.read_text())
    folders = {}
    for value in spec["values"]:
        trial = copy.deepcopy(config)
        node = trial
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigProblem(
                    f"{where}.key", f"{k!r} in {spec['key']!r} is not a section"
                )
        node[keys[-1]] = value
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(schema).iter_errors(trial)
        )
        if error is not None:
            # An unknown key is the key's fault, anything else the value's.
            field = "key" if error.validator == "additionalProperties" else "values"
            raise ConfigProblem(
                f"{where}.{field}",
                f"{spec['key']} = {value!r} is not valid: {error.message}",
            )
        folder = value_folder(value)
        if folder in folders:
            raise ConfigProblem(
                f"{where}.values",
                f"{folders[folder]!r} and {value!r} would share the folder {folder!r}",
            )
        folders[folder] = value
    return {
        "key": spec["key"],
        "section": keys[0],
        "values": folders,
        "variants": list(variants),
        "seeds": list(spec.get("seeds", SEEDS)),
    }


SWEEPS = {name: check_sweep(name, spec) for name, spec in config["sweeps"].items()}


def sweep_of(wildcards):
    if wildcards.sweep not in SWEEPS:
        raise WorkflowError(f"no sweep named {wildcards.sweep!r} in the config")
    return SWEEPS[wildcards.sweep]


def sweep_value(wildcards):
    values = sweep_of(wildcards)["values"]
    if wildcards.value not in values:
        raise WorkflowError(
            f"sweep {wildcards.sweep!r} has no value folder {wildcards.value!r}"
        )
    return values[wildcards.value]


def sweep_override(wildcards):
    """--set KEY=VALUE (the value as JSON, which the package parses as YAML)."""
    override = f"{sweep_of(wildcards)['key']}={json.dumps(sweep_value(wildcards))}"
    return f"--set {shlex.quote(override)}"


def sweep_data(wildcards):
    """The prepared data of a sweep value: its own for a data.* sweep, else the main one."""
    if sweep_of(wildcards)["section"] == "data":
        return sweep_results("data/mnist.pt").format(
            sweep=wildcards.sweep, value=wildcards.value
        )
    return results("data/mnist.pt")


def sweep_runs(wildcards, pattern):
    """``pattern`` (under a sweep value's folder) for every value, variant and seed."""
    sweep = sweep_of(wildcards)
    return [
        sweep_results(pattern).format(
            sweep=wildcards.sweep, value=value, variant=variant, seed=seed
        )
        for value in sweep["values"]
        for variant in sweep["variants"]
        for seed in sweep["seeds"]
    ]


def sweep_evals(wildcards):
    return sweep_runs(wildcards, "eval/{variant}/seed{seed}/metrics.json")


def sweep_benchmarks(wildcards):
    return [
        path
        for stage in ("train", "evaluate")
        for path in sweep_runs(
            wildcards, f"benchmarks/{stage}/{{variant}}/seed{{seed}}.tsv"
        )
    ]


def sweep_value_args(wildcards):
    """The swept value of each metrics file, as JSON, in the order of sweep_evals."""
    sweep = sweep_of(wildcards)
    return [
        json.dumps(value)
        for value in sweep["values"].values()
        for _ in sweep["variants"]
        for _ in sweep["seeds"]
    ]


def all_sweeps():
    return [
        path
        for name in SWEEPS
        for path in (
            results("sweeps", name, "metrics.csv"),
            results("sweeps", name, "summary.md"),
        )
    ]


wildcard_constraints:
    variant="|".join(re.escape(v) for v in VARIANTS),
    seed=r"\d+",
    sweep=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    value=r"[^/]+",
