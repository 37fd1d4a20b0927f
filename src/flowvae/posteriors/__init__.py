"""Posterior families q(z|x). Each module of this package defines one family.

A family named ``foo`` in the config lives in ``flowvae/posteriors/foo.py`` and exposes a
class ``Posterior`` subclassing :class:`flowvae.posteriors.base.PosteriorFamily`. Adding a
family therefore means one new module and a config entry.
"""

from __future__ import annotations

import importlib
import inspect

from flowvae.errors import ConfigError
from flowvae.posteriors.base import PosteriorFamily


def build(family: str, latent_dim: int, **settings) -> PosteriorFamily:
    """Instantiate the family ``family``; unknown families or settings raise ConfigError."""
    try:
        module = importlib.import_module(f"flowvae.posteriors.{family}")
    except ModuleNotFoundError as exc:
        raise ConfigError(f"config key 'family': no posterior family '{family}'") from exc
    cls = module.Posterior
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "latent_dim"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ConfigError(
            f"config key '{unknown[0]}': not a setting of family '{family}' "
            f"(settings: {', '.join(sorted(allowed)) or 'none'})"
        )
    return cls(latent_dim=latent_dim, **settings)
