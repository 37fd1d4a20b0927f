"""Training throughput of each posterior family on the CPU, and how far it is from a FLOP floor.

For every variant of the config this measures:

1. one training epoch (images/s and seconds): the trainer's own ``flowvae.train.train_epoch``
   (shuffled batches, ``elbo_terms`` with ``train.samples``, backward, gradient clipping,
   fused Adam step) on random binary images held in memory; the median of ``--repeats`` epochs
   after a shorter warm-up epoch. The trainer's per-epoch dynamic binarization and
   validation pass are left out;
2. the ratio of that epoch time to the standard (Gaussian) variant's;
3. a FLOP floor: the matmul FLOPs of one training step (forward + backward, as counted by
   ``torch.utils.flop_counter.FlopCounterMode``), scaled to an epoch, divided by a measured
   float32 ``torch.mm`` rate: of the encoder/decoder layer GEMMs (forward and both gradients)
   and of a 2048^3 product (the machine's peak);
4. with ``--profile``, where one epoch's CPU time goes (``torch.profiler``, self time per
   operator): the matrix products (mm, addmm, bmm), the optimizer step, and the rest (the
   small elementwise operations and autograd's bookkeeping around them).

It ends with a table and a check of the targets: IAF <= 1.5x, PCP-Map <= 2.5x and COT-Flow <=
5x the standard epoch time, and every epoch within 1.3x its FLOP floor in float32 at 1 thread
(a MISS is reported, not an error). ``--set train.precision=bfloat16`` times the trainer's
bfloat16 mode against the same float32 floor.

    .venv/bin/python benchmarks/epoch_throughput.py                  # study config, all cores
    .venv/bin/python benchmarks/epoch_throughput.py --threads 2 --json epoch.json
    .venv/bin/python benchmarks/epoch_throughput.py --images 256 --repeats 1 --set model.hidden=[32]
    .venv/bin/python benchmarks/epoch_throughput.py --threads 1 --images 5120 --profile
    .venv/bin/python benchmarks/epoch_throughput.py --threads 1 --set train.precision=bfloat16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from flowvae import config as config_mod
from flowvae.errors import FlowvaeError
from flowvae.objectives import elbo_terms
from flowvae.spec import TrainSpec
from flowvae.train import TrainState, start, train_epoch
from flowvae.vae import DATA_DIM

REPO = Path(__file__).resolve().parents[1]
# family -> max epoch time relative to the Gaussian (COT-Flow: at most 2x PCP-Map's target)
TARGETS = {"iaf": 1.5, "pcpmap": 2.5, "cotflow": 5.0}
# max epoch time relative to the variant's own FLOP floor at the layer-GEMM rate, every family,
# in float32 at 1 thread (the pipeline's setting)
FLOOR_TARGET = 1.3
COLUMNS = {  # column -> format of the final table
    "family": "{}",
    "params": "{:,}",
    "images_per_s": "{:.0f}",
    "epoch_s": "{:.3g}",
    "ratio": "{:.2f}",
    "gflop_per_epoch": "{:.2f}",
    "floor_s": "{:.3g}",
    "floor_peak_s": "{:.3g}",
    "over_floor": "{:.2f}",
    "over_floor_peak": "{:.2f}",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="config file, may be repeated (default: config/config.yaml, config/selected.yaml)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="override one key, e.g. --set variants.iaf.hidden=16",
    )
    p.add_argument("--variants", nargs="+", help="subset of the config's variants (default: all)")
    p.add_argument(
        "--images",
        type=int,
        default=22673,
        help="images per epoch (default: %(default)s, digits 1-4)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch threads (default: os.cpu_count() = %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed epochs per variant, median (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, help="default: train.batch_size of the config")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile one epoch per variant: the share of matrix products, optimizer, rest",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers here")
    return p.parse_args()


def timed_epoch(state: TrainState, x: torch.Tensor, tcfg: TrainSpec) -> float:
    """One epoch of the trainer's own ``train_epoch`` over ``x``; returns its wall time (s)."""
    t0 = time.perf_counter()
    train_epoch(state, x, tcfg, beta=1.0, label="benchmark")
    return time.perf_counter() - t0


