"""An exclusive lock on a run folder, so that two trainers never write one run at once.

The lock is ``flock`` on ``<folder>/.lock`` (on NFS, Linux maps it to a POSIX lock held by the
server's lock manager): the kernel releases it when the holding process ends, however it
ends, so a lock left by a killed job never blocks a later one. The file holds who took it
(host, process id, SLURM job id, start time), for the message a second trainer stops with.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from flowvae.errors import FlowvaeError

LOCK_NAME = ".lock"


class RunLocked(FlowvaeError):
    """Another live process holds the run folder's lock; the message names it."""


def _holder() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def describe(holder: dict) -> str:
    """'host h, process 12 (SLURM job 34), since ...' from a lock file's record."""
    job = f" (SLURM job {holder['slurm_job_id']})" if holder.get("slurm_job_id") else ""
    return (
        f"host {holder.get('host', '?')}, process {holder.get('pid', '?')}{job}, "
        f"since {holder.get('since', '?')}"
    )


@contextlib.contextmanager
def run_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold the lock of ``folder`` for the block; raise RunLocked at once if it is taken."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = describe(json.loads(path.read_text() or "{}"))
        except (OSError, ValueError):
            holder = "an unknown process"
        os.close(fd)
        job = holder.split("SLURM job ")[-1].split(")")[0] if "SLURM job" in holder else None
        hint = f"`scancel {job}` to stop it" if job else "stop that process"
        raise RunLocked(
            f"{what}: the run folder {folder} is in use by {holder}. Wait for it to finish "
            f"(it writes the same outputs), or {hint}; then run the pipeline again"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
