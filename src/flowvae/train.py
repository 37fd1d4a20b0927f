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
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from flowvae import data as data_mod
from flowvae import io
from flowvae.config import variant_settings
from flowvae.errors import FlowvaeError, TrainingError
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
        k: v for k, v in cfg["train"].items() if k not in ("threads", "device", "checkpoint_every")
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
    """Train one variant with one seed; write model.pt, history.csv, train.json into out_dir."""
    tcfg = cfg["train"]
    _check_writable(out_dir)
    torch.set_num_threads(threads or tcfg["threads"])
    device = pick_device(tcfg["device"])
    data = data_mod.load_prepared(data_path)
    dynamic = data["binarize"] == "dynamic"
    x_train = None if dynamic else data["train"].to(device)  # dynamic: re-binarized each epoch
    x_val = data["val"].to(device)

    torch.manual_seed(seed)
    model = build_model(cfg, variant).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=tcfg["lr"],
        betas=tuple(tcfg["betas"]),
        weight_decay=tcfg["weight_decay"],
    )
    data_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 10_000)
    settings = run_settings(cfg, variant, seed)
    key = fingerprint(settings)
    history: list[dict] = []
    start = 0

    ckpt_path = out_dir / "checkpoint.pt"
    if resume and ckpt_path.exists():
        # RNG states must stay CPU tensors; load_state_dict moves the weights to the device
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["fingerprint"] == key:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            data_gen.set_state(ckpt["data_gen"])
            noise_gen.set_state(ckpt["noise_gen"])
            history, start = ckpt["history"], ckpt["epoch"]
            log.info("resuming %s seed %d from epoch %d (%s)", variant, seed, start, ckpt_path)
        else:
            log.warning("ignoring %s: it was written with other settings", ckpt_path)

    n, bs = data["train"].shape[0], tcfg["batch_size"]
    n_batches = math.ceil(n / bs)
    bar = tqdm(
        total=tcfg["epochs"],
        initial=start,
        desc=f"{variant} seed {seed}",
        disable=not progress,
        mininterval=2.0,
        unit="epoch",
    )
    for epoch in range(start, tcfg["epochs"]):
        lr, beta = learning_rate(tcfg, epoch), kl_weight(tcfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        x_epoch = data_mod.binarize(data["train"], data_gen).to(device) if dynamic else x_train
        order = torch.randperm(n, generator=data_gen).to(device)
        total = 0.0
        for b in range(n_batches):
            x = x_epoch[order[b * bs : (b + 1) * bs]]
            terms = elbo_terms(model, x, tcfg["samples"], beta, noise_gen)
            loss = terms["loss"].mean()
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{variant} seed {seed}: loss is {loss.item()} at epoch {epoch + 1}, batch "
                    f"{b + 1} (lr {lr:g}); lower train.lr or set train.grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg["grad_clip"] is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
            optimizer.step()
            total += terms["neg_elbo"].detach().sum().item()
        seconds = time.perf_counter() - t0
        val = validation_loss(model, x_val, seed=seed)
        history.append(
            {
                "variant": variant,
                "seed": seed,
                "epoch": epoch + 1,
                "train_loss": total / n,
                "val_loss": val["neg_elbo"],
                "val_rec": val["rec"],
                "val_kl": val["reg"],
                "lr": lr,
                "beta": beta,
                "seconds": seconds,
            }
        )
        bar.set_postfix(train=f"{total / n:.2f}", val=f"{val['neg_elbo']:.2f}")
        bar.update(1)
        if not progress:
            log.info(
                "epoch %d: train %.3f val %.3f (%.1f s)",
                epoch + 1,
                total / n,
                val["neg_elbo"],
                seconds,
            )
        if (epoch + 1) % tcfg["checkpoint_every"] == 0 and epoch + 1 < tcfg["epochs"]:
            io.torch_save(
                {
                    "fingerprint": key,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "data_gen": data_gen.get_state(),
                    "noise_gen": noise_gen.get_state(),
                    "history": history,
                },
                ckpt_path,
            )
    bar.close()

    hist = pd.DataFrame(history)
    summary = {
        "variant": variant,
        "seed": seed,
        "family": settings["posterior"]["family"],
        "epochs": tcfg["epochs"],
        "n_train": n,
        "n_params": sum(p.numel() for p in model.parameters()),
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
            "state_dict": model.state_dict(),
            "config": cfg,
            "variant": variant,
            "seed": seed,
            "summary": summary,
        },
        out_dir / "model.pt",
    )
    io.write_csv(hist, out_dir / "history.csv")
    io.write_json(out_dir / "train.json", summary)
    ckpt_path.unlink(missing_ok=True)  # done: a rerun (e.g. after a code change) starts afresh
    return summary


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[VAE, dict]:
    """Rebuild a trained model from model.pt; returns (model in eval mode, the saved record)."""
    try:
        record = torch.load(path, map_location=device, weights_only=False)
    except (OSError, RuntimeError) as exc:
        raise FlowvaeError(f"cannot read model file {path}: {exc}") from exc
    model = build_model(record["config"], record["variant"]).to(device)
    model.load_state_dict(record["state_dict"])
    return model.eval(), record
