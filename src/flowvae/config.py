"""Study configuration: load YAML, apply overrides, validate against the JSON schema.

The schema (``config.schema.yaml``, package data of flowvae) is the single source of truth for
keys, types and defaults; the Snakefile's ``validate()`` reads the same file (SCHEMA_PATH).
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(str(importlib.resources.files("flowvae") / "config.schema.yaml"))


from flowvae.errors import ConfigError  # noqa: E402  (re-exported)


def load_schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def _fill_defaults(schema: dict, instance: Any) -> Any:
    """Recursively insert schema defaults for missing object properties."""
    if not isinstance(instance, dict) or schema.get("type") != "object":
        return instance
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            instance[key] = _fill_defaults(sub, instance[key])
    return instance


def fill_defaults(cfg: dict) -> dict:
    """A copy of ``cfg`` with the schema's defaults filled in (a null section stays null)."""
    return _fill_defaults(load_schema(), copy.deepcopy(cfg))


def _key_of(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        name = ".".join(filter(None, [path, extra[0] if extra else ""]))
        return name or "<top level>"
    return path or "<top level>"


def validate(cfg: dict) -> dict:
    """Return a validated copy of ``cfg`` with defaults filled; raise ConfigError naming the key."""
    schema = load_schema()
    cfg = _fill_defaults(schema, copy.deepcopy(cfg))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        raise ConfigError(f"config key '{_key_of(err)}': {err.message}")
    from flowvae.posteriors import validate_variants  # the families' own schemas (imports torch)

    own_train = {v: entry.pop("train") for v, entry in cfg["variants"].items() if "train" in entry}
    cfg["variants"] = validate_variants(cfg["variants"])
    train_schema = {**schema["properties"]["train"], "default": None}
    for variant, overrides in own_train.items():
        where = f"variants.{variant}.train"
        if not isinstance(overrides, dict):
            raise ConfigError(f"config key '{where}': must be a mapping of train.* keys")
        check = jsonschema.Draft202012Validator(train_schema)
        errors = sorted(
            check.iter_errors({**cfg["train"], **overrides}), key=lambda e: list(e.absolute_path)
        )
        if errors:
            key = _key_of(errors[0])
            raise ConfigError(f"config key '{where}.{key}': {errors[0].message}")
        cfg["variants"][variant]["train"] = overrides
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, value = text.split("=", 1)
    return key.strip().split("."), parse_value(value)


def parse_value(text: str) -> Any:
    """A command-line value as YAML, '1e-5' as a number (YAML 1.1 reads it as a string).

    >>> parse_value("[0, 1]"), parse_value("1e-5"), parse_value("null"), parse_value("relu")
    ([0, 1], 1e-05, None, 'relu')
    """
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"value {text!r} is not valid YAML: {exc}") from None
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            pass
    return parsed


def set_dotted(cfg: dict, keys: list[str], value: Any) -> None:
    node = cfg
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{'.'.join(keys)}': '{k}' is not a section")
    node[keys[-1]] = value


def load(
    paths: list[str | os.PathLike] | None = None,
    settings: str | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Merge YAML files (later wins, section by section), a JSON string, and key=value overrides."""
    cfg: dict = {}
    for path in paths or []:
        try:
            with open(path) as fh:
                # JSON through json: YAML 1.1 reads a JSON number such as 1e-05 as a string
                is_json = str(path).endswith(".json")
                loaded = (json.load(fh) if is_json else yaml.safe_load(fh)) or {}
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
        except (yaml.YAMLError, ValueError) as exc:
            raise ConfigError(
                f"config file {path} is not valid YAML or JSON ({exc}); fix or delete it"
            ) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} does not hold a mapping")
        merge(cfg, loaded)
    if settings:
        merge(cfg, json.loads(settings))
    for text in overrides or []:
        set_dotted(cfg, *parse_override(text))
    return validate(cfg)


def merge(base: dict, new: dict) -> None:
    """Merge ``new`` into ``base`` in place, section by section (later wins)."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def variant_settings(cfg: dict, variant: str) -> dict:
    """The posterior family and its settings for ``variant`` (not its own training settings);
    raise ConfigError if unknown."""
    if variant not in cfg["variants"]:
        known = ", ".join(sorted(cfg["variants"]))
        raise ConfigError(f"config key 'variants': unknown variant '{variant}' (known: {known})")
    return {k: v for k, v in cfg["variants"][variant].items() if k != "train"}


def train_settings(cfg: dict, variant: str) -> dict:
    """``train`` with the variant's own overrides (``variants.<variant>.train``) on top.

    >>> cfg = {"train": {"lr": 1e-3, "epochs": 40}, "variants": {"a": {"train": {"lr": 3e-3}}}}
    >>> train_settings(cfg, "a")
    {'lr': 0.003, 'epochs': 40}
    """
    variant_settings(cfg, variant)  # unknown variant: ConfigError
    return {**cfg["train"], **cfg["variants"][variant].get("train", {})}
