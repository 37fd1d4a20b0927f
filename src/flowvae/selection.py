"""The tuning stage's selection: every candidate's validation loss, the rule that picks one per
variant, and the default config's block of selected settings.

``results/selection.csv`` has a row per variant and candidate: the values the candidate sets,
its final validation -ELBO on each tuning seed, their mean and sd, its training seconds, its
rank within the variant and whether it was selected. ``adopt`` writes the selected settings
into the config file between two marker lines; ``difference`` says where a config departs
from them (the test of the committed default config uses it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from flowvae import config as config_mod
from flowvae import io
from flowvae.errors import FlowvaeError

BEGIN = "# >>> selected settings (written by `python -m flowvae adopt`; do not edit by hand)"
END = "# <<< selected settings"
RULES = {"lowest_mean_val_loss": "the lowest mean final validation -ELBO over the tuning seeds"}


def from_plan(plan_path: Path) -> pd.DataFrame:
    """The selection table of the tuning plan (flowvae.study), from its runs' train.json; stop
    when a run was trained with other settings than the plan's settings file."""
    from flowvae.errors import StaleRunError
    from flowvae.study import record_difference

    plan = json.loads(Path(plan_path).read_text())
    runs = []
    for cand in plan["candidates"]:
        for run in cand["runs"]:
            summary = Path(run["summary"])
            keys = record_difference(summary.parent, json.loads(Path(run["settings"]).read_text()))
            if keys:
                raise StaleRunError(
                    f"{summary.parent} was trained with other settings than the tuning plan's "
                    f"({keys}); run the pipeline again (it rebuilds it), or delete that folder"
                )
            record = json.loads(summary.read_text())
            runs.append({**cand, "seed": run["seed"], **record})
    return table(runs, plan["rule"])


def table(runs: list[dict[str, Any]], rule: str) -> pd.DataFrame:
    """One row per (variant, candidate) from its runs (dicts with variant, candidate, seed,
    labels, overrides and the run's train.json fields), ranked by ``rule``."""
    if rule not in RULES:
        raise FlowvaeError(f"unknown selection rule {rule!r} (rules: {', '.join(RULES)})")
    frame = pd.DataFrame(runs)
    rows = []
    for (variant, candidate), group in frame.groupby(["variant", "candidate"], sort=False):
        first = group.iloc[0]
        losses = group.set_index("seed")["final_val_loss"]
        row = {"variant": variant, "candidate": candidate, **first["labels"]}
        row |= {f"val_loss_seed{s}": float(v) for s, v in losses.items()}
        row |= {
            "mean_val_loss": float(losses.mean()),
            "sd_val_loss": float(losses.std(ddof=1)) if len(losses) > 1 else math.nan,
            "n_seeds": len(losses),
            "train_seconds": float(group["train_seconds"].mean()),
            "seconds_per_epoch": float(group["seconds_per_epoch"].mean()),
            "overrides": json.dumps(first["overrides"], sort_keys=True),
        }
        rows.append(row)
    out = pd.DataFrame(rows)
    out["rank"] = out.groupby("variant", sort=False)["mean_val_loss"].rank(method="first")
    out["rank"] = out["rank"].astype(int)
    out["selected"] = out["rank"] == 1
    return out


def selected(selection: pd.DataFrame) -> dict[str, dict]:
    """Variant -> the overrides of its selected candidate (family settings and ``train``)."""
    rows = selection[selection["selected"].astype(bool)]
    return {r.variant: json.loads(r.overrides) for r in rows.itertuples()}


def read(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise FlowvaeError(f"selection table {path} cannot be read: {exc}") from exc


def _apply(entry: dict, overrides: dict) -> dict:
    out = {**entry, **{k: v for k, v in overrides.items() if k != "train"}}
    train = {**entry.get("train", {}), **overrides.get("train", {})}
    if train:
        out["train"] = train
    return out


def difference(cfg: dict, selection: pd.DataFrame) -> list[str]:
    """``variants.<v>.<key>`` entries where ``cfg`` departs from the selected settings."""
    out = []
    for variant, overrides in selected(selection).items():
        if variant not in cfg["variants"]:
            out.append(f"variants.{variant} (not in the config)")
            continue
        entry = cfg["variants"][variant]
        for key, value in overrides.items():
            if key == "train":
                for tkey, tvalue in value.items():
                    if entry.get("train", {}).get(tkey, cfg["train"][tkey]) != tvalue:
                        out.append(f"variants.{variant}.train.{tkey}")
            elif entry.get(key) != value:
                out.append(f"variants.{variant}.{key}")
    if not out:  # the selected variants' equal-compute epochs (others may be listed too)
        have = cfg.get("equal_compute") or {}
        if any(have.get(v) != e for v, e in equal_compute(cfg, selection).items()):
            out.append("equal_compute")
    return out


def equal_compute(cfg: dict, selection: pd.DataFrame) -> dict[str, int]:
    """Epochs per variant for the same training seconds: T = max_v E_v s_v over the selected
    settings (E_v epochs, s_v seconds per epoch measured in the tuning stage), and each
    variant gets max(E_v, round(T / s_v)) epochs."""
    rows = selection[selection["selected"].astype(bool)].set_index("variant")
    epochs = {v: config_mod.train_settings(cfg, v)["epochs"] for v in rows.index}
    seconds = rows["seconds_per_epoch"].astype(float)
    budget = max(epochs[v] * seconds[v] for v in rows.index)
    return {v: max(epochs[v], round(budget / seconds[v])) for v in rows.index}


def adopt(config_path: Path, selection: pd.DataFrame) -> list[str]:
    """Write the selected settings into ``config_path`` between the marker lines (the
    ``variants`` section and ``equal_compute``); returns the variants that changed."""
    text = config_path.read_text()
    if BEGIN not in text or END not in text:
        raise FlowvaeError(
            f"{config_path} has no block of selected settings: put the `variants:` section "
            f"between the lines\n{BEGIN}\n{END}"
        )
    head, rest = text.split(BEGIN, 1)
    block, tail = rest.split(END, 1)
    variants = (yaml.safe_load(block) or {}).get("variants", {})
    changed = []
    for variant, overrides in selected(selection).items():
        new = _apply(variants.get(variant, {}), overrides)
        if new != variants.get(variant):
            changed.append(variant)
        variants[variant] = new
    block = {"variants": variants}
    if not selection.empty:  # the epochs of equal compute follow from the adopted settings
        adopted = config_mod.validate(yaml.safe_load(f"{head}{_dump(block)}{tail}") or {})
        block["equal_compute"] = equal_compute(adopted, selection)
    io.write_text(config_path, f"{head}{BEGIN}\n{_dump(block)}{END}{tail}")
    return changed


def _dump(block: dict) -> str:
    return yaml.safe_dump(block, sort_keys=False, default_flow_style=None)
