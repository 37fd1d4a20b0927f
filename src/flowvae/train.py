"""Trainer: Adam on the negative ELBO, with checkpoints that make a resumed run bit-identical.

All randomness after model initialization flows through two explicit generators (one for
shuffling and binarization on the CPU, one for the reparameterization noise on the device);
checkpoints store them with the model and optimizer, so ``resume`` continues exactly.
"""

from __future__ import annotations

import hashlib
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
from flowvae import io
from flowvae.config import train_settings, variant_settings
from flowvae.errors import FlowvaeError, StaleRunError, TrainingError
from flowvae.lock import run_lock
from flowvae.objectives import elbo_terms
from flowvae.vae import VAE, build_model

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FlowvaeError(f"config key 'train.device' is '{name}' but CUDA is not available")
    return torch.device(name)


def run_settings(cfg: dict, variant: str, seed: int) -> dict:
    """Everything that determines the trained weights (not threads, device or checkpointing)."""
    train = {
        k: v
        for k, v in train_settings(cfg, variant).items()
        if k not in ("threads", "device", "checkpoint_every")
    }
    return {
        "data": cfg["data"],
        "model": cfg["model"],
        "variant": variant,
        "posterior": variant_settings(cfg, variant),
        "train": train,
        "seed": seed,
    }


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def learning_rate(tcfg: dict, epoch: int) -> float:
    """Cosine decay lr_min + (lr - lr_min)(1 + cos(pi e / E)) / 2 over epochs, or constant."""
    if tcfg["schedule"] == "constant":
        return tcfg["lr"]
    frac = epoch / tcfg["epochs"]
    return tcfg["lr_min"] + 0.5 * (tcfg["lr"] - tcfg["lr_min"]) * (1 + math.cos(math.pi * frac))


def kl_weight(tcfg: dict, epoch: int) -> float:
    """beta rises linearly from 1/W to 1 over the first W epochs (KL warm-up)."""
    w = tcfg["kl_warmup_epochs"]
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


def make_optimizer(model: VAE, tcfg: dict) -> torch.optim.Adam:
    """Adam with the config's betas and weight decay; the lr is set per epoch by the schedule.

    The fused kernel updates every parameter in one pass (on the CPU and on CUDA): 10-20% of
    a training step less than the per-tensor loop (benchmarks/epoch_throughput.py).
    """
    return torch.optim.Adam(
        model.parameters(),
        lr=tcfg["lr"],
        betas=tuple(tcfg["betas"]),
        weight_decay=tcfg["weight_decay"],
        fused=True,
    )


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> None:
    """g <- g * min(1, max_norm / (||g||_2 + 1e-6)) over all gradients together.

    The same numbers as ``torch.nn.utils.clip_grad_norm_``; the pass that multiplies by 1 is
    left out when the norm is below ``max_norm`` (almost every step).
    """
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    if max_norm / (norm + 1e-6) < 1:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)


@dataclass
class TrainState:
    """Everything a checkpoint holds: weights, optimizer, both generators, finished epochs."""

    model: VAE
    optimizer: torch.optim.Optimizer
    data_gen: torch.Generator
    noise_gen: torch.Generator
    history: list[dict] = field(default_factory=list)
    epoch: int = 0  # epochs finished


def start(cfg: dict, variant: str, seed: int, device: torch.device) -> TrainState:
    """A fresh run: weights from ``seed``, shuffling from ``seed``, noise from ``seed + 10000``."""
    torch.manual_seed(seed)
    model = build_model(cfg, variant).to(device)
    return TrainState(
        model=model,
        optimizer=make_optimizer(model, cfg["train"]),
        data_gen=torch.Generator().manual_seed(seed),
        noise_gen=torch.Generator(device=device).manual_seed(seed + 10_000),
    )


def save_checkpoint(state: TrainState, key: str, path: Path) -> None:
    io.torch_save(
        {
            "fingerprint": key,
            "epoch": state.epoch,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "data_gen": state.data_gen.get_state(),
            "noise_gen": state.noise_gen.get_state(),
            "history": state.history,
        },
        path,
    )


