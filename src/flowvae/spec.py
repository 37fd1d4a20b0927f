"""A job's settings, resolved once from the validated config into frozen, typed objects.

A run is described by a :class:`RunSpec`: its variant and seed, and the ``data``, ``model``,
``posterior`` (family + settings), ``train`` and ``evaluate`` parts. Every field either decides
the result or not; the ones that do not (threads, device, checkpoint interval, mirror) are
marked once, here, with ``field(metadata=RUNTIME)``.

The **key** of a stage is the hash of the fields that decide its result (:func:`key`): the
settings file a job reads holds exactly those fields (so it changes when, and only when, the key
changes: Snakemake's rerun on a newer input is the one staleness rule), and the files a job
writes record the key they were made with, which every consumer compares.

>>> from flowvae import config
>>> spec = RunSpec.from_config(config.validate({}), "iaf", 0)
>>> spec.train.lr, spec.posterior.family, len(spec.key("train"))
(0.001, 'iaf', 16)
>>> faster = spec.replace_train(threads=8, device="cpu", checkpoint_every=1)
>>> faster.key("train") == spec.key("train")
True
>>> spec.replace_train(lr=3e-4).key("train") == spec.key("train")
False
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowvae.errors import ConfigError

#: Metadata of a field that never changes a result (it is left out of the key).
RUNTIME = {"runtime": True}


@dataclass(frozen=True)
class DataSpec:
    """Digit subset, validation split and binarization of the prepared data."""

    digits: tuple[int, ...]
    n_val: int
    max_train: int | None
    max_test: int | None
    split_seed: int
    binarize: str
    binarize_seed: int
    mirror: str | None = field(default=None, metadata=RUNTIME)


@dataclass(frozen=True)
class ModelSpec:
    """Encoder and decoder MLPs (the decoder mirrors ``hidden``) and the latent dimension."""

    latent_dim: int
    hidden: tuple[int, ...]
    activation: str


@dataclass(frozen=True)
class PosteriorSpec:
    """A posterior family and its settings (the family's defaults filled in)."""

    family: str
    settings: tuple[tuple[str, Any], ...]

    def kwargs(self) -> dict[str, Any]:
        return dict(self.settings)


@dataclass(frozen=True)
class TrainSpec:
    """Optimizer, schedule and budget of one training run."""

    epochs: int
    batch_size: int
    lr: float
    lr_min: float
    schedule: str
    optimizer: str
    precision: str
    betas: tuple[float, float]
    weight_decay: float
    kl_warmup_epochs: int
    grad_clip: float | None
    samples: int
    keep: str
    patience: int | None
    checkpoint_every: int = field(default=5, metadata=RUNTIME)
    device: str = field(default="auto", metadata=RUNTIME)
    threads: int = field(default=1, metadata=RUNTIME)


@dataclass(frozen=True)
class EvaluateSpec:
    """Test-set estimators (RQMC ELBO, IWAE, 2-D quadrature) and the posterior grids."""

    iwae_k: int
    chunk: int
    seed: int
    images: tuple[int, ...]
    grid_extent: float
    grid_points: int
    quadrature_extent: float | None
    quadrature_points: int | None
    check_images: int
    check_ks: tuple[int, ...]
    check_repeats: int
    elbo_tol: float
    threads: int = field(default=1, metadata=RUNTIME)


PARTS = {
    "data": DataSpec,
    "model": ModelSpec,
    "posterior": PosteriorSpec,
    "train": TrainSpec,
    "evaluate": EvaluateSpec,
}
#: The parts whose tracked fields decide each stage's result.
STAGES = {
    "prepare": ("data",),
    "train": ("data", "model", "posterior", "train"),
    "evaluate": ("data", "model", "posterior", "train", "evaluate"),
}


@dataclass(frozen=True)
class RunSpec:
    """Everything one run (variant x seed) is trained and evaluated with."""

    variant: str
    seed: int
    data: DataSpec
    model: ModelSpec
    posterior: PosteriorSpec
    train: TrainSpec
    evaluate: EvaluateSpec | None = None  # None: a training job's spec

    # ------------------------------------------------------------ building

    @classmethod
    def from_config(cls, cfg: dict, variant: str, seed: int) -> RunSpec:
        """The spec of ``variant`` x ``seed`` from a *validated* config (defaults filled)."""
        if variant not in cfg["variants"]:
            known = ", ".join(sorted(cfg["variants"]))
            raise ConfigError(
                f"config key 'variants': unknown variant '{variant}' (known: {known})"
            )
        entry = dict(cfg["variants"][variant])
        own_train = entry.pop("train", {}) or {}
        family = entry.pop("family")
        return cls(
            variant=variant,
            seed=int(seed),
            data=_build(DataSpec, cfg["data"]),
            model=_build(ModelSpec, cfg["model"]),
            posterior=PosteriorSpec(family, tuple(sorted(entry.items()))),
            train=_build(TrainSpec, {**cfg["train"], **own_train}),
            evaluate=_build(EvaluateSpec, cfg["evaluate"]),
        )

    @classmethod
    def from_dict(cls, tree: dict, where: str = "settings") -> RunSpec:
        """The inverse of :meth:`to_dict`; ConfigError names ``where`` for a bad tree."""
        try:
            parts = {name: tree[name] for name in STAGES["train"]}
            posterior = parts["posterior"]
            return cls(
                variant=str(tree["variant"]),
                seed=int(tree["seed"]),
                data=_build(DataSpec, parts["data"]),
                model=_build(ModelSpec, parts["model"]),
                posterior=PosteriorSpec(
                    posterior["family"], tuple(sorted(posterior["settings"].items()))
                ),
                train=_build(TrainSpec, parts["train"]),
                evaluate=_build(EvaluateSpec, tree["evaluate"]) if "evaluate" in tree else None,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"{where} does not describe a run ({type(exc).__name__}: {exc}); it was written "
                "by another version of flowvae: delete it and run the pipeline again"
            ) from None

    def replace_train(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **changes))

    def replace_evaluate(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, evaluate=dataclasses.replace(self.evaluate, **changes))

    def with_evaluate(self, evaluate: EvaluateSpec) -> RunSpec:
        return dataclasses.replace(self, evaluate=evaluate)

    # ------------------------------------------------------------ keys

    def to_dict(self, stage: str = "evaluate", runtime: bool = True) -> dict:
        """The parts ``stage`` reads as plain data (JSON-able), with or without runtime fields."""
        out: dict[str, Any] = (
            {} if stage == "prepare" else {"variant": self.variant, "seed": self.seed}
        )
        for name in STAGES[stage]:
            out[name] = _plain(getattr(self, name), runtime)
        return out

    def key(self, stage: str) -> str:
        """The hash of what decides ``stage``'s result (runtime fields left out)."""
        return key_of(self.to_dict(stage, runtime=False))

    def label(self) -> str:
        return f"{self.variant} seed {self.seed}"


