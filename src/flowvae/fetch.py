"""MNIST raw files: fetch the four IDX files from a mirror folder or the public mirrors and
verify each against its pinned SHA-256; a corrupt copy is named and deleted.

``download`` writes the raw (gunzipped) files atomically (``flowvae.io``); ``flowvae.data``
turns them into the prepared tensor file.
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
from typing import BinaryIO

from flowvae.errors import DataError
from flowvae.io import atomic_path

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


def effective_mirror(mirror: str | Path | None) -> str:
    """The mirror a download uses: ``mirror``, else $FLOWVAE_MNIST_MIRROR, else '' (the public
    mirrors); a folder as an absolute path, so that two spellings of one folder are equal.

    >>> effective_mirror("https://example.org/mnist/")
    'https://example.org/mnist/'
    """
    text = str(mirror or os.environ.get(MIRROR_ENV) or "")
    if not text or text.startswith(("http://", "https://")):
        return text
    return str(Path(text).expanduser().absolute())


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
