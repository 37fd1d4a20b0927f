"""Runs survive the real world: a killed training job resumes to the same bits, bad inputs
fail fast with a message that names the cause and leave no partial output, and the metrics
do not depend on how many cores run the pipeline.

Every run is the real pipeline (snakemake, or `python -m flowvae` where a user would call the
package), with its outputs in a temporary folder.
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
from pipeline import (
    MNIST_MIRROR,
    QUICK,
    TIMING,
    differences,
    environment,
    failure,
    flowvae,
    isolated_workdir,
    metric_table,
    metric_values,
    output,
    snakemake,
    snakemake_command,
)

# ----------------------------------------------------------------------------- kill and resume

# One run, long enough to be killed in the middle of an epoch: 12 epochs of 3000 images with
# the study's encoder and decoder, a checkpoint after every epoch.
LONG_RUN = """\
seeds: [0]
data: {max_train: 3000}
model: {hidden: [512, 512]}
train: {epochs: 12, checkpoint_every: 1}
"""
EPOCHS = 12
VARIANT, SEED = "standard", 0


def run_paths(tmp: Path) -> dict[str, Path]:
    results = tmp / "results"
    run = results / "runs" / VARIANT / f"seed{SEED}"
    return {
        "run": run,
        "model": run / "model.pt",
        "history": run / "history.csv",
        "summary": run / "train.json",
        "checkpoint": run / "checkpoint.pt",
        "metrics": results / "eval" / VARIANT / f"seed{SEED}" / "metrics.json",
        "log": results / "logs" / "train" / VARIANT / f"seed{SEED}.log",
    }


def long_run_config(tmp: Path) -> list[str | Path]:
    path = tmp / "long_run.yaml"
    path.write_text(LONG_RUN)
    return [QUICK, path]


def train_processes(run_dir: Path) -> list[int]:
    """Pids of the `python -m flowvae train` processes writing into ``run_dir`` (matched on their
    own argument list, so neither the shell that started them nor any other run matches)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if (
            "flowvae" in args
            and "train" in args
            and "--out" in args[:-1]
            and args[args.index("--out") + 1] == str(run_dir)
        ):
            pids.append(int(entry.name))
    return pids


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # gone already (with its process group)
        pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The long run, trained and evaluated without interruption."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    target = run_paths(tmp)["metrics"]
    proc = snakemake(target, "--cores", "2", tmp=tmp, configfiles=long_run_config(tmp))
    if proc.returncode != 0:
        pytest.fail(f"the uninterrupted run failed:\n{failure(proc, tmp)}")
    assert not run_paths(tmp)["checkpoint"].exists(), "a finished run keeps no checkpoint"
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("crash", [False, True], ids=["train-killed", "train-and-snakemake-killed"])
def test_killed_training_resumes_to_the_same_bits(uninterrupted, tmp_path, crash):
    """SIGKILL the training process in the middle of an epoch (with crash: Snakemake and its
    whole process group too, as when a machine goes down); the rerun with --rerun-incomplete
    resumes from the checkpoint and ends with the metrics of the uninterrupted run, bit for bit."""
    paths = run_paths(tmp_path)
    wd = isolated_workdir(tmp_path)  # its own .snakemake: the crash leaves a lock there
    configs = long_run_config(tmp_path)
    command = snakemake_command(paths["metrics"], "--cores", "2", tmp=tmp_path, configfiles=configs)
    with open(tmp_path / "killed.out", "w") as out:
        proc = subprocess.Popen(
            command,
            cwd=wd,
            env=environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 600
        while not paths["checkpoint"].exists():
            assert proc.poll() is None, (tmp_path / "killed.out").read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint after 10 minutes"
            time.sleep(0.02)
        time.sleep(0.1)  # the checkpoint is written at the end of an epoch: now in the next one
        pids = train_processes(paths["run"])
        assert len(pids) == 1, f"training process not found (finished already?): {pids}"
        if crash:
            os.killpg(proc.pid, signal.SIGKILL)
        kill(pids[0])
        status = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in train_processes(paths["run"]):
            kill(pid)
    killed = (tmp_path / "killed.out").read_text()
    assert status != 0, killed[-4000:]
    if not crash:
        assert "Error in rule train" in killed, killed[-4000:]

    # Nothing of the killed run passes for a finished one: no output, only the checkpoint (and
    # perhaps the temporary file of a checkpoint being written, which has another name), and
    # the run lock's file (the kernel dropped the lock itself with the process).
    for name in ("model", "history", "summary", "metrics"):
        assert not paths[name].exists(), name
    left = sorted(p.name for p in paths["run"].iterdir())
    assert "checkpoint.pt" in left
    assert all(n in ("checkpoint.pt", ".lock") or re.fullmatch(r"\..+\.tmp", n) for n in left), left
    epoch = torch.load(paths["checkpoint"], weights_only=True)["epoch"]
    assert 1 <= epoch < EPOCHS

    if crash:
        # A killed Snakemake leaves its lock; Snakemake says how to remove it.
        locked = snakemake(
            paths["metrics"], "--cores", "2", tmp=tmp_path, configfiles=configs, cwd=wd
        )
        assert locked.returncode != 0
        assert "--unlock" in output(locked), output(locked)[-3000:]
        unlock = snakemake("--unlock", tmp=tmp_path, configfiles=configs, cwd=wd)
        assert unlock.returncode == 0, output(unlock)[-3000:]

    rerun = snakemake(
        paths["metrics"],
        "--cores",
        "2",
        "--rerun-incomplete",
        tmp=tmp_path,
        configfiles=configs,
        cwd=wd,
    )
    assert rerun.returncode == 0, failure(rerun, tmp_path)
    log = paths["log"].read_text()
    assert f"resuming {VARIANT} seed {SEED} from epoch {epoch} " in log, log[-3000:]
    assert not paths["checkpoint"].exists()

    done = run_paths(uninterrupted)
    assert metric_values(paths["metrics"]) == metric_values(done["metrics"])
    assert metric_values(paths["summary"]) == metric_values(done["summary"])
    timing = [c for c in pd.read_csv(done["history"]).columns if TIMING.search(c)]
    pd.testing.assert_frame_equal(
        pd.read_csv(paths["history"], dtype=str).drop(columns=timing),
        pd.read_csv(done["history"], dtype=str).drop(columns=timing),
    )
    resumed = torch.load(paths["model"], weights_only=True)["state_dict"]
    straight = torch.load(done["model"], weights_only=True)["state_dict"]
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)

    again = snakemake(paths["metrics"], "-n", tmp=tmp_path, configfiles=configs, cwd=wd)
    assert again.returncode == 0 and "Nothing to be done" in output(again), output(again)[-3000:]