def resume_from_checkpoint(state: TrainState, key: str, path: Path) -> bool:
    """Continue ``state`` from the checkpoint at ``path`` if it exists, is readable and was
    written with the same settings (fingerprint ``key``); else leave it and say why."""
    if not path.exists():
        return False
    try:
        # RNG states must stay CPU tensors; load_state_dict moves the weights to the device
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if ckpt["fingerprint"] != key:
            log.warning("ignoring %s: it was written with other settings", path)
            return False
        state.model.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.data_gen.set_state(ckpt["data_gen"])
        state.noise_gen.set_state(ckpt["noise_gen"])
        state.history, state.epoch = ckpt["history"], ckpt["epoch"]
    except Exception as exc:  # a damaged file: any unpickling or shape error
        log.warning("checkpoint %s is damaged (%s); training starts over", path, exc)
        path.unlink(missing_ok=True)
        return False
    return True


def train_epoch(
    state: TrainState, x: torch.Tensor, tcfg: dict, beta: float, label: str = ""
) -> float:
    """One pass over ``x`` in shuffled batches: Adam on mean(rec + beta * reg); returns the
    mean negative ELBO over the epoch's images.

    Losses stay on the device until the epoch ends (no host synchronisation per step); a
    non-finite loss is then reported with its batch.
    """
    n, bs = x.shape[0], tcfg["batch_size"]
    order = torch.randperm(n, generator=state.data_gen).to(x.device)
    params = list(state.model.parameters())
    n_batches = math.ceil(n / bs)
    losses = torch.empty(n_batches, device=x.device)
    neg_elbo_sum = torch.zeros((), device=x.device)
    for b in range(n_batches):
        terms = elbo_terms(
            state.model, x[order[b * bs : (b + 1) * bs]], tcfg["samples"], beta, state.noise_gen
        )
        loss = terms["loss"].mean()
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg["grad_clip"] is not None:
            clip_gradients(params, tcfg["grad_clip"])
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
    return neg_elbo_sum.item() / n


def write_outputs(
    state: TrainState, settings: dict, key: str, cfg: dict, n_train: int, out_dir: Path
) -> dict:
    """model.pt, history.csv and train.json (written last) into ``out_dir``."""
    hist = pd.DataFrame(state.history)
    device = next(state.model.parameters()).device
    summary = {
        "variant": settings["variant"],
        "seed": settings["seed"],
        "family": settings["posterior"]["family"],
        "epochs": state.epoch,
        "n_train": n_train,
        "n_params": sum(p.numel() for p in state.model.parameters()),
        "train_seconds": float(hist["seconds"].sum()),
        "seconds_per_epoch": float(hist["seconds"].mean()),
        "final_train_loss": float(hist["train_loss"].iloc[-1]),
        "final_val_loss": float(hist["val_loss"].iloc[-1]),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "fingerprint": key,
    }
    io.torch_save(
        {
            "state_dict": state.model.state_dict(),
            "config": cfg,
            "variant": settings["variant"],
            "seed": settings["seed"],
            "summary": summary,
        },
        out_dir / "model.pt",
    )
    io.write_csv(hist, out_dir / "history.csv")
    io.write_json(out_dir / "train.json", summary)
    return summary


