"""Figure data files: written byte for byte the same for the same data, read with checks.

A table is a CSV (``.csv``, or gzip-compressed ``.csv.gz`` for per-image tables) with every
float written exactly (its shortest round-trip form); arrays are an ``.npz`` archive. Neither
holds a time: the gzip header carries mtime 0 and the archive's entries a fixed date, so
rewriting unchanged data gives the same file, and a figure drawn from it the same figure. A
file whose bytes would not change is not rewritten at all. A missing, unreadable or
incomplete file is named in the error.
"""

from __future__ import annotations

import gzip
import io as bytes_io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from flowvae import io
from flowvae.errors import FlowvaeError

ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can carry


def encode(content, path: Path) -> bytes:
    """The bytes of ``content`` (a DataFrame or a dict of arrays) in the format of ``path``."""
    name = str(path)
    if name.endswith(".npz"):
        return _npz_bytes(content)
    text = content.to_csv(index=False, lineterminator="\n")
    if name.endswith(".csv.gz"):
        return gzip.compress(text.encode(), compresslevel=9, mtime=0)
    if name.endswith(".csv"):
        return text.encode()
    raise FlowvaeError(f"figure data file {path}: unknown format (csv, csv.gz or npz)")


def _npz_bytes(arrays: dict) -> bytes:
    buffer = bytes_io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(arrays):
            entry = bytes_io.BytesIO()
            np.lib.format.write_array(entry, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, entry.getvalue(), compresslevel=9)
    return buffer.getvalue()


def write(content, path: str | Path) -> bool:
    """Write ``content`` to ``path`` (atomically) unless the file holds it already; returns
    whether the file was written."""
    path = Path(path)
    data = encode(content, path)
    if path.is_file() and path.read_bytes() == data:
        return False
    with io.atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


def _missing(path: Path, figure: str) -> FlowvaeError:
    return FlowvaeError(
        f"figure data file {path} of figure {figure} does not exist: it is written from the "
        f"runs' files (`snakemake {path}`), or restored from git (`git checkout -- {path}`)"
    )


def damaged(path: Path, figure: str, why: str) -> FlowvaeError:
    return FlowvaeError(
        f"figure data file {path} of figure {figure} is damaged ({why}): restore it "
        f"(`git checkout -- {path}`) or delete it and run `snakemake {path}` to rewrite it"
    )


def read_table(path: str | Path, figure: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """The table at ``path``, which must have ``columns`` (variant read as text)."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, figure)
    try:
        df = pd.read_csv(path, dtype={"variant": str})
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise damaged(path, figure, f"{type(exc).__name__}: {exc}") from None
    if missing := [c for c in columns if c not in df]:
        raise damaged(path, figure, f"no column {', '.join(missing)}")
    if df.empty:
        raise damaged(path, figure, "no rows")
    return df


def read_arrays(path: str | Path, figure: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays at ``path``, which must have ``keys``."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, figure)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise damaged(path, figure, f"{type(exc).__name__}: {exc}") from None
    if missing := [k for k in keys if k not in arrays]:
        raise damaged(path, figure, f"no array {', '.join(missing)}")
    return arrays
