"""MNIST: fetch and verify the raw IDX files, then build the prepared tensor file.

``download`` writes the four raw (gunzipped) IDX files, each checked against its pinned SHA-256;
``prepare`` filters digits, splits train/validation, binarizes and saves one ``.pt`` file that
``load_prepared`` reads back. Every output is written atomically (``flowvae.io``).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from flowvae.errors import DataError
from flowvae.io import atomic_path, torch_save

log = logging.getLogger(__name__)

MIRROR_ENV = "FLOWVAE_MNIST_MIRROR"

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILES: tuple[str, ...] = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

#: SHA-256 of the RAW (gunzipped) files (see ../shared/data/mnist/README.md).
SHA256: dict[str, str] = {
    TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
#: Size in bytes of the raw files.
SIZES: dict[str, int] = {
    TRAIN_IMAGES: 47_040_016,
    TRAIN_LABELS: 60_008,
    TEST_IMAGES: 7_840_016,
    TEST_LABELS: 10_008,
}

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

_CHUNK = 1 << 20
_GZIP_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError
_NET_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


# ----------------------------------------------------------------------------- download


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _copy_hashing(src: BinaryIO, dst: Path) -> str:
    """Stream ``src`` into ``dst``; return the SHA-256 of what was written."""
    digest = hashlib.sha256()
    with open(dst, "wb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _mismatch(name: str, expected: str, actual: str, source: str) -> DataError:
    return DataError(
        f"MNIST file {name} (from {source}) fails its SHA-256 check: expected {expected}, "
        f"got {actual}. The bad copy was deleted; check or replace the source file and re-run."
    )


def _install(name: str, out_path: Path, src: Path, gz: bool, expected: str, source: str) -> None:
    """Write ``src`` (gunzipped when ``gz``) to ``out_path`` atomically, verifying its hash."""
    with atomic_path(out_path) as tmp:
        try:
            with gzip.open(src, "rb") if gz else open(src, "rb") as fh:
                actual = _copy_hashing(fh, tmp)
        except _GZIP_ERRORS as exc:
            what = "truncated or corrupt gzip" if gz else "unreadable file"
            raise DataError(
                f"MNIST file {name}: {src} is a {what} ({exc}). Replace it with a good copy "
                f"(or delete it to fetch from another mirror) and re-run."
            ) from exc
        if actual != expected:
            raise _mismatch(name, expected, actual, source)


def _fetch_url(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Download ``url`` into ``dest`` (raises URLError/OSError on network failure)."""
    request = urllib.request.Request(url, headers={"User-Agent": "flowvae"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)


def _public_mirrors() -> list[str]:
    from torchvision.datasets import MNIST

    return list(MNIST.mirrors)


def _from_urls(name: str, out_path: Path, bases: Sequence[str], expected: str) -> None:
    """Fetch ``name``.gz from the first URL base that works and install it."""
    failures = []
    for base in bases:
        url = base.rstrip("/") + "/" + name + ".gz"
        log.info("fetching %s", url)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".gz.tmp", dir=out_path.parent)
        os.close(fd)
        tmp_gz = Path(tmp)
        try:
            _fetch_url(url, tmp_gz)
            _install(name, out_path, tmp_gz, True, expected, url)
            return
        except _NET_ERRORS as exc:
            log.warning("could not fetch %s: %s", url, exc)
            failures.append(f"{url}: {exc}")
        except DataError as exc:  # corrupt or wrong file on this mirror: try the next one
            log.warning("%s", exc)
            failures.append(f"{url}: {exc}")
        finally:
            tmp_gz.unlink(missing_ok=True)
    raise DataError(
        f"MNIST file {name} could not be fetched from any mirror ({'; '.join(failures)}). "
        f"Without network access, set {MIRROR_ENV} or the config key `data.mirror` "
        f"(or pass --mirror) to a local folder holding the MNIST .gz or raw files."
    )


