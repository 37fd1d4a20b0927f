"""Sweeps: one dotted key of the config, several values, every run repeated per value."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from flowvae import config as config_mod
from flowvae.errors import ConfigError
from flowvae.layout import value_folder

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
SECTIONS = ("data", "model", "train", "evaluate", "variants")


@dataclass
class Sweep:
    """One sweep: a dotted key, its values by folder name, and the runs it repeats."""

    name: str
    key: str
    values: dict[str, Any]
    variants: list[str]
    seeds: list[int]

    @property
    def section(self) -> str:
        return self.key.split(".")[0]


def sweep_config(cfg: dict, sweep: Sweep, value: Any) -> dict:
    """The study's config with the sweep's key set to ``value``, validated."""
    trial = copy.deepcopy(cfg)
    keys = sweep.key.split(".")
    config_mod.set_dotted(trial, keys, copy.deepcopy(value))
    if keys[0] == "train":  # for every variant: its own `train` holds the key, when resolved
        for settings in trial["variants"].values():
            if keys[1] in settings.get("train", {}):
                settings["train"][keys[1]] = copy.deepcopy(value)
    return config_mod.validate(trial)


def parse_sweep(cfg: dict, variants: list[str], seeds: list[int], name: str, spec: dict) -> Sweep:
    """Check one sweep of the validated ``cfg``; ConfigError names the bad key."""
    where = f"sweeps.{name}"
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"config key '{where}': a sweep name may use only letters, digits, '_' and '-'"
        )
    keys = spec["key"].split(".")
    if keys[0] not in SECTIONS or len(keys) < 2:
        raise ConfigError(
            f"config key '{where}.key': {spec['key']!r} is not a dotted key in one of "
            f"{', '.join(SECTIONS)}"
        )
    variants = spec.get("variants", variants)
    if keys[0] == "variants":
        if len(keys) < 3 or keys[1] not in cfg["variants"]:
            raise ConfigError(
                f"config key '{where}.key': {spec['key']!r} names no configured variant"
            )
        variants = spec.get("variants", [keys[1]])
        if variants != [keys[1]]:
            raise ConfigError(
                f"config key '{where}.variants': a sweep of {spec['key']} runs only {keys[1]}"
            )
    if unknown := [v for v in variants if v not in cfg["variants"]]:
        raise ConfigError(f"config key '{where}.variants': unknown variant(s) {', '.join(unknown)}")
    sweep = Sweep(name, spec["key"], {}, list(variants), list(spec.get("seeds", seeds)))
    for value in spec["values"]:
        try:
            sweep_config(cfg, sweep, value)
        except ConfigError as exc:
            text = str(exc).lower()  # an unknown key is the key's fault, else the value's
            field = "key" if "additional properties" in text or "section" in text else "values"
            raise ConfigError(
                f"config key '{where}.{field}': {spec['key']} = {value!r} is not valid: {exc}"
            ) from None
        folder = value_folder(value)
        if folder in sweep.values:
            raise ConfigError(
                f"config key '{where}.values': {sweep.values[folder]!r} and {value!r} would "
                f"share the folder {folder!r}"
            )
        sweep.values[folder] = value
    return sweep
