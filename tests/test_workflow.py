"""The Snakemake pipeline: planning, config validation, lint, profiles and a quick run end to end.

Every call runs the environment's snakemake in the repository root, with the results and
figures folders moved into a temporary folder (``--config results=... figures=...``), so the
tests never touch the repository's own results.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pipeline
import pytest
import yaml
from conftest import REPO_ROOT
from pipeline import job_counts

from flowvae import config as config_mod
from flowvae import study as study_mod
from flowvae.config import train_settings
from flowvae.figures import REGISTRY

BIN = Path(sys.executable).parent
STUDY = config_mod.load(
    [REPO_ROOT / "config" / "config.yaml", REPO_ROOT / "config" / "selected.yaml"]
)
QUICK = yaml.safe_load((REPO_ROOT / "config" / "quick.yaml").read_text())


def figure_names(variants: list[str], latent_2d: bool = True, tuning: bool = True) -> list[str]:
    """Every figure file name of a study with these variants, from the package's registry."""
    names = []
    for fig in REGISTRY.values():
        if fig.per_sweep or (fig.latent_2d and not latent_2d) or (fig.needs_tuning > tuning):
            continue
        names += [f"{fig.name}_{v}" for v in variants] if fig.per_variant else [fig.name]
    return names


FIGURES = figure_names(list(STUDY["variants"]))
SLURM_PROFILES = ["slurm", "slurm-local-test"]


