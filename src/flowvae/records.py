"""Committed run records and the code that made them.

A results root that holds ``records.json`` keeps its finished runs in the repository (the long
study): their settings key alone says whether they are current (:mod:`flowvae.study.settings`),
never the files' times. What says whether today's code still computes what made them is the
*probe* of each variant, stored in ``records.json``: the numbers its training and evaluation code
gives on a fixed small problem,

- the run's model (its family and settings, initial weights of seed 0) trained three epochs on
  512 fixed synthetic binary images with the run's optimizer, clip, warm-up and objective: each
  epoch's mean -ELBO (and, with a clip, median gradient norm), then the validation -ELBO and
  its two terms;
- on three of those images, the evaluation's -ELBO and IWAE NLL, and (2-D latent) log p(x) by
  quadrature;
- the binarization of fixed grey images (the sum of its pixels).

Moving or reformatting code changes none of these numbers, so nothing reruns; a changed formula
changes them, and :func:`check` names the variants whose records today's code would not make.
Numbers compare within 2e-3 (nats; the same for a gradient norm): the other vector kernels of
another CPU moved them by 6e-5 at most, scaling the IAF's gate by 0.1 moves them by 8e-3 to
0.1.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from flowvae import io
from flowvae.errors import DataError
from flowvae.spec import RunSpec

#: How far a probe's numbers may move and still be the same code's.
TOLERANCE = 2e-3
PROBE_IMAGES = 512
PROBE_EPOCHS = 3


def probe(spec: RunSpec) -> dict[str, float]:
    """The probe of ``spec``'s training and evaluation code (module docstring)."""
    import torch

    from flowvae import data as data_mod
    from flowvae import evaluate, train
    from flowvae.vae import DATA_DIM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = dataclasses.replace(
            spec.train, epochs=PROBE_EPOCHS, patience=None, device="cpu", threads=1
        )
        spec = dataclasses.replace(spec, seed=0, train=t)
        gen = torch.Generator().manual_seed(0)
        grey = torch.rand(PROBE_IMAGES, DATA_DIM, generator=gen)
        x = data_mod.binarize(grey, gen)
        out = {"binarized": float(x.sum())}
        state = train.start(spec, torch.device("cpu"))
        for epoch in range(t.epochs):
            for group in state.optimizer.param_groups:
                group["lr"] = train.learning_rate(t, epoch)
            steps = train.train_epoch(state, x, t, train.kl_weight(t, epoch))
            out[f"train_loss_{epoch + 1}"] = steps["train_loss"]
            if t.grad_clip is not None:  # (the trainer measures the norm only to clip)
                out[f"grad_norm_{epoch + 1}"] = steps["grad_norm"]
        val = train.validation_loss(state.model, x[:64], seed=0)
        out |= {f"val_{k}": v for k, v in val.items()}
        ecfg = dataclasses.replace(
            spec.evaluate, iwae_k=16, check_images=0, grid_points=10, elbo_tol=0.5, threads=1
        )
        few, model = x[:3], state.model.eval()
        terms = evaluate.test_terms(model, few, ecfg, torch.Generator().manual_seed(0), False, {})
        out["neg_elbo"] = float(terms["neg_elbo"].mean())
        out["iwae_nll"] = float(terms["iwae_nll"].mean())
        if model.latent_dim == 2:
            quad, *_ = evaluate.exact_steps(model, few, ecfg, [0], {})
            out["log_px"] = float(quad["log_px"].mean())
        return out
    finally:
        torch.set_num_threads(threads)


def differs(a: dict[str, float], b: dict[str, float]) -> list[str]:
    """The names of the numbers in which probes ``a`` and ``b`` differ (or that one lacks)."""
    return sorted(
        name
        for name in set(a) | set(b)
        if name not in a
        or name not in b
        or not math.isclose(a[name], b[name], rel_tol=0.0, abs_tol=TOLERANCE)
    )


def variant_specs(specs: list[RunSpec]) -> dict[str, RunSpec]:
    """One spec per variant (the probe does not depend on the seed)."""
    return {spec.variant: spec for spec in specs}


def write(path: Path, specs: list[RunSpec]) -> dict:
    """``records.json`` at ``path``: the probe of every variant of ``specs``."""
    record = {
        "about": "the probe of each variant's code (flowvae.records); a results root holding "
        "this file keeps its run records",
        "probes": {v: probe(spec) for v, spec in sorted(variant_specs(specs).items())},
    }
    io.write_json(path, record)
    return record


def read(path: Path) -> dict:
    """``records.json``; DataError naming the file when it cannot be read."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path} cannot be read ({exc}); restore it from the repository (git checkout)"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("probes", {}), dict):
        raise DataError(f"{path} holds no probes; restore it from the repository")
    return record


def check(path: Path, specs: list[RunSpec]) -> list[str]:
    """A line per variant of ``specs`` whose records today's code would not make (its probe
    differs from the one ``records.json`` at ``path`` holds) or whose probe is not recorded."""
    recorded = read(path).get("probes", {})
    lines = []
    for variant, spec in sorted(variant_specs(specs).items()):
        if variant not in recorded:
            lines.append(f"{variant}: no probe in {path}; its records cannot be checked")
        elif names := differs(recorded[variant], probe(spec)):
            lines.append(
                f"{variant}: made by other code than this checkout's ({', '.join(names)} "
                f"differ); rerun its runs (snakemake --forcerun) or restore the code"
            )
    return lines
