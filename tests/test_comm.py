"""The communication layer in a real 3-rank MPI job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from anytimectl.launch import find_mpiexec

SCRIPT = Path(__file__).parent / "mpi" / "comm_check.py"


def test_reduce_broadcast_gather_collect_distribute_and_sleeping_wait():
    result = subprocess.run([find_mpiexec(), "-n", "3", sys.executable, "-m", "mpi4py", str(SCRIPT)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["reduce"] == 1 + 2 + 3
    assert report["bcast_everywhere"]
    assert report["collect_reduce"] == 1 + 2 + 3
    assert report["collect_stats"] == [0.0, 1.0, 2.0]
    assert report["distribute_everywhere"]
    # Rank 0 obtains: three reductions of 4000 bytes from each of two workers, two gathers of 3 float64 stats
    # from each, and two gathers of an 8-byte flag from each.
    assert report["bytes_received"] == 3 * (2 * 4000) + 2 * (2 * 24) + 2 * (2 * 8)
    # A blocking MPI wait would use a whole core here; polling with sleeps uses a few percent.
    assert report["wait_cpu_fraction"] < 0.25
