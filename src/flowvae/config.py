"""Study configuration: read YAML, type command-line values, validate against the JSON schema.

The schema (``config.schema.yaml``, package data of flowvae) is the single source of truth for
keys, types and defaults; the Snakefile's ``validate()`` reads the same file (SCHEMA_PATH).
Which layer's value wins (defaults, the study, the tuning's selection, what the user states)
is decided in :mod:`flowvae.precedence`; :func:`load` resolves a command's layers through it.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(str(importlib.resources.files("flowvae") / "config.schema.yaml"))


from flowvae.errors import ConfigError  # noqa: E402  (re-exported)
from flowvae.spec import DataSpec, RunSpec  # noqa: E402


@functools.cache
def _schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def load_schema() -> dict:
    """The config schema (a fresh copy: callers may change it)."""
    return copy.deepcopy(_schema())


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
    cfg["variants"] = {
        name: validate_variant(entry, cfg["train"], f"variants.{name}", schema)
        for name, entry in cfg["variants"].items()
    }
    return cfg


def validate_variant(entry: dict, train: dict, where: str, schema: dict | None = None) -> dict:
    """One variant entry checked against its family's schema (defaults filled), and its own
    ``train`` mapping against the train schema on top of ``train``; ConfigError names the key."""
    from flowvae.posteriors import validate_settings  # the families' own schemas (imports torch)

    entry = copy.deepcopy(entry)
    own_train = entry.pop("train", None) if isinstance(entry, dict) else None
    checked = validate_settings(entry, where)
    if own_train is None:
        return checked
    if not isinstance(own_train, dict):
        raise ConfigError(f"config key '{where}.train': must be a mapping of train.* keys")
    train_schema = {**(schema or load_schema())["properties"]["train"], "default": None}
    check = jsonschema.Draft202012Validator(train_schema)
    errors = sorted(check.iter_errors({**train, **own_train}), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(f"config key '{where}.train.{_key_of(errors[0])}': {errors[0].message}")
    return {**checked, "train": own_train}


def resolve(cfg: dict, variant: str, seed: int) -> RunSpec:
    """The run ``variant`` x ``seed`` of a validated config, as a frozen spec."""
    return RunSpec.from_config(cfg, variant, seed)


def data_spec(cfg: dict) -> DataSpec:
    """The data settings of a validated config."""
    return RunSpec.from_config(cfg, next(iter(cfg["variants"])), 0).data


def command_line_values(cfg: dict, schema: dict | None = None) -> dict:
    """Give values from ``snakemake --config`` the types the schema asks for, in place.

    Snakemake reads ``--config seeds='[0,1]'`` as ``['0', '1']`` (strings inside lists and
    mappings); a string where the schema wants no string is parsed as YAML.

    >>> command_line_values({"seeds": ["0", "1"], "train": {"lr": "3e-4", "epochs": "5"}})
    {'seeds': [0, 1], 'train': {'lr': 0.0003, 'epochs': 5}}
    """
    return _typed(cfg, schema or load_schema())


def _wants_string(schema: dict) -> bool:
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    return not kinds or "string" in kinds


def _typed(value: Any, schema: dict) -> Any:
    if isinstance(value, str) and not _wants_string(schema):
        return parse_value(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in list(value):
            sub = props.get(key, extra if isinstance(extra, dict) else {})
            value[key] = _typed(value[key], sub)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            value[i] = _typed(item, schema.get("items", {}))
    return value


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
    """The validated config of YAML files (in order), a JSON string of sections and key=value
    overrides, resolved in the one precedence of :mod:`flowvae.precedence`."""
    from flowvae import precedence  # (built on this module)

    layers = precedence.command_layers(paths or [], settings, overrides or [])
    return validate(precedence.resolve(layers).config)


def read_file(path: str | os.PathLike) -> dict:
    """The mapping a YAML or JSON config file holds; ConfigError names a file that cannot be
    read or holds no mapping."""
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
    return loaded


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
