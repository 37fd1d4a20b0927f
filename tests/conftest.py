"""Shared pytest fixtures. Keep each fixture small and documented; append new ones below."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The offline MNIST copy: $FLOWVAE_MNIST_MIRROR when set, else the folder beside the repository.
MNIST_MIRROR = Path(
    os.environ.get("FLOWVAE_MNIST_MIRROR") or REPO_ROOT / ".." / "shared" / "data" / "mnist"
).resolve()

# ----------------------------------------------------------------------------- MNIST data


@dataclass(frozen=True)
class IdxFiles:
    """Small fake MNIST written by ``idx_dir``: folder, label counts per digit and raw hashes."""

    path: Path
    train_counts: tuple[int, ...]  # images of digit 0..9 in the training file
    test_counts: tuple[int, ...]  # images of digit 0..9 in the test file
    sha256: dict[str, str]  # file name -> SHA-256 (for download(checksums=...))


# 300 training and 100 test images; every digit present, all counts different enough to matter.
FAKE_TRAIN_COUNTS = (20, 25, 30, 35, 40, 25, 30, 35, 30, 30)
FAKE_TEST_COUNTS = (5, 8, 10, 12, 15, 10, 10, 10, 10, 10)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (magic 0x0000080N, big-endian dims, payload)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _fake_split(counts: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Random images whose pixel 0 is the label and pixels 1-2 the index (hi, lo byte)."""
    labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), counts))
    images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    flat = images.reshape(len(labels), -1)
    flat[:, 0] = labels
    flat[:, 1] = np.arange(len(labels)) // 256
    flat[:, 2] = np.arange(len(labels)) % 256
    return images, labels


@pytest.fixture
def idx_dir(tmp_path: Path) -> IdxFiles:
    """Valid raw IDX files with the four real MNIST names, in ``tmp_path / "raw"``."""
    from flowvae import data

    folder = tmp_path / "raw"
    folder.mkdir()
    rng = np.random.default_rng(12345)
    train_x, train_y = _fake_split(FAKE_TRAIN_COUNTS, rng)
    test_x, test_y = _fake_split(FAKE_TEST_COUNTS, rng)
    arrays = {
        data.TRAIN_IMAGES: train_x,
        data.TRAIN_LABELS: train_y,
        data.TEST_IMAGES: test_x,
        data.TEST_LABELS: test_y,
    }
    for name, array in arrays.items():
        _write_idx(folder / name, array)
    sha = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in arrays}
    return IdxFiles(folder, FAKE_TRAIN_COUNTS, FAKE_TEST_COUNTS, sha)


@pytest.fixture(scope="session")
def mnist_mirror() -> Path:
    """The offline MNIST mirror ($FLOWVAE_MNIST_MIRROR, else ../shared/data/mnist); skips the
    test when it is absent."""
    if not MNIST_MIRROR.is_dir():
        pytest.skip(f"offline MNIST mirror {MNIST_MIRROR} not present")
    return MNIST_MIRROR


@pytest.fixture(scope="session")
def real_raw_dir(mnist_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four real raw MNIST files, downloaded (and verified) once per session."""
    from flowvae import fetch

    out = tmp_path_factory.mktemp("mnist_raw")
    fetch.download(out, mirror=mnist_mirror)
    return out


# ----------------------------------------------------------------------------- pipeline runs


@pytest.fixture(scope="session")
def quick_metrics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """metrics.csv of the quick config run locally with --cores 2 (once per session): the
    reference that test_resilience.py (--cores 1) and test_slurm.py (SLURM) compare with."""
    from pipeline import failure, snakemake

    tmp = tmp_path_factory.mktemp("quick_cores2")
    metrics = tmp / "results" / "metrics.csv"
    proc = snakemake(metrics, "--cores", "2", tmp=tmp)
    if proc.returncode != 0:
        pytest.fail(f"the quick run (--cores 2) failed:\n{failure(proc, tmp)}")
    return metrics


# ----------------------------------------------------------------------------- tiny models


@pytest.fixture
def float64():
    """Double precision for a test module's property checks (restored afterwards); use it with
    ``pytestmark = pytest.mark.usefixtures("float64")``."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# Small sizes for the settings a family declares (by the shared names); the rest keep defaults.
SMALL = {"context_dim": 8, "hidden": 16, "width": 16, "context_width": 16, "projection": 4}
SMALL_STEPS = 2  # IAF steps, ODE steps


def _small_variants() -> dict:
    """One small variant per discovered family; the Gaussian one is the study's "standard"."""
    from flowvae import posteriors

    return {
        ("standard" if name == "gaussian" else name): {
            "family": name,
            **{k: v for k, v in {**SMALL, "steps": SMALL_STEPS}.items() if k in cls.SETTINGS},
        }
        for name, cls in posteriors.families().items()
    }


SMALL_VARIANTS = _small_variants()


def small_config(tmp_path=None, **train_settings) -> dict:
    """A tiny validated config, one small variant per family (fake-MNIST sized); train keys
    overridable."""
    from flowvae import config

    overrides = {
        "data": {"n_val": 30, "max_test": 20, "digits": [1, 2, 3]},
        "model": {"hidden": [32]},
        "variants": SMALL_VARIANTS,
        "train": {"epochs": 4, "batch_size": 16, "checkpoint_every": 2, **train_settings},
        "evaluate": {
            "iwae_k": 8,
            "grid_points": 12,
            "images": [0, 1],
            "quadrature_extent": 4.0,
            "quadrature_points": 40,
            "check_images": 3,  # the IWAE check at growing K: small (the default is 20 images,
            "check_ks": [1, 10, 100],  # K up to 5000, 10 repeats: most of an evaluation)
            "check_repeats": 3,
        },
    }
    return config.validate(overrides)


def small_spec(variant: str, seed: int = 0, **train_settings):
    """The RunSpec of one run of small_config (train keys overridable)."""
    from flowvae import config

    return config.resolve(small_config(None, **train_settings), variant, seed)


@pytest.fixture
def prepared(idx_dir, tmp_path) -> Path:
    """The fake IDX files prepared with small_config's data settings."""
    from flowvae import data

    path = tmp_path / "data.pt"
    data.prepare(idx_dir.path, path, small_spec("standard").data)
    return path
