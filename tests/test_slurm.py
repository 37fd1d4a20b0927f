"""The quick config through a real single-node SLURM (tests/slurm/start.sh) and the
profile profiles/slurm-local-test.

The module starts munge, slurmctld and slurmd itself (installing slurm-wlm and munge with
apt-get when they are missing) and stops them at the end. Where SLURM cannot be installed
(not root, no apt-get, no package mirror) or this machine runs a SLURM of its own, every
test here is skipped with the reason; FLOWVAE_REQUIRE_SLURM=1 turns those skips into
failures. A SLURM that is installed but does not come up is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from pipeline import (
    BIN,
    QUICK,
    REPO_ROOT,
    differences,
    environment,
    failure,
    isolated_workdir,
    metric_table,
    output,
    snakemake,
    snakemake_command,
)

# A SLURM installed and started, then the quick config through it: `make test-all` (CI).
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPTS = REPO_ROOT / "tests" / "slurm"
PROFILE = yaml.safe_load((REPO_ROOT / "profiles" / "slurm-local-test" / "config.yaml").read_text())
CANNOT_INSTALL, OTHER_SLURM = 77, 78
QUICK_RUNS = {
    (v, s) for v in yaml.safe_load((REPO_ROOT / QUICK).read_text())["variants"] for s in (0, 1)
}
# Job 12 has been submitted with SLURM jobid 5 (log: .../rule_train/pcpmap_0/5.log).
SUBMITTED = re.compile(
    r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)/rule_(\w+)/(?:(\w+)_(\d+)/)?"
)


def reason(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("reason: ")]
    return lines[-1].removeprefix("reason: ") if lines else "no reason given"


@pytest.fixture(scope="module")
def slurm():
    """A running single-node SLURM; stopped (by the pids in its pid files) when the module ends."""
    state = Path(tempfile.mkdtemp(prefix="flowvae-slurm-"))
    os.chmod(state, 0o755)  # slurmd and munge read below it
    try:
        proc = subprocess.run(
            [SCRIPTS / "start.sh", state], capture_output=True, text=True, timeout=900
        )
    except subprocess.TimeoutExpired:
        subprocess.run([SCRIPTS / "stop.sh", state], timeout=120)
        pytest.fail("tests/slurm/start.sh took more than 15 minutes")
    if proc.returncode in (CANNOT_INSTALL, OTHER_SLURM):
        message = f"no SLURM for this test: {reason(proc)}"
        if os.environ.get("FLOWVAE_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    if proc.returncode != 0:
        subprocess.run([SCRIPTS / "stop.sh", state], timeout=120)
        pytest.fail(f"SLURM did not start (status {proc.returncode}):\n{proc.stderr[-6000:]}")
    yield state
    stop = subprocess.run([SCRIPTS / "stop.sh", state], capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory):
    """The quick config up to metrics.csv through the SLURM executor; returns (tmp, output)."""
    tmp = tmp_path_factory.mktemp("quick_slurm")
    proc = snakemake(
        tmp / "results" / "metrics.csv",
        "--workflow-profile",
        "profiles/slurm-local-test",
        "--slurm-logdir",
        tmp / "slurm_logs",
        "--slurm-keep-successful-logs",
        tmp=tmp,
        configfiles=[QUICK],
    )
    if proc.returncode != 0:
        pytest.fail(
            f"the quick run through SLURM failed:\n{failure(proc, tmp)}\n"
            f"--- slurmctld.log\n{(slurm / 'log' / 'slurmctld.log').read_text()[-3000:]}"
        )
    return tmp, output(proc)


def submitted(text: str) -> dict[tuple[str, str | None, int | None], str]:
    """{(rule, variant, seed): SLURM job id} from Snakemake's 'has been submitted' lines."""
    jobs = {}
    for jobid, _, rule, variant, seed in SUBMITTED.findall(text):
        jobs[(rule, variant or None, int(seed) if seed else None)] = jobid
    return jobs


def test_submission_line_parser():
    line = (
        "Job 12 has been submitted with SLURM jobid 5 "
        "(log: /tmp/x/slurm_logs/rule_train/pcpmap_0/5.log).\n"
        "Job 3 has been submitted with SLURM jobid 3 (log: /tmp/x/slurm_logs/rule_prepare/3.log)."
    )
    assert submitted(line) == {("train", "pcpmap", 0): "5", ("prepare", None, None): "3"}


