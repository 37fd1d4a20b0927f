"""What the study runs, from its config: variants, seeds, runs, the reference variant, the
tuning and equal-compute stages, sweeps, every job's settings file and its targets.

The Snakemake workflow (``workflow/rules/common.smk``) asks this package and decides nothing
of its own, so every rule of the study is plain Python that the tests call directly. Where
files live: :mod:`flowvae.layout`; settings files: :mod:`.settings`; tuning and equal compute:
:mod:`.tuning`; sweeps: :mod:`.sweeps`.

>>> s = Study({"variants": {"standard": {"family": "gaussian"}}, "seeds": [3, 1]})
>>> s.variants, s.seeds, s.reference, s.figure_seed
(['standard'], [3, 1], 'standard', 3)
>>> s.run_file("model", variant="standard", seed=3)
'results/runs/standard/seed3/model.pt'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flowvae import config as config_mod
from flowvae import spec as spec_mod
from flowvae.errors import ConfigError
from flowvae.layout import MNIST_FILES, RUN_FILES, STUDY_FILES, Layout, value_folder
from flowvae.study import settings as settings_mod
from flowvae.study.sweeps import NAME, Sweep, parse_sweep, sweep_config
from flowvae.study.tuning import Candidate, candidates, equal_compute

__all__ = [
    "MNIST_FILES",
    "RUN_FILES",
    "STUDY_FILES",
    "Candidate",
    "Study",
    "Sweep",
    "from_snakemake",
    "value_folder",
]


@dataclass(frozen=True)
class Group:
    """Runs that share a results root and a config: (variants x seeds) under ``root``."""

    root: str
    cfg: dict
    variants: list[str]
    seeds: list[int]
    own_data: bool = False  # a prepare job of its own (the main study, a data.* sweep)


class Study(Layout):
    """The runs, targets and settings of one validated config."""

    def __init__(self, cfg: dict):
        self.cfg = config_mod.validate(cfg)
        super().__init__(self.cfg["results"], self.cfg["figures"])
        self.all_variants = list(self.cfg["variants"])
        self._check_names()
        run = self.cfg["run_variants"]
        if unknown := [v for v in run or [] if v not in self.cfg["variants"]]:
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
        self.sweeps = {
            name: parse_sweep(self.cfg, self.variants, self.seeds, name, spec)
            for name, spec in self.cfg["sweeps"].items()
        }
        tuning = self.cfg["tuning"] or {}
        planned = bool(tuning.get("shared") or tuning.get("own"))
        self.tuning_seeds = list(tuning["seeds"]) if planned else []
        self.candidates = candidates(self.cfg, self.variants, self.tuning_seeds, self.seeds)
        self.compute_cfg, self.compute_variants = equal_compute(self.cfg, self.variants)
        self.records: set[str] = set()  # the outputs of jobs that are records (write_settings)

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
        if left := [v for v in self.all_variants if v not in self.variants]:
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

    # ------------------------------------------------------------------ runs

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

    def sweep_config(self, sweep: Sweep, value) -> dict:
        return sweep_config(self.cfg, sweep, value)

    # ------------------------------------------------------------------ settings files

    def groups(self) -> list[Group]:
        """Every group of runs the study plans: the main study, the equal-compute runs, each
        sweep value, each tuning candidate."""
        out = [Group(self.results, self.cfg, self.variants, self.seeds, own_data=True)]
        if self.compute_variants:
            out.append(Group(self.compute_root(), self.compute_cfg, self.compute_variants,
                             self.seeds))  # fmt: skip
        for sweep in self.sweeps.values():
            for folder, value in sweep.values.items():
                root = self.sweep_root(sweep.name, folder)
                cfg = self.sweep_config(sweep, value)
                out.append(Group(root, cfg, sweep.variants, sweep.seeds, sweep.section == "data"))
        for cands in self.candidates.values():
            for c in cands:
                out.append(Group(self.tuning_root(c.name), c.cfg, [c.variant], self.tuning_seeds))
        return out

    def write_settings(self) -> list[str]:
        """Write every job's settings file whose key changed, and the runtime files. Returns
        a log line per finished job that will be rebuilt."""
        jobs: list[settings_mod.Job] = []
        notes = []
        for group in self.groups():
            specs = [config_mod.resolve(group.cfg, v, s) for v in group.variants
                     for s in group.seeds]  # fmt: skip
            kept = Path(self.study_file("records", group.root)).is_file()
            if group.own_data:
                jobs.append(
                    settings_mod.Job(
                        Path(self.study_file("data_settings", group.root)),
                        spec_mod.data_settings_tree(specs[0].data),
                        Path(self.study_file("data", group.root)),
                    )
                )
            for spec in specs:
                files = {
                    k: self.run_file(k, spec.variant, spec.seed, group.root) for k in RUN_FILES
                }
                jobs += settings_mod.run_jobs(spec, files, kept)
            if group.root == self.results:
                settings_mod.write_runtime(Path(self.study_file("runtime")), specs)
        if self.candidates:
            plan = Path(self.study_file("tuning_plan"))
            before = plan.is_file()  # (none on a fresh clone: nothing changed)
            written = settings_mod.write_if_changed(plan, self.tuning_plan())
            if written and before and Path(self.study_file("selection")).exists():
                notes.append("flowvae: the tuning plan changed; the selection is redone")
        notes += settings_mod.write(jobs)
        self.records = settings_mod.records(jobs)
        return notes

    # ------------------------------------------------------------------ equal compute

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

    # ------------------------------------------------------------------ targets

    def figure_jobs(self) -> list:
        """Every figure of the study and the job writing its figure data
        (flowvae.figures.registry.jobs: the registry decides, matplotlib is not loaded)."""
        from flowvae.figures import jobs

        return jobs(self)

    def targets(self) -> list[str]:
        """What `snakemake` builds: every run's evaluation (so a copy without models rebuilds
        them), the tables, every figure (PNG and PDF) and the sweeps' tables."""
        out = self.run_files("metrics") + [self.study_file("table"), self.study_file("summary")]
        out += [path for job in self.figure_jobs() for path in (job.png, job.pdf)]
        out += self.tuning_targets() + self.compute_targets()
        for name in self.sweeps:
            out += [
                self.path("sweeps", name, "metrics.csv"),
                self.path("sweeps", name, "summary.md"),
            ]
            out += [self.figure_file(f"sweep_{name}", ext) for ext in ("png", "pdf")]
        return out


def from_snakemake(config: dict) -> Study:
    """The Study of Snakemake's config dict (typed in place first); ConfigError names the key."""
    config_mod.command_line_values(config)
    study = Study(config)
    study.check_folders()
    return study
