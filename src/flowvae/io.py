"""Atomic file output: write to a temporary file in the same folder, then rename.

A crash or a kill never leaves a half-written file under the final name, so Snakemake (and a
person) can trust that any output that exists is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_figure(fig, path: str | os.PathLike, **kwargs) -> None:
    """Save a matplotlib figure atomically; the format follows the suffix of ``path``."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt in ("pdf", "svg") and "metadata" not in kwargs:
        # no creation date: a figure that did not change is the same file, byte for byte
        kwargs["metadata"] = {"CreationDate": None} if fmt == "pdf" else {"Date": None}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **kwargs)


def write_npz(path: str | os.PathLike, arrays: dict) -> None:
    """Compressed NumPy archive (np.savez would append .npz to the temporary name)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def write_csv(df, path: str | os.PathLike) -> None:
    """``df`` as CSV; gzip-compressed for a ``.gz`` path (mtime 0 in the header: the same table
    gives the same bytes)."""
    gzipped = str(path).endswith(".gz")
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0} if gzipped else None)
