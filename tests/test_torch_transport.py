"""The torch.distributed transport (`--transport torch`), on CPU with gloo, in real MPI jobs of 2 and 3 ranks: every
call the peer protocols make gives what MPI gives, a late peer is waited for asleep, byte counts add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from anytimectl.runtime.launch import find_mpiexec

pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.torch]

SCRIPT = Path(__file__).parent / "mpi" / "torch_transport_check.py"


@pytest.mark.parametrize("ranks", [2, 3])
def test_every_call_works_over_gloo_in_a_job_started_by_mpi(ranks):
    result = subprocess.run([find_mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", str(SCRIPT)],
                            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "gloo" and report["size"] == ranks
    assert all(report[name] for name in ("allreduce", "allgather_bytes", "broadcast", "exchange", "dup",
                                                 "is_transport", "waitable"))
    assert report["late_peer_wait_s"] > 0.2  # rank 1 waited for rank 0's late send ...
    assert report["late_peer_wait_cpu_s"] < 0.5 * report["late_peer_wait_s"]  # ... asleep, not spinning