def _resolve_mirror(mirror: str | Path | None) -> tuple[Path | None, list[str]]:
    """Return (local mirror folder, URL bases); exactly one of them is used."""
    origin = "argument"
    if mirror is None or str(mirror) == "":
        mirror = os.environ.get(MIRROR_ENV) or None
        origin = f"${MIRROR_ENV}"
    if mirror is None:
        return None, _public_mirrors()
    text = str(mirror)
    if text.startswith(("http://", "https://")):
        return None, [text]
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"MNIST mirror folder {folder} (from {origin}) does not exist or is not a folder. "
            f"Point it to a folder holding the four MNIST files (.gz or raw), or unset it to "
            f"download from the public mirrors."
        )
    return folder, []


def download(
    out_dir: Path,
    mirror: str | Path | None = None,
    checksums: dict[str, str] | None = None,
) -> list[Path]:
    """Write the four raw MNIST IDX files into ``out_dir``, each verified by SHA-256.

    ``mirror``: a local folder (files as ``.gz`` or raw) or an http(s) base URL; ``None`` means
    ``$FLOWVAE_MNIST_MIRROR``, else torchvision's public MNIST mirrors. Files already present
    with the right hash are kept. ``checksums`` overrides the pinned hashes (per file name).
    Raises DataError naming the file on any failure; no partial file ever gets a final name.
    """
    out_dir = Path(out_dir)
    expected_all = {**SHA256, **(checksums or {})}
    folder, bases = _resolve_mirror(mirror)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the download folder {out_dir}: {exc.strerror}") from exc
    paths = []
    for name in FILES:
        expected = expected_all[name]
        out_path = out_dir / name
        paths.append(out_path)
        if out_path.exists():
            actual = sha256_file(out_path)
            if actual == expected:
                log.info("%s: present and verified", name)
                continue
            log.warning(
                "%s: existing copy has SHA-256 %s, not %s; re-fetching", name, actual, expected
            )
            out_path.unlink()
        if folder is not None:
            gz_src, raw_src = folder / f"{name}.gz", folder / name
            if gz_src.is_file():
                _install(name, out_path, gz_src, True, expected, str(gz_src))
            elif raw_src.is_file():
                _install(name, out_path, raw_src, False, expected, str(raw_src))
            else:
                raise DataError(
                    f"MNIST file {name} is missing from the mirror folder {folder} (looked for "
                    f"{name}.gz and {name}). Add it there or use another mirror."
                )
        else:
            _from_urls(name, out_path, bases, expected)
        log.info("%s: written and verified", name)
    return paths


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


def prepare(raw_dir: Path, out_path: Path, data_cfg: dict) -> dict:
    """Digit filter, train/validation split, binarization; save (atomically) and return the dict.

    Split: the kept training images are permuted by ``torch.Generator().manual_seed(split_seed)``;
    the first ``n_val`` are validation, the rest training (first ``max_train`` if set). Test: the
    kept test images in MNIST order (first ``max_test`` if set). Binarization seeds, with
    s = ``binarize_seed``: validation 3s, test 3s + 1, training 3s + 2 (training only when
    ``binarize == "static"``; when "dynamic" it stays grey-level in [0, 1]).
    """
    raw_dir, out_path = Path(raw_dir), Path(out_path)
    digits = sorted(int(d) for d in data_cfg["digits"])
    n_val = int(data_cfg["n_val"])
    max_train, max_test = data_cfg.get("max_train"), data_cfg.get("max_test")
    split_seed, bin_seed = int(data_cfg["split_seed"]), int(data_cfg["binarize_seed"])
    mode = data_cfg["binarize"]
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
        },
    }
    torch_save(out, out_path)
    log.info(
        "prepared %s: digits %s, %d train (%s), %d val, %d test",
        out_path,
        digits,
        len(train_index),
        mode,
        len(val_index),
        len(test_index),
    )
    return out


def load_prepared(path: Path) -> dict:
    """Load a file written by ``prepare`` (``weights_only=True``); DataError if missing/corrupt."""
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
    return data
