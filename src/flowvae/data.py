"""MNIST tensors: read the raw IDX files, then filter digits, split and binarize into the
prepared tensor file that ``load_prepared`` reads back (``flowvae.fetch`` gets the raw files).
Every output is written atomically (``flowvae.io``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowvae.errors import DataError, StaleRunError
from flowvae.fetch import FILES, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, sha256_file
from flowvae.io import torch_save
from flowvae.spec import DataSpec, data_key

log = logging.getLogger(__name__)

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
N_PIXELS = 28 * 28
PREPARED_KEYS = (
    "train",
    "train_labels",
    "val",
    "val_labels",
    "test",
    "test_labels",
    "test_index",
    "binarize",
    "meta",
)


# ----------------------------------------------------------------------------- IDX files


def read_idx(path: Path) -> torch.Tensor:
    """Read an unsigned-byte IDX file (magic 2051 images, 2049 labels) as a uint8 tensor."""
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise DataError(f"IDX file {path} cannot be read ({exc}); run the download step.") from exc
    if len(buf) < 4:
        raise DataError(f"IDX file {path} is truncated ({len(buf)} bytes, no header).")
    magic = int.from_bytes(buf[:4], "big")
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        raise DataError(
            f"IDX file {path} has magic number {magic}, expected {IDX_IMAGES_MAGIC} (images) "
            f"or {IDX_LABELS_MAGIC} (labels); it is not an uncompressed MNIST file."
        )
    ndim = buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"IDX file {path} is truncated inside its header.")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(buf) - header != expected:
        raise DataError(
            f"IDX file {path} holds {len(buf) - header} data bytes but its header {dims} "
            f"declares {expected}: the file is truncated or corrupt; delete it and re-download."
        )
    arr = np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)
    return torch.from_numpy(arr.copy())


# ----------------------------------------------------------------------------- prepare


def binarize(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Sample pixels in {0, 1} with P(1) = grey value (x in [0, 1]); same dtype as ``x``."""
    return torch.bernoulli(x, generator=generator)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _load_pair(raw_dir: Path, images_name: str, labels_name: str) -> tuple[torch.Tensor, ...]:
    images = read_idx(raw_dir / images_name)
    labels = read_idx(raw_dir / labels_name)
    if images.dim() != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"IDX file {raw_dir / images_name} has shape {tuple(images.shape)}, "
            "expected [N, 28, 28]."
        )
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"IDX file {raw_dir / labels_name} has shape {tuple(labels.shape)}, "
            f"expected [{images.shape[0]}] to match {images_name}."
        )
    return images, labels.long()


def prepare(raw_dir: Path, out_path: Path, spec: DataSpec) -> dict:
    """Digit filter, train/validation split, binarization; save (atomically) and return the dict.

    Split: the kept training images are permuted by ``torch.Generator().manual_seed(split_seed)``;
    the first ``n_val`` are validation, the rest training (first ``max_train`` if set). Test: the
    kept test images in MNIST order (first ``max_test`` if set). Binarization seeds, with
    s = ``binarize_seed``: validation 3s, test 3s + 1, training 3s + 2 (training only when
    ``binarize == "static"``; when "dynamic" it stays grey-level in [0, 1]).
    """
    raw_dir, out_path = Path(raw_dir), Path(out_path)
    digits = sorted(int(d) for d in spec.digits)
    n_val = int(spec.n_val)
    max_train, max_test = spec.max_train, spec.max_test
    split_seed, bin_seed = int(spec.split_seed), int(spec.binarize_seed)
    mode = spec.binarize
    if mode not in ("dynamic", "static"):
        raise DataError(f"config key 'data.binarize' is {mode!r}, expected 'dynamic' or 'static'.")

    train_x, train_y = _load_pair(raw_dir, TRAIN_IMAGES, TRAIN_LABELS)
    test_x, test_y = _load_pair(raw_dir, TEST_IMAGES, TEST_LABELS)
    wanted = torch.tensor(digits, dtype=torch.long)
    kept_train = torch.nonzero(torch.isin(train_y, wanted)).flatten()
    kept_test = torch.nonzero(torch.isin(test_y, wanted)).flatten()
    if len(kept_train) == 0 or len(kept_test) == 0:
        split = "training" if len(kept_train) == 0 else "test"
        raise DataError(
            f"config key 'data.digits' = {digits} leaves no {split} images in {raw_dir}."
        )
    if n_val >= len(kept_train):
        raise DataError(
            f"config key 'data.n_val' = {n_val} must be smaller than the {len(kept_train)} "
            f"training images of digits {digits}."
        )

    perm = kept_train[torch.randperm(len(kept_train), generator=_generator(split_seed))]
    val_index, train_index = perm[:n_val], perm[n_val:]
    if max_train is not None:
        train_index = train_index[: int(max_train)]
    test_index = kept_test if max_test is None else kept_test[: int(max_test)]

    def scaled(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return x[idx].reshape(len(idx), N_PIXELS).to(torch.float32) / 255.0

    train = scaled(train_x, train_index)
    if mode == "static":
        train = binarize(train, _generator(3 * bin_seed + 2))
    out: dict[str, Any] = {
        "train": train,
        "train_labels": train_y[train_index].clone(),
        "train_index": train_index.clone(),
        "val": binarize(scaled(train_x, val_index), _generator(3 * bin_seed)),
        "val_labels": train_y[val_index].clone(),
        "val_index": val_index.clone(),
        "test": binarize(scaled(test_x, test_index), _generator(3 * bin_seed + 1)),
        "test_labels": test_y[test_index].clone(),
        "test_index": test_index.clone(),
        "binarize": mode,
        "meta": {
            "digits": digits,
            "n_train": len(train_index),
            "n_val": len(val_index),
            "n_test": len(test_index),
            "max_train": max_train,
            "max_test": max_test,
            "split_seed": split_seed,
            "binarize_seed": bin_seed,
            "sha256": {name: sha256_file(raw_dir / name) for name in FILES},
            "key": data_key(spec),
        },
    }
    torch_save(out, out_path)
    log.info(
        "prepared %s: digits %s, %d train (%s), %d val, %d test",
        out_path, digits, len(train_index), mode, len(val_index), len(test_index),
    )  # fmt: skip
    return out


def load_prepared(path: Path, spec: DataSpec | None = None) -> dict:
    """Load a file written by ``prepare`` (``weights_only=True``); DataError if missing/corrupt
    or, given ``spec``, prepared with other data settings (its key differs)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prepared data file {path} does not exist; run `flowvae prepare` first.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling / zip errors come in many types
        raise DataError(
            f"prepared data file {path} cannot be read ({type(exc).__name__}: {exc}); "
            "delete it and re-run `flowvae prepare`."
        ) from exc
    missing = [k for k in PREPARED_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(
            f"prepared data file {path} lacks {missing}; delete it and re-run `flowvae prepare`."
        )
    if spec is not None and data["meta"].get("key") != data_key(spec):
        raise StaleRunError(
            f"prepared data file {path} was made with other data settings than this job's; run "
            "the pipeline again (it prepares the data again when they change)"
        )
    return data
