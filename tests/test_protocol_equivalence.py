"""FMB with W workers of batch B is the same update as one process on the W*B examples, through real MPI;
AMB with an unreachable time limit is the same as FMB. On each backend (each run is its own MPI job, so
TensorFlow and torch never meet in one process), and for both ways of finishing a step: the master broadcasting
its parameters, or every rank applying the summed contributions itself (replicated), through shared memory or
MPI messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anytimectl.runtime.launch import find_mpiexec

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

SCRIPT = Path(__file__).parent / "mpi" / "protocol_equivalence.py"


def _run(method: str, backend: str, mode: str = "broadcast", shared_memory: bool = True) -> dict:
    env = {**os.environ, "ANYTIMECTL_SHARED_MEMORY": "1" if shared_memory else "0"}
    result = subprocess.run([find_mpiexec(), "-n", "3", sys.executable, "-m", "mpi4py", str(SCRIPT), method, backend,
                             mode], capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["max_update"] > 1e-4  # the parameters really moved
    assert report["max_difference"] < 1e-5 + 1e-3 * report["max_update"]
    assert report["shared_memory"] is shared_memory
    return report


@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("torch", marks=pytest.mark.torch)])
@pytest.mark.parametrize("method", ["fmb", "amb"])
def test_distributed_steps_equal_single_process_steps_on_the_same_examples(method, backend):
    _run(method, backend)


@pytest.mark.parametrize("method", ["fmb", "amb"])
def test_replicated_updates_leave_every_rank_with_the_master_model(method):
    report = _run(method, "tensorflow", "replicated")
    assert report["workers_equal_master"]  # bit for bit: the same update on the same parameters


@pytest.mark.parametrize("mode", ["broadcast", "replicated"])
@pytest.mark.parametrize("shared_memory", [True, False], ids=["shared-memory", "mpi-messages"])
def test_both_transports_give_the_same_steps(mode, shared_memory):
    report = _run("fmb", "sim", mode, shared_memory)
    if mode == "replicated":
        assert report["workers_equal_master"]
