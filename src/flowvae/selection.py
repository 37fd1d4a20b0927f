"""The tuning stage's selection: every candidate's validation loss, the rule that picks one per
variant.

``results/selection.csv`` has a row per variant and candidate: the values the candidate sets,
its final validation -ELBO on each tuning seed, their mean and sd, its training seconds, its
rank within the variant and whether it was selected. Writing the selection into the config is
:mod:`flowvae.adopt`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from flowvae.errors import FlowvaeError

RULES = {"lowest_mean_val_loss": "the lowest mean final validation -ELBO over the tuning seeds"}


def from_plan(plan_path: Path) -> pd.DataFrame:
    """The selection table of the tuning plan (flowvae.study), from its runs' train.json; stop
    when a run was trained with other settings than the plan's settings file."""
    from flowvae.errors import StaleRunError

    plan = json.loads(Path(plan_path).read_text())
    runs = []
    for cand in plan["candidates"]:
        for run in cand["runs"]:
            summary = Path(run["summary"])
            record = json.loads(summary.read_text())
            wanted = json.loads(Path(run["settings"]).read_text()).get("key")
            if record.get("key") != wanted:
                raise StaleRunError(
                    f"{summary.parent} was trained with other settings than the tuning plan's "
                    f"(key {record.get('key')}, not {wanted}); run the pipeline again (it "
                    "rebuilds it), or delete that folder"
                )
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
