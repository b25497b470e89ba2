"""The shared-memory step traffic and its doorbells (anytimectl.comm.shm), in a real 3-rank MPI job on one host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from anytimectl.runtime.launch import find_mpiexec

pytestmark = pytest.mark.mpi

SCRIPT = Path(__file__).parent / "mpi" / "shm_check.py"


def test_shared_memory_step_sums_delivers_acknowledges_and_sleeps():
    result = subprocess.run([find_mpiexec(), "-n", "3", sys.executable, "-m", "mpi4py", str(SCRIPT)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["shared_memory"] is True
    assert report["sum"] == 1 + 2  # rank 0 passed None: nothing of its own, and its buffer's old values are gone
    assert report["stats"] == [0.0, 1.0, 2.0]
    assert report["zero_copy"] and report["everyone_ok"]
    assert report["acknowledged"] and report["ack_wait"] > 0.3  # it waited for the slower worker's acknowledgement
    assert report["wait_cpu_fraction"] < 0.05  # asleep in the kernel, not polling
    assert report["wake_latency"] < 0.5  # woken by the doorbell, not by a timeout loop of its own


def test_no_doorbell_files_are_left_behind(tmp_path):
    import os

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run([find_mpiexec(), "-n", "3", sys.executable, "-m", "mpi4py", str(SCRIPT)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(tmp_path.iterdir())  # the FIFOs were unlinked as soon as every rank had opened them
