"""Where every file of the study lives: one run's files, the study's files, and the roots of
the tuning candidates, the equal-compute comparison and the sweeps (each with the main study's
layout below it).

>>> lay = Layout("results", "figures")
>>> lay.run_file("model", "standard", 3)
'results/runs/standard/seed3/model.pt'
>>> lay.run_file("model", root=lay.tuning_root("lr=0.001"))
'results/tuning/lr=0.001/runs/{variant}/seed{seed}/model.pt'
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

#: Files of one run (variant x seed), relative to a results root.
RUN_FILES = {
    "model": "runs/{variant}/seed{seed}/model.pt",
    "history": "runs/{variant}/seed{seed}/history.csv",
    "train_summary": "runs/{variant}/seed{seed}/train.json",
    "metrics": "eval/{variant}/seed{seed}/metrics.json",
    "per_image": "eval/{variant}/seed{seed}/per_image.csv.gz",
    "grid": "eval/{variant}/seed{seed}/grid.npz",
    "check": "eval/{variant}/seed{seed}/quadrature_check.csv",
    "gap_grid": "eval/{variant}/seed{seed}/gap_grid.npz",
    "train_settings": "settings/train/{variant}/seed{seed}.json",
    "evaluate_settings": "settings/evaluate/{variant}/seed{seed}.json",
    "train_benchmark": "benchmarks/train/{variant}/seed{seed}.tsv",
    "evaluate_benchmark": "benchmarks/evaluate/{variant}/seed{seed}.tsv",
}
#: Files of the whole study, relative to a results root.
STUDY_FILES = {
    "data": "data/mnist.pt",
    "data_settings": "settings/data.json",
    "runtime": "settings/runtime.json",
    "table": "metrics.csv",
    "summary": "summary.md",
    "budgets": "budgets.csv",
    "spikes": "spikes.csv",
    "tuning_plan": "settings/tuning_plan.json",
    "selection": "selection.csv",
    "records": "records.json",
}
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class Layout:
    """Paths under the results folder ``results`` and the figures folder ``figures``."""

    def __init__(self, results: str, figures: str):
        self.results, self.figures = results, figures

    def path(self, *parts: str) -> str:
        return os.path.join(self.results, *parts)

    def run_file(
        self, kind: str, variant: str = "{variant}", seed: Any = "{seed}", root: str | None = None
    ) -> str:
        """The file ``kind`` (a key of RUN_FILES) of one run, or its pattern with wildcards."""
        pattern = RUN_FILES[kind].format(variant=variant, seed=seed)
        return os.path.join(self.results if root is None else root, pattern)

    def study_file(self, kind: str, root: str | None = None) -> str:
        return os.path.join(self.results if root is None else root, STUDY_FILES[kind])

    def figure_file(self, name: str, ext: str) -> str:
        return os.path.join(self.figures, f"{name}.{ext}")

    def sweep_root(self, sweep: str = "{sweep}", value: str = "{value}") -> str:
        return self.path("sweeps", sweep, value)

    def tuning_root(self, candidate: str = "{candidate}") -> str:
        """The results folder of one tuning candidate (the study's layout below it)."""
        return self.path("tuning", candidate)

    def compute_root(self) -> str:
        return self.path("equal_compute")


def value_folder(value: Any) -> str:
    """A folder name for a sweep value or a tuning candidate's labels.

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
