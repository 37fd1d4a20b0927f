"""flowvae.study (which runs, targets and settings), the run lock, stale-run checks and damaged
files: the parts of the workflow that are plain Python, tested without Snakemake."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, small_config

from flowvae import config, figures, lock, report, study, train
from flowvae.errors import ConfigError, FlowvaeError, StaleRunError

STUDY_CFG = config.load([REPO_ROOT / "config" / "config.yaml"])


def make_study(tmp_path: Path, **changes) -> study.Study:
    cfg = json.loads(json.dumps(STUDY_CFG))
    cfg["results"], cfg["figures"] = str(tmp_path / "results"), str(tmp_path / "figures")
    for key, value in changes.items():
        config.set_dotted(cfg, key.split("."), value)
    return study.Study(cfg)


# ----------------------------------------------------------------------------- command line


def test_command_line_values_get_the_schema_types():
    cfg = {
        "seeds": ["0", "1"],
        "train": {"lr": "3e-4", "epochs": "5", "grad_clip": "null"},
        "model": {"activation": "relu", "hidden": ["32", "32"]},
        "results": "123",
    }
    study.command_line_values(cfg)
    assert cfg["seeds"] == [0, 1]
    assert cfg["train"] == {"lr": 3e-4, "epochs": 5, "grad_clip": None}
    assert cfg["model"] == {"activation": "relu", "hidden": [32, 32]}
    assert cfg["results"] == "123", "a string key stays a string"
    config.validate(cfg)


def test_bad_yaml_in_a_config_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("train: {epochs: 3\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML or JSON"):
        config.load([bad])


# ----------------------------------------------------------------------------- runs


def test_the_study_runs_every_variant_and_seed(tmp_path):
    s = make_study(tmp_path)
    assert s.variants == list(STUDY_CFG["variants"]) and s.seeds == [0, 1, 2, 3, 4]
    assert s.reference == "standard" and s.latent_2d
    targets = s.targets()
    runs = len(s.variants) * len(s.seeds)
    assert len(s.run_files("metrics")) == runs and set(s.run_files("metrics")) <= set(targets)
    for name in ("posterior_panel", "gap_contours", "quadrature_check", "posterior_iaf"):
        assert s.figure_file(name, "pdf") in targets


def test_run_variants_runs_a_subset_and_says_so(tmp_path):
    s = make_study(tmp_path, run_variants=["iaf"])
    assert s.variants == ["iaf"] and s.reference is None
    assert all("/iaf/" in p for p in s.run_files("model"))
    names = {j.name for j in s.figure_jobs()}
    assert "gap_contours" not in names and "posterior_iaf" in names
    text = "\n".join(s.describe())
    assert "variants iaf;" in text and "leaves out standard, pcpmap, cotflow" in text
    assert "reference variant standard is not run" in text


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"run_variants": ["iaf", "flow"]}, "run_variants"),
        ({"reference": "nope"}, "reference"),
        ({"variants.panel": {"family": "gaussian"}}, "variants"),
        ({"sweeps": {"lr": {"key": "train.lrr", "values": [1.0]}}}, "sweeps.lr.key"),
        ({"sweeps": {"lr": {"key": "train.lr", "values": [-1.0]}}}, "sweeps.lr.values"),
        ({"sweeps": {"x": {"key": "variants.nope.steps", "values": [2]}}}, "sweeps.x.key"),
    ],
)
def test_bad_study_settings_name_their_key(tmp_path, changes, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        make_study(tmp_path, **changes)


def test_other_latent_sizes_leave_out_the_2d_steps(tmp_path):
    s = make_study(tmp_path, **{"model.latent_dim": 3})
    names = {j.name for j in s.figure_jobs()}
    assert names == {
        "test_loss", "loss_curves", "cost_tradeoff", "reconstructions", "samples", "tuning"
    }  # fmt: skip
    assert not [t for t in s.targets() if "gap" in t or "posterior" in t]
    assert any("latent_dim 3 != 2" in line for line in s.describe())


def test_figure_jobs_follow_the_registry(tmp_path):
    """A figure reads its figure data only; the figure data read the runs' files."""
    s = make_study(tmp_path)
    jobs = {j.name: j for j in s.figure_jobs()}
    assert set(jobs) >= {n for n, f in figures.REGISTRY.items() if not f.per_variant} - {"sweep"}
    figdata = os.path.join(s.results, "figdata")
    assert jobs["posterior_panel"].data.inputs == {"grid": s.run_files("grid", seeds=[0])}
    assert jobs["posterior_iaf"].data is jobs["posterior_panel"].data  # one file for both
    assert jobs["posterior_iaf"].data.path == os.path.join(figdata, "posteriors.npz")
    assert jobs["loss_curves"].data.inputs == {"history": s.run_files("history")}
    assert jobs["test_loss"].data.inputs == {"metrics": s.run_files("metrics")}
    assert jobs["test_loss"].data.path == os.path.join(figdata, "test_loss.csv")
    gap = jobs["gap_contours"].data.inputs
    assert gap["reference"] == [s.run_file("per_image", "standard", 0)]
    assert gap["per_image"] == s.run_files("per_image", seeds=[0])
    assert jobs["tuning"].data.ancient == ["plan"]  # rewritten at each parse: its time says nothing
    assert jobs["tuning"].data.inputs["summaries"] == s.tuning_runs("train_summary")
    assert jobs["gap_distribution"].data.path.endswith(".csv.gz")
    assert "**iaf**" in jobs["posterior_iaf"].caption and "Seed 0." in jobs["posterior_iaf"].caption
    assert "`posteriors.npz`_" in jobs["posterior_panel"].caption


