"""Helpers for tests that run the whole pipeline (test_resilience.py, test_slurm.py).

Every run uses this environment's snakemake with its bin folder first on PATH (the rules call
`python`) and the offline MNIST mirror, and puts its results and figures into a temporary
folder (``--config results=... figures=...``), as tests/test_workflow.py does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from conftest import MNIST_MIRROR, REPO_ROOT

BIN = Path(sys.executable).parent
QUICK = "config/quick.yaml"
#: Columns and keys that measure time or memory, not the model: they differ from run to run.
TIMING = re.compile(r"seconds|_benchmark_s$|max_rss")


def environment(**changes: str | None) -> dict[str, str]:
    """This environment, its bin folder first on PATH, FLOWVAE_MNIST_MIRROR set to the offline
    mirror when there is one (and it is unset); then ``changes`` (None removes a variable)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if not env.get("FLOWVAE_MNIST_MIRROR") and MNIST_MIRROR.is_dir():
        env["FLOWVAE_MNIST_MIRROR"] = str(MNIST_MIRROR.resolve())
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def snakemake_command(
    *args: str | Path, tmp: Path, configfiles: Iterable[str | Path] = (QUICK,)
) -> list[str]:
    """snakemake ARGS --configfile FILES --config results=TMP/results figures=TMP/figures
    (targets go into ARGS: --configfile and --config take every word after them)."""
    configfiles = [str(c) for c in configfiles]
    return [
        str(BIN / "snakemake"),
        *map(str, args),
        *(["--configfile", *configfiles] if configfiles else []),
        "--config",
        f"results={tmp / 'results'}",
        f"figures={tmp / 'figures'}",
    ]


def snakemake(
    *args: str | Path,
    tmp: Path,
    configfiles: Iterable[str | Path] = (QUICK,),
    cwd: Path = REPO_ROOT,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    return run_group(
        snakemake_command(*args, tmp=tmp, configfiles=configfiles),
        cwd=cwd,
        env=env or environment(),
        timeout=timeout,
    )


def run_group(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` with captured text output, in a session of its own: a timeout kills
    the whole process group (Snakemake and the jobs it started), not only Snakemake."""
    with subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **kwargs,
    ) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def flowvae(*args: str | Path, env=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """python -m flowvae ARGS, in the repository root."""
    return subprocess.run(
        [str(BIN / "python"), "-m", "flowvae", *map(str, args)],
        cwd=REPO_ROOT,
        env=env or environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout or "") + (proc.stderr or "")


def failure(proc: subprocess.CompletedProcess, tmp: Path | None = None, tail: int = 6000) -> str:
    """What a failed run printed, and the end of every log under TMP/results/logs."""
    text = output(proc)[-tail:]
    if tmp is not None:
        for log in sorted((tmp / "results" / "logs").rglob("*.log")):
            text += f"\n--- {log}\n{log.read_text(errors='replace')[-2000:]}"
    return text


def isolated_workdir(tmp: Path) -> Path:
    """A working folder TMP/wd whose Snakefile, workflow, config, profiles and src are links to
    the repository's: Snakemake's own state (.snakemake: locks, incomplete markers) then lives
    there, so a test may kill Snakemake and run `--unlock` without touching other runs."""
    wd = tmp / "wd"
    wd.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "profiles", "src"):
        link = wd / name
        if not link.exists():
            link.symlink_to(REPO_ROOT / name)
    return wd


def workflow_copy(tmp: Path) -> Path:
    """A copy of the workflow and the package (Snakefile, environment.yml, workflow, config,
    src) in TMP/copy, for a test that edits the package's files and runs Snakemake there."""
    copy = tmp / "copy"
    copy.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "environment.yml"):
        shutil.copy2(REPO_ROOT / name, copy / name)
    for name in ("workflow", "config", "src"):
        shutil.copytree(REPO_ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def job_counts(text: str) -> dict[str, int]:
    """The first 'Job stats' table of Snakemake's output as {rule: count}."""
    lines = text.splitlines()
    start = lines.index("Job stats:")
    counts = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def metric_table(path: Path) -> pd.DataFrame:
    """metrics.csv as text (so that equal means bit for bit), one row per variant and seed in a
    fixed order, without the timing columns."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table = table.sort_values(["variant", "seed"]).reset_index(drop=True)
    return table[[c for c in table.columns if not TIMING.search(c)]]


def metric_values(path: Path) -> dict:
    """A metrics.json or train.json, flattened (a.b -> a_b), without the timing keys."""

    def flat(obj: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                out.update(flat(value, f"{name}_"))
            elif not TIMING.search(name):
                out[name] = value
        return out

    return flat(json.loads(Path(path).read_text()))


def differences(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, list]:
    """{column: [(row, a value, b value), ...]} where two metric tables differ."""
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return {"<shape>": [(list(a.columns), list(b.columns), (len(a), len(b)))]}
    return {
        c: [(i, x, y) for i, (x, y) in enumerate(zip(a[c], b[c], strict=True)) if x != y]
        for c in a.columns
        if not a[c].equals(b[c])
    }
