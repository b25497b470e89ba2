"""The original's invariants through the real GossipProtocol on real MPI ranks (tests/mpi/gossip_invariants.py):
identical start, seeds per rank, the partner derivation against an explicit all_gather, allreduce's mean gradient,
elastic's update and conserved sum, pull gossip's halfway step and unchanged peer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from anytimectl.runtime.launch import find_mpiexec

pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.torch]

SCRIPT = Path(__file__).parent / "mpi" / "gossip_invariants.py"


@pytest.mark.parametrize("size", [2, 3])
def test_gossip_invariants_on_real_ranks(size):
    result = subprocess.run([find_mpiexec(), "-n", str(size), sys.executable, "-m", "mpi4py", str(SCRIPT), "torch"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["size"] == size
    assert report["init_identical"]
    assert report["rng_draws_differ"] and report["initial_seeds"] == [7 + r for r in range(size)]
    assert report["derivation_mismatches"] == 0
    assert report["allreduce_pre_differ"] and report["allreduce_equal_after"]
    assert report["allreduce_mean_error"] < 1e-5
    assert report["elastic_changed"] and report["elastic_update_error"] < 1e-5
    assert report["elastic_sum_drift"] < 1e-4
    if size == 2:
        assert report["elastic_midpoint_error"] < 1e-5
    assert report["gossip_initiator_error"] < 1e-5
    assert report["gossip_non_initiator_change"] == 0.0  # requesters only send
    assert {"initiator", "peer only"} <= set(report["gossip_roles_seen"])