def train(
    cfg: dict,
    variant: str,
    seed: int,
    data_path: Path,
    out_dir: Path,
    threads: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train one variant with one seed; write model.pt, history.csv, train.json into out_dir.

    The run folder is locked for the whole run (:mod:`flowvae.lock`): a second trainer of the
    same folder stops at once, naming the first.
    """
    _check_writable(out_dir)
    label = f"{variant} seed {seed}"
    with run_lock(out_dir, f"training {label}"):
        return _train_locked(
            cfg, variant, seed, data_path, out_dir, threads, resume, progress, label
        )


def _train_locked(
    cfg: dict,
    variant: str,
    seed: int,
    data_path: Path,
    out_dir: Path,
    threads: int | None,
    resume: bool,
    progress: bool,
    label: str,
) -> dict:
    """start or resume -> epochs (train, validate, checkpoint) -> write outputs."""
    tcfg = train_settings(cfg, variant)
    torch.set_num_threads(threads or tcfg["threads"])
    device = pick_device(tcfg["device"])
    data = data_mod.load_prepared(data_path)
    dynamic = data["binarize"] == "dynamic"
    x_train = None if dynamic else data["train"].to(device)  # dynamic: re-binarized each epoch
    x_val = data["val"].to(device)
    n = data["train"].shape[0]

    state = start(cfg, variant, seed, device)
    settings = run_settings(cfg, variant, seed)
    key = fingerprint(settings)
    ckpt_path = out_dir / "checkpoint.pt"
    if resume and resume_from_checkpoint(state, key, ckpt_path):
        log.info("resuming %s from epoch %d (%s)", label, state.epoch, ckpt_path)

    bar = tqdm(
        total=tcfg["epochs"],
        initial=state.epoch,
        desc=label,
        disable=not progress,
        mininterval=2.0,
        unit="epoch",
    )
    while state.epoch < tcfg["epochs"]:
        epoch = state.epoch
        lr, beta = learning_rate(tcfg, epoch), kl_weight(tcfg, epoch)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        x_epoch = (
            data_mod.binarize(data["train"], state.data_gen).to(device) if dynamic else x_train
        )
        train_loss = train_epoch(state, x_epoch, tcfg, beta, label)
        seconds = time.perf_counter() - t0
        val = validation_loss(state.model, x_val, seed=seed)
        state.history.append(
            {
                "variant": variant,
                "seed": seed,
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": val["neg_elbo"],
                "val_rec": val["rec"],
                "val_kl": val["reg"],
                "lr": lr,
                "beta": beta,
                "seconds": seconds,
            }
        )
        state.epoch += 1
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
        if state.epoch % tcfg["checkpoint_every"] == 0 and state.epoch < tcfg["epochs"]:
            save_checkpoint(state, key, ckpt_path)
    bar.close()
    summary = write_outputs(state, settings, key, cfg, n, out_dir)
    ckpt_path.unlink(missing_ok=True)  # done: a rerun (e.g. after a code change) starts afresh
    return summary


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[VAE, dict]:
    """Rebuild a trained model from model.pt; returns (model in eval mode, the saved record)."""
    try:
        record = torch.load(path, map_location=device, weights_only=False)
        model = build_model(record["config"], record["variant"]).to(device)
        model.load_state_dict(record["state_dict"])
    except FlowvaeError:
        raise
    except Exception as exc:  # truncated, not a torch file, or from another model
        raise FlowvaeError(
            f"model file {path} is damaged or unreadable ({type(exc).__name__}: {exc}); "
            f"delete it and run the pipeline again to retrain that run"
        ) from exc
    return model.eval(), record


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings_difference(made_with: dict, wanted: dict) -> list[str]:
    """Dotted keys whose values differ between two settings trees.

    >>> settings_difference({"train": {"lr": 1e-3, "epochs": 4}}, {"train": {"lr": 3e-4}})
    ['train.epochs', 'train.lr']
    """
    a, b = _flatten(made_with), _flatten(wanted)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def check_trained_with(record: dict, cfg: dict, path: Path) -> None:
    """Stop (StaleRunError) when the model at ``path`` was trained with settings other than
    those ``cfg`` asks for, naming the run, the keys that differ and how to rebuild it."""
    variant, seed = record["variant"], record["seed"]
    made = run_settings(record["config"], variant, seed)
    wanted = run_settings(cfg, variant, seed)
    if fingerprint(made) != fingerprint(wanted):
        keys = settings_difference(made, wanted)
        raise StaleRunError(
            f"{path} ({variant} seed {seed}) was trained with other settings than the current "
            f"config ({', '.join(keys)} differ); run the pipeline again (it retrains runs whose "
            f"settings changed), or delete {path.parent} and rerun"
        )
