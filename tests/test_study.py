"""flowvae.study: which runs, targets and settings files a config plans, tested without
Snakemake."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from flowvae import config, figures, precedence, study
from flowvae.errors import ConfigError

STUDY_FILES = [
    precedence.file_layer(REPO_ROOT / "config" / name, f"config/{name}", user=False)
    for name in ("config.yaml", "selected.yaml")
]
STUDY_CFG = config.validate(precedence.resolve(STUDY_FILES).config)


def make_study(tmp_path: Path, **changes) -> study.Study:
    """The study with its folders in ``tmp_path`` and ``changes`` (dotted key -> value) stated
    on top, as a user's --config would."""
    stated = {"results": str(tmp_path / "results"), "figures": str(tmp_path / "figures")}
    for key, value in changes.items():
        config.set_dotted(stated, key.split("."), value)
    return study.Study(
        precedence.resolve([*STUDY_FILES, precedence.Layer("--config", stated)]).config
    )


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
        "test_loss", "loss_curves", "test_curve", "cost_tradeoff", "reconstructions", "samples",
        "tuning",
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


# ----------------------------------------------------------------------------- settings files


def _files(s: study.Study) -> dict[Path, tuple[str, float]]:
    root = Path(s.results) / "settings"
    return {p: (p.read_text(), p.stat().st_mtime) for p in sorted(root.rglob("*.json"))}


def test_settings_files_hold_the_key_and_change_only_with_it(tmp_path):
    s = make_study(tmp_path)
    assert s.write_settings() == []
    path = Path(s.run_file("train_settings", "iaf", 0))
    tree = json.loads(path.read_text())
    assert tree["stage"] == "train" and tree["spec"]["posterior"]["family"] == "iaf"
    assert tree["spec"]["train"]["lr"] == 0.003, "the variant's own lr (the selection) wins"
    for runtime in ("threads", "device", "checkpoint_every"):
        assert runtime not in tree["spec"]["train"]
    assert tree["key"] == config.resolve(s.cfg, "iaf", 0).key("train")
    n_runs = len(s.variants) * len(s.seeds)
    n_tuning = sum(len(c) for c in s.candidates.values()) * len(s.tuning_seeds)
    assert len(list((Path(s.results) / "settings" / "train").rglob("*.json"))) == n_runs
    assert len(list((Path(s.results) / "tuning").rglob("settings/train/*/*.json"))) == n_tuning
    old = time.time() - 1000
    for p in _files(s):
        os.utime(p, (old, old))
    before = _files(s)

    # what never changes a result rewrites no settings file (the runtime file is `ancient`)
    quiet = make_study(
        tmp_path, **{"train.checkpoint_every": 1, "train.device": "cpu", "train.threads": 2}
    )
    assert quiet.write_settings() == [] and _files(quiet) == {
        p: v for p, v in before.items() if not p.name == "runtime.json"
    } | {p: v for p, v in _files(quiet).items() if p.name == "runtime.json"}
    runtime = json.loads(Path(quiet.study_file("runtime")).read_text())
    assert runtime["iaf"]["train"] == {"checkpoint_every": 1, "device": "cpu", "threads": 2}

    # one variant's setting rewrites that variant's files only, and says which finished runs
    model = Path(s.run_file("model", "iaf", 0))
    model.parent.mkdir(parents=True)
    model.write_bytes(b"x")
    changed = make_study(tmp_path, **{"variants.iaf.train.lr": 3e-4})
    notes = changed.write_settings()
    assert notes == [f"flowvae: {model.parent}: its settings changed; it will be rebuilt"]
    now = _files(changed)
    rewritten = sorted(p.relative_to(tmp_path).as_posix() for p in now if now[p] != before[p])
    assert [p for p in rewritten if "/tuning/" not in p and "runtime" not in p] == [
        f"results/settings/{stage}/iaf/seed{seed}.json"
        for stage in ("evaluate", "train")
        for seed in s.seeds
    ]
    # and changing it back writes the first text again: the key is all that counts
    make_study(tmp_path).write_settings()
    assert json.loads(path.read_text()) == tree


def test_outputs_recording_another_key_are_rebuilt_though_the_settings_did_not_change(tmp_path):
    """A cluster job that outlived its Snakemake finishes after the settings were rewritten,
    and Snakemake touches its outputs: they are newer than the settings but hold the old
    key. The next parse touches the settings file (Snakemake reruns the job) and says so;
    outputs holding the settings' key, or none (an empty record), are left alone."""
    s = make_study(tmp_path)
    s.write_settings()
    old = time.time() - 1000
    for p in _files(s):
        os.utime(p, (old, old))
    stale, current, unknown = ("iaf", 0), ("standard", 0), ("standard", 1)
    for (variant, seed), record in (
        (stale, json.dumps({"key": "0123456789abcdef"})),
        (current, None),
        (unknown, ""),
    ):
        settings = Path(s.run_file("train_settings", variant, seed))
        if record is None:
            record = json.dumps({"key": json.loads(settings.read_text())["key"]})
        model = Path(s.run_file("model", variant, seed))
        model.parent.mkdir(parents=True)
        model.write_bytes(b"x")
        Path(s.run_file("train_summary", variant, seed)).write_text(record)
    before = _files(s)
    notes = make_study(tmp_path).write_settings()
    after = _files(s)
    touched = [p for p in after if after[p] != before[p]]
    assert touched == [Path(s.run_file("train_settings", *stale))]
    assert after[touched[0]][0] == before[touched[0]][0], "the text is the same"
    model = Path(s.run_file("model", *stale))
    assert after[touched[0]][1] >= model.stat().st_mtime
    assert notes == [
        f"flowvae: {model.parent}: made with other settings than {touched[0]} holds (a job "
        "that outlived its Snakemake?); it will be rebuilt"
    ]


NEW_PLAN = "flowvae: the tuning plan changed; the selection is redone"


def test_the_log_says_the_tuning_plan_changed_only_when_it_did(tmp_path):
    """A fresh clone has a selection but no plan file: nothing changed, nothing is said."""
    s = make_study(tmp_path)
    selection = Path(s.study_file("selection"))
    selection.parent.mkdir(parents=True)
    selection.write_text("committed\n")
    assert NEW_PLAN not in s.write_settings(), "no plan before"
    assert NEW_PLAN not in make_study(tmp_path).write_settings(), "the same plan"
    assert NEW_PLAN in make_study(tmp_path, **{"tuning.shared.lr": [1e-3]}).write_settings()