def key_of(tree: dict) -> str:
    """16 hex digits of the SHA-256 of ``tree`` as canonical JSON.

    >>> key_of({"b": 1, "a": [1, 2]}) == key_of({"a": [1, 2], "b": 1})
    True
    """
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- settings files


def settings_tree(spec: RunSpec, stage: str) -> dict:
    """The settings file of ``spec``'s ``stage`` job: the fields that decide it, and its key.

    Its text changes exactly when the key does, so Snakemake's rule "an input newer than the
    outputs reruns the job" reruns exactly the jobs whose key changed.
    """
    tree = spec.to_dict(stage, runtime=False)
    return {"stage": stage, "key": key_of(tree), "spec": tree}


def read_settings(path: Path, stage: str, runtime: Path | None = None) -> RunSpec:
    """The spec in the settings file ``path`` of a ``stage`` job, with the runtime fields of
    the file ``runtime`` (threads, device, checkpoint interval: a tree per variant)."""
    tree = _read_json(path, "settings file")
    if tree.get("stage") != stage or not isinstance(tree.get("spec"), dict):
        raise ConfigError(
            f"settings file {path} is not the settings of a {stage} job; delete it and run the "
            "pipeline again (it rewrites it)"
        )
    spec = RunSpec.from_dict(tree["spec"], f"settings file {path}")
    if runtime is not None:
        spec = with_runtime(spec, _read_json(runtime, "runtime file").get(spec.variant, {}))
    return spec


