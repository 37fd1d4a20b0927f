"""What the study runs, from its config: variants, seeds, runs, the reference variant, sweeps,
the settings file of every job and the package files each stage depends on.

The Snakemake workflow (``workflow/rules/common.smk``) asks this module and decides nothing of
its own, so every rule of the study is plain Python that the tests call directly.

Settings files: every job reads its config sections from a JSON file under
``<results>/settings/`` (``<results>/sweeps/<sweep>/<value>/settings/`` for a sweep), written
here only when its content changes. Snakemake reruns a job whose settings file is newer than
its outputs, whether or not its own records (``.snakemake/``) survived. When a job finishes it
copies its settings file into its output folder as ``settings.json``; a finished run whose copy
differs from the current file (a job that outlived a lost Snakemake, say) gets its settings
file touched, so the next run rebuilds it.

>>> s = Study({"variants": {"standard": {"family": "gaussian"}}, "seeds": [3, 1]})
>>> s.variants, s.seeds, s.reference, s.figure_seed
(['standard'], [3, 1], 'standard', 3)
>>> s.run_file("model", variant="standard", seed=3)
'results/runs/standard/seed3/model.pt'
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowvae import config as config_mod
from flowvae.errors import ConfigError

PACKAGE = Path(__file__).resolve().parent
DATED_BACK = 946_684_800  # 2000-01-01: a settings file that matches its finished job
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

#: Files of one run (variant x seed), relative to the results folder.
RUN_FILES = {
    "model": "runs/{variant}/seed{seed}/model.pt",
    "history": "runs/{variant}/seed{seed}/history.csv",
    "train_summary": "runs/{variant}/seed{seed}/train.json",
    "metrics": "eval/{variant}/seed{seed}/metrics.json",
    "per_image": "eval/{variant}/seed{seed}/per_image.csv",
    "grid": "eval/{variant}/seed{seed}/grid.npz",
    "check": "eval/{variant}/seed{seed}/quadrature_check.csv",
    "gap_grid": "eval/{variant}/seed{seed}/gap_grid.npz",
    "train_settings": "settings/train/{variant}/seed{seed}.json",
    "evaluate_settings": "settings/evaluate/{variant}/seed{seed}.json",
    "train_benchmark": "benchmarks/train/{variant}/seed{seed}.tsv",
    "evaluate_benchmark": "benchmarks/evaluate/{variant}/seed{seed}.tsv",
}
#: Files of the whole study, relative to the results folder.
STUDY_FILES = {
    "data": "data/mnist.pt",
    "data_settings": "settings/data.json",
    "table": "metrics.csv",
    "summary": "summary.md",
    "tuning_plan": "settings/tuning_plan.json",
    "selection": "selection.csv",
}
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: Config sections each job reads, and the keys in them that never change a result (the
#: mirror: files are checksummed; threads: passed with --threads so profiles can set them).
STAGE_SECTIONS = {
    "prepare": ("data",),
    "train": ("data", "model", "train"),
    "evaluate": ("data", "model", "train", "evaluate"),
}
UNTRACKED = {"data": ("mirror",), "train": ("threads",), "evaluate": ("threads",)}
#: Package modules each stage depends on: editing one reruns the stage and what follows.
#: Training depends on every module except those listed here; an extra rerun is cheaper than
#: a stale result, so a new module counts as a training dependency until it is listed.
NOT_TRAINING = {
    "__init__.py",
    "__main__.py",
    "cli.py",
    "errors.py",
    "evaluate.py",
    "elbo.py",
    "checks.py",
    "quadrature.py",
    "report.py",
    "figures.py",
    "study.py",
    "lock.py",
    "selection.py",
}
CODE = {
    "prepare": ("data.py", "mnist_files.py", "config.py", "io.py", "config.schema.yaml"),
    "train": ("**/*.py", "config.schema.yaml"),
    "evaluate": ("**/*.py", "config.schema.yaml"),
    "report": ("report.py", "selection.py", "io.py"),
    "figures": ("figures.py", "io.py"),
}
CODE_EXCLUDE = {
    "prepare": set(),
    "train": NOT_TRAINING,
    "evaluate": NOT_TRAINING - {"evaluate.py", "elbo.py", "checks.py", "quadrature.py"},
    "report": set(),
    "figures": set(),
}


def command_line_values(cfg: dict, schema: dict | None = None) -> dict:
    """Give values from ``snakemake --config`` the types the schema asks for, in place.

    Snakemake reads ``--config seeds='[0,1]'`` as ``['0', '1']`` (strings inside lists and
    mappings); a string where the schema wants no string is parsed as YAML.

    >>> command_line_values({"seeds": ["0", "1"], "train": {"lr": "3e-4", "epochs": "5"}})
    {'seeds': [0, 1], 'train': {'lr': 0.0003, 'epochs': 5}}
    """
    return _typed(cfg, schema or config_mod.load_schema())


def _wants_string(schema: dict) -> bool:
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    return not kinds or "string" in kinds


def _typed(value: Any, schema: dict) -> Any:
    if isinstance(value, str) and not _wants_string(schema):
        return config_mod.parse_value(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in list(value):
            sub = props.get(key, extra if isinstance(extra, dict) else {})
            value[key] = _typed(value[key], sub)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            value[i] = _typed(item, schema.get("items", {}))
    return value


def _write_if_changed(path: Path, obj: dict) -> bool:
    """Write ``obj`` as JSON unless the file already holds it; True when written."""
    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    if path.is_file() and path.read_text() == text:
        return False
    from flowvae import io

    io.write_text(path, text)
    return True


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


RECORD = "settings.json"  # a finished job's copy of its settings file, beside its outputs


def record_difference(folder: Path, settings: dict) -> str | None:
    """None when the job that wrote ``folder`` recorded exactly ``settings``; else "no record"
    or the dotted keys that differ ("train.lr, train.epochs")."""
    made = _read_json(folder / RECORD)
    if made == json.loads(json.dumps(settings)):
        return None
    if made is None:
        return "no record"
    from flowvae.train import settings_difference

    return ", ".join(settings_difference(made, settings))


def _sync(path: Path, settings: dict, done: Path) -> str | None:
    """Bring the settings file ``path`` of the job whose output is ``done`` up to date.

    A finished job records its settings as ``settings.json`` beside ``done``. When they differ
    from ``settings`` the file is touched (newer than the outputs: Snakemake reruns the job)
    and the reason returned; when they match, a rewritten file is dated back (DATED_BACK:
    older than any output, logs and benchmarks included), so that changing a setting and
    changing it back reruns nothing.
    """
    changed = _write_if_changed(path, settings)
    if not done.exists():
        return None
    difference = record_difference(done.parent, settings)
    if difference == "no record":
        os.utime(path)
        return "has no record of its settings"
    if difference:
        os.utime(path)
        return f"was made with other settings ({difference})"
    if changed:
        os.utime(path, (DATED_BACK, DATED_BACK))
    return None


@dataclass
class Sweep:
    """One sweep: a dotted key, its values by folder name, and the runs it repeats."""

    name: str
    key: str
    values: dict[str, Any]
    variants: list[str]
    seeds: list[int]

    @property
    def section(self) -> str:
        return self.key.split(".")[0]


@dataclass
class Candidate:
    """One candidate setting of one variant in the tuning stage: its folder name, the values
    it sets (``labels``: short key -> value) and the config that trains it."""

    variant: str
    name: str
    labels: dict[str, Any]
    overrides: dict[str, Any]  # on top of the variant's entry: its settings and `train`
    cfg: dict


class Study:
    """The runs, targets and settings of one validated config."""

    def __init__(self, cfg: dict):
        self.cfg = config_mod.validate(cfg)
        self.results = self.cfg["results"]
        self.figures = self.cfg["figures"]
        self.all_variants = list(self.cfg["variants"])
        self._check_names()
        run = self.cfg["run_variants"]
        unknown = [v for v in run or [] if v not in self.cfg["variants"]]
        if unknown:
            raise ConfigError(
                f"config key 'run_variants': unknown variant(s) {', '.join(unknown)} "
                f"(configured: {', '.join(self.all_variants)})"
            )
        self.variants = list(run or self.all_variants)
        if self.cfg["reference"] not in self.cfg["variants"]:
            raise ConfigError(
                f"config key 'reference': {self.cfg['reference']!r} is not a configured variant"
                f" (configured: {', '.join(self.all_variants)})"
            )
        self.reference = self.cfg["reference"] if self.cfg["reference"] in self.variants else None
        self.seeds = list(self.cfg["seeds"])
        self.figure_seed = self.seeds[0]
        self.latent_2d = self.cfg["model"]["latent_dim"] == 2
        self.sweeps = {name: self._sweep(name, spec) for name, spec in self.cfg["sweeps"].items()}
        tuning = self.cfg["tuning"] or {}
        planned = bool(tuning.get("shared") or tuning.get("own"))
        self.tuning_seeds = list(tuning["seeds"]) if planned else []
        self.candidates = self._candidates()
        self.compute_cfg, self.compute_variants = self._equal_compute()

    # ------------------------------------------------------------------ checks

    def _check_names(self) -> None:
        for name in self.all_variants:
            if not NAME.fullmatch(name):
                raise ConfigError(
                    f"config key 'variants': name {name!r} may use only letters, digits, "
                    "'_' and '-'"
                )
            if name in ("true", "panel"):
                raise ConfigError(
                    f"config key 'variants': name {name!r} is taken by the figure posterior_{name}"
                )

    def check_folders(self) -> None:
        """The output folders must be creatable: say so before any job rather than mid-run."""
        for key in ("results", "figures"):
            path = Path(self.cfg[key]).absolute()
            existing = path
            while not existing.exists():
                existing = existing.parent
            if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"config key '{key}': cannot create {path}: {existing} is not a writable folder"
                )

    def describe(self) -> list[str]:
        """Lines for the log: what this run covers, and what it leaves out and why."""
        lines = [
            f"flowvae: variants {', '.join(self.variants)}; seeds "
            f"{', '.join(map(str, self.seeds))}; latent_dim {self.cfg['model']['latent_dim']}; "
            f"results in {self.results}"
        ]
        left = [v for v in self.all_variants if v not in self.variants]
        if left:
            lines.append(f"flowvae: run_variants leaves out {', '.join(left)}")
        if self.reference is None:
            lines.append(
                f"flowvae: the reference variant {self.cfg['reference']} is not run: no paired "
                "comparisons and no gap figure"
            )
        if not self.latent_2d:
            lines.append(self.not_2d_note())
        return lines

    def summary_notes(self) -> list[str]:
        """What the summary says this run leaves out, and why."""
        notes = [] if self.latent_2d else [self.not_2d_note().removeprefix("flowvae: ")]
        if self.reference is None:
            notes.append(f"the reference variant {self.cfg['reference']} is not run")
        return notes

    def not_2d_note(self) -> str:
        return (
            f"flowvae: latent_dim {self.cfg['model']['latent_dim']} != 2: exact quadrature, "
            "posterior contours and the gap figures are left out (they integrate over a 2-D grid)"
        )

    # ------------------------------------------------------------------ paths

    def path(self, *parts: str) -> str:
        return os.path.join(self.results, *parts)

    def run_file(
        self, kind: str, variant: str = "{variant}", seed: Any = "{seed}", root: str | None = None
    ) -> str:
        """The file ``kind`` (a key of RUN_FILES) of one run, or its pattern with wildcards."""
        pattern = RUN_FILES[kind].format(variant=variant, seed=seed)
        return os.path.join(self.results if root is None else root, pattern)

    def run_files(
        self,
        kind: str,
        variants: list[str] | None = None,
        seeds: list[int] | None = None,
        root: str | None = None,
    ) -> list[str]:
        """The file ``kind`` of every run (variants outer, seeds inner)."""
        return [
            self.run_file(kind, v, s, root)
            for v in (self.variants if variants is None else variants)
            for s in (self.seeds if seeds is None else seeds)
        ]

    def study_file(self, kind: str, root: str | None = None) -> str:
        return os.path.join(self.results if root is None else root, STUDY_FILES[kind])

    def sweep_root(self, sweep: str = "{sweep}", value: str = "{value}") -> str:
        return self.path("sweeps", sweep, value)

    def figure_file(self, name: str, ext: str) -> str:
        return os.path.join(self.figures, f"{name}.{ext}")

    @staticmethod
    def code(stage: str) -> list[str]:
        """Package files of ``stage`` (CODE), relative to the working folder."""
        found = {p for pattern in CODE[stage] for p in PACKAGE.glob(pattern)}
        return sorted(
            os.path.relpath(p)
            for p in found
            if p.relative_to(PACKAGE).as_posix() not in CODE_EXCLUDE[stage]
        )

    # ------------------------------------------------------------------ settings

    def stage_settings(self, stage: str, variant: str | None = None, cfg: dict | None = None):
        """The config sections job ``stage`` reads (without untracked keys), and its variant."""
        cfg = self.cfg if cfg is None else cfg
        out: dict[str, Any] = {
            name: {k: v for k, v in cfg[name].items() if k not in UNTRACKED.get(name, ())}
            for name in STAGE_SECTIONS[stage]
        }
        if variant is not None:
            out["variants"] = {variant: cfg["variants"][variant]}
        return out

    def sync_settings(self) -> list[str]:
        """Write every job's settings file when it changed, and touch those of finished jobs made
        with other settings, so they rebuild. Returns a log line per stale job."""
        notes: list[str] = []
        groups = [(self.results, self.cfg, self.variants, self.seeds)]
        if self.compute_variants:
            groups.append(
                (self.compute_root(), self.compute_cfg, self.compute_variants, self.seeds)
            )
        for sweep in self.sweeps.values():
            for folder, value in sweep.values.items():
                root = self.sweep_root(sweep.name, folder)
                groups.append((root, self.sweep_config(sweep, value), sweep.variants, sweep.seeds))
        for root, cfg, variants, seeds in groups:
            jobs = [
                (
                    Path(self.study_file("data_settings", root)),
                    self.stage_settings("prepare", cfg=cfg),
                    Path(self.study_file("data", root)),
                )
            ]
            for v in variants:
                for s in seeds:
                    for stage, done in (("train", "model"), ("evaluate", "metrics")):
                        jobs.append(
                            (
                                Path(self.run_file(f"{stage}_settings", v, s, root)),
                                self.stage_settings(stage, v, cfg),
                                Path(self.run_file(done, v, s, root)),
                            )
                        )
            if root == self.results and self.candidates:
                plan = Path(self.study_file("tuning_plan"))
                if (
                    _write_if_changed(plan, self.tuning_plan())
                    and Path(self.study_file("selection")).exists()
                ):
                    notes.append("flowvae: the tuning plan changed; the selection is redone")
                for cands in self.candidates.values():
                    for c in cands:
                        for s in self.tuning_seeds:
                            troot = self.tuning_root(c.name)
                            jobs.append(
                                (
                                    Path(self.run_file("train_settings", c.variant, s, troot)),
                                    self.stage_settings("train", c.variant, c.cfg),
                                    Path(self.run_file("model", c.variant, s, troot)),
                                )
                            )
            for path, settings, done in jobs:
                note = _sync(path, settings, done)
                if note:
                    notes.append(f"flowvae: {done.parent} {note}; it will be rebuilt")
        return notes

    # ------------------------------------------------------------------ sweeps

    def _sweep(self, name: str, spec: dict) -> Sweep:
        """Check one sweep; ConfigError names the bad key."""
        where = f"sweeps.{name}"
        if not NAME.fullmatch(name):
            raise ConfigError(
                f"config key '{where}': a sweep name may use only letters, digits, '_' and '-'"
            )
        keys = spec["key"].split(".")
        sections = ("data", "model", "train", "evaluate", "variants")
        if keys[0] not in sections or len(keys) < 2:
            raise ConfigError(
                f"config key '{where}.key': {spec['key']!r} is not a dotted key in one of "
                f"{', '.join(sections)}"
            )
        variants = spec.get("variants", self.variants)
        if keys[0] == "variants":
            if len(keys) < 3 or keys[1] not in self.cfg["variants"]:
                raise ConfigError(
                    f"config key '{where}.key': {spec['key']!r} names no configured variant"
                )
            variants = spec.get("variants", [keys[1]])
            if variants != [keys[1]]:
                raise ConfigError(
                    f"config key '{where}.variants': a sweep of {spec['key']} runs only {keys[1]}"
                )
        unknown = [v for v in variants if v not in self.cfg["variants"]]
        if unknown:
            raise ConfigError(
                f"config key '{where}.variants': unknown variant(s) {', '.join(unknown)}"
            )
        sweep = Sweep(name, spec["key"], {}, list(variants), list(spec.get("seeds", self.seeds)))
        for value in spec["values"]:
            try:
                self.sweep_config(sweep, value)
            except ConfigError as exc:
                text = str(exc).lower()  # an unknown key is the key's fault, else the value's
                field = "key" if "additional properties" in text or "section" in text else "values"
                raise ConfigError(
                    f"config key '{where}.{field}': {spec['key']} = {value!r} is not valid: {exc}"
                ) from None
            folder = value_folder(value)
            if folder in sweep.values:
                raise ConfigError(
                    f"config key '{where}.values': {sweep.values[folder]!r} and {value!r} would "
                    f"share the folder {folder!r}"
                )
            sweep.values[folder] = value
        return sweep

    # ------------------------------------------------------------------ equal compute

    def _equal_compute(self) -> tuple[dict | None, list[str]]:
        """The config of the equal-compute comparison (each variant's epochs from
        ``equal_compute``) and the variants it trains again (whose epochs change)."""
        epochs = self.cfg["equal_compute"]
        if not epochs:
            return None, []
        if unknown := sorted(set(epochs) - set(self.all_variants)):
            raise ConfigError(
                f"config key 'equal_compute': unknown variant(s) {', '.join(unknown)}"
            )
        trial = copy.deepcopy(self.cfg)
        changed = []
        for v, n in epochs.items():
            if v in self.variants and config_mod.train_settings(self.cfg, v)["epochs"] != n:
                entry = trial["variants"][v]
                entry["train"] = {**entry.get("train", {}), "epochs": n}
                changed.append(v)
        return config_mod.validate(trial), [v for v in self.variants if v in changed]

    def compute_root(self) -> str:
        return self.path("equal_compute")

    def compute_runs(self, kind: str) -> list[str]:
        """The file ``kind`` of every run of the equal-compute comparison: its own for the
        variants trained again, the main study's for the others."""
        return [
            self.run_file(kind, v, s, self.compute_root() if v in self.compute_variants else None)
            for v in self.variants
            for s in self.seeds
        ]

    def compute_targets(self) -> list[str]:
        return [self.study_file("table", self.compute_root())] if self.compute_cfg else []

    # ------------------------------------------------------------------ tuning

    def tuning_root(self, candidate: str = "{candidate}") -> str:
        """The results folder of one tuning candidate (the study's layout below it)."""
        return self.path("tuning", candidate)

    def tuning_runs(self, kind: str) -> list[str]:
        """The file ``kind`` of every tuning run (variant, candidate, seed)."""
        return [
            self.run_file(kind, c.variant, s, self.tuning_root(c.name))
            for cands in self.candidates.values()
            for c in cands
            for s in self.tuning_seeds
        ]

    def tuning_plan(self) -> dict:
        """What the selection reads: the rule and, per candidate, its values and runs."""
        return {
            "rule": (self.cfg["tuning"] or {}).get("select", "lowest_mean_val_loss"),
            "candidates": [
                {
                    "variant": c.variant,
                    "candidate": c.name,
                    "labels": c.labels,
                    "overrides": c.overrides,
                    "runs": [
                        {
                            "seed": s,
                            "summary": self.run_file("train_summary", c.variant, s, root),
                            "settings": self.run_file("train_settings", c.variant, s, root),
                        }
                        for s in self.tuning_seeds
                    ],
                }
                for cands in self.candidates.values()
                for c in cands
                for root in [self.tuning_root(c.name)]
            ],
        }

    def tuning_targets(self) -> list[str]:
        """The tuning stage's outputs (`snakemake tuning`): the selection table and figure."""
        if not self.candidates:
            return []
        return [self.study_file("selection")] + [
            self.figure_file("tuning", ext) for ext in ("png", "pdf")
        ]

    def candidate(self, variant: str, name: str) -> Candidate:
        for c in self.candidates.get(variant, []):
            if c.name == name:
                return c
        raise ConfigError(f"no tuning candidate {name!r} of variant {variant!r} in the config")

    def _candidates(self) -> dict[str, list[Candidate]]:
        """Every variant's candidates: the product of ``tuning.shared`` (train keys) and its
        ``tuning.own`` options; ConfigError names the key of a bad or unequal grid."""
        spec = self.cfg["tuning"]
        if not self.tuning_seeds:
            return {}
        if clash := sorted(set(self.tuning_seeds) & set(self.seeds)):
            raise ConfigError(
                f"config key 'tuning.seeds': {clash} are also seeds of the final comparison "
                "(`seeds`); tuning seeds must be others"
            )
        if unknown := sorted(set(spec["own"]) - set(self.all_variants)):
            raise ConfigError(f"config key 'tuning.own': unknown variant(s) {', '.join(unknown)}")
        counts = {v: len(spec["own"].get(v, [{}])) for v in self.variants}
        if len(set(counts.values())) > 1:
            raise ConfigError(
                "config key 'tuning.own': every variant needs the same number of options (the "
                f"same number of trials), found {counts}"
            )
        shared = [
            dict(zip(spec["shared"], values, strict=True))
            for values in itertools.product(*spec["shared"].values())
        ]
        out: dict[str, list[Candidate]] = {}
        for v in self.variants:
            out[v] = []
            for i, own in enumerate(spec["own"].get(v, [{}])):
                for train in shared:
                    out[v].append(self._candidate(v, train, own, f"tuning.own.{v}[{i}]"))
            names = [c.name for c in out[v]]
            if len(set(names)) != len(names):
                raise ConfigError(f"config key 'tuning': two candidates of {v} are the same")
        return out

    def _candidate(self, variant: str, train: dict, own: dict, where: str) -> Candidate:
        entry = copy.deepcopy(self.cfg["variants"][variant])
        own = copy.deepcopy(own)
        own_train = own.pop("train", {})
        entry.update(own)
        entry["train"] = {**entry.get("train", {}), **own_train, **train}
        labels = {**own, **own_train, **train}
        overrides = {**own, "train": {**own_train, **train}}
        trial = copy.deepcopy(self.cfg)
        trial["variants"] = {variant: entry}
        trial["run_variants"] = None
        trial["reference"] = variant
        try:
            trial = config_mod.validate(trial)
        except ConfigError as exc:
            raise ConfigError(f"config key '{where}' (with tuning.shared {train}): {exc}") from None
        return Candidate(variant, value_folder(labels), labels, overrides, trial)

    def sweep_config(self, sweep: Sweep, value: Any) -> dict:
        """The study's config with the sweep's key set to ``value``, validated."""
        trial = copy.deepcopy(self.cfg)
        keys = sweep.key.split(".")
        config_mod.set_dotted(trial, keys, copy.deepcopy(value))
        if keys[0] == "train":  # a variant's own setting (selected by tuning) would shadow it
            for settings in trial["variants"].values():
                if keys[1] in settings.get("train", {}):
                    settings["train"][keys[1]] = copy.deepcopy(value)
        return config_mod.validate(trial)

    # ------------------------------------------------------------------ targets

    def figure_jobs(self) -> list[dict]:
        """Every figure of the study: name, registry entry, inputs (figures.REGISTRY)."""
        from flowvae.figures import REGISTRY

        jobs = []
        for fig in REGISTRY.values():
            if not fig.inputs:  # the sweep figure: a rule of its own per sweep (sweeps.smk)
                continue
            if fig.latent_2d and not self.latent_2d:
                continue
            if fig.needs_reference and self.reference is None:
                continue
            if fig.needs_tuning and not self.candidates:
                continue
            names = [f"{fig.name}_{v}" for v in self.variants] if fig.per_variant else [fig.name]
            for i, name in enumerate(names):
                variants = [self.variants[i]] if fig.per_variant else self.variants
                jobs.append(
                    {"name": name, "figure": fig, "inputs": self.figure_inputs(fig, variants)}
                )
        return jobs

    def figure_inputs(self, fig, variants: list[str]) -> list[str]:
        paths: list[str] = []
        for kind, seeds in fig.inputs:
            if kind in STUDY_FILES:
                paths.append(self.study_file(kind))
            else:
                chosen = [self.figure_seed] if seeds == "figure_seed" else self.seeds
                paths += self.run_files(kind, variants, chosen)
        return paths

    def targets(self) -> list[str]:
        """What `snakemake` builds: every run's evaluation (so a copy without models rebuilds
        them), the tables, every figure (PNG and PDF) and the sweeps' tables."""
        out = self.run_files("metrics") + [self.study_file("table"), self.study_file("summary")]
        out += [
            self.figure_file(j["name"], ext) for j in self.figure_jobs() for ext in ("png", "pdf")
        ]
        out += self.tuning_targets() + self.compute_targets()
        for name in self.sweeps:
            out += [
                self.path("sweeps", name, "metrics.csv"),
                self.path("sweeps", name, "summary.md"),
            ]
            out += [self.figure_file(f"sweep_{name}", ext) for ext in ("png", "pdf")]
        return out


def value_folder(value: Any) -> str:
    """A folder name for a sweep value.

    >>> value_folder(0.001), value_folder([256, 256]), value_folder({"a": 1})
    ('0.001', '256-256', 'a=1')
    """
    if isinstance(value, list | tuple):
        text = "-".join(value_folder(v) for v in value)
    elif isinstance(value, dict):
        text = "-".join(f"{k}={value_folder(v)}" for k, v in sorted(value.items()))
    else:
        text = json.dumps(value).strip('"')
    return re.sub(r"[^-+=.\w]", "_", text, flags=re.ASCII) or "_"


def from_snakemake(config: dict) -> Study:
    """The Study of Snakemake's config dict (typed in place first); ConfigError names the key."""
    command_line_values(config)
    study = Study(config)
    study.check_folders()
    return study
