"""Trainer: Adam on the negative ELBO, with checkpoints that make a resumed run bit-identical.

All randomness after model initialization flows through two explicit generators (one for
shuffling and binarization on the CPU, one for the reparameterization noise on the device);
checkpoints store them with the model and optimizer, so ``resume`` continues exactly. The run's
settings arrive as one :class:`flowvae.spec.RunSpec`; model.pt and checkpoint.pt record its key.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from flowvae import data as data_mod
from flowvae import io, modelfile
from flowvae.errors import FlowvaeError, StaleRunError, TrainingError
from flowvae.lock import run_lock
from flowvae.modelfile import pick_device
from flowvae.objectives import PRECISIONS, elbo_terms
from flowvae.spec import RunSpec, TrainSpec
from flowvae.vae import VAE, build_model

log = logging.getLogger(__name__)

#: The test curve's noise seed is the run's seed plus this: one sample per test image, the same
#: noise at every epoch, so the curve's epoch-to-epoch changes are the model's, not the noise's.
TEST_NOISE = 20_000


def learning_rate(t: TrainSpec, epoch: int) -> float:
    """Cosine decay lr_min + (lr - lr_min)(1 + cos(pi e / E)) / 2 over epochs, or constant."""
    if t.schedule == "constant":
        return t.lr
    frac = epoch / t.epochs
    return t.lr_min + 0.5 * (t.lr - t.lr_min) * (1 + math.cos(math.pi * frac))


def kl_weight(t: TrainSpec, epoch: int) -> float:
    """beta rises linearly from 1/W to 1 over the first W epochs (KL warm-up)."""
    w = t.kl_warmup_epochs
    return 1.0 if w == 0 else min(1.0, (epoch + 1) / w)


@torch.no_grad()
def validation_loss(model: VAE, x: torch.Tensor, seed: int, batch: int = 1000) -> dict[str, float]:
    """Mean negative ELBO and its terms on ``x``, one sample per image, fixed noise."""
    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    sums = {"neg_elbo": 0.0, "rec": 0.0, "reg": 0.0}
    for i in range(0, x.shape[0], batch):
        terms = elbo_terms(model, x[i : i + batch], 1, generator=gen)
        for k in sums:
            sums[k] += terms[k].sum().item()
    model.train()
    return {k: v / x.shape[0] for k, v in sums.items()}


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise FlowvaeError(f"output folder {out_dir} is not writable: {exc.strerror}") from exc


def make_optimizer(model: VAE, t: TrainSpec) -> torch.optim.Optimizer:
    """Adam (or Adamax) with the config's betas and weight decay; the lr is set per epoch by
    the schedule.

    Adam's fused kernel updates every parameter in one pass (on the CPU and on CUDA): 10-20%
    of a training step less than the per-tensor loop (benchmarks/epoch_throughput.py).
    """
    common = {"lr": t.lr, "betas": tuple(t.betas), "weight_decay": t.weight_decay}
    if t.optimizer == "adamax":
        return torch.optim.Adamax(model.parameters(), foreach=True, **common)
    return torch.optim.Adam(model.parameters(), fused=True, **common)


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """g <- g * min(1, max_norm / (||g||_2 + 1e-6)) over all gradients together; returns
    ||g||_2 before clipping.

    The same numbers as ``torch.nn.utils.clip_grad_norm_``; the pass that multiplies by 1 is
    left out when the norm is below ``max_norm``.
    """
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    if max_norm / (norm + 1e-6) < 1:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return norm


@dataclass
class TrainState:
    """Everything a checkpoint holds: weights, optimizer, both generators, finished epochs."""

    model: VAE
    optimizer: torch.optim.Optimizer
    data_gen: torch.Generator
    noise_gen: torch.Generator
    history: list[dict] = field(default_factory=list)
    epoch: int = 0  # epochs finished
    best: dict | None = None  # {"epoch", "val_loss", "model"}: the lowest validation -ELBO so far

    def note_validation(self, val_loss: float) -> None:
        """Keep a copy of the weights when ``val_loss`` (of the epoch just finished) is the
        lowest so far."""
        if self.best is None or val_loss < self.best["val_loss"]:
            weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = {"epoch": self.epoch, "val_loss": val_loss, "model": weights}

    def patience_spent(self, patience: int | None) -> bool:
        """True when the validation loss has not improved for ``patience`` epochs."""
        return patience is not None and self.epoch - self.best["epoch"] >= patience


def start(spec: RunSpec, device: torch.device) -> TrainState:
    """A fresh run: weights from the seed s, shuffling from s, noise from s + 10000."""
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, spec.posterior).to(device)
    return TrainState(
        model=model,
        optimizer=make_optimizer(model, spec.train),
        data_gen=torch.Generator().manual_seed(spec.seed),
        noise_gen=torch.Generator(device=device).manual_seed(spec.seed + 10_000),
    )


def save_checkpoint(state: TrainState, spec: RunSpec, path: Path) -> None:
    modelfile.save_checkpoint(
        path,
        spec,
        {
            "epoch": state.epoch,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "data_gen": state.data_gen.get_state(),
            "noise_gen": state.noise_gen.get_state(),
            "history": state.history,
            "best": state.best,
        },
    )


def resume_from_checkpoint(state: TrainState, spec: RunSpec, path: Path) -> bool:
    """Continue ``state`` from the checkpoint at ``path`` if it exists, is readable and was
    written for the same key; else leave it and say why. A checkpoint that needs arbitrary
    unpickling is refused (UnsafeFileError), never opened."""
    if not path.exists():
        return False
    try:
        # RNG states must stay CPU tensors; load_state_dict moves the weights to the device
        ckpt = modelfile.load_checkpoint(path, spec)
        if ckpt is None:
            log.warning("ignoring %s: it was written with other settings", path)
            return False
        state.model.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.data_gen.set_state(ckpt["data_gen"])
        state.noise_gen.set_state(ckpt["noise_gen"])
        state.history, state.epoch, state.best = ckpt["history"], ckpt["epoch"], ckpt["best"]
    except modelfile.UnsafeFileError:
        raise
    except Exception as exc:  # a damaged file: any unpickling or shape error
        log.warning("checkpoint %s is damaged (%s); training starts over", path, exc)
        path.unlink(missing_ok=True)
        return False
    return True


def train_epoch(
    state: TrainState, x: torch.Tensor, t: TrainSpec, beta: float, label: str = ""
) -> dict[str, float]:
    """One pass over ``x`` in shuffled batches: Adam on mean(rec + beta * reg), the encoder's
    and decoder's products in ``t.precision``. Returns the
    mean negative ELBO over the epoch's images (``train_loss``), and with ``t.grad_clip`` the
    median gradient norm before clipping (``grad_norm``) and the fraction of steps the clip
    shortened (``clipped``).

    Losses stay on the device until the epoch ends; a non-finite loss is then reported with
    its batch.
    """
    n, bs = x.shape[0], t.batch_size
    order = torch.randperm(n, generator=state.data_gen).to(x.device)
    params = list(state.model.parameters())
    n_batches = math.ceil(n / bs)
    losses = torch.empty(n_batches, device=x.device)
    norms = torch.full((n_batches,), math.nan, device=x.device)
    neg_elbo_sum = torch.zeros((), device=x.device)
    products = PRECISIONS[t.precision]
    for b in range(n_batches):
        batch = x[order[b * bs : (b + 1) * bs]]
        terms = elbo_terms(state.model, batch, t.samples, beta, state.noise_gen, products)
        loss = terms["loss"].mean()
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip is not None:
            norms[b] = clip_gradients(params, t.grad_clip)
        state.optimizer.step()
        losses[b] = loss.detach()
        neg_elbo_sum += terms["neg_elbo"].detach().sum()
    if not bool(torch.isfinite(losses).all()):
        b = int(torch.nonzero(~torch.isfinite(losses))[0])
        lr = state.optimizer.param_groups[0]["lr"]
        raise TrainingError(
            f"{label}: loss is {losses[b].item()} at epoch {state.epoch + 1}, batch "
            f"{b + 1} (lr {lr:g}); lower train.lr or set train.grad_clip"
        )
    clipped = (norms > t.grad_clip).float().mean().item() if t.grad_clip else math.nan
    return {
        "train_loss": neg_elbo_sum.item() / n,
        "grad_norm": norms.median().item(),
        "clipped": clipped,
    }


def write_outputs(state: TrainState, spec: RunSpec, n_train: int, out_dir: Path) -> dict:
    """model.pt, history.csv and train.json (written last) into ``out_dir``."""
    hist = pd.DataFrame(state.history)
    device = next(state.model.parameters()).device
    summary = {
        "variant": spec.variant,
        "seed": spec.seed,
        "family": spec.posterior.family,
        "epochs": state.epoch,
        "n_train": n_train,
        "n_params": sum(p.numel() for p in state.model.parameters()),
        "train_seconds": float(hist["seconds"].sum()),
        "seconds_per_epoch": float(hist["seconds"].mean()),
        "train_cpu_seconds": float(hist["cpu_seconds"].sum()),
        "final_train_loss": float(hist["train_loss"].iloc[-1]),
        "final_val_loss": float(hist["val_loss"].iloc[-1]),
        "best_epoch": state.best["epoch"],
        "best_val_loss": state.best["val_loss"],
        "kept": spec.train.keep,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "key": spec.key("train"),
    }
    if spec.train.keep == "best":
        state.model.load_state_dict(state.best["model"])
    modelfile.save_model(out_dir / "model.pt", state.model, spec, summary)
    io.write_csv(hist, out_dir / "history.csv")
    io.write_json(out_dir / "train.json", summary)
    return summary


def train(
    spec: RunSpec,
    data_path: Path,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
    settings_file: Path | None = None,
) -> dict:
    """Train one run; write model.pt, history.csv, train.json into out_dir.

    The run folder is locked for the whole run (:mod:`flowvae.lock`): a second trainer of the
    same folder stops at once, naming the first. With ``settings_file`` (the spec file the job
    read), a run whose file changed key while it trained writes no outputs (StaleRunError), so
    the workflow trains it again.
    """
    _check_writable(out_dir)
    with run_lock(out_dir, f"training {spec.label()}"):
        return _train_locked(spec, data_path, out_dir, resume, progress, settings_file)


def _train_locked(
    spec: RunSpec,
    data_path: Path,
    out_dir: Path,
    resume: bool,
    progress: bool,
    settings_file: Path | None,
) -> dict:
    """start or resume -> epochs (train, validate, checkpoint) -> write outputs."""
    t, label = spec.train, spec.label()
    torch.set_num_threads(t.threads)
    device = pick_device(t.device)
    data = data_mod.load_prepared(data_path, spec.data)
    dynamic = data["binarize"] == "dynamic"
    x_train = None if dynamic else data["train"].to(device)  # dynamic: re-binarized each epoch
    x_val = data["val"].to(device)
    x_test = data["test"].to(device)  # the per-epoch test curve: recorded, never used to choose
    n = data["train"].shape[0]

    state = start(spec, device)
    ckpt_path = out_dir / "checkpoint.pt"
    if resume and resume_from_checkpoint(state, spec, ckpt_path):
        log.info("resuming %s from epoch %d (%s)", label, state.epoch, ckpt_path)

    bar = tqdm(
        total=t.epochs,
        initial=state.epoch,
        desc=label,
        disable=not progress,
        mininterval=2.0,
        unit="epoch",
    )
    while state.epoch < t.epochs:
        epoch = state.epoch
        lr, beta = learning_rate(t, epoch), kl_weight(t, epoch)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        t0, cpu0 = time.perf_counter(), time.process_time()
        x_epoch = (
            data_mod.binarize(data["train"], state.data_gen).to(device) if dynamic else x_train
        )
        steps = train_epoch(state, x_epoch, t, beta, label)
        train_loss = steps["train_loss"]
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        val = validation_loss(state.model, x_val, seed=spec.seed)
        t1 = time.perf_counter()
        test = validation_loss(state.model, x_test, seed=spec.seed + TEST_NOISE)
        test_seconds = time.perf_counter() - t1
        state.history.append(
            {
                "variant": spec.variant,
                "seed": spec.seed,
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": val["neg_elbo"],
                "val_rec": val["rec"],
                "val_kl": val["reg"],
                "test_loss": test["neg_elbo"],
                "test_seconds": test_seconds,
                "lr": lr,
                "beta": beta,
                "grad_norm": steps["grad_norm"],
                "clipped": steps["clipped"],
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
            }
        )
        state.epoch += 1
        state.note_validation(val["neg_elbo"])
        bar.set_postfix(train=f"{train_loss:.2f}", val=f"{val['neg_elbo']:.2f}")
        bar.update(1)
        if not progress:
            log.info(
                "epoch %d: train %.3f val %.3f (%.1f s)",
                epoch + 1,
                train_loss,
                val["neg_elbo"],
                seconds,
            )
        if state.patience_spent(t.patience):
            log.info("%s: stopped at epoch %d (patience %d)", label, state.epoch, t.patience)
            break
        if state.epoch % t.checkpoint_every == 0 and state.epoch < t.epochs:
            save_checkpoint(state, spec, ckpt_path)
    bar.close()
    if settings_file is not None:
        check_unchanged(settings_file, spec)
    summary = write_outputs(state, spec, n, out_dir)
    ckpt_path.unlink(missing_ok=True)  # done: a rerun (e.g. after a code change) starts afresh
    return summary


def check_unchanged(settings_file: Path, spec: RunSpec) -> None:
    """StaleRunError when ``settings_file`` no longer holds ``spec``'s training key (the
    workflow rewrote it while this job ran): the outputs would be stale when written."""
    try:
        now = json.loads(Path(settings_file).read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        now = None
    if now != spec.key("train"):
        raise StaleRunError(
            f"{settings_file} changed while {spec.label()} trained; its outputs are not written "
            "and the next run of the pipeline trains it again"
        )