def data_settings_tree(data: DataSpec) -> dict:
    """The prepare job's settings file: the data settings and their key (:func:`data_key`)."""
    return {"stage": "prepare", "key": data_key(data), "spec": {"data": _plain(data, False)}}


def read_data_settings(path: Path) -> DataSpec:
    """The data settings in the prepare job's settings file."""
    tree = _read_json(path, "settings file")
    return data_from_dict(tree.get("spec", {}), f"settings file {path}")


def _read_json(path: Path, what: str) -> dict:
    try:
        tree = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(
            f"{what} {path} is not valid JSON ({exc}); delete it and run the pipeline again "
            "(it rewrites it)"
        ) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{what} {path} does not hold a mapping; delete it and rerun")
    return tree


def data_key(data: DataSpec) -> str:
    """The key of the prepared data (the prepare stage's key of any run on it)."""
    return key_of({"data": _plain(data, runtime=False)})


def data_from_dict(tree: dict, where: str = "settings") -> DataSpec:
    """The data part of a settings tree (the prepare job's settings file)."""
    try:
        return _build(DataSpec, tree["data"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            f"{where} does not describe the data ({exc}); delete it and rerun"
        ) from None


def runtime_dict(spec: RunSpec) -> dict:
    """The runtime fields of ``train`` and ``evaluate`` (what a job's key leaves out)."""
    return {
        name: {
            f.name: getattr(getattr(spec, name), f.name)
            for f in dataclasses.fields(PARTS[name])
            if f.metadata.get("runtime")
        }
        for name in ("train", "evaluate")
        if getattr(spec, name) is not None
    }


def with_runtime(spec: RunSpec, runtime: dict) -> RunSpec:
    """``spec`` with runtime fields from ``runtime`` (a tree as :func:`runtime_dict` gives)."""
    train = {k: v for k, v in runtime.get("train", {}).items() if _is_runtime(TrainSpec, k)}
    evaluate = {
        k: v for k, v in runtime.get("evaluate", {}).items() if _is_runtime(EvaluateSpec, k)
    }
    spec = spec.replace_train(**train)
    return spec.replace_evaluate(**evaluate) if spec.evaluate is not None else spec


def _is_runtime(cls: type, name: str) -> bool:
    return any(f.name == name and f.metadata.get("runtime") for f in dataclasses.fields(cls))


def _plain(part: Any, runtime: bool) -> dict:
    out = {}
    for f in dataclasses.fields(part):
        if f.metadata.get("runtime") and not runtime:
            continue
        value = getattr(part, f.name)
        if f.name == "settings" and isinstance(part, PosteriorSpec):
            value = {k: _json(v) for k, v in value}
        out[f.name] = _json(value)
    return out


def _json(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


def _frozen(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def _build(cls: type, values: dict) -> Any:
    """``cls`` from a mapping with exactly its fields (runtime fields may be missing)."""
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("runtime")}
    if missing := sorted(required - set(values)):
        raise KeyError(f"{cls.__name__} lacks {', '.join(missing)}")
    if extra := sorted(set(values) - names):
        raise KeyError(f"{cls.__name__} has no field {', '.join(extra)}")
    return cls(**{k: _frozen(v) for k, v in values.items()})
