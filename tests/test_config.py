"""The config (YAML, overrides, command-line values, the schema) and the run spec resolved
from it once per job (flowvae.spec)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import REPO_ROOT

from flowvae import config, spec
from flowvae.errors import ConfigError

STUDY = config.load([REPO_ROOT / "config" / "config.yaml", REPO_ROOT / "config" / "selected.yaml"])


def test_command_line_values_get_the_schema_types():
    cfg = {
        "seeds": ["0", "1"],
        "train": {"lr": "3e-4", "epochs": "5", "grad_clip": "null"},
        "model": {"activation": "relu", "hidden": ["32", "32"]},
        "results": "123",
    }
    config.command_line_values(cfg)
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


@pytest.mark.parametrize("part", ["data", "model", "train", "evaluate"])
def test_every_schema_key_is_a_field_of_its_spec(part):
    """The schema and the typed spec name the same keys (a new key needs its field)."""
    keys = set(config.load_schema()["properties"][part]["properties"])
    assert keys == {f.name for f in dataclasses.fields(spec.PARTS[part])}


def test_runtime_fields_are_left_out_of_the_key_and_nothing_else():
    run = config.resolve(STUDY, "iaf", 0)
    runtime = {
        (part, f.name)
        for part in ("data", "train", "evaluate")
        for f in dataclasses.fields(spec.PARTS[part])
        if f.metadata.get("runtime")
    }
    assert runtime == {
        ("data", "mirror"),
        ("train", "threads"),
        ("train", "device"),
        ("train", "checkpoint_every"),
        ("evaluate", "threads"),
    }
    key = run.key("train")
    assert run.replace_train(threads=7, device="cpu", checkpoint_every=1).key("train") == key
    # every field that decides the result changes the key
    for f in dataclasses.fields(spec.TrainSpec):
        if f.metadata.get("runtime"):
            continue
        value = getattr(run.train, f.name)
        if f.name == "betas":
            other = (0.5, 0.5)
        elif f.name == "schedule":
            other = "constant" if value != "constant" else "cosine"
        elif f.name == "keep":
            other = "best" if value == "last" else "last"
        elif f.name == "optimizer":
            other = "adamax" if value == "adam" else "adam"
        elif f.name == "precision":
            other = "bfloat16" if value == "float32" else "float32"
        elif f.name == "grad_clip" and value is not None:
            other = None
        else:
            other = (value or 0) + 1
        assert run.replace_train(**{f.name: other}).key("train") != key, f.name
    assert dataclasses.replace(run, seed=1).key("train") != key
    assert run.key("evaluate") != run.replace_evaluate(iwae_k=7).key("evaluate")
    assert run.key("train") == run.replace_evaluate(iwae_k=7).key("train")


def test_a_spec_survives_its_settings_file_and_a_bad_file_is_named(tmp_path):
    run = config.resolve(STUDY, "cotflow", 3)
    path = tmp_path / "seed3.json"
    path.write_text(json.dumps(spec.settings_tree(run, "evaluate")))
    back = spec.read_settings(path, "evaluate")
    assert back == run and back.key("evaluate") == run.key("evaluate")
    with pytest.raises(ConfigError, match="not the settings of a train job"):
        spec.read_settings(path, "train")
    path.write_text("{broken")
    with pytest.raises(ConfigError, match="seed3.json is not valid JSON"):
        spec.read_settings(path, "evaluate")
    path.write_text(json.dumps({"stage": "evaluate", "spec": {"variant": "x"}}))
    with pytest.raises(ConfigError, match="seed3.json does not describe a run"):
        spec.read_settings(path, "evaluate")


def test_a_variant_own_train_settings_win_and_unknown_variants_are_named():
    run = config.resolve(STUDY, "standard", 0)
    assert run.train.lr == STUDY["variants"]["standard"]["train"]["lr"] != STUDY["train"]["lr"]
    with pytest.raises(ConfigError, match="unknown variant 'nope'"):
        config.resolve(STUDY, "nope", 0)
