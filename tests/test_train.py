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


HISTORY_TIMING = ["seconds", "cpu_seconds", "test_seconds"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_same_seed_same_weights_other_seed_differs(prepared, tmp_path, variant):
    """Two runs of one seed give the same weights and history, bit for bit; another seed
    gives other weights."""
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train.train(small_spec(variant, seed), prepared, tmp_path / name, progress=False)
    wa, wb, wc = (weights(tmp_path / n / "model.pt") for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    ha, hb = (pd.read_csv(tmp_path / n / "history.csv").drop(columns=HISTORY_TIMING) for n in "ab")
    pd.testing.assert_frame_equal(ha, hb)


def test_same_model_same_metrics(prepared, tmp_path):
    """Evaluating one model twice gives the same numbers (its noise comes from the seed)."""
    spec = small_spec("iaf")
    train.train(spec, prepared, tmp_path / "run", progress=False)
    runs = [
        evaluate.evaluate(
            spec, tmp_path / "run" / "model.pt", prepared, tmp_path / f"eval{i}", progress=False
        )
        for i in range(2)
    ]
    keys = ["test_neg_elbo", "test_rec", "test_kl", "test_iwae_nll", "exact_nll", "final_val_loss"]
    assert [runs[0][k] for k in keys] == [runs[1][k] for k in keys]


@pytest.mark.parametrize(
    "variant, precision",
    [(v, "float32") for v in VARIANTS] + [("standard", "bfloat16"), ("pcpmap", "bfloat16")],
)
def test_resume_equals_uninterrupted_run(prepared, tmp_path, variant, precision, monkeypatch):
    """Killed in epoch 3 and resumed, a run ends with the weights and history of one that
    ran through, bit for bit (so two runs of a seed agree), in either precision."""
    spec = small_spec(variant, precision=precision)
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
    ha = pd.read_csv(tmp_path / "full" / "history.csv").drop(columns=HISTORY_TIMING)
    hb = pd.read_csv(tmp_path / "resumed" / "history.csv").drop(columns=HISTORY_TIMING)
    pd.testing.assert_frame_equal(ha, hb)
    if precision != "float32":  # the setting reaches the trainer: other weights than float32's
        train.train(small_spec(variant), prepared, tmp_path / "float32", progress=False)
        w32 = weights(tmp_path / "float32" / "model.pt")
        assert not all(torch.equal(wa[k], w32[k]) for k in wa)


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


def _scripted_validation(monkeypatch, val_losses):
    """validation_loss returns ``val_losses`` in turn for the validation calls (the test
    curve's calls pass through): the epoch of the best validation loss is then known."""
    real = train.validation_loss
    script = iter(val_losses)

    def scripted(model, x, seed, batch=1000):
        out = real(model, x, seed, batch)
        if seed < train.TEST_NOISE:  # the validation call, not the test curve's
            out = {**out, "neg_elbo": next(script)}
        return out

    monkeypatch.setattr(train, "validation_loss", scripted)


def test_keep_best_holds_the_weights_of_the_lowest_validation_epoch(
    prepared, tmp_path, monkeypatch
):
    """keep=best: model.pt equals a run stopped at the best epoch, bit for bit (a constant
    learning rate, so the first epochs of both runs are the same)."""
    _scripted_validation(monkeypatch, [9.0, 7.0, 8.0, 7.5])
    spec = small_spec("iaf", epochs=4, schedule="constant", keep="best")
    summary = train.train(spec, prepared, tmp_path / "best", progress=False)
    assert (summary["best_epoch"], summary["best_val_loss"], summary["epochs"]) == (2, 7.0, 4)
    monkeypatch.undo()
    train.train(
        small_spec("iaf", epochs=2, schedule="constant"), prepared, tmp_path / "two", progress=False
    )
    wa, wb = weights(tmp_path / "best" / "model.pt"), weights(tmp_path / "two" / "model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    last = small_spec("iaf", epochs=4, schedule="constant")
    train.train(last, prepared, tmp_path / "last", progress=False)
    wc = weights(tmp_path / "last" / "model.pt")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa), "keep=last holds the last epoch"


def test_patience_stops_when_validation_stalls(prepared, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [9.0, 7.0, 7.2, 7.1, 6.0, 6.5])
    spec = small_spec("standard", epochs=6, patience=2, checkpoint_every=1)
    summary = train.train(spec, prepared, tmp_path / "run", progress=False)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert summary["epochs"] == 4 and list(history["epoch"]) == [1, 2, 3, 4]
    assert summary["best_epoch"] == 2


def test_resume_with_keep_best_equals_uninterrupted_run(prepared, tmp_path, monkeypatch):
    """The best weights so far travel in the checkpoint: best at epoch 1, checkpoint at epoch
    2, killed in epoch 4, resumed."""
    spec = small_spec("pcpmap", epochs=4, schedule="constant", keep="best")
    _scripted_validation(monkeypatch, [5.0, 6.0, 7.0, 8.0])
    full = train.train(spec, prepared, tmp_path / "full", progress=False)
    assert full["best_epoch"] == 1
    real = train.train_epoch
    calls = {"n": 0}

    def crash_in_epoch_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill during epoch 4")
        return real(*args, **kwargs)

    monkeypatch.undo()
    _scripted_validation(monkeypatch, [5.0, 6.0, 7.0])
    monkeypatch.setattr(train, "train_epoch", crash_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        train.train(spec, prepared, tmp_path / "resumed", progress=False)
    monkeypatch.undo()
    _scripted_validation(monkeypatch, [7.0, 8.0])  # epochs 3 and 4, after the checkpoint
    resumed = train.train(spec, prepared, tmp_path / "resumed", resume=True, progress=False)
    assert resumed["best_epoch"] == 1
    wa, wb = weights(tmp_path / "full" / "model.pt"), weights(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("grad_clip", [1e-3, 1e6, None])
def test_history_counts_the_clipped_steps(prepared, tmp_path, grad_clip):
    spec = small_spec("standard", epochs=2, grad_clip=grad_clip)
    train.train(spec, prepared, tmp_path / "run", progress=False)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    if grad_clip is None:
        assert history["clipped"].isna().all() and history["grad_norm"].isna().all()
    else:
        assert list(history["clipped"]) == ([1.0, 1.0] if grad_clip < 1 else [0.0, 0.0])
        assert (history["grad_norm"] > 1e-3).all() and (history["grad_norm"] < 1e6).all()


def test_adamax_is_the_optimizer_when_asked(prepared, tmp_path):
    """optimizer=adamax: the update keeps Adamax's infinity-norm state, not Adam's squares."""
    spec = small_spec("standard", optimizer="adamax", lr=2e-3)
    state = train.start(spec, torch.device("cpu"))
    assert isinstance(state.optimizer, torch.optim.Adamax)
    x = torch.bernoulli(torch.full((32, 784), 0.3))
    train.train_epoch(state, x, spec.train, beta=1.0)
    first = next(iter(state.optimizer.state.values()))
    assert "exp_inf" in first and "exp_avg_sq" not in first
    assert isinstance(
        train.start(small_spec("standard"), torch.device("cpu")).optimizer, torch.optim.Adam
    )