def test_code_dependencies_of_each_stage():
    train_code = study.Study.code("train")
    assert any(p.endswith("train.py") for p in train_code)
    assert not any(p.endswith(("report.py", "evaluate.py")) for p in train_code)
    assert not any("/figures/" in p for p in train_code)
    assert "src/flowvae/figures/style.py" in study.Study.code("figures")
    assert any(p.endswith("evaluate.py") for p in study.Study.code("evaluate"))


# ----------------------------------------------------------------------------- settings files


def test_settings_files_are_written_once_and_flag_stale_runs(tmp_path):
    s = make_study(tmp_path)
    assert s.sync_settings() == []
    path = Path(s.run_file("train_settings", "iaf", 0))
    settings = json.loads(path.read_text())
    assert (
        settings["train"]["lr"] == STUDY_CFG["train"]["lr"] and "threads" not in settings["train"]
    )
    assert list(settings["variants"]) == ["iaf"]
    old = time.time() - 1000
    os.utime(path, (old, old))
    assert s.sync_settings() == [] and path.stat().st_mtime == pytest.approx(old)

    # a finished run with the same settings is left alone ...
    model = Path(s.run_file("model", "iaf", 0))
    model.parent.mkdir(parents=True)
    model.write_bytes(b"x")
    (model.parent / "settings.json").write_text(path.read_text())
    assert s.sync_settings() == []
    # ... one from other settings (a job that outlived its Snakemake) gets rebuilt
    s2 = make_study(tmp_path, **{"train.lr": 3e-4})
    notes = s2.sync_settings()
    assert any("runs/iaf/seed0 was made with other settings (train.lr)" in n for n in notes)
    assert path.stat().st_mtime > old + 500
    # and one without a record too
    (model.parent / "settings.json").unlink()
    assert any("has no record" in n for n in s2.sync_settings())


def test_a_model_from_other_settings_is_refused(prepared, tmp_path):
    cfg = small_config(tmp_path, epochs=1)
    train.train(cfg, "standard", 0, prepared, tmp_path / "run", progress=False)
    _, record = train.load_model(tmp_path / "run" / "model.pt")
    train.check_trained_with(record, cfg, tmp_path / "run" / "model.pt")
    other = small_config(tmp_path, epochs=1, lr=3e-4)
    with pytest.raises(StaleRunError, match=r"standard seed 0\).*train.lr differ"):
        train.check_trained_with(record, other, tmp_path / "run" / "model.pt")


def test_an_evaluation_from_other_settings_is_refused(tmp_path):
    ev = tmp_path / "eval" / "metrics.json"
    ev.parent.mkdir()
    ev.write_text("{}")
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"evaluate": {"samples": 10}}))
    (ev.parent / "settings.json").write_text(json.dumps({"evaluate": {"samples": 10}}))
    report.check_evaluations([ev], [expected])
    (ev.parent / "settings.json").write_text(json.dumps({"evaluate": {"samples": 3}}))
    with pytest.raises(StaleRunError, match="evaluate.samples"):
        report.check_evaluations([ev], [expected])


# ----------------------------------------------------------------------------- lock

HOLD = """
import sys, time
from pathlib import Path
from flowvae.lock import run_lock
with run_lock(Path(sys.argv[1]), "test"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_trainer_stops_and_a_dead_holder_never_blocks(tmp_path):
    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "SLURM_JOB_ID": "4242"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(lock.RunLocked) as err:
            with lock.run_lock(folder, "training iaf seed 0"):
                pass
        message = str(err.value)
        assert f"process {holder.pid} (SLURM job 4242)" in message and "scancel 4242" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with lock.run_lock(folder, "again"):  # the kernel released the dead holder's lock
        pass


def test_training_takes_the_lock(prepared, tmp_path):
    cfg = small_config(tmp_path, epochs=1)
    with lock.run_lock(tmp_path / "run", "someone else"):
        with pytest.raises(lock.RunLocked, match="in use by host"):
            train.train(cfg, "standard", 0, prepared, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model.pt").exists()


# ----------------------------------------------------------------------------- damaged files


def test_a_damaged_checkpoint_is_reported_and_training_starts_over(prepared, tmp_path, caplog):
    cfg = small_config(tmp_path, epochs=2, checkpoint_every=1)
    train.train(cfg, "standard", 0, prepared, tmp_path / "a", progress=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    train.train(cfg, "standard", 0, prepared, tmp_path / "b", resume=True, progress=False)
    assert "is damaged" in caplog.text and "training starts over" in caplog.text
    wa = torch.load(tmp_path / "a" / "model.pt", weights_only=False)["state_dict"]
    wb = torch.load(tmp_path / "b" / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_damaged_model_file_is_named(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x02 truncated")
    with pytest.raises(FlowvaeError, match=r"model.pt is damaged.*delete it"):
        train.load_model(path)


def test_a_job_records_the_settings_it_read_not_a_newer_file(tmp_path):
    """A newer Snakemake may rewrite a settings file while an older job still runs: the job's
    record (settings.json) is what it read at its start, so the newer run sees it as stale."""
    from flowvae import cli

    path = tmp_path / "seed0.json"
    path.write_text(json.dumps({"train": {"lr": 0.001}}))
    args = cli.build_parser().parse_args(
        ["prepare", "--raw", "r", "--out", "o", "--settings-file", str(path)]
    )
    assert cli._cfg(args)["train"]["lr"] == 0.001
    path.write_text(json.dumps({"train": {"lr": 0.002}}))  # rewritten while the job runs
    cli._record_settings(args, tmp_path)
    assert json.loads((tmp_path / study.RECORD).read_text()) == {"train": {"lr": 0.001}}
    path.write_text("{not json")
    with pytest.raises(cli.FlowvaeError, match="seed0.json is not valid JSON"):
        cli._cfg(args)
