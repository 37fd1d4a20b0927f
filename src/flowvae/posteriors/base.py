"""The interface every posterior family implements.

q(z|x) is a base Gaussian N(mu(x), diag sigma(x)^2) pushed through an invertible map
z = T(z0; h(x)) conditioned on the encoder context h(x):

    log q(z|x) = log N(z0; mu, sigma^2) - log |det dT/dz0|

A family subclasses :class:`PosteriorFamily` and implements ``transform`` (z0 -> z and the
log-determinant) and ``inverse`` (z -> z0). Its settings are the keyword arguments of its
``__init__``, where their defaults are stated; ``SETTINGS`` gives each one's JSON-schema type
and range, and the class adds the defaults from the signature when it is defined (a setting
missing from either, or a default stated twice, stops the definition). ``context_dim`` is the
length of h(x) it reads from the encoder (0: none).

Training-loss hook: ``transform_with_penalty`` returns a third value, a per-sample penalty that
the trainer adds to the loss (``objectives.elbo_terms``'s ``loss``) and nothing else: the
reported -ELBO, IWAE and exact NLL never contain it. The default penalty is 0; COT-Flow adds its
transport cost and HJB residual there.

Approximate densities: a family whose log q is exact only up to a discretization (an ODE solved
with a fixed step) sets ``exact_density = False`` and has an integer setting ``steps``; its log q
must converge as ``steps`` grows (the contract tests check this).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """sum_i [ -((z_i - mu_i)/sigma_i)^2 / 2 - log sigma_i - log(2 pi)/2 ] over the last axis."""
    eps = (z - mu) * torch.exp(-log_sigma)
    return (-0.5 * eps**2 - log_sigma - 0.5 * LOG_2PI).sum(-1)


class PosteriorFamily(nn.Module):
    """Base class: subclasses set ``context_dim``, ``SETTINGS`` and implement ``transform``
    and ``inverse``; they may override ``transform_with_penalty`` (the training-loss hook) and
    ``inverse_with_logdet`` (when z0 and the log-determinant come from one backward pass)."""

    context_dim: int = 0
    SETTINGS: ClassVar[dict[str, dict[str, Any]]] = {}
    exact_density: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        """SETTINGS gets its defaults from ``__init__``'s signature: stated once, there."""
        super().__init_subclass__(**kwargs)
        params = inspect.signature(cls.__init__).parameters
        names = [n for n in params if n not in ("self", "latent_dim")]
        if set(names) != set(cls.SETTINGS):
            raise TypeError(
                f"{cls.__name__}: SETTINGS ({', '.join(sorted(cls.SETTINGS))}) and the keyword "
                f"arguments of __init__ ({', '.join(sorted(names))}) differ"
            )
        settings = {}
        for name in names:
            default = params[name].default
            if default is inspect.Parameter.empty or "default" in cls.SETTINGS[name]:
                raise TypeError(f"{cls.__name__}.{name}: state its default once, in __init__")
            settings[name] = {**cls.SETTINGS[name], "default": default}
        cls.SETTINGS = settings

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def transform(self, z0: torch.Tensor, h: torch.Tensor | None):
        """(N, d) base samples -> (z (N, d), log|det dz/dz0| (N,))."""
        raise NotImplementedError

    def inverse(self, z: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        """(N, d) -> z0 with transform(z0, h)[0] == z."""
        raise NotImplementedError

    def transform_with_penalty(self, z0: torch.Tensor, h: torch.Tensor | None):
        """The training-loss hook: (z, log|det dz/dz0|, penalty (N,)); the penalty is added to
        the training loss only. Default: ``transform`` and a zero penalty."""
        z, logdet = self.transform(z0, h)
        return z, logdet, torch.zeros_like(logdet)

    def inverse_with_logdet(self, z: torch.Tensor, h: torch.Tensor | None):
        """(N, d) -> (z0, log|det dz/dz0| at z0). Default: ``inverse``, then ``transform``."""
        z0 = self.inverse(z, h)
        return z0, self.transform(z0, h)[1]

    def sample_with_penalty(
        self,
        mu: torch.Tensor,
        log_sigma: torch.Tensor,
        h: torch.Tensor | None,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterized samples z (S, B, d), log q(z|x) (S, B), training penalty (S, B)."""
        shape = (n_samples, *mu.shape)
        eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z0 = mu + torch.exp(log_sigma) * eps
        log_q0 = (-0.5 * eps**2 - log_sigma - 0.5 * LOG_2PI).sum(-1)
        z, logdet, penalty = self.transform_with_penalty(*_flatten(z0, h))
        batch = shape[:-1]
        return z.reshape(shape), log_q0 - logdet.reshape(batch), penalty.reshape(batch)

    def sample(
        self,
        mu: torch.Tensor,
        log_sigma: torch.Tensor,
        h: torch.Tensor | None,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized samples: z (S, B, d) and log q(z|x) (S, B)."""
        z, log_q, _ = self.sample_with_penalty(mu, log_sigma, h, n_samples, generator)
        return z, log_q

    def log_prob(
        self, z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, h: torch.Tensor | None
    ) -> torch.Tensor:
        """log q(z|x) at given z of shape (S, B, d) for a batch of B encodings -> (S, B)."""
        z_flat, h_flat = _flatten(z, h)
        z0, logdet = self.inverse_with_logdet(z_flat, h_flat)
        z0 = z0.reshape(z.shape)
        return gaussian_log_prob(z0, mu, log_sigma) - logdet.reshape(z.shape[:-1])


def _flatten(z: torch.Tensor, h: torch.Tensor | None):
    """(S, B, d) samples and (B, c) contexts -> (S*B, d) and (S*B, c)."""
    flat = z.reshape(-1, z.shape[-1])
    if h is None:
        return flat, None
    h = h.expand(z.shape[0], *h.shape).reshape(-1, h.shape[-1])
    return flat, h
