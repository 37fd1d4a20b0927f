"""The tuning stage's selection adopted: ``adopt`` writes each variant's selected settings
(and the epochs that give every variant the same training seconds) into
``config/selected.yaml``, a generated file the workflow reads after ``config/config.yaml``;
``difference`` says where a config departs from them (the test of the committed configs and
the summary use it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from flowvae import config as config_mod
from flowvae import io
from flowvae.errors import FlowvaeError
from flowvae.precedence import GENERATED
from flowvae.selection import selected

HEADER = (
    GENERATED + " from {selection}: each variant's candidate\n"
    "# selected by the tuning stage, and the epochs that give every variant the same training\n"
    "# seconds. The workflow reads it after config/config.yaml. Do not edit by hand.\n"
)


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


def adopt(
    out: Path, selection: pd.DataFrame, base: dict, source: str = "selection.csv"
) -> list[str]:
    """Write the selected settings of ``selection`` (each variant's selected overrides, merged
    key by key onto the config when read after it) and the equal-compute epochs they give on
    top of the validated config ``base`` into ``out``; returns the variants that changed
    compared with ``out``'s previous content."""
    before = {}
    if out.is_file():
        before = (yaml.safe_load(out.read_text()) or {}).get("variants", {})
    variants = {}
    for variant, overrides in selected(selection).items():
        if variant not in base["variants"]:
            raise FlowvaeError(f"{source}: variant {variant!r} is not in the config")
        variants[variant] = overrides
    block: dict[str, Any] = {"variants": variants}
    if not selection.empty:  # the epochs of equal compute follow from the adopted settings
        adopted = {**base, "variants": {v: dict(e) for v, e in base["variants"].items()}}
        config_mod.merge(adopted, {"variants": variants})
        adopted = config_mod.validate(adopted)
        block["equal_compute"] = equal_compute(adopted, selection)
    io.write_text(out, HEADER.format(selection=source) + _dump(block))
    return [v for v in variants if variants[v] != before.get(v)]


def _dump(block: dict) -> str:
    return yaml.safe_dump(block, sort_keys=False, default_flow_style=None)
