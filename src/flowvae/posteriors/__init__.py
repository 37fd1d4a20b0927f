"""Posterior families q(z|x). Each module of this package (except ``base``) defines one family.

A family named ``foo`` lives in ``flowvae/posteriors/foo.py`` and defines one subclass of
:class:`flowvae.posteriors.base.PosteriorFamily`, named for what it is (``FooPosterior``), with
its settings and their defaults in the class attribute ``SETTINGS`` (JSON-schema properties).
Dropping such a module into the package is all it takes: ``families()`` discovers it, the config
validates a variant's settings against ``settings_schema(name)``, and the contract tests
(``tests/test_families.py``) run over it.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import pkgutil
from typing import Any

import jsonschema

from flowvae.errors import ConfigError
from flowvae.posteriors.base import PosteriorFamily

__all__ = ["PosteriorFamily", "build", "families", "settings_schema", "validate_variants"]


@functools.cache
def families() -> dict[str, type[PosteriorFamily]]:
    """{module name: family class} for every module of this package except ``base``."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        classes = [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, PosteriorFamily)
            and obj.__module__ == module.__name__
        ]
        if len(classes) != 1:
            names = ", ".join(c.__name__ for c in classes) or "none"
            raise TypeError(f"{module.__name__} must define one PosteriorFamily, found: {names}")
        found[info.name] = classes[0]
    return found


def settings_schema(name: str) -> dict[str, Any]:
    """The JSON schema of one variant entry of family ``name``: ``family`` and its settings."""
    cls = _family(name, "family")
    return {
        "type": "object",
        "required": ["family"],
        "additionalProperties": False,
        "properties": {"family": {"const": name}, **copy.deepcopy(cls.SETTINGS)},
    }


def validate_settings(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """A copy of one variant entry ({'family': ..., settings}) with defaults filled; raise
    ConfigError naming ``where.key`` for an unknown family, an unknown setting or a bad value."""
    prefix = f"{where}." if where else ""
    if not isinstance(settings, dict) or "family" not in settings:
        raise ConfigError(f"config key '{where}': needs a 'family'")
    schema = settings_schema(_family_name(settings["family"], f"{prefix}family"))
    out = copy.deepcopy(settings)
    for key, sub in schema["properties"].items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(out), key=lambda e: list(e.path)
    )
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(schema["properties"]))
            allowed = ", ".join(sorted(schema["properties"]))
            raise ConfigError(
                f"config key '{prefix}{extra[0]}': not a setting of family "
                f"'{settings['family']}' (settings: {allowed})"
            )
        raise ConfigError(f"config key '{prefix}{key}': {err.message}")
    return out


def validate_variants(variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every variant's settings checked against its family's schema, defaults filled."""
    return {name: validate_settings(entry, f"variants.{name}") for name, entry in variants.items()}


def build(family: str, latent_dim: int, **settings) -> PosteriorFamily:
    """Instantiate the family ``family``; unknown families or settings raise ConfigError."""
    checked = validate_settings({"family": family, **settings}, "")
    checked.pop("family")
    return families()[family](latent_dim=latent_dim, **checked)


def _family_name(name: Any, key: str) -> str:
    _family(name, key)
    return name


def _family(name: Any, key: str) -> type[PosteriorFamily]:
    known = families()
    if not isinstance(name, str) or name not in known:
        raise ConfigError(
            f"config key '{key}': no posterior family '{name}' (families: {', '.join(known)})"
        )
    return known[name]