def run(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """A command (snakemake, snakefmt, ruff: from this environment) in the repository root."""
    cmd = [str(BIN / str(args[0])), *map(str, args[1:])]
    return pipeline.run_group(cmd, timeout, cwd=REPO_ROOT, env=pipeline.environment())


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def folders(tmp: Path, *config: str) -> list[str]:
    """--config values that put every output under ``tmp``, then ``config`` (KEY=VALUE; one
    --config option holds them all: a second would replace the first)."""
    return ["--config", f"results={tmp / 'results'}", f"figures={tmp / 'figures'}", *config]


def snakemake(
    *args: str | Path, tmp: Path, configfiles=(), config=(), **kw
) -> subprocess.CompletedProcess:
    """snakemake ARGS [--configfile FILES] --config results=TMP/results figures=TMP/figures
    [CONFIG...]."""
    extra = ["--configfile", *configfiles] if configfiles else []
    return run("snakemake", *args, *extra, *folders(tmp, *config), **kw)


def dry_run(*targets: str | Path, tmp: Path, configfiles=(), config=()) -> dict[str, int]:
    """The jobs a dry run plans, by rule ({} when there is nothing to do)."""
    proc = snakemake(
        *targets, "-n", "--quiet", "host", "rules", tmp=tmp, configfiles=configfiles, config=config
    )
    text = output(proc)
    assert proc.returncode == 0, text
    if "Nothing to be done" in text:
        return {}
    return job_counts(text)


def write_config(tmp: Path, text: str) -> Path:
    path = tmp / "extra.yaml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- planning


def test_job_count_table_parser():
    text = "Job stats:\njob  count\n---  -----\ntrain  6\nall  1\ntotal  7\n\nx 1"
    assert job_counts(text) == {"train": 6, "all": 1, "total": 7}


def test_study_plans_every_variant_and_seed(tmp_path):
    jobs = dry_run(tmp=tmp_path)
    runs = len(STUDY["variants"]) * len(STUDY["seeds"])
    assert jobs["train"] == runs == 20
    assert jobs["evaluate"] == runs
    assert "quadrature_check" in FIGURES and "posterior_iaf" in FIGURES
    for rule in ["download", "prepare", "aggregate", "summary"]:
        assert jobs[rule] == 1, rule
    for name in FIGURES:
        assert jobs[f"figure_{name}"] == 1, name
    assert not [rule for rule in jobs if "sweep" in rule], "no sweep is configured"
    spec = STUDY["tuning"]
    trials = len(spec["shared"]["lr"]) * len(spec["shared"]["epochs"]) * 2  # 2 own options
    assert jobs["train_tuning"] == trials * len(STUDY["variants"]) * len(spec["seeds"]) == 48
    assert jobs["select"] == 1
    # equal compute: the variants that train longer than their own epochs, again on every seed
    own = {v: train_settings(STUDY, v)["epochs"] for v in STUDY["variants"]}
    longer = [v for v, e in STUDY["equal_compute"].items() if e != own[v]]
    assert longer and jobs["train_compute"] == jobs["evaluate_compute"] == len(longer) * 5
    written = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert written and all("settings" in p.relative_to(tmp_path).parts for p in written), (
        "a dry run writes only the settings files"
    )


def test_quick_config_plans_every_variant_and_seed(tmp_path):
    jobs = dry_run(tmp=tmp_path, configfiles=["config/quick.yaml"])
    assert jobs["train"] == len(QUICK["variants"]) * len(QUICK["seeds"]) == 8


# The command-line forms the README shows (Snakemake reads --config values as strings; the
# workflow types them as the schema says, nested sections included).
def test_config_overrides_on_the_command_line_are_typed(tmp_path):
    quick = ["config/quick.yaml"]
    jobs = dry_run(tmp=tmp_path, configfiles=quick, config=["seeds=[0, 1, 2]"])
    assert jobs["train"] == 3 * len(QUICK["variants"])
    dry_run(tmp=tmp_path, configfiles=quick, config=["train={kl_warmup_epochs: 3, grad_clip: 5}"])
    settings = json.loads(
        (tmp_path / "results" / "settings" / "train" / "iaf" / "seed0.json").read_text()
    )["spec"]
    assert settings["train"]["kl_warmup_epochs"] == 3 and settings["train"]["grad_clip"] == 5
    assert settings["train"]["batch_size"] == 128, "a nested override keeps the other keys"


def test_run_variants_runs_a_subset_and_logs_it(tmp_path):
    proc = snakemake(
        "-n", tmp=tmp_path, configfiles=["config/quick.yaml"], config=["run_variants=[iaf]"]
    )
    text = output(proc)
    assert proc.returncode == 0, text
    assert job_counts(text)["train"] == len(QUICK["seeds"])
    assert "flowvae: variants iaf; seeds 0, 1" in text
    assert "reference variant standard is not run" in text
    assert "figure_gap_contours" not in text


# ----------------------------------------------------------------------------- precedence


def run_settings(results: Path, stage: str = "train") -> dict[tuple[str, int], dict]:
    """(variant, seed) -> the spec of every run's settings file of ``stage`` under ``results``."""
    runs = {}
    for path in (results / "settings" / stage).glob("*/seed*.json"):
        runs[path.parent.name, int(path.stem[4:])] = json.loads(path.read_text())["spec"]
    return runs


def readme_overrides() -> list[str]:
    """The command of every row of README.md's tables that changes the config on the command
    line (--config, --configfile; --set is the package's, tested in test_precedence.py)."""
    text = (REPO_ROOT / "README.md").read_text()
    return re.findall(r"^\|[^|\n]+\| `(snakemake [^`]*--config[^`]*)`", text, re.M)


def form(command: str) -> str:
    """A README command without `snakemake` and `--cores N` (what it says about the config)."""
    words = shlex.split(command)[1:]
    if "--cores" in words:
        i = words.index("--cores")
        del words[i : i + 2]
    return " ".join(words)


STUDY_TRAIN = {"epochs": 20, "lr": 0.003}  # config/selected.yaml's, for every variant
LONG_TRAIN = {"epochs": 500, "lr": 2e-3, "optimizer": "adamax", "schedule": "constant"}
#: What each README form gives every run it plans: the variants, seeds, training settings
#: (and, where given, the data settings, the checkpoint interval and lines of the log).
README_FORMS = {
    "--configfile config/quick.yaml": dict(
        variants=list(QUICK["variants"]), seeds=QUICK["seeds"],
        train={"epochs": 2, "lr": 0.003}, checkpoint_every=1,
    ),
    "--configfile my.yaml": dict(  # my.yaml: train: {lr: 5.0e-4}
        train={"epochs": 20, "lr": 5e-4},
        log=["flowvae: iaf: train.epochs 20 from config/selected.yaml"],
        not_log=["train.lr"],
    ),
    "--config seeds=[0,1]": dict(
        seeds=[0, 1], train=STUDY_TRAIN,
        log=["flowvae: standard: train.lr 0.003 from config/selected.yaml"],
    ),
    "--config train={epochs: 10, lr: 3e-4}": dict(
        train={"epochs": 10, "lr": 3e-4, "batch_size": 128}, not_log=["train.lr", "train.epochs"]
    ),
    "--config run_variants=[iaf]": dict(variants=["iaf"], train=STUDY_TRAIN),
    "tuning --configfile config/quick.yaml config/quick_tuning.yaml": dict(
        seeds=QUICK["seeds"], train={"epochs": 2}, checkpoint_every=1,
        tuning={"lr": [1e-3, 3e-3], "epochs": [1, 2]},
    ),
    "--configfile config/long.yaml": dict(
        train={**LONG_TRAIN, "keep": "best"}, checkpoint_every=10,
    ),
    "--workflow-profile profiles/slurm-poster --configfile config/poster.yaml": dict(
        variants=["standard", "iaf", "pcpmap"], train={**LONG_TRAIN, "keep": "best"},
        data={"digits": list(range(10))}, checkpoint_every=25,
    ),
}  # fmt: skip


def test_every_readme_override_form_has_its_expected_settings():
    assert sorted(map(form, readme_overrides())) == sorted(README_FORMS)


@pytest.mark.parametrize("command", readme_overrides(), ids=form)
def test_a_readme_override_gives_every_run_the_stated_settings(tmp_path, command):
    """Each README form as written (a dry run, the folders moved into tmp_path), read back from
    the settings files of the runs it plans: what it states holds for every variant, whatever
    config/selected.yaml says for the variant."""
    expect = README_FORMS[form(command)]
    (tmp_path / "my.yaml").write_text("train: {lr: 5.0e-4}\n")
    words = [tmp_path / "my.yaml" if w == "my.yaml" else w for w in shlex.split(command)]
    moved = [f"results={tmp_path / 'results'}", f"figures={tmp_path / 'figures'}"]
    if "--config" in words:  # one --config holds every key=value (a second replaces it)
        i = words.index("--config") + 1
        words[i:i] = moved
    else:
        words += ["--config", *moved]
    proc = run(*words, "-n")
    text = output(proc)
    assert proc.returncode == 0, text
    results = tmp_path / "results"
    runs = run_settings(results)
    variants = expect.get("variants", list(STUDY["variants"]))
    seeds = expect.get("seeds", STUDY["seeds"])
    assert sorted(runs) == sorted((v, s) for v in variants for s in seeds)
    for (variant, seed), spec in runs.items():
        assert spec["train"] | expect["train"] == spec["train"], (variant, seed)
        assert spec["data"] | expect.get("data", {}) == spec["data"], (variant, seed)
    runtime = json.loads((results / "settings" / "runtime.json").read_text())
    for variant in variants:
        every = expect.get("checkpoint_every", STUDY["train"]["checkpoint_every"])
        assert runtime[variant]["train"]["checkpoint_every"] == every, variant
    log = text.split("Building DAG")[0]
    for line in expect.get("log", []):
        assert line in log.splitlines(), log
    for word in expect.get("not_log", []):
        assert not re.search(rf"^flowvae: \S+: {re.escape(word)} ", log, re.M), log
    if "tuning" in expect:
        found = {
            (spec["variant"], spec["train"]["lr"], spec["train"]["epochs"])
            for path in (results / "tuning").glob("*/settings/train/*/seed*.json")
            for spec in [json.loads(path.read_text())["spec"]]
        }
        grid = expect["tuning"]
        assert found == {(v, lr, e) for v in variants for lr in grid["lr"] for e in grid["epochs"]}


def test_a_global_setting_after_a_lost_snakemake_reruns_every_variant(tmp_path):
    """Finished runs without Snakemake's records (as after a lost Snakemake): a file that
    states `train: {lr: 0.002}` after config/quick.yaml changes every run's settings, whatever
    lr config/selected.yaml holds for the variant, so every run is trained again."""
    results = tmp_path / "results"
    models = [results / "runs" / v / "seed0" / "model.pt" for v in QUICK["variants"]]
    quick = ["config/quick.yaml"]
    dry_run(*models, tmp=tmp_path, configfiles=quick)  # writes the settings files
    now = time.time()
    for path in (results / "settings").rglob("*.json"):
        os.utime(path, (now - 100, now - 100))
    outputs = [results / "data" / "raw" / name for name in study_mod.MNIST_FILES]
    outputs.append(results / "data" / "mnist.pt")
    for model in models:
        key = json.loads(
            (results / "settings" / "train" / model.parent.parent.name / "seed0.json").read_text()
        )["key"]
        (model.parent / "train.json").parent.mkdir(parents=True)
        (model.parent / "train.json").write_text(json.dumps({"key": key}))
        outputs += [model, model.parent / "history.csv"]
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(b"")
        os.utime(path, (now - 50, now - 50))
    assert dry_run(*models, tmp=tmp_path, configfiles=quick) == {}, "no record, no rerun"
    lr = write_config(tmp_path, "train: {lr: 0.002}\n")
    proc = snakemake(*models, "-n", tmp=tmp_path, configfiles=[*quick, lr])
    text = output(proc)
    assert proc.returncode == 0 and "Nothing to be done" not in text, text
    assert job_counts(text)["train"] == len(models), text
    for model in models:
        assert f"{model.parent}: its settings changed; it will be rebuilt" in text
    assert {spec["train"]["lr"] for spec in run_settings(results).values()} == {0.002}


def test_a_global_setting_after_a_variants_own_in_two_user_files_is_refused(tmp_path):
    """An earlier file of the user's sets variants.iaf.train.lr, a later option the global
    train.lr to another value: no rule can tell which the user meant for iaf."""
    own = write_config(tmp_path, "variants: {iaf: {train: {lr: 0.001}}}\n")
    proc = snakemake("-n", tmp=tmp_path, configfiles=[own], config=["train={lr: 0.002}"])
    text = output(proc)
    assert proc.returncode != 0
    for fragment in ("'variants.iaf.train.lr'", str(own), "'train.lr'", "--config"):
        assert fragment in text, text
    assert not (tmp_path / "results").exists()


def test_the_workflow_runs_from_another_folder(tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(work),
         "-n", "--configfile", str(REPO_ROOT / "config" / "quick.yaml")],
        cwd=tmp_path, env=pipeline.environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = output(proc)
    assert proc.returncode == 0, text
    assert job_counts(text)["train"] == len(QUICK["variants"]) * len(QUICK["seeds"])
    assert (work / "results" / "quick" / "settings" / "data.json").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epoch: 3}\n")
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(work),
         "-n", "--configfile", str(bad)],
        cwd=tmp_path, env=pipeline.environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "'epoch' was unexpected" in output(proc)


