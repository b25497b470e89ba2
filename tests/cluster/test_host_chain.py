"""The master-worker step's chain of hosts (`anytimectl.comm.host_chain`) in a real MPI job across 3 emulated
hosts with 1, 2 and 1 ranks: the sum and the broadcast are right with a middle host that adds and passes segments
on, and each host's leader counts one buffer per step in and out (the ends: one way only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cluster.emulated import EmulatedCluster, missing_requirements

pytestmark = [
    pytest.mark.cluster, pytest.mark.mpi,
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
    pytest.mark.timeout(300),
]

SCRIPT = Path(__file__).resolve().parent.parent / "mpi" / "host_chain_check.py"


def test_collect_and_distribute_along_a_chain_of_three_hosts():
    with EmulatedCluster(3) as cluster:
        result = cluster.run([1, 2, 1], [sys.executable, "-m", "mpi4py", str(SCRIPT)], timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["spans_hosts"] is True
    assert max(report["collect_error"]) < 1e-4  # float32 sums of 3 normal numbers, against float64
    assert all(report["distribute_ok"])
    buffer, steps = report["buffer_bytes"], 3
    reduced = buffer  # the contribution (stats travel apart)
    # ranks: 0 (host 1, the chain's start), 1 and 2 (host 2: 1 leads), 3 (host 3, the chain's end)
    assert report["across"][0] == [steps * buffer, steps * reduced]
    assert report["across"][1] == [2 * steps * buffer, 2 * steps * reduced]
    assert report["across"][2] == [0, 0]  # not a leader: its contribution stays within its host
    assert report["across"][3] == [steps * reduced, steps * buffer]
