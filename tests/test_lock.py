"""The run lock: one trainer per run folder, and a dead holder never blocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, small_spec

from flowvae import lock, train

HOLD = """
import sys, time
from pathlib import Path
from flowvae.lock import run_lock
with run_lock(Path(sys.argv[1]), "test"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_trainer_stops_and_a_dead_holder_never_blocks(tmp_path):
    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "SLURM_JOB_ID": "4242"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(lock.RunLocked) as err:
            with lock.run_lock(folder, "training iaf seed 0"):
                pass
        message = str(err.value)
        assert f"process {holder.pid} (SLURM job 4242)" in message and "scancel 4242" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with lock.run_lock(folder, "again"):  # the kernel released the dead holder's lock
        pass


def test_training_takes_the_lock(prepared, tmp_path):
    with lock.run_lock(tmp_path / "run", "someone else"):
        with pytest.raises(lock.RunLocked, match="in use by host"):
            train.train(
                small_spec("standard", epochs=1), prepared, tmp_path / "run", progress=False
            )
    assert not (tmp_path / "run" / "model.pt").exists()