def test_training_and_evaluation_ran_as_slurm_jobs(slurm_run):
    tmp, text = slurm_run
    jobs = submitted(text)
    for rule in ("train", "evaluate"):
        assert {(v, s) for (r, v, s) in jobs if r == rule} == QUICK_RUNS, (rule, jobs)
    assert ("prepare", None, None) in jobs
    # download and aggregate are localrules: they run beside Snakemake, not as jobs.
    assert not {r for (r, _, _) in jobs} & {"download", "aggregate"}
    for (rule, variant, seed), jobid in jobs.items():
        # The package logs the SLURM job it runs in: the job Snakemake submitted.
        name = "prepare.log" if rule == "prepare" else f"{rule}/{variant}/seed{seed}.log"
        log = (tmp / "results" / "logs" / name).read_text()
        assert f"SLURM job {jobid} " in log, (rule, variant, seed, log[-2000:])
        # SLURM itself knows the job: finished, in the partition the profile names.
        proc = subprocess.run(
            ["scontrol", "show", "job", jobid], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert "JobState=COMPLETED" in proc.stdout, proc.stdout
        assert "Partition=debug" in proc.stdout, proc.stdout
        assert "ExitCode=0:0" in proc.stdout, proc.stdout
        # With the CPUs and memory the profile asks for.
        if rule in ("train", "evaluate"):
            cpus, mem = PROFILE["set-threads"][rule], PROFILE["set-resources"][rule]["mem_mb"]
            assert re.search(rf"NumCPUs={cpus}\b", proc.stdout), proc.stdout
            assert re.search(rf"\bmem={mem}M\b", proc.stdout), proc.stdout


def test_jobs_run_this_environment(slurm_run):
    """The plugin submits with sbatch --export=ALL: a job's `python` is the one first on the
    PATH Snakemake was started with (this environment's), as in a local run."""
    tmp, _ = slurm_run
    log = (tmp / "results" / "logs" / "train" / "standard" / "seed0.log").read_text()
    (python,) = re.findall(r"SLURM job \d+ on \S+, python (\S+)", log)
    assert Path(python).parent == BIN, log[-2000:]


def test_slurm_metrics_equal_a_local_run(slurm_run, quick_metrics):
    """Same seeds, same config, CPU: the metrics are the same bits under SLURM as with
    --cores 2 on this machine (timing columns aside)."""
    tmp, _ = slurm_run
    local = metric_table(quick_metrics)
    remote = metric_table(tmp / "results" / "metrics.csv")
    assert len(local) == len(QUICK_RUNS)
    assert differences(local, remote) == {}


def _settings_of_every_run(tmp: Path) -> dict[tuple[str, int], float]:
    """train.lr of every finished quick run: its model's key must be its settings file's."""
    found = {}
    for summary in (tmp / "results" / "runs").glob("*/seed*/train.json"):
        variant, seed = summary.parent.parent.name, int(summary.parent.name[4:])
        settings = tmp / "results" / "settings" / "train" / variant / f"seed{seed}.json"
        tree = json.loads(settings.read_text())
        assert json.loads(summary.read_text())["key"] == tree["key"], (variant, seed)
        found[(variant, seed)] = tree["spec"]["train"]["lr"]
    return found


def test_a_lost_snakemake_never_leaves_stale_or_doubled_training(slurm, tmp_path):
    """Kill the main Snakemake while its SLURM jobs train, rerun at once with another train.lr:
    the jobs that outlived it are never trained twice at once (the run lock), and in the end
    every run is trained under the new setting."""
    wd = isolated_workdir(tmp_path)
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("train: {epochs: 60, lr: 0.001}\n")
    new.write_text("train: {epochs: 60, lr: 0.002}\n")
    profile = ["--workflow-profile", "profiles/slurm-local-test", "--slurm-logdir", tmp_path / "sl"]
    target = tmp_path / "results" / "metrics.csv"
    first = subprocess.Popen(
        snakemake_command(target, *profile, tmp=tmp_path, configfiles=[QUICK, old]),
        cwd=wd, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not list((tmp_path / "results" / "runs").glob("*/seed*/.lock")):
        assert first.poll() is None and time.time() < deadline, "no training started"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the login node goes away; its SLURM jobs do not
    first.wait()

    def rerun() -> subprocess.CompletedProcess:
        snakemake("--unlock", tmp=tmp_path, configfiles=[QUICK, new], cwd=wd)
        return snakemake(target, *profile, tmp=tmp_path, configfiles=[QUICK, new], cwd=wd)

    proc = rerun()  # at once, while the orphaned jobs still train
    logs = "\n".join(p.read_text() for p in (tmp_path / "results" / "logs").rglob("*.log"))
    doubled = "is in use by host" in logs
    deadline = time.time() + 600
    while subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, "SLURM jobs still running after 10 minutes"
        time.sleep(1)
    if proc.returncode != 0:  # a run refused by the lock: its rerun after the orphans ended
        proc = rerun()
    assert proc.returncode == 0, failure(proc, tmp_path)
    lrs = _settings_of_every_run(tmp_path)
    assert set(lrs) == QUICK_RUNS and set(lrs.values()) == {0.002}, lrs
    for variant, seed in QUICK_RUNS:
        history = tmp_path / "results" / "runs" / variant / f"seed{seed}" / "history.csv"
        assert f",{0.002}," in history.read_text().splitlines()[1], (variant, seed)
    table = (tmp_path / "results" / "metrics.csv").read_text().splitlines()
    assert len(table) == 1 + len(QUICK_RUNS)
    print(f"an orphaned trainer was refused by the run lock: {doubled}")
