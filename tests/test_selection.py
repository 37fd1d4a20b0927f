"""The hyperparameter protocol: candidates, the selection on the validation loss, adoption into
config/selected.yaml, and the default configs against the committed selection."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO_ROOT

from flowvae import adopt, selection
from flowvae import config as config_mod
from flowvae.errors import ConfigError
from flowvae.study import Study

DEFAULT = REPO_ROOT / "config" / "config.yaml"
SELECTED = REPO_ROOT / "config" / "selected.yaml"


def study(**tuning) -> Study:
    cfg = config_mod.load([DEFAULT, SELECTED], None, [])
    own = {**cfg["tuning"]["own"], **tuning.pop("own", {})}
    cfg["tuning"] = {**cfg["tuning"], "own": own, **tuning}
    return Study(cfg)


def test_every_variant_gets_the_same_trials_from_shared_and_own_settings():
    s = study()
    spec = s.cfg["tuning"]
    shared = len(spec["shared"]["lr"]) * len(spec["shared"]["epochs"])
    assert {v: len(c) for v, c in s.candidates.items()} == {
        v: shared * len(spec["own"][v]) for v in s.variants
    }
    iaf = s.candidates["iaf"][0]
    assert iaf.labels == {"steps": 2, "hidden": 64, "lr": 3.0e-4, "epochs": 10}
    run = config_mod.resolve(iaf.cfg, "iaf", 100)
    assert run.train.lr == 3.0e-4 and run.posterior.kwargs()["steps"] == 2
    assert (
        len({c.name for cands in s.candidates.values() for c in cands if c.variant == "iaf"}) == 12
    )


@pytest.mark.parametrize(
    "tuning, key",
    [
        ({"seeds": [0]}, "tuning.seeds"),
        ({"own": {"standard": [{"train": {"lr": 1e-3}}]}}, "tuning.own"),
        ({"own": {"nosuch": [{}]}}, "tuning.own"),
        ({"own": {"iaf": [{"stepz": 3}, {}]}}, r"tuning.own.iaf\[0\]"),
        ({"shared": {"lr": [-1.0], "epochs": [10]}}, r"tuning.own.standard\[0\]"),
    ],
)
def test_a_bad_tuning_grid_names_its_key(tuning, key):
    with pytest.raises(ConfigError, match=f"config key '{key}"):
        study(**tuning)


def runs(losses: dict[tuple[str, str], list[float]]) -> list[dict]:
    """Synthetic tuning runs: (variant, candidate) -> final validation loss per seed."""
    out = []
    for (variant, cand), values in losses.items():
        lr = float(cand)
        for seed, loss in zip((100, 101), values, strict=False):
            out.append(
                {
                    "variant": variant,
                    "candidate": f"lr={cand}",
                    "labels": {"lr": lr},
                    "overrides": {"train": {"lr": lr}},
                    "seed": seed,
                    "final_val_loss": loss,
                    "train_seconds": 10.0,
                    "seconds_per_epoch": 1.0,
                }
            )
    return out


def test_the_selection_takes_the_lowest_mean_validation_loss_per_variant():
    table = selection.table(
        runs(
            {
                ("a", "0.001"): [130.0, 128.0],  # mean 129
                ("a", "0.003"): [127.0, 132.0],  # mean 129.5, best single seed: not chosen
                ("b", "0.001"): [140.0, 141.0],
                ("b", "0.003"): [139.0, 140.0],
            }
        ),
        "lowest_mean_val_loss",
    )
    chosen = table[table["selected"]].set_index("variant")["candidate"].to_dict()
    assert chosen == {"a": "lr=0.001", "b": "lr=0.003"}
    row = table[(table["variant"] == "a") & (table["candidate"] == "lr=0.003")].iloc[0]
    assert row["mean_val_loss"] == 129.5 and row["rank"] == 2
    assert row["sd_val_loss"] == pytest.approx(pd.Series([127.0, 132.0]).std())
    assert row["val_loss_seed100"] == 127.0 and row["val_loss_seed101"] == 132.0
    assert selection.selected(table) == {
        "a": {"train": {"lr": 0.001}},
        "b": {"train": {"lr": 0.003}},
    }


def test_adopt_writes_the_selection_and_difference_finds_a_departure(tmp_path):
    out = tmp_path / "selected.yaml"
    s = study()
    table = selection.table(
        [
            {
                "variant": c.variant,
                "candidate": c.name,
                "labels": c.labels,
                "overrides": c.overrides,
                "seed": 100,
                # a loss that prefers lr 3e-3, the longest training and each variant's second option
                "final_val_loss": 200 - 1e4 * c.labels["lr"] - c.labels["epochs"] - 5 * i,
                "train_seconds": 1.0,
                "seconds_per_epoch": 0.1 if c.variant == "standard" else 0.3,
            }
            for cands in s.candidates.values()
            for i, c in enumerate(cands)
        ],
        "lowest_mean_val_loss",
    )
    before = adopt.difference(s.cfg, table)
    assert before  # the committed settings are not that selection
    base = config_mod.load([DEFAULT])
    hand_written = DEFAULT.read_text()
    changed = adopt.adopt(out, table, base)
    assert changed == s.variants, "a new file: every variant is new"
    assert DEFAULT.read_text() == hand_written, "the hand-written config is never rewritten"
    adopted = config_mod.load([DEFAULT, out], None, [])
    assert adopt.difference(adopted, table) == []
    longest = max(s.cfg["tuning"]["shared"]["epochs"])
    iaf = config_mod.resolve(adopted, "iaf", 0)
    assert iaf.train.epochs == longest and iaf.train.lr == 3e-3
    assert config_mod.resolve(adopted, "pcpmap", 0).posterior.kwargs()["depth"] == 2
    # equal compute: the slower variants' epochs take 0.3 s each, the standard's 0.1 s: 3x
    assert adopted["equal_compute"] == {
        "standard": 3 * longest, "iaf": longest, "pcpmap": longest, "cotflow": longest
    }  # fmt: skip
    # the rest of the config is the hand-written one, and a second adoption changes nothing
    assert adopted["tuning"] == s.cfg["tuning"] and adopted["seeds"] == s.cfg["seeds"]
    assert adopt.adopt(out, table, base) == []
    # a hand edit is found, named by its key
    out.write_text(out.read_text().replace("width: 128", "width: 96", 1))
    edited = config_mod.load([DEFAULT, out], None, [])
    assert "variants.pcpmap.width" in adopt.difference(edited, table)


def test_the_default_config_carries_the_committed_selection():
    committed = REPO_ROOT / "results" / "selection.csv"
    if not committed.exists():
        pytest.skip("results/selection.csv is not committed yet: the tuning stage has not run")
    cfg = config_mod.load([DEFAULT, SELECTED], None, [])
    table = selection.read(committed)
    plan = Study(cfg).tuning_plan()
    assert sorted(table["candidate"]) == sorted(c["candidate"] for c in plan["candidates"])
    assert adopt.difference(cfg, table) == []


def test_selection_reads_the_plan_and_refuses_a_stale_run(tmp_path):
    plan = {"rule": "lowest_mean_val_loss", "candidates": []}
    for lr, loss in ((1e-3, 120.0), (3e-3, 119.0)):
        run = tmp_path / f"lr{lr}"
        run.mkdir()
        (tmp_path / f"lr{lr}.json").write_text(json.dumps({"stage": "train", "key": f"k{lr}"}))
        (run / "train.json").write_text(
            json.dumps(
                {
                    "key": f"k{lr}",
                    "variant": "a",
                    "seed": 100,
                    "final_val_loss": loss,
                    "train_seconds": 5.0,
                    "seconds_per_epoch": 1.0,
                }
            )
        )
        plan["candidates"].append(
            {
                "variant": "a",
                "candidate": f"lr={lr}",
                "labels": {"lr": lr},
                "overrides": {"train": {"lr": lr}},
                "runs": [
                    {
                        "seed": 100,
                        "summary": str(run / "train.json"),
                        "settings": str(tmp_path / f"lr{lr}.json"),
                    }
                ],
            }
        )
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    table = selection.from_plan(path)
    assert table.loc[table["selected"], "candidate"].tolist() == ["lr=0.003"]
    Path(tmp_path / "lr0.003.json").write_text(json.dumps({"stage": "train", "key": "other"}))
    with pytest.raises(selection.FlowvaeError, match="other settings"):
        selection.from_plan(path)


def test_quick_protocol_config_is_the_default_grid_in_miniature():
    cfg = config_mod.load(
        [
            DEFAULT,
            SELECTED,
            REPO_ROOT / "config" / "quick.yaml",
            REPO_ROOT / "config" / "quick_tuning.yaml",
        ],  # fmt: skip
        None,
        [],
    )
    s = Study(cfg)
    assert set(s.candidates) == set(s.variants)
    assert len({len(c) for c in s.candidates.values()}) == 1
    assert yaml.safe_load((REPO_ROOT / "config" / "quick.yaml").read_text())["tuning"] is None
    assert Study(config_mod.load([DEFAULT, REPO_ROOT / "config" / "quick.yaml"])).candidates == {}
