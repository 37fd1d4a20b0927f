"""The settings file of every job: what decides its result, and its key (flowvae.spec).

A job's settings file is rewritten only when its text changes, and its text changes exactly
when its key does; Snakemake reruns a job whose input is newer than its outputs, so that is the
one staleness rule. What never changes a result (device, checkpoint interval) goes to one
runtime file per results root, which the rules read as ``ancient`` (its time never reruns
anything); threads come with ``--threads``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flowvae import io
from flowvae import spec as spec_mod
from flowvae.spec import RunSpec


@dataclass(frozen=True)
class Job:
    """One job's settings file, its content, and the output whose presence means "done"."""

    path: Path
    tree: dict
    done: Path


def write_if_changed(path: Path, obj: dict) -> bool:
    """Write ``obj`` as JSON unless the file already holds it; True when written."""
    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    if path.is_file() and path.read_text() == text:
        return False
    io.write_text(path, text)
    return True


def run_jobs(spec: RunSpec, files: dict[str, str]) -> list[Job]:
    """The train and evaluate settings files of one run (``files``: kind -> path)."""
    return [
        Job(Path(files["train_settings"]), spec_mod.settings_tree(spec, "train"),
            Path(files["model"])),
        Job(Path(files["evaluate_settings"]), spec_mod.settings_tree(spec, "evaluate"),
            Path(files["metrics"])),
    ]  # fmt: skip


def write(jobs: list[Job]) -> list[str]:
    """Write every job's settings file that changed; a log line for each finished job whose
    settings changed (Snakemake reruns it)."""
    notes = []
    for job in jobs:
        if write_if_changed(job.path, job.tree) and job.done.exists():
            notes.append(f"flowvae: {job.done.parent}: its settings changed; it will be rebuilt")
    return notes


def write_runtime(path: Path, specs: list[RunSpec]) -> None:
    """The runtime file: per variant, the fields of its spec that never change a result."""
    write_if_changed(path, {s.variant: spec_mod.runtime_dict(s) for s in specs})
