"""The settings file of every job: what decides its result, and its key (flowvae.spec).

A job's settings file is rewritten only when its text changes, and its text changes exactly
when its key does; Snakemake reruns a job whose input is newer than its outputs, so that is the
one staleness rule. A finished job's outputs record the key they were made with; when that
differs from its settings file's (a cluster job that outlived its Snakemake finished after the
rewrite, and Snakemake touched its outputs), the settings file is touched so the rule reruns
it. What never changes a result (device, checkpoint interval) goes to one runtime file per
results root, which the rules read as ``ancient`` (its time never reruns anything); threads
come with ``--threads``.

A results root that holds a ``records.json`` keeps its runs in the repository (the long study):
there a finished job whose outputs record its settings file's key is a *record*. Its key alone
says it is current: the rules read its inputs (settings, data, model, code) as ``ancient``, and
its settings file is dated before its outputs, since a checkout gives files no order in time.
Whether the code still computes what made a record is the check of ``flowvae.records``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from flowvae import io
from flowvae import spec as spec_mod
from flowvae.spec import RunSpec


@dataclass(frozen=True)
class Job:
    """One job's settings file, its content, the output whose presence means "done", and the
    output (JSON) that records the key the outputs were made with, when there is one."""

    path: Path
    tree: dict
    done: Path
    record: Path | None = None
    also: tuple[Path, ...] = ()  # outputs of other jobs that read this settings file
    kept: bool = False  # its results root keeps its records (holds a records.json)


def recorded_key(path: Path) -> str | None:
    """The "key" of the JSON file ``path``; None when it records none or cannot be read (a
    file whose key is unknown is left alone: only a recorded other key reruns a job)."""
    try:
        return json.loads(path.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def write_if_changed(path: Path, obj: dict) -> bool:
    """Write ``obj`` as JSON unless the file already holds it; True when written."""
    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    if path.is_file() and path.read_text() == text:
        return False
    io.write_text(path, text)
    return True


def run_jobs(spec: RunSpec, files: dict[str, str], kept: bool = False) -> list[Job]:
    """The train and evaluate settings files of one run (``files``: kind -> path)."""
    return [
        Job(Path(files["train_settings"]), spec_mod.settings_tree(spec, "train"),
            Path(files["model"]), Path(files["train_summary"]), kept=kept),
        Job(Path(files["evaluate_settings"]), spec_mod.settings_tree(spec, "evaluate"),
            Path(files["metrics"]), Path(files["metrics"]), (Path(files["gap_grid"]),), kept),
    ]  # fmt: skip


def write(jobs: list[Job]) -> list[str]:
    """Write every job's settings file that changed, and touch that of every finished job
    whose outputs record another key; a log line for each (Snakemake reruns them)."""
    notes = []
    for job in jobs:
        written = write_if_changed(job.path, job.tree)
        if not job.done.exists() or is_record(job):
            continue
        if written:
            notes.append(f"flowvae: {job.done.parent}: its settings changed; it will be rebuilt")
        elif job.record is not None and recorded_key(job.record) not in (None, job.tree["key"]):
            os.utime(job.path)  # now newer than the outputs
            notes.append(
                f"flowvae: {job.done.parent}: made with other settings than "
                f"{job.path} holds (a job that outlived its Snakemake?); it will be rebuilt"
            )
    return notes


def write_runtime(path: Path, specs: list[RunSpec]) -> None:
    """The runtime file: per variant, the fields of its spec that never change a result."""
    write_if_changed(path, {s.variant: spec_mod.runtime_dict(s) for s in specs})


def is_record(job: Job) -> bool:
    """Whether ``job`` is a record: kept, finished, and its outputs record its key."""
    return (
        job.kept
        and job.record is not None
        and job.done.exists()
        and recorded_key(job.record) == job.tree["key"]
    )


def records(jobs: list[Job]) -> set[str]:
    """The outputs of every job of ``jobs`` that is a record, each such job's settings file
    dated before its outputs (call after :func:`write`)."""
    out = set()
    for job in filter(is_record, jobs):
        done = [job.done, *(p for p in job.also if p.exists())]
        oldest = min(p.stat().st_mtime for p in [*done, job.record])
        if job.path.stat().st_mtime >= oldest:
            os.utime(job.path, (oldest - 1, oldest - 1))
        out |= {os.path.normpath(p) for p in done}
    return out
