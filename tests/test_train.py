"""Trainer: same seed -> same result, resume == uninterrupted, NaN losses stop with a message."""

import pandas as pd
import pytest
import torch
from conftest import SMALL_VARIANTS as VARIANTS
from conftest import small_spec

from flowvae import evaluate, train
from flowvae.errors import FlowvaeError, TrainingError


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_same_seed_same_metrics_other_seed_differs(prepared, tmp_path, variant):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        spec = small_spec(variant, seed)
        train.train(spec, prepared, tmp_path / name, progress=False)
        runs[name] = evaluate.evaluate(
            spec, tmp_path / name / "model.pt", prepared, tmp_path / f"eval_{name}", progress=False
        )
    keys = ["test_neg_elbo", "test_rec", "test_kl", "test_iwae_nll", "exact_nll", "final_val_loss"]
    assert [runs["a"][k] for k in keys] == [runs["b"][k] for k in keys]
    assert runs["a"]["test_neg_elbo"] != runs["c"]["test_neg_elbo"]
    wa, wb = weights(tmp_path / "a" / "model.pt"), weights(tmp_path / "b" / "model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_equals_uninterrupted_run(prepared, tmp_path, variant, monkeypatch):
    spec = small_spec(variant)
    train.train(spec, prepared, tmp_path / "full", progress=False)

    real = train.validation_loss
    calls = {"n": 0}

    def crash_in_epoch_3(*args, **kwargs):  # two calls an epoch: validation, test curve
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill during epoch 3")
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "validation_loss", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train.train(spec, prepared, tmp_path / "resumed", progress=False)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    assert not (tmp_path / "resumed" / "model.pt").exists(), "no final output after a crash"
    monkeypatch.setattr(train, "validation_loss", real)
    train.train(spec, prepared, tmp_path / "resumed", resume=True, progress=False)

    wa, wb = weights(tmp_path / "full" / "model.pt"), weights(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ha = pd.read_csv(tmp_path / "full" / "history.csv").drop(columns=["seconds", "test_seconds"])
    hb = pd.read_csv(tmp_path / "resumed" / "history.csv").drop(columns=["seconds", "test_seconds"])
    pd.testing.assert_frame_equal(ha, hb)


def test_checkpoint_from_other_settings_is_ignored(prepared, tmp_path):
    train.train(small_spec("standard"), prepared, tmp_path / "run", progress=False)
    (tmp_path / "run" / "model.pt").rename(tmp_path / "first.pt")
    other = small_spec("standard", lr=0.002)
    train.train(other, prepared, tmp_path / "run", resume=True, progress=False)
    train.train(other, prepared, tmp_path / "fresh", progress=False)
    wa, wb = weights(tmp_path / "run" / "model.pt"), weights(tmp_path / "fresh" / "model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nan_loss_stops_naming_epoch_and_batch(prepared, tmp_path):
    spec = small_spec("standard", lr=1e12, grad_clip=None, schedule="constant")
    with pytest.raises(TrainingError, match=r"epoch \d+, batch \d+"):
        train.train(spec, prepared, tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / "model.pt").exists()


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])  # clipped, and left alone
def test_clip_gradients_equals_torch_clip_grad_norm(max_norm):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    net(torch.randn(11, 7)).pow(2).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    train.clip_gradients(list(net.parameters()), max_norm)
    ours = [p.grad.clone() for p in net.parameters()]
    for p, g in zip(net.parameters(), grads, strict=True):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    assert all(torch.equal(a, p.grad) for a, p in zip(ours, net.parameters(), strict=True))
    before = float(torch.cat([g.flatten() for g in grads]).norm())
    after = float(torch.cat([g.flatten() for g in ours]).norm())
    assert after == pytest.approx(min(max_norm, before), rel=1e-5)


def test_learning_rate_schedule_and_warmup():
    tcfg = small_spec("standard", lr=1e-3, lr_min=1e-5, epochs=10, kl_warmup_epochs=4).train
    assert tcfg.schedule == "cosine"
    assert train.learning_rate(tcfg, 0) == pytest.approx(1e-3)
    assert train.learning_rate(tcfg, 5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert train.kl_weight(tcfg, 0) == 0.25 and train.kl_weight(tcfg, 3) == 1.0


def test_unwritable_output_folder_is_named(prepared, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should go")  # fails even for root
    with pytest.raises(FlowvaeError, match="not writable"):
        train.train(small_spec("standard"), prepared, blocker / "run", progress=False)


def test_history_records_the_fixed_sample_test_curve(prepared, tmp_path):
    """test_loss at the last epoch is the fixed-noise one-sample -ELBO of the final model."""
    from flowvae import data, modelfile

    spec = small_spec("iaf", epochs=3)
    train.train(spec, prepared, tmp_path / "run", progress=False)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3] and history["test_loss"].notna().all()
    assert history["test_loss"].nunique() == 3, "the model changes from epoch to epoch"
    model = modelfile.load_model(tmp_path / "run" / "model.pt").model
    x = data.load_prepared(prepared)["test"]
    again = train.validation_loss(model, x, seed=spec.seed + train.TEST_NOISE)["neg_elbo"]
    assert history["test_loss"].iloc[-1] == pytest.approx(again, rel=1e-6)
    other = train.validation_loss(model, x, seed=spec.seed + train.TEST_NOISE + 1)["neg_elbo"]
    assert other != pytest.approx(again, rel=1e-9), "the noise is fixed, and it matters"