def step_flops(model, x, samples: int) -> int:
    """Matmul FLOPs of one training step (forward + backward) on the batch ``x``."""
    with FlopCounterMode(display=False) as counter:
        elbo_terms(model, x, samples)["loss"].mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def mm_seconds(m: int, k: int, n: int, min_time: float = 0.05, blocks: int = 3) -> float:
    """Best time of one float32 (m, k) @ (k, n) product over ``blocks`` loops of >= min_time."""
    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    torch.mm(a, b, out=out)
    reps, best = 1, math.inf
    while reps < 1 << 20:  # grow the loop until it lasts min_time
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        if time.perf_counter() - t0 >= min_time:
            break
        reps *= 2
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def mm_rate(shapes: list[tuple[int, int, int]]) -> float:
    """FLOP/s over a set of (m, k, n) products: total FLOPs / total time."""
    flops = sum(2 * m * k * n for m, k, n in shapes)
    return flops / sum(mm_seconds(*s) for s in shapes)


def layer_gemms(cfg: dict, bs: int) -> list[tuple[int, int, int]]:
    """Forward, input-gradient and weight-gradient GEMMs of the encoder's layers (the decoder
    mirrors them): for a layer in -> out, (bs, in, out), (bs, out, in) and (out, bs, in)."""
    sizes = [DATA_DIM, *cfg["model"]["hidden"]]
    shapes = {(bs, a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)}
    return sorted({g for m, k, n in shapes for g in [(m, k, n), (m, n, k), (n, m, k)]})


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def profile_epoch(state: TrainState, x: torch.Tensor, tcfg: TrainSpec, top: int = 6) -> dict:
    """Self CPU time of one epoch by operator: the matrix products' share, the optimizer's
    (its fused step and its bookkeeping), the rest, and the ``top`` largest operators."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_epoch(state, x, tcfg, beta=1.0, label="profile")
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(self_us.values())
    matmul = sum(self_us.get(k, 0) for k in MATMULS)
    optim = sum(t for k, t in self_us.items() if "adam" in k.lower() or k.startswith("Optimizer"))
    largest = sorted(self_us.items(), key=lambda kv: -kv[1])[:top]
    return {
        "profile_s": total / 1e6,
        "matmul_share": matmul / total,
        "optimizer_share": optim / total,
        "rest_share": 1 - (matmul + optim) / total,
        "largest": [(k, t / total) for k, t in largest],
    }


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown CPU"


def measure(
    cfg: dict, variant: str, x: torch.Tensor, bs: int, repeats: int, profiled: bool = False
) -> dict:
    """Epoch times (median of ``repeats`` after a warm-up) and matmul FLOPs of one variant."""
    spec = config_mod.resolve(cfg, variant, 0).replace_train(batch_size=bs)
    tcfg = spec.train
    state = start(spec, device=torch.device("cpu"))
    model = state.model
    flops = step_flops(model, x[:bs], tcfg.samples) * x.shape[0] / bs
    timed_epoch(state, x[: 20 * bs], tcfg)  # warm-up
    times = [timed_epoch(state, x, tcfg) for _ in range(repeats)]
    extra = profile_epoch(state, x, tcfg) if profiled else {}
    return {
        **extra,
        "variant": variant,
        "family": spec.posterior.family,
        "params": sum(p.numel() for p in model.parameters()),
        "images_per_s": x.shape[0] / statistics.median(times),
        "epoch_s": statistics.median(times),
        "epoch_s_all": times,
        "gflop_per_epoch": flops / 1e9,
    }


def main() -> None:
    args = parse_args()
    try:
        cfg = config_mod.load(
            args.config or [REPO / "config" / "config.yaml", REPO / "config" / "selected.yaml"],
            None,
            args.overrides,
        )
    except FlowvaeError as exc:
        raise SystemExit(f"error: {exc}") from exc
    bs = args.batch_size or cfg["train"]["batch_size"]
    variants = args.variants or list(cfg["variants"])
    if unknown := sorted(set(variants) - set(cfg["variants"])):
        raise SystemExit(
            f"error: unknown variant(s) {unknown}; the config has {list(cfg['variants'])}"
        )
    family = {v: cfg["variants"][v]["family"] for v in cfg["variants"]}
    gaussians = [v for v in (*variants, *cfg["variants"]) if family[v] == "gaussian"]
    if not gaussians:
        raise SystemExit("the config has no Gaussian variant to compare the others with")
    baseline = gaussians[0]
    if baseline not in variants:  # the ratios need a Gaussian run
        variants = [baseline, *variants]
    torch.set_num_threads(args.threads)
    machine = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(
        f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs; torch {machine['torch']}, "
        f"{machine['threads']} threads; batch {bs}, {args.images} images/epoch, "
        f"{cfg['train']['samples']} sample(s)/image"
    )

    gemms = layer_gemms(cfg, bs)
    rate, peak = mm_rate(gemms), mm_rate([(2048, 2048, 2048)])
    print(
        f"float32 torch.mm: {rate / 1e9:.1f} GFLOP/s over the layer GEMMs "
        f"{', '.join('x'.join(map(str, s)) for s in gemms)} (m x k x n), "
        f"{peak / 1e9:.1f} GFLOP/s at 2048^3 (peak)\n"
        "FLOPs: matmul FLOPs as torch.utils.flop_counter.FlopCounterMode counts them (mm, addmm, "
        "bmm: 2 per multiply-add; elementwise ops not counted), one training step forward + "
        "backward, times images / batch size"
    )

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (args.images, DATA_DIM), generator=gen).float()  # binary images
    rows = []
    for v in variants:
        r = measure(cfg, v, x, bs, args.repeats, args.profile)
        r["floor_s"] = r["gflop_per_epoch"] * 1e9 / rate
        r["floor_peak_s"] = r["gflop_per_epoch"] * 1e9 / peak
        r["over_floor"] = r["epoch_s"] / r["floor_s"]
        r["over_floor_peak"] = r["epoch_s"] / r["floor_peak_s"]
        rows.append(r)
        print(
            f"{v}: {r['images_per_s']:.0f} images/s, epoch {r['epoch_s']:.3f} s (all: "
            f"{', '.join(f'{t:.3f}' for t in r['epoch_s_all'])}), {r['gflop_per_epoch']:.2f} "
            f"GFLOP/epoch, floor {r['floor_s']:.3f} s (peak {r['floor_peak_s']:.3f} s), "
            f"epoch/floor {r['over_floor']:.2f} (peak {r['over_floor_peak']:.2f})"
        )
        if args.profile:
            largest = ", ".join(f"{k} {share:.0%}" for k, share in r["largest"])
            print(
                f"  profile: matrix products {r['matmul_share']:.0%}, optimizer "
                f"{r['optimizer_share']:.0%}, rest {r['rest_share']:.0%}; largest: {largest}"
            )
    by_name = {r["variant"]: r for r in rows}
    for r in rows:
        r["ratio"] = r["epoch_s"] / by_name[baseline]["epoch_s"]

    print(
        f"\nratio: epoch time / {baseline}'s; over_floor: epoch time / FLOP floor at the "
        "layer-GEMM mm rate (over_floor_peak: at the 2048^3 rate)\n"
    )
    table = pd.DataFrame(
        {c: [fmt.format(r[c]) for r in rows] for c, fmt in COLUMNS.items()},
        index=pd.Index([r["variant"] for r in rows], name="variant"),
    )
    print(table.to_markdown(stralign="right", disable_numparse=True))

    checks = [
        (
            f"{r['variant']} epoch <= {TARGETS[r['family']]}x {baseline}'s",
            r["ratio"],
            TARGETS[r["family"]],
        )
        for r in rows
        if r["family"] in TARGETS
    ]
    checks += [
        (f"{r['variant']} epoch <= {FLOOR_TARGET}x its FLOP floor", r["over_floor"], FLOOR_TARGET)
        for r in rows
    ]
    note = "" if args.threads == 1 else f"; this run used {args.threads}"
    print(f"\ntargets (float32, 1 thread{note}):")
    targets = []
    for name, value, limit in checks:
        targets.append({"target": name, "value": value, "limit": limit, "pass": value <= limit})
        print(f"  {'PASS' if value <= limit else 'MISS'}  {name}: {value:.2f}x")

    if args.json:
        record = {
            "machine": machine,
            "settings": {
                "images": args.images,
                "batch_size": bs,
                "repeats": args.repeats,
                "samples": cfg["train"]["samples"],
                "baseline": baseline,
            },
            "mm_gflops": {"layer_gemms": rate / 1e9, "peak_2048": peak / 1e9, "shapes": gemms},
            "variants": rows,
            "targets": targets,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
