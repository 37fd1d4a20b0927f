"""flowvae.records: the probe that tells whether committed run records were made by this code."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from flowvae import config, records, train

QUICK = [REPO_ROOT / "config" / name for name in ("config.yaml", "selected.yaml", "quick.yaml")]
LONG = [REPO_ROOT / "config" / name for name in ("config.yaml", "selected.yaml", "long.yaml")]


@pytest.fixture(scope="module")
def iaf_spec():
    return config.resolve(config.load(QUICK), "iaf", 1)


@pytest.fixture(scope="module")
def iaf_probe(iaf_spec):
    return records.probe(iaf_spec)


def test_the_probe_is_the_same_twice_whatever_the_seed(iaf_spec, iaf_probe):
    assert records.differs(iaf_probe, records.probe(iaf_spec.replace_train(threads=2))) == []
    assert records.differs(iaf_probe, records.probe(dataclasses.replace(iaf_spec, seed=4))) == []
    assert {"train_loss_2", "val_neg_elbo", "neg_elbo", "iwae_nll", "log_px"} <= set(iaf_probe)
    assert all(math.isfinite(v) for v in iaf_probe.values())


@pytest.mark.slow
def test_the_probe_of_other_vector_kernels_is_the_same(iaf_spec, iaf_probe):
    """ATen's scalar kernels instead of this CPU's vector ones: what another CPU may compute."""
    script = (
        "import json, sys; from flowvae import records, spec; "
        "print(json.dumps(records.probe(spec.RunSpec.from_dict(json.loads(sys.argv[1])))))"
    )
    tree = json.dumps(iaf_spec.to_dict())
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    proc = subprocess.run([sys.executable, "-c", script, tree], env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert records.differs(iaf_probe, json.loads(proc.stdout.splitlines()[-1])) == []


def test_a_changed_formula_or_setting_changes_the_probe(iaf_spec, iaf_probe, monkeypatch):
    monkeypatch.setattr(train, "kl_weight", lambda t, epoch: 0.5)  # a warm-up that is not asked
    assert "train_loss_1" in records.differs(iaf_probe, records.probe(iaf_spec))
    monkeypatch.undo()
    monkeypatch.setattr(train, "learning_rate", lambda t, epoch: 2 * t.lr)  # another rate
    assert "train_loss_2" in records.differs(iaf_probe, records.probe(iaf_spec))
    monkeypatch.undo()
    settings = {**iaf_spec.posterior.kwargs(), "gate_scale": 0.1}
    posterior = dataclasses.replace(iaf_spec.posterior, settings=tuple(sorted(settings.items())))
    other = dataclasses.replace(iaf_spec, posterior=posterior)
    assert {"val_reg", "iwae_nll"} <= set(records.differs(iaf_probe, records.probe(other)))


def test_check_names_the_variant_whose_records_other_code_made(tmp_path, iaf_spec, iaf_probe):
    path = tmp_path / "records.json"
    path.write_text(json.dumps({"probes": {"iaf": iaf_probe}}))
    assert records.check(path, [iaf_spec]) == []
    moved = {**iaf_probe, "val_rec": iaf_probe["val_rec"] + 2 * records.TOLERANCE}
    path.write_text(json.dumps({"probes": {"iaf": moved}}))
    (line,) = records.check(path, [iaf_spec])
    assert line.startswith("iaf: made by other code") and "val_rec" in line
    path.write_text(json.dumps({"probes": {}}))
    assert records.check(path, [iaf_spec]) == [
        f"iaf: no probe in {path}; its records cannot be checked"
    ]
    path.write_text("{not json")
    with pytest.raises(Exception, match="records.json cannot be read"):
        records.check(path, [iaf_spec])


@pytest.mark.slow
def test_the_committed_long_study_records_were_made_by_this_code():
    """A formula change that would make other numbers than the committed 500-epoch runs fails
    here: rerun those runs, or revert it (docs/design.md, "Run records")."""
    path = REPO_ROOT / "results" / "long" / "records.json"
    if not path.exists():
        pytest.skip("no committed records of the long study")
    cfg = config.load(LONG)
    specs = [config.resolve(cfg, v, 0) for v in cfg["run_variants"]]
    assert records.check(path, specs) == []