def archive_copy(tmp_path: Path) -> Path:
    """A release archive of the checkout (`git archive`, a ZIP): every file it would hold, all
    with one modification time, and no run's files (they are not committed)."""
    copy = tmp_path / "copy"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    stamp = 1_700_000_000
    for name in files:
        if not (REPO_ROOT / name).is_file():
            continue
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
        os.utime(target, (stamp, stamp))
    return copy


def test_a_copy_with_equal_file_times_rebuilds_the_study(tmp_path):
    """A release archive: every file has one modification time and no model exists."""
    copy = archive_copy(tmp_path)
    assert (copy / "results" / "metrics.csv").exists(), "the committed table is in the copy"
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--quiet", "rules"],
        cwd=copy, env=pipeline.environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = output(proc)
    assert proc.returncode == 0, text
    assert "Nothing to be done" not in text
    jobs = job_counts(text)
    assert jobs["train"] == jobs["evaluate"] == len(STUDY["variants"]) * len(STUDY["seeds"])
    assert jobs["aggregate"] == jobs["figure_test_loss"] == jobs["figdata_test_loss"] == 1


#: Drawn for real by the archive test (the others are planned only): a table and a grid.
ARCHIVE_DRAWN = ("figures/test_loss.png", "figures/posterior_panel.png")


