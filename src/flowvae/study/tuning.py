"""The hyperparameter protocol's two planned stages: the tuning candidates of every variant
(``tuning``) and the equal-compute comparison (``equal_compute``)."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

from flowvae import config as config_mod
from flowvae.errors import ConfigError
from flowvae.layout import value_folder


@dataclass
class Candidate:
    """One candidate setting of one variant in the tuning stage: its folder name, the values
    it sets (``labels``: short key -> value) and the config that trains it."""

    variant: str
    name: str
    labels: dict[str, Any]
    overrides: dict[str, Any]  # on top of the variant's entry: its settings and `train`
    cfg: dict


def candidates(
    cfg: dict, variants: list[str], tuning_seeds: list[int], seeds: list[int]
) -> dict[str, list[Candidate]]:
    """Every variant's candidates: the product of ``tuning.shared`` (train keys) and its
    ``tuning.own`` options; ConfigError names the key of a bad or unequal grid."""
    spec = cfg["tuning"]
    if not tuning_seeds:
        return {}
    if clash := sorted(set(tuning_seeds) & set(seeds)):
        raise ConfigError(
            f"config key 'tuning.seeds': {clash} are also seeds of the final comparison "
            "(`seeds`); tuning seeds must be others"
        )
    if unknown := sorted(set(spec["own"]) - set(cfg["variants"])):
        raise ConfigError(f"config key 'tuning.own': unknown variant(s) {', '.join(unknown)}")
    counts = {v: len(spec["own"].get(v, [{}])) for v in variants}
    if len(set(counts.values())) > 1:
        raise ConfigError(
            "config key 'tuning.own': every variant needs the same number of options (the "
            f"same number of trials), found {counts}"
        )
    shared = [
        dict(zip(spec["shared"], values, strict=True))
        for values in itertools.product(*spec["shared"].values())
    ]
    out: dict[str, list[Candidate]] = {}
    for v in variants:
        out[v] = [
            _candidate(cfg, v, train, own, f"tuning.own.{v}[{i}]")
            for i, own in enumerate(spec["own"].get(v, [{}]))
            for train in shared
        ]
        names = [c.name for c in out[v]]
        if len(set(names)) != len(names):
            raise ConfigError(f"config key 'tuning': two candidates of {v} are the same")
    return out


def _candidate(cfg: dict, variant: str, train: dict, own: dict, where: str) -> Candidate:
    """One candidate: the variant's entry with ``own`` and ``train`` on top, checked alone
    (the rest of the config was validated once)."""
    entry = copy.deepcopy(cfg["variants"][variant])
    own = copy.deepcopy(own)
    own_train = own.pop("train", {})
    entry.update(own)
    entry["train"] = {**entry.get("train", {}), **own_train, **train}
    labels = {**own, **own_train, **train}
    overrides = {**own, "train": {**own_train, **train}}
    try:
        entry = config_mod.validate_variant(entry, cfg["train"], f"variants.{variant}")
    except ConfigError as exc:
        raise ConfigError(f"config key '{where}' (with tuning.shared {train}): {exc}") from None
    trial = {**cfg, "variants": {variant: entry}, "run_variants": None, "reference": variant}
    return Candidate(variant, value_folder(labels), labels, overrides, trial)


def equal_compute(cfg: dict, variants: list[str]) -> tuple[dict | None, list[str]]:
    """The config of the equal-compute comparison (each variant's epochs from
    ``equal_compute``) and the variants it trains again (whose epochs change)."""
    epochs = cfg["equal_compute"]
    if not epochs:
        return None, []
    if unknown := sorted(set(epochs) - set(cfg["variants"])):
        raise ConfigError(f"config key 'equal_compute': unknown variant(s) {', '.join(unknown)}")
    trial = {**cfg, "variants": copy.deepcopy(cfg["variants"])}
    changed = []
    for v, n in epochs.items():
        if v in variants and config_mod.train_settings(cfg, v)["epochs"] != n:
            entry = trial["variants"][v]
            entry["train"] = {**entry.get("train", {}), "epochs": n}
            changed.append(v)
    return trial, [v for v in variants if v in changed]