# ----------------------------------------------------------------------------- bad inputs


@dataclass(frozen=True)
class Bad:
    """One bad input: how to run into it, and what the user must be told."""

    expected: tuple[str, ...]  # fragments of the message
    config: str = ""  # YAML merged on top of the quick config
    env: dict = field(default_factory=dict)  # environment changes ({tmp}: the test's folder)
    mirror: str | None = None  # a broken copy of the MNIST mirror: "truncated" or "checksum"
    target: str = "data/mnist.pt"  # what to build, under the results folder
    failing_rule: str | None = None  # the job that fails; None: Snakemake stops before any job
    # folders under results that may hold files after (settings: the jobs' settings files,
    # written before any job)
    may_leave: tuple[str, ...] = ("logs", "settings")
    results: str = "results"  # the results folder, under the test's folder
    cli: tuple[str, ...] = ()  # `python -m flowvae ARGS` instead of Snakemake


NO_NETWORK = {
    "FLOWVAE_MNIST_MIRROR": None,
    # Every fetch goes to a proxy that refuses the connection: no network, without waiting.
    **{k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
    **{k: None for k in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY")},
}

BAD_INPUTS = {
    "truncated MNIST file": Bad(
        ("train-images-idx3-ubyte", "truncated or corrupt gzip"),
        mirror="truncated",
        failing_rule="download",
    ),
    "wrong checksum": Bad(
        ("train-images-idx3-ubyte", "fails its SHA-256 check", "deleted"),
        mirror="checksum",
        failing_rule="download",
    ),
    "missing mirror folder": Bad(
        ("{tmp}/no-such-folder", "does not exist or is not a folder"),
        env={"FLOWVAE_MNIST_MIRROR": "{tmp}/no-such-folder"},
        failing_rule="download",
    ),
    "no network and no mirror": Bad(
        ("could not be fetched from any mirror", "set FLOWVAE_MNIST_MIRROR"),
        env=NO_NETWORK,
        failing_rule="download",
    ),
    "unknown config key": Bad(("'epoch' was unexpected",), config="train: {epoch: 3}"),
    "wrong type": Bad(
        ("'three' is not of type 'integer'", "['epochs']"), config="train: {epochs: three}"
    ),
    "negative epoch count": Bad(
        ("-1 is less than the minimum of 1", "['epochs']"), config="train: {epochs: -1}"
    ),
    "unknown posterior family": Bad(
        ("config key 'variants.flow.family'", "realnvp"),
        config="variants: {flow: {family: realnvp}}",
    ),
    "unknown variant in a sweep": Bad(
        ("config key 'sweeps.lr.variants'", "unknown variant(s) nosuch"),
        config="sweeps: {lr: {key: train.lr, values: [0.001], variants: [nosuch]}}",
    ),
    "unknown variant name": Bad(
        ("config key 'variants': unknown variant 'nosuch'", "known: cotflow, iaf, pcpmap"),
        cli=(
            "train",
            "--data",
            "{tmp}/results/data/mnist.pt",
            "--variant",
            "nosuch",
            "--seed",
            "0",
            "--out",
            "{tmp}/results/runs/nosuch/seed0",
            "--config",
            "config/config.yaml",
            "--config",
            QUICK,
        ),
    ),
    "learning rate that makes the loss NaN": Bad(
        ("standard seed 0: loss is nan at epoch 1", "lower train.lr"),
        config="seeds: [0]\ntrain: {lr: 1.0e+12, grad_clip: null, schedule: constant}\n",
        target="runs/standard/seed0/model.pt",
        failing_rule="train",
        may_leave=("logs", "settings", "data"),  # download and prepare finished: complete
    ),
    "unwritable output folder": Bad(
        ("config key 'results'", "{tmp}/blocker is not a writable folder"),
        results="blocker/results",  # a file where the folder should be: fails even for root
    ),
}


def broken_mirror(tmp: Path, kind: str) -> Path:
    """The MNIST mirror (FLOWVAE_MNIST_MIRROR or the offline copy) with a broken
    train-images-idx3-ubyte.gz, and links to its other files."""
    source = Path(environment().get("FLOWVAE_MNIST_MIRROR") or MNIST_MIRROR)
    good = source / "train-images-idx3-ubyte.gz"
    if not good.is_file():
        pytest.skip(f"no MNIST mirror with train-images-idx3-ubyte.gz at {source}")
    mirror = tmp / "mirror"
    mirror.mkdir()
    for src in source.iterdir():
        if not src.name.startswith("train-images-idx3-ubyte"):
            (mirror / src.name).symlink_to(src.resolve())
    bad = mirror / good.name
    if kind == "truncated":  # a download cut short
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 8])
    else:  # a well-formed file with other content
        bad.write_bytes(gzip.compress(b"\0\0\x08\x03" + bytes(1000)))
    return mirror