def one_job_each(pngs) -> dict[str, int]:
    """The job counts of drawing ``pngs`` from their figure data: one figure job each."""
    return {**{f"figure_{Path(png).stem}": 1 for png in pngs}, "total": len(pngs)}


def test_an_archive_copy_redraws_each_committed_figure_with_one_job(tmp_path):
    """Without the runs, every committed figure is drawn from its committed figure data: one
    job each, and a table-based and a grid-based figure equal the committed ones byte for
    byte."""
    copy = archive_copy(tmp_path)
    plan = study_mod.Study(STUDY).figure_jobs()
    data = {job.png: job.data.path for job in plan}
    committed = sorted(str(p.relative_to(copy)) for p in (copy / "figures").glob("*.png"))
    assert committed and set(committed) <= set(data), "every committed figure is planned"
    missing = [png for png in committed if not (copy / data[png]).is_file()]
    assert not missing, f"committed figures without committed figure data: {missing}"
    for png in committed:
        (copy / png).unlink()
        (copy / png).with_suffix(".pdf").unlink()
    command = [str(BIN / "snakemake"), "--quiet", "rules", "--cores", "1"]
    proc = subprocess.run(
        [*command, "-n", *committed],
        cwd=copy, env=pipeline.environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, output(proc)
    assert job_counts(output(proc)) == one_job_each(committed)
    proc = subprocess.run(
        [*command, *ARCHIVE_DRAWN],
        cwd=copy, env=pipeline.environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, output(proc)
    assert job_counts(output(proc)) == one_job_each(ARCHIVE_DRAWN)
    for png in ARCHIVE_DRAWN:
        for path in (png, png.replace(".png", ".pdf")):
            assert (copy / path).read_bytes() == (REPO_ROOT / path).read_bytes(), path
    damaged = "results/figdata/test_loss.csv"  # a damaged figure data file is named
    (copy / damaged).write_text("variant,seed\nstandard,0\n")
    proc = subprocess.run(
        [*command, "-f", ARCHIVE_DRAWN[0]],
        cwd=copy, env=pipeline.environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    log = (copy / "results" / "logs" / "figures" / "test_loss.log").read_text()
    assert f"figure data file {damaged} of figure test_loss is damaged" in log, log


def test_sweep_runs_each_value_with_its_settings_file(tmp_path):
    extra = write_config(
        tmp_path,
        "sweeps:\n"
        "  lr: {key: train.lr, values: [3.0e-4, 1.0e-3], seeds: [0]}\n"
        "  width: {key: model.hidden, values: [[32], [64, 64]], variants: [standard]}\n"
        "  binary: {key: data.binarize, values: [static], variants: [standard], seeds: [0]}\n"
        "  steps: {key: variants.iaf.steps, values: [2, 8], seeds: [1]}\n",
    )
    quick = ["config/quick.yaml", extra]
    jobs = dry_run(tmp=tmp_path, configfiles=quick)
    # lr: 2 values x n variants x 1 seed; width: 2 x 1 x 2; binary: 1 x 1 x 1; steps: 2 x 1 x 1
    n = len(QUICK["variants"])
    assert jobs["train_sweep"] == jobs["evaluate_sweep"] == 2 * n + 4 + 1 + 2
    assert jobs["prepare_sweep"] == 1, "only the data.* sweep prepares its own data"
    assert jobs["aggregate_sweep"] == jobs["summary_sweep"] == jobs["sweep_figure"] == 4
    assert jobs["train"] == 2 * n, "the main study is planned as before"

    results = tmp_path / "results"
    proc = snakemake(
        results / "sweeps" / "width" / "64-64" / "eval" / "standard" / "seed1" / "metrics.json",
        results / "sweeps" / "steps" / "8" / "runs" / "iaf" / "seed1" / "model.pt",
        "-n",
        "--printshellcmds",
        tmp=tmp_path,
        configfiles=quick,
    )
    text = output(proc)
    assert proc.returncode == 0, text
    width = results / "sweeps" / "width" / "64-64" / "settings"
    evaluate = json.loads((width / "evaluate" / "standard" / "seed1.json").read_text())["spec"]
    assert evaluate["model"]["hidden"] == [64, 64]
    # A variants.NAME.* sweep runs NAME only, with its value in NAME's spec.
    (steps,) = [line for line in text.splitlines() if "flowvae train" in line and "/steps/" in line]
    settings = json.loads((results / "sweeps/steps/8/settings/train/iaf/seed1.json").read_text())
    assert settings["spec"]["variant"] == "iaf"
    assert settings["spec"]["posterior"]["settings"]["steps"] == 8
    assert "settings/train/iaf/seed1.json" in steps


def test_stages_depend_on_their_package_files(tmp_path):
    model = tmp_path / "results" / "runs" / "standard" / "seed0" / "model.pt"
    proc = snakemake(model, "-n", tmp=tmp_path, configfiles=["config/quick.yaml"])
    text = output(proc)
    assert proc.returncode == 0, text
    train_inputs = next(
        line
        for block in text.split("\n\n")
        if "rule train:" in block
        for line in block.splitlines()
        if line.strip().startswith("input:")
    )
    assert "src/flowvae/train.py" in train_inputs
    assert "src/flowvae/posteriors/gaussian.py" in train_inputs  # its own family's module,
    assert "src/flowvae/posteriors/iaf.py" not in train_inputs  # not its siblings'
    assert "src/flowvae/figures/" not in train_inputs
    assert "src/flowvae/report.py" not in train_inputs


def test_figure_data_get_the_variants_in_config_order(tmp_path):
    panel = tmp_path / "figures" / "posterior_panel.png"
    proc = snakemake(panel, "-n", "--printshellcmds", tmp=tmp_path)
    text = output(proc)
    assert proc.returncode == 0, text
    (command,) = [line for line in text.splitlines() if "figure-data posteriors" in line]
    names = list(STUDY["variants"])
    assert sorted(names, key=lambda v: command.index(f"/eval/{v}/")) == names
    (draw,) = [line for line in text.splitlines() if "flowvae figure posterior_panel" in line]
    assert "--data " + str(tmp_path / "results" / "figdata" / "posteriors.npz") in draw


# ----------------------------------------------------------------------------- bad config

BAD_CONFIGS = {
    "negative epochs": ("train: {epochs: -1}\n", ["epochs", "minimum"]),
    "wrong type": ("train: {epochs: sixty}\n", ["epochs", "integer"]),
    "unknown key": ("train: {epoch: 60}\n", ["'epoch' was unexpected"]),
    "unknown section": ("trian: {epochs: 60}\n", ["'trian' was unexpected"]),
    "bad family": ("variants: {flow: {family: realnvp}}\n", ["family", "realnvp"]),
    "variant named like a figure": (
        "variants: {panel: {family: gaussian}}\n",
        ["config key 'variants'"],
    ),
    "sweep of an unknown key": (
        "sweeps: {lr: {key: train.lrr, values: [1.0]}}\n",
        ["config key 'sweeps.lr.key'", "lrr"],
    ),
    "sweep value out of range": (
        "sweeps: {lr: {key: train.lr, values: [-1.0]}}\n",
        ["config key 'sweeps.lr.values'"],
    ),
}


@pytest.mark.parametrize("text, expected", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_fails_before_any_job(tmp_path, text, expected):
    extra = write_config(tmp_path, text)
    proc = snakemake("--cores", "1", tmp=tmp_path, configfiles=[extra])
    message = output(proc)
    assert proc.returncode != 0
    for fragment in expected:
        assert fragment in message, message
    assert "Job stats" not in message, message
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "figures").exists()


# ----------------------------------------------------------------------------- lint


@pytest.mark.parametrize(
    "command",
    [
        ["snakemake", "--lint"],
        ["snakefmt", "--check", "."],
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
    ],
    ids=" ".join,
)
def test_lint_and_format(command):
    proc = run(*command)
    assert proc.returncode == 0, output(proc)
    if command[0] == "snakemake":
        assert "Lints for" not in output(proc), output(proc)


# ----------------------------------------------------------------------------- profiles


def profile(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "profiles" / name / "config.yaml").read_text())


def test_slurm_profiles_name_existing_rules_alike():
    proc = run("snakemake", "--list-rules")
    assert proc.returncode == 0, output(proc)
    rules = set(proc.stdout.split())
    site, local = (profile(name) for name in SLURM_PROFILES)
    for key in ("set-resources", "set-threads"):
        assert set(site[key]) == set(local[key]), key
        assert set(site[key]) <= rules, f"{key} names unknown rules"
        # A sweep, tuning or equal-compute job is the main job again: same resources.
        for rule, twins in (
            ("train", ("sweep", "tuning", "compute")),
            ("evaluate", ("sweep", "compute")),
        ):
            for twin in twins:
                assert site[key][rule] == site[key][f"{rule}_{twin}"], f"{rule}_{twin}"


def test_slurm_profiles():
    site, local = (profile(name) for name in SLURM_PROFILES)
    assert site["executor"] == local["executor"] == "slurm"
    assert "slurm-status-command" not in site, "a site keeps the default (sacct)"
    assert {"slurm_account", "slurm_partition"} <= set(site["default-resources"])
    assert local["slurm-status-command"] == "squeue"
    assert local["slurm-no-account"] is True
    assert local["slurm-init-seconds-before-status-checks"] == 1
    assert local["default-resources"]["slurm_partition"] == "debug"
    assert "gpu: 1" in (REPO_ROOT / "profiles" / "slurm" / "config.yaml").read_text()


def test_poster_config_plans_500_epochs_of_its_own_with_a_gpu_per_training_job(tmp_path):
    """config/poster.yaml: the poster's three variants on all ten digits, 500 epochs at its
    own learning rate and optimizer (not the 20-epoch tuning's), the best-validation weights."""
    proc = run(
        "snakemake", "-n", "--printshellcmds", "--workflow-profile", "profiles/slurm-poster",
        "--configfile", "config/poster.yaml", *folders(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, output(proc)
    jobs = job_counts(output(proc))
    assert jobs["train"] == 3 * len(STUDY["seeds"])
    assert "train_tuning" not in jobs and "train_compute" not in jobs
    settings = json.loads(
        (tmp_path / "results" / "settings" / "train" / "iaf" / "seed0.json").read_text()
    )["spec"]
    assert settings["data"]["digits"] == list(range(10))
    train = settings["train"]
    assert (train["epochs"], train["lr"], train["optimizer"]) == (500, 2e-3, "adamax")
    assert (train["schedule"], train["keep"]) == ("constant", "best")
    poster = profile("slurm-poster")
    assert poster["set-resources"]["train"]["gpu"] == 1
    assert set(poster["set-resources"]) <= set(profile("slurm")["set-resources"])


@pytest.mark.parametrize("name", ["default", *SLURM_PROFILES])
def test_profile_plans_the_study(tmp_path, name):
    proc = run("snakemake", "-n", "--workflow-profile", f"profiles/{name}", *folders(tmp_path))
    assert proc.returncode == 0, output(proc)


# ----------------------------------------------------------------------------- end to end


# The default suite runs the quick study with two of its variants (about half the jobs);
# test-all also runs it with all four (test_quick_study_of_every_variant_end_to_end).
QUICK_CONFIGS = ["config/quick.yaml", "tests/configs/quick_two_variants.yaml"]
QUICK_VARIANTS = yaml.safe_load((REPO_ROOT / QUICK_CONFIGS[1]).read_text())["run_variants"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """The quick config with two variants (QUICK_CONFIGS) run once, end to end, into a
    temporary folder (shared by the tests below, which run in file order)."""
    return quick_run(tmp_path_factory.mktemp("quick"), QUICK_CONFIGS)


def quick_run(tmp: Path, configs: list[str]) -> Path:
    """snakemake --cores 2 with ``configs`` into ``tmp``; on failure, the tails of the logs."""
    proc = snakemake("--cores", "2", tmp=tmp, configfiles=configs, timeout=900)
    if proc.returncode != 0:
        logs = sorted((tmp / "results" / "logs").rglob("*.log"))
        tails = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in logs)
        pytest.fail(f"the quick run failed:\n{output(proc)[-6000:]}\n{tails}")
    return tmp


def test_quick_metrics_have_a_row_per_variant_and_seed(quick):
    metrics = pd.read_csv(quick / "results" / "metrics.csv")
    expected = {(v, s) for v in QUICK_VARIANTS for s in QUICK["seeds"]}
    assert len(metrics) == len(expected)
    assert set(zip(metrics["variant"], metrics["seed"], strict=True)) == expected
    assert all(math.isfinite(x) for x in metrics["test_neg_elbo"])
    assert (quick / "results" / "summary.md").read_text().strip()
    record = json.loads(
        (quick / "results" / "eval" / "standard" / "seed0" / "metrics.json").read_text()
    )
    tol = QUICK["evaluate"]["elbo_tol"]  # the config's tolerance reaches the evaluation
    assert record["elbo_rule"]["tol"] == record["checks"]["elbo_error"]["threshold"] == tol


def test_quick_writes_every_figure(quick):
    names = figure_names(list(QUICK_VARIANTS), tuning=False)
    for name in names:
        png = quick / "figures" / f"{name}.png"
        pdf = quick / "figures" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert pdf.read_bytes()[:5] == b"%PDF-", pdf


def test_quick_logs_and_benchmarks(quick):
    results = quick / "results"
    for variant in QUICK_VARIANTS:
        for seed in QUICK["seeds"]:
            for stage in ("train", "evaluate"):
                bench = pd.read_csv(
                    results / "benchmarks" / stage / variant / f"seed{seed}.tsv", sep="\t"
                )
                assert len(bench) == 1 and bench["s"].iloc[0] > 0
                assert (results / "logs" / stage / variant / f"seed{seed}.log").exists()
            run_json = json.loads(
                (results / "runs" / variant / f"seed{seed}" / "train.json").read_text()
            )
            assert run_json["variant"] == variant and run_json["seed"] == seed


def test_quick_stale_runs_are_rebuilt_without_snakemake_records(quick, tmp_path):
    """As after a lost Snakemake: a copy of the finished quick run (file times kept) at paths
    Snakemake has no records of; the settings files' keys (and their times) are all that
    decide."""
    configs = QUICK_CONFIGS
    for folder in ("results", "figures"):
        shutil.copytree(quick / folder, tmp_path / folder)
    assert dry_run(tmp=tmp_path, configfiles=configs) == {}, "no record is no reason to rerun"
    # one variant's learning rate: that variant's runs and what reads them, nothing else
    lr = [*configs, write_config(tmp_path, "variants: {cotflow: {train: {lr: 0.002}}}\n")]
    proc = snakemake("-n", tmp=tmp_path, configfiles=lr)
    text = output(proc)
    assert proc.returncode == 0, text
    assert "runs/cotflow/seed0: its settings changed; it will be rebuilt" in text
    jobs = job_counts(text)
    assert jobs["train"] == jobs["evaluate"] == len(QUICK["seeds"])
    assert "prepare" not in jobs
    # the settings files are back as they were: without records times count, so the cotflow
    # runs rerun (a setting changed and changed back is a change of its settings files)
    jobs = dry_run(tmp=tmp_path, configfiles=configs)
    assert jobs["train"] == len(QUICK["seeds"])
    # a model whose key is not its settings file's (finished after the change) is refused
    run_dir = tmp_path / "results" / "runs" / "cotflow" / "seed0"
    settings = tmp_path / "results" / "settings" / "evaluate" / "cotflow" / "seed0.json"
    snakemake("-n", tmp=tmp_path, configfiles=lr)  # rewrites the settings file
    env = pipeline.environment()
    done = subprocess.run(
        [str(BIN / "python"), "-m", "flowvae", "evaluate", "--model", str(run_dir / "model.pt"),
         "--data", str(tmp_path / "results" / "data" / "mnist.pt"),
         "--out", str(tmp_path / "stale"), "--settings-file", str(settings)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "train.lr differ" in done.stderr, done.stderr


def test_quick_evaluate_settings_do_not_retrain(quick):
    """A job's params hold only the config sections it reads."""
    extra = write_config(quick, "evaluate: {iwae_k: 7}\n")
    jobs = dry_run(tmp=quick, configfiles=[*QUICK_CONFIGS, extra])
    assert jobs["evaluate"] == len(QUICK_VARIANTS) * len(QUICK["seeds"])
    assert "train" not in jobs and "prepare" not in jobs and "download" not in jobs


def test_quick_mirror_setting_that_names_the_same_files_reruns_nothing(quick):
    mirror = pipeline.environment()["FLOWVAE_MNIST_MIRROR"]
    jobs = dry_run(tmp=quick, configfiles=QUICK_CONFIGS, config=[f"data={{mirror: {mirror}}}"])
    assert jobs == {}


def test_quick_settings_that_never_change_a_result_rerun_nothing(quick):
    """Device, checkpoint interval and threads are runtime settings: not in any key."""
    jobs = dry_run(
        tmp=quick,
        configfiles=QUICK_CONFIGS,
        config=["train={checkpoint_every: 3, device: cpu, threads: 2}", "evaluate={threads: 2}"],
    )
    assert jobs == {}


def test_quick_sweep_passes_its_value_and_leaves_the_study_alone(quick):
    extra = write_config(
        quick, "sweeps: {lr: {key: train.lr, values: [3.0e-4], variants: [standard], seeds: [0]}}"
    )
    configs = [*QUICK_CONFIGS, extra]
    jobs = dry_run(tmp=quick, configfiles=configs)
    assert jobs["train_sweep"] == jobs["evaluate_sweep"] == 1
    assert not {"download", "prepare", "train", "evaluate", "aggregate", "figure_test_loss"} & set(
        jobs
    )
    run_dir = quick / "results" / "sweeps" / "lr" / "0.0003" / "runs" / "standard" / "seed0"
    proc = snakemake(run_dir / "model.pt", "--cores", "2", tmp=quick, configfiles=configs)
    assert proc.returncode == 0, output(proc)
    history = pd.read_csv(run_dir / "history.csv")
    assert history["lr"].iloc[0] == pytest.approx(3.0e-4)


def test_quick_report(quick):
    html = quick / "report.html"
    proc = snakemake("--report", html, tmp=quick, configfiles=QUICK_CONFIGS)
    assert proc.returncode == 0, output(proc)
    assert html.stat().st_size > 10_000
    assert "<html" in html.read_text(errors="replace")[:2000].lower()


def test_quick_deleted_figure_reruns_alone_then_nothing_to_do(quick):
    figure = quick / "figures" / "test_loss.png"
    figure.unlink()
    assert dry_run(figure, tmp=quick, configfiles=QUICK_CONFIGS) == {
        "figure_test_loss": 1,
        "total": 1,
    }
    proc = snakemake("--cores", "2", tmp=quick, configfiles=QUICK_CONFIGS)
    assert proc.returncode == 0, output(proc)
    assert re.search(r"figure_test_loss\s+1", output(proc))
    assert figure.exists()
    assert dry_run(tmp=quick, configfiles=QUICK_CONFIGS) == {}


@pytest.mark.slow  # about 3.5 minutes: the quick study with all four variants (test-all, CI)
def test_quick_study_of_every_variant_end_to_end(tmp_path):
    """config/quick.yaml as it is: every variant trains and evaluates, and every figure of the
    four is drawn."""
    run_dir = quick_run(tmp_path, ["config/quick.yaml"])
    metrics = pd.read_csv(run_dir / "results" / "metrics.csv")
    expected = {(v, s) for v in QUICK["variants"] for s in QUICK["seeds"]}
    assert set(zip(metrics["variant"], metrics["seed"], strict=True)) == expected
    assert len(metrics) == len(expected) and metrics["exact_nll"].notna().all()
    for name in figure_names(list(QUICK["variants"]), tuning=False):
        assert (run_dir / "figures" / f"{name}.png").exists(), name
    summary = (run_dir / "results" / "summary.md").read_text()
    assert all(f"{v} vs standard" in summary for v in ("iaf", "pcpmap", "cotflow"))


@pytest.mark.slow  # 87 s: a whole quick study of its own (make test-all, CI)
def test_other_latent_sizes_run_end_to_end(tmp_path):
    """latent_dim 3 on the quick config: training, test loss, IWAE, curves, pictures, the
    statistics and the report; the 2-D-only steps are left out, saying why."""
    configs = ["config/quick.yaml"]
    proc = snakemake(
        "--cores", "2", tmp=tmp_path, configfiles=configs, config=["model={latent_dim: 3}"],
        timeout=900,
    )  # fmt: skip
    text = output(proc)
    assert proc.returncode == 0, text[-6000:]
    assert "latent_dim 3 != 2: exact quadrature, posterior contours and the gap figures" in text
    metrics = pd.read_csv(tmp_path / "results" / "metrics.csv")
    assert len(metrics) == len(QUICK["variants"]) * len(QUICK["seeds"])
    assert metrics["test_iwae_nll"].notna().all() and metrics["exact_nll"].isna().all()
    for name in figure_names(list(QUICK["variants"]), latent_2d=False, tuning=False):
        assert (tmp_path / "figures" / f"{name}.png").exists(), name
    assert not list((tmp_path / "figures").glob("gap_*")), "no 2-D-only figure"
    summary = (tmp_path / "results" / "summary.md").read_text()
    assert "latent_dim 3" in summary and "iaf vs standard" in summary
    html = tmp_path / "report.html"
    proc = snakemake(
        "--report", html, tmp=tmp_path, configfiles=configs, config=["model={latent_dim: 3}"]
    )
    assert proc.returncode == 0, output(proc)
    assert html.stat().st_size > 10_000


# ----------------------------------------------------------------------------- tooling


def test_ci_runs_the_readmes_whole_suite():
    """CI calls the README's test command for the whole suite, and the default suite is the
    one without the slow checks (one test file per worker process)."""
    script = REPO_ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    lines = [line.strip() for line in script.read_text().splitlines()]
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    assert lines[-1] == "make test-all"
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make test-all" in readme and "make test " in readme
    make = subprocess.run(
        ["make", "--no-print-directory", "-n", "test", "test-all"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert make.stdout.splitlines()[-2:] == [
        '.venv/bin/python -m pytest -m "not slow and not mutations" -n auto --dist loadfile',
        '.venv/bin/python -m pytest -m "not mutations"',
    ], make.stdout


def test_make_sets_up_a_fresh_clone(tmp_path):
    """Without a venv, every target first creates one and installs the package."""
    venv = tmp_path / "venv"
    for target in ("reproduce", "quick", "test", "test-all", "lint", "report"):
        proc = subprocess.run(
            ["make", "--no-print-directory", "-n", target, f"VENV={venv}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0] == f"python3.11 -m venv {venv}", target
        assert lines[1] == f"{venv}/bin/python -m pip install -e '.[dev]'", target


def test_committed_records_plan_no_job_and_the_missing_runs_all_theirs(tmp_path):
    """A results root holding records.json keeps its runs: on a fresh clone (no settings
    files, the code newer than every record, no .snakemake) a finished run whose outputs
    record its keys plans no job, each missing run all of its own; a record of other settings
    is rebuilt."""
    copy, results = pipeline.workflow_copy(tmp_path), tmp_path / "results"
    proc = pipeline.snakemake("-n", "--quiet", "rules", tmp=tmp_path, cwd=copy)
    assert proc.returncode == 0, output(proc)
    full = job_counts(output(proc))
    kept = [("standard", 0), ("iaf", 0), ("iaf", 1)]
    lay = study_mod.Layout(str(results), str(tmp_path / "figures"))
    old = time.time() - 3600
    for variant, seed in kept:
        keys = {
            stage: json.loads(Path(lay.run_file(f"{stage}_settings", variant, seed)).read_text())
            for stage in ("train", "evaluate")
        }
        for kind in ("model", "history", "metrics", "per_image", "grid", "check", "gap_grid",
                     "train_benchmark", "evaluate_benchmark"):  # fmt: skip
            Path(lay.run_file(kind, variant, seed)).parent.mkdir(parents=True, exist_ok=True)
            Path(lay.run_file(kind, variant, seed)).write_bytes(b"x")
        Path(lay.run_file("train_summary", variant, seed)).write_text(
            json.dumps({"key": keys["train"]["key"]})
        )
        Path(lay.run_file("metrics", variant, seed)).write_text(
            json.dumps({"key": keys["evaluate"]["key"]})
        )
    (results / "records.json").write_text("{}\n")
    shutil.rmtree(results / "settings")
    for path in results.rglob("*"):
        os.utime(path, (old, old))
    newer = time.time()
    for path in (copy / "src").rglob("*.py"):
        os.utime(path, (newer, newer))

    def plan(*configfiles):
        proc = pipeline.snakemake("-n", "--quiet", "rules", tmp=tmp_path, cwd=copy,
                         configfiles=[pipeline.QUICK, *configfiles])  # fmt: skip
        assert proc.returncode == 0, output(proc)
        return job_counts(output(proc)), output(proc)

    jobs, _ = plan()
    assert jobs["train"] == full["train"] - len(kept)
    assert jobs["evaluate"] == full["evaluate"] - len(kept)
    assert jobs["gap_grids"] == full["gap_grids"] - 2  # of the figure seed (0) only
    assert jobs["prepare"] == 1  # for the missing runs
    # another setting of the IAF: its records are rebuilt, the standard VAE's stay
    lr = tmp_path / "lr.yaml"
    lr.write_text("variants: {iaf: {train: {lr: 0.0005}}}\n")
    jobs, text = plan(lr)
    assert jobs["train"] == full["train"] - 1 and jobs["evaluate"] == full["evaluate"] - 1
    assert "runs/iaf/seed0: its settings changed; it will be rebuilt" in text
