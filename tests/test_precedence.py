"""One precedence of the config's layers (flowvae.precedence; config/README.md): what the user
states beats every shipped or generated value, at whatever depth that value sits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO_ROOT

from flowvae import adopt, cli, config
from flowvae.errors import ConfigError
from flowvae.precedence import Layer, file_layer, resolve, snakemake_layers

CONFIG, SELECTED = (str(REPO_ROOT / "config" / name) for name in ("config.yaml", "selected.yaml"))
QUICK, LONG, POSTER = (str(REPO_ROOT / "config" / f"{n}.yaml") for n in ("quick", "long", "poster"))

SHIPPED = Layer("config/config.yaml", {"train": {"lr": 1e-3, "epochs": 40}}, user=False)
OWN = {"lr": 3e-3, "epochs": 20}  # the selection's, per variant
CHOSEN = Layer(
    "config/selected.yaml",
    {"variants": {"standard": {"family": "gaussian", "train": OWN}, "iaf": {"train": OWN}}},
    user=False,
)


def train_of(layers: list[Layer], variant: str = "iaf") -> dict:
    return resolve(layers).config["variants"][variant]["train"]


def test_what_the_user_states_beats_the_selection_at_any_depth():
    train = train_of([SHIPPED, CHOSEN, Layer("my.yaml", {"train": {"lr": 1e-4}})])
    assert (train["lr"], train["epochs"], train["batch_size"]) == (1e-4, 20, 128)
    assert train["kl_warmup_epochs"] == 0, "a variant's train is resolved in full (defaults)"
    mine = Layer("--config", {"variants": {"iaf": {"train": {"epochs": 5}}}})
    assert train_of([SHIPPED, CHOSEN, mine])["epochs"] == 5
    assert train_of([SHIPPED, CHOSEN, mine], "standard")["epochs"] == 20


def test_within_one_layer_the_variants_own_value_beats_the_global_one():
    both = {"train": {"lr": 1e-4}, "variants": {"iaf": {"train": {"lr": 5e-4}}}}
    assert train_of([SHIPPED, CHOSEN, Layer("my.yaml", both)])["lr"] == 5e-4
    assert train_of([SHIPPED, CHOSEN, Layer("my.yaml", both)], "standard")["lr"] == 1e-4
    assert train_of([SHIPPED, Layer("config/x.yaml", both, user=False)], "iaf")["lr"] == 5e-4


def test_a_later_value_for_every_variant_after_the_users_own_for_one_is_refused():
    own = Layer("a.yaml", {"variants": {"iaf": {"train": {"lr": 1e-4}}}})
    later = Layer("--set", {"train": {"lr": 2e-4}})
    with pytest.raises(ConfigError) as error:
        resolve([SHIPPED, CHOSEN, own, later])
    for fragment in ("'variants.iaf.train.lr'", "a.yaml", "'train.lr'", "--set"):
        assert fragment in str(error.value)
    same = Layer("--set", {"train": {"lr": 1e-4}})
    assert train_of([SHIPPED, CHOSEN, own, same])["lr"] == 1e-4, "the same value: no doubt"
    stated = Layer("--set", {"train": {"lr": 2e-4}, "variants": {"iaf": {"train": {"lr": 2e-4}}}})
    assert train_of([SHIPPED, CHOSEN, own, stated])["lr"] == 2e-4
    first = Layer("a.yaml", {"train": {"lr": 2e-4}})
    assert train_of([SHIPPED, CHOSEN, first, Layer("--set", own.values)])["lr"] == 1e-4


def test_the_log_names_the_layer_of_every_setting_a_variant_has_of_its_own():
    mine = Layer("--config", {"train": {"lr": 1e-4}, "variants": {"iaf": {"train": {"lr": 3e-4}}}})
    resolved = resolve([SHIPPED, CHOSEN, mine])
    assert resolved.notes() == [
        "flowvae: standard: train.epochs 20 from config/selected.yaml",
        "flowvae: iaf: train.lr 0.0003 from --config",
        "flowvae: iaf: train.epochs 20 from config/selected.yaml",
    ]
    assert resolved.notes(["iaf"]) == resolved.notes()[1:]


def test_snakemakes_layers_in_order_with_the_command_line_typed(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("train: {epochs: 3}\n")
    settings = SimpleNamespace(configfiles=[mine], config={"train": {"lr": "1.0e-4"}})
    layers = snakemake_layers(REPO_ROOT, settings)
    assert [(layer.name, layer.user) for layer in layers] == [
        ("config/config.yaml", False),
        ("config/selected.yaml", False),
        (str(mine), True),
        ("--config", True),
    ]
    train = train_of(layers)
    assert (train["lr"], train["epochs"]) == (1e-4, 3)
    assert settings.config == {"train": {"lr": "1.0e-4"}}, "Snakemake's own values untouched"
    replaced = SimpleNamespace(**vars(settings), replace_workflow_config=True)
    assert [layer.name for layer in snakemake_layers(REPO_ROOT, replaced)] == [
        str(mine),
        "--config",
    ]


def test_a_file_written_by_adopt_is_a_generated_layer_whoever_names_it(tmp_path):
    assert not file_layer(SELECTED).user and file_layer(CONFIG).user
    path = tmp_path / "selected.yaml"
    path.write_text(adopt.HEADER.format(selection="x.csv") + "variants: {}\n")
    assert not file_layer(path).user


def trained_spec(monkeypatch, tmp_path, *options: str):
    """The spec that ``python -m flowvae train --variant iaf --seed 0 OPTIONS`` trains."""
    from flowvae import train

    seen = []
    monkeypatch.setattr(train, "train", lambda spec, *args, **kw: seen.append(spec))
    argv = ["train", "--data", "x.pt", "--out", str(tmp_path), "--variant", "iaf", "--seed", "0"]
    assert cli.main([*argv, *options]) == 0
    (spec,) = seen
    return spec


def test_set_on_the_command_line_beats_every_config_file(monkeypatch, tmp_path):
    """`--set train.epochs=5000` trains 5000 epochs after config/quick.yaml, and
    `--set train.lr=1e-4` beats the lr config/selected.yaml holds for the variant."""
    spec = trained_spec(monkeypatch, tmp_path, "--config", CONFIG, "--config", QUICK,
                        "--set", "train.epochs=5000")  # fmt: skip
    assert spec.train.epochs == 5000
    spec = trained_spec(monkeypatch, tmp_path, "--config", CONFIG, "--config", SELECTED,
                        "--set", "train.lr=1e-4")  # fmt: skip
    assert (spec.train.lr, spec.train.epochs) == (1e-4, 20), "the selection fills the rest"


def test_the_readmes_set_forms(monkeypatch, tmp_path):
    """README, "Reproducing": `train ... --config config/config.yaml --set train.epochs=10`."""
    spec = trained_spec(monkeypatch, tmp_path, "--config", CONFIG, "--set", "train.epochs=10")
    assert spec.train.epochs == 10
    spec = trained_spec(monkeypatch, tmp_path, "--config", CONFIG, "--config", SELECTED,
                        "--set", "train.epochs=10", "--set", "evaluate.iwae_k=7")  # fmt: skip
    assert (spec.train.epochs, spec.train.lr, spec.evaluate.iwae_k) == (10, 0.003, 7)


@pytest.mark.parametrize("path", [QUICK, LONG, POSTER], ids=lambda p: p.split("/")[-1])
def test_a_shipped_config_states_each_training_setting_once(path):
    """`train` reaches every variant: no config file repeats it per variant."""
    variants = yaml.safe_load(open(path)).get("variants") or {}
    assert not [name for name, entry in variants.items() if "train" in (entry or {})]


def test_the_long_study_keeps_its_settings():
    cfg = config.load([CONFIG, SELECTED, LONG])
    assert cfg["run_variants"] == ["standard", "iaf", "pcpmap", "cotflow"]
    for variant in cfg["run_variants"]:
        train = config.train_settings(cfg, variant)
        assert (train["epochs"], train["lr"], train["optimizer"]) == (500, 2e-3, "adamax")
        assert (train["schedule"], train["keep"], train["checkpoint_every"]) == (
            "constant",
            "best",
            10,
        )