@pytest.mark.parametrize("bad", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_fails_fast_naming_the_cause(tmp_path, bad):
    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path))

    env = {k: None if v is None else fill(v) for k, v in bad.env.items()}
    if bad.mirror:
        env["FLOWVAE_MNIST_MIRROR"] = str(broken_mirror(tmp_path, bad.mirror))
    out = tmp_path / bad.results
    if bad.results.startswith("blocker/"):
        (tmp_path / "blocker").write_text("a file where the results folder should be")

    start = time.monotonic()
    if bad.cli:
        proc = flowvae(*map(fill, bad.cli), env=environment(**env))
    else:
        configs = [QUICK]
        if bad.config:
            (tmp_path / "bad.yaml").write_text(bad.config + "\n")
            configs.append(tmp_path / "bad.yaml")
        proc = snakemake(
            out / bad.target,
            "--cores",
            "2",
            "--show-failed-logs",
            tmp=out.parent,
            configfiles=configs,
            env=environment(**env),
            timeout=600,
        )
    seconds = time.monotonic() - start
    message = output(proc)

    assert proc.returncode != 0, message[-3000:]
    for fragment in bad.expected:
        assert fill(fragment) in message, message[-6000:]
    assert seconds < 300, f"took {seconds:.0f} s to fail"
    if bad.cli:
        assert proc.returncode == 2 and "Traceback" not in message, message
    elif bad.failing_rule is None:
        assert "Job stats" not in message, "Snakemake should stop before planning any job"
    else:
        assert f"Error in rule {bad.failing_rule}:" in message, message[-6000:]
        assert len(re.findall(r"^Error in rule ", message, re.M)) == 1, message[-6000:]

    # No partial output: nothing but logs (and the complete outputs of finished jobs), no
    # temporary file, and no output of the failed job.
    if out.is_dir():
        files = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
        # (a run folder keeps the run lock's empty file: no output, the lock itself is gone)
        assert all(p.parts[0] in bad.may_leave or p.name == ".lock" for p in files), files
        assert not [p for p in files if p.suffix == ".tmp"], files
    assert not (out / bad.target).exists()
    assert not (out.parent / "figures").exists()


# ----------------------------------------------------------------------------- determinism


@pytest.mark.slow
def test_metrics_do_not_depend_on_the_number_of_cores(quick_metrics, tmp_path):
    """The quick config with --cores 1 gives the metrics of --cores 2, bit for bit (the same
    seeds; Snakemake scales a rule's threads down to the cores it has)."""
    metrics = tmp_path / "results" / "metrics.csv"
    proc = snakemake(metrics, "--cores", "1", tmp=tmp_path)
    assert proc.returncode == 0, failure(proc, tmp_path)
    assert differences(metric_table(quick_metrics), metric_table(metrics)) == {}
