"""Model and checkpoint files: plain tensors and data only, a crafted pickle never runs, a
damaged or old file says what to do, and a model of another key is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, small_spec

from flowvae import evaluate, modelfile, train
from flowvae import spec as spec_mod
from flowvae.errors import FlowvaeError, StaleRunError


class Payload:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_files_written_by_training_load_with_weights_only(prepared, tmp_path):
    spec = small_spec("iaf", epochs=2, checkpoint_every=1)
    train.train(spec, prepared, tmp_path / "run", progress=False)
    record = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert record["format"] == modelfile.MODEL_FORMAT and record["key"] == spec.key("train")
    trained = modelfile.load_model(tmp_path / "run" / "model.pt")
    assert trained.key == trained.spec.key("train") == spec.key("train")
    assert trained.spec.posterior == spec.posterior and trained.spec.evaluate is None
    # a checkpoint of the same run: stop during epoch 2, then read it back
    (tmp_path / "run" / "model.pt").unlink()
    state = train.start(spec, torch.device("cpu"))
    train.save_checkpoint(state, spec, tmp_path / "checkpoint.pt")
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["key"] == spec.key("train")
    assert modelfile.load_checkpoint(tmp_path / "checkpoint.pt", spec)["epoch"] == 0
    assert modelfile.load_checkpoint(tmp_path / "checkpoint.pt", small_spec("iaf", lr=1)) is None


def test_a_crafted_model_file_is_refused_before_anything_runs(prepared, tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "model.pt"
    torch.save({"format": modelfile.MODEL_FORMAT, "state_dict": Payload(marker)}, evil)
    with pytest.raises(modelfile.UnsafeFileError, match=r"model file .*model.pt was refused"):
        modelfile.load_model(evil)
    # the command line too, with the exit status of a flowvae error and no traceback
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "flowvae", "evaluate", "--model", str(evil), "--data",
         str(prepared), "--out", str(tmp_path / "eval")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 2 and "was refused" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists(), "the payload ran"


def test_a_crafted_checkpoint_is_refused_and_never_resumed(prepared, tmp_path):
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": modelfile.CHECKPOINT_FORMAT, "model": Payload(marker)},
               run / "checkpoint.pt")  # fmt: skip
    with pytest.raises(modelfile.UnsafeFileError, match=r"checkpoint .*checkpoint.pt was refused"):
        train.train(small_spec("standard"), prepared, run, resume=True, progress=False)
    assert not marker.exists(), "the payload ran"
    assert not (run / "model.pt").exists()


def test_old_format_and_damaged_files_say_to_retrain(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"state_dict": {}, "config": {}, "variant": "iaf", "seed": 0}, old)
    with pytest.raises(FlowvaeError, match=r"old.pt is of format 'none'.*retrain"):
        modelfile.load_model(old)
    damaged = tmp_path / "model.pt"
    damaged.write_bytes(b"\x80\x02 truncated")
    with pytest.raises(FlowvaeError, match=r"model.pt is damaged.*delete it"):
        modelfile.load_model(damaged)


def test_a_damaged_checkpoint_is_reported_and_training_starts_over(prepared, tmp_path, caplog):
    spec = small_spec("standard", epochs=2, checkpoint_every=1)
    train.train(spec, prepared, tmp_path / "a", progress=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    train.train(spec, prepared, tmp_path / "b", resume=True, progress=False)
    assert "is damaged" in caplog.text and "training starts over" in caplog.text
    wa = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_model_of_another_key_is_refused_naming_the_keys(prepared, tmp_path):
    spec = small_spec("standard", epochs=1)
    train.train(spec, prepared, tmp_path / "run", progress=False)
    other = small_spec("standard", epochs=1, lr=3e-4)
    with pytest.raises(StaleRunError, match=r"standard seed 0\).*train.lr differ"):
        evaluate.evaluate(other, tmp_path / "run" / "model.pt", prepared, tmp_path / "ev")
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_a_settings_file_rewritten_during_training_leaves_no_outputs(prepared, tmp_path):
    """A job that outlived its Snakemake while the settings changed: no stale outputs."""
    spec = small_spec("standard", epochs=1)
    settings = tmp_path / "seed0.json"
    settings.write_text(
        json.dumps(spec_mod.settings_tree(small_spec("standard", lr=3e-4), "train"))
    )
    with pytest.raises(StaleRunError, match="seed0.json changed while standard seed 0 trained"):
        train.train(spec, prepared, tmp_path / "run", progress=False, settings_file=settings)
    assert not (tmp_path / "run" / "model.pt").exists()
    settings.write_text(json.dumps(spec_mod.settings_tree(spec, "train")))
    train.train(spec, prepared, tmp_path / "run", progress=False, settings_file=settings)
    assert (tmp_path / "run" / "model.pt").exists()


def test_the_readme_steps_train_then_evaluate_without_the_config(prepared, tmp_path):
    """A model knows what it was trained with: evaluating it needs no --config."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    cfg = tmp_path / "small.yaml"
    cfg.write_text(
        "data: {n_val: 30, max_test: 20, digits: [1, 2, 3]}\nmodel: {hidden: [32]}\n"
        "variants: {iaf: {family: iaf, steps: 1, hidden: 8, context_dim: 4}}\n"
    )

    def flowvae(*args):
        done = subprocess.run(
            [sys.executable, "-m", "flowvae", *map(str, args)], capture_output=True, text=True,
            env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done

    flowvae("train", "--data", prepared, "--variant", "iaf", "--seed", 0, "--out",
            tmp_path / "iaf0", "--config", cfg, "--set", "train.epochs=2",
            "--no-progress")  # fmt: skip
    flowvae("evaluate", "--model", tmp_path / "iaf0" / "model.pt", "--data", prepared, "--out",
            tmp_path / "eval", "--set", "evaluate.iwae_k=4", "--set", "evaluate.check_images=2",
            "--set", "evaluate.grid_points=12", "--no-progress")  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["variant"] == "iaf" and metrics["epochs"] == 2
