"""FMB with W workers of batch B is the same update as one process on the W*B examples, through real MPI;
AMB with an unreachable time limit is the same as FMB. On each backend (each run is its own MPI job, so
TensorFlow and torch never meet in one process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from anytimectl.launch import find_mpiexec

SCRIPT = Path(__file__).parent / "mpi" / "protocol_equivalence.py"


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
@pytest.mark.parametrize("method", ["fmb", "amb"])
def test_distributed_steps_equal_single_process_steps_on_the_same_examples(method, backend):
    result = subprocess.run([find_mpiexec(), "-n", "3", sys.executable, "-m", "mpi4py", str(SCRIPT), method, backend],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["max_update"] > 1e-4  # the parameters really moved
    assert report["max_difference"] < 1e-5 + 1e-3 * report["max_update"]
