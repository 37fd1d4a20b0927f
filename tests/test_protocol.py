"""The hyperparameter protocol end to end, in miniature (config/quick_tuning.yaml): the tuning
stage, adoption of the selection, then the final comparison at equal epochs and at equal
training time, with the protocol in the summary."""

import pandas as pd
import pytest
import yaml
from conftest import REPO_ROOT
from pipeline import QUICK, failure, flowvae, snakemake

from flowvae import adopt, selection
from flowvae import config as config_mod
from flowvae.study import Study

# Minutes of training and evaluation: in `make test-all` (what CI runs), not in `make test`.
pytestmark = pytest.mark.slow


def protocol_configs(tmp):
    """The quick protocol's config files, the last one written by the fixture into ``tmp``."""
    return [QUICK, "config/quick_tuning.yaml", tmp / "smaller.yaml"]


def final_configs(tmp):
    """The final comparison's config files: the quick ones, then the adopted selection."""
    return [*protocol_configs(tmp), tmp / "selected.yaml"]


# Two variants (the reference and one flow) and one final seed keep it to a few minutes; the
# other families' candidates are checked in tests/test_selection.py.
SMALLER = "run_variants: [standard, iaf]\nseeds: [0]\n"


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocol")
    (tmp / "smaller.yaml").write_text(SMALLER)
    configs = protocol_configs(tmp)
    proc = snakemake("--cores", "2", "tuning", tmp=tmp, configfiles=configs, timeout=1200)
    assert proc.returncode == 0, failure(proc, tmp)
    config = tmp / "adopted.yaml"
    hand_written = (REPO_ROOT / "config" / "config.yaml").read_text()
    bases = [x for c in ["config/config.yaml", *configs] for x in ("--config", c)]
    adopted = flowvae("adopt", "--selection", tmp / "results" / "selection.csv",
                      "--out", config, *bases)  # fmt: skip
    assert adopted.returncode == 0, adopted.stderr
    assert (REPO_ROOT / "config" / "config.yaml").read_text() == hand_written
    # the selection goes last: quick.yaml sets every variant's own epochs, which would
    # otherwise win over it (only the selected keys: the candidates' settings stay as tuned)
    table = pd.read_csv(tmp / "results" / "selection.csv")
    chosen = {"variants": selection.selected(table)}
    chosen["equal_compute"] = yaml.safe_load(config.read_text())["equal_compute"]
    (tmp / "selected.yaml").write_text(yaml.safe_dump(chosen, sort_keys=False))
    proc = snakemake("--cores", "2", tmp=tmp, configfiles=final_configs(tmp), timeout=1200)
    assert proc.returncode == 0, failure(proc, tmp)
    return tmp


def test_tuning_gives_every_variant_the_same_trials_judged_on_validation(protocol):
    table = pd.read_csv(protocol / "results" / "selection.csv")
    cfg = config_mod.load([REPO_ROOT / "config" / "config.yaml", *protocol_configs(protocol)])
    study = Study(cfg)
    assert table.groupby("variant").size().to_dict() == {
        v: len(c) for v, c in study.candidates.items()
    }
    assert table.groupby("variant")["selected"].sum().to_dict() == dict.fromkeys(study.variants, 1)
    best = table.loc[table.groupby("variant")["mean_val_loss"].idxmin()]
    assert best["selected"].all()
    assert not any("test" in c for c in table.columns)
    for name in ("tuning.png", "tuning.pdf"):
        assert (protocol / "figures" / name).stat().st_size > 0


def test_final_comparison_runs_at_the_selected_settings(protocol):
    cfg = config_mod.load([REPO_ROOT / "config" / "config.yaml", *final_configs(protocol)])
    table = pd.read_csv(protocol / "results" / "selection.csv")
    assert adopt.difference(cfg, table) == []
    chosen = selection.selected(table)
    metrics = pd.read_csv(protocol / "results" / "metrics.csv")
    for variant, overrides in chosen.items():
        epochs = metrics.loc[metrics["variant"] == variant, "epochs"]
        assert (epochs == overrides["train"]["epochs"]).all()
    summary = (protocol / "results" / "summary.md").read_text()
    assert "## Hyperparameter protocol" in summary
    assert "The config carries these settings" in summary
    assert "## Which comparison the claim survives" in summary


def test_equal_compute_trains_the_faster_variants_longer(protocol):
    cfg = config_mod.load([REPO_ROOT / "config" / "config.yaml", *final_configs(protocol)])
    ec = pd.read_csv(protocol / "results" / "equal_compute" / "metrics.csv")
    assert set(ec["variant"]) == set(cfg["run_variants"]) == set(cfg["equal_compute"])
    for variant, epochs in cfg["equal_compute"].items():
        assert (ec.loc[ec["variant"] == variant, "epochs"] == epochs).all()
    selected = {v: config_mod.train_settings(cfg, v)["epochs"] for v in cfg["run_variants"]}
    assert all(cfg["equal_compute"][v] >= selected[v] for v in selected)
