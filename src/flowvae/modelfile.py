"""Trained models and checkpoints on disk, and the device they run on.

Both files hold only tensors and plain data (numbers, strings, lists, dicts; generator states
as uint8 tensors) and are read with ``torch.load(..., weights_only=True)``: a file whose
pickle asks for anything else (a class, a function, a shell command) is refused, naming the
file, before any of it runs. Each file records its format, the run's spec (the fields that
decide the result) and its key (:mod:`flowvae.spec`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowvae import io
from flowvae.errors import FlowvaeError, StaleRunError
from flowvae.spec import RunSpec
from flowvae.vae import VAE, build_model

MODEL_FORMAT = "flowvae-model/2"
CHECKPOINT_FORMAT = "flowvae-checkpoint/2"


class UnsafeFileError(FlowvaeError):
    """A file that needs arbitrary unpickling (it could run code): refused."""


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FlowvaeError(f"config key 'train.device' is '{name}' but CUDA is not available")
    return torch.device(name)


def safe_load(path: Path, what: str, fmt: str, device: Any = "cpu") -> dict:
    """The dict in ``path`` (tensors and plain data only), checked to be of format ``fmt``.

    UnsafeFileError when the pickle needs anything but tensors and plain data (nothing of it
    runs); FlowvaeError for a damaged file or one of another format, saying what to do.
    """
    try:
        record = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        asks = [line for line in str(exc).splitlines() if "GLOBAL" in line]
        if not asks:  # the restricted unpickler met bytes it cannot read: a damaged file
            raise FlowvaeError(
                f"{what} {path} is damaged or unreadable ({_last_reason(exc)}); delete it and "
                "run the pipeline again to retrain that run"
            ) from None
        raise UnsafeFileError(
            f"{what} {path} was refused: reading it needs arbitrary unpickling, which could run "
            f"code ({asks[0].strip()}). flowvae never writes such files: if it is an older "
            "flowvae file, delete it and run the pipeline again to retrain that run; otherwise "
            "do not use it"
        ) from None
    except Exception as exc:  # truncated, not a torch file
        raise FlowvaeError(
            f"{what} {path} is damaged or unreadable ({type(exc).__name__}: {exc}); delete it "
            "and run the pipeline again to retrain that run"
        ) from exc
    if not isinstance(record, dict) or record.get("format") != fmt:
        found = record.get("format", "none") if isinstance(record, dict) else type(record).__name__
        raise FlowvaeError(
            f"{what} {path} is of format {found!r}, not {fmt!r} (written by another version of "
            "flowvae); delete it and run the pipeline again to retrain that run"
        )
    return record


def _last_reason(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-2] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)


@dataclass(frozen=True)
class TrainedModel:
    """A model read from model.pt, with the spec it was trained with and its summary."""

    model: VAE
    spec: RunSpec
    key: str
    summary: dict


def save_model(path: Path, model: VAE, spec: RunSpec, summary: dict) -> None:
    io.torch_save(
        {
            "format": MODEL_FORMAT,
            "state_dict": model.state_dict(),
            "spec": spec.to_dict("train", runtime=False),
            "key": spec.key("train"),
            "summary": summary,
        },
        path,
    )


def load_model(path: Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Rebuild a trained model from model.pt (in eval mode); refuses unsafe or damaged files."""
    path = Path(path)
    record = safe_load(path, "model file", MODEL_FORMAT, device)
    try:
        spec = RunSpec.from_dict(record["spec"], f"model file {path}")
        model = build_model(spec.model, spec.posterior).to(device)
        model.load_state_dict(record["state_dict"])
    except FlowvaeError:
        raise
    except Exception as exc:  # from another model: missing or misshapen weights
        raise FlowvaeError(
            f"model file {path} does not fit the model it describes ({type(exc).__name__}: "
            f"{exc}); delete it and run the pipeline again to retrain that run"
        ) from exc
    return TrainedModel(model.eval(), spec, record["key"], record["summary"])


def check_key(trained: TrainedModel, spec: RunSpec, path: Path) -> None:
    """StaleRunError when the model at ``path`` was trained with other settings than ``spec``."""
    if trained.key == spec.key("train"):
        return
    made, wanted = trained.spec.to_dict("train", False), spec.to_dict("train", False)
    keys = ", ".join(differences(made, wanted)) or "the variant or seed"
    raise StaleRunError(
        f"{path} ({trained.spec.label()}) was trained with other settings than asked for "
        f"({keys} differ); run the pipeline again (it retrains runs whose settings changed), "
        f"or delete {path.parent} and rerun"
    )


def differences(made: dict, wanted: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two trees.

    >>> differences({"train": {"lr": 1e-3, "epochs": 4}}, {"train": {"lr": 3e-4}})
    ['train.epochs', 'train.lr']
    """
    out = []
    for key in sorted(made.keys() | wanted.keys()):
        a, b = made.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def save_checkpoint(path: Path, spec: RunSpec, state: dict) -> None:
    """``state``: epoch, model, optimizer, data_gen, noise_gen (uint8 tensors), history."""
    io.torch_save({"format": CHECKPOINT_FORMAT, "key": spec.key("train"), **state}, path)


def load_checkpoint(path: Path, spec: RunSpec) -> dict | None:
    """The checkpoint at ``path`` if it was written for ``spec``'s key, else None.

    A damaged file or one of another key is for another run: None (the caller starts over).
    A file that needs arbitrary unpickling raises UnsafeFileError: it was not written by
    flowvae, and nothing of it runs.
    """
    record = safe_load(path, "checkpoint", CHECKPOINT_FORMAT)
    return record if record.get("key") == spec.key("train") else None
