"""The communication layer in a real 3-rank MPI job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from anytimectl.runtime.launch import find_mpiexec

SCRIPT = Path(__file__).parent / "mpi" / "comm_check.py"


@pytest.mark.mpi
def test_reduce_broadcast_gather_collect_distribute_and_sleeping_wait():
    result = subprocess.run([find_mpiexec(), "-n", "3", sys.executable, "-m", "mpi4py", str(SCRIPT)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["reduce"] == 1 + 2 + 3
    assert report["is_transport"] and report["waitable"]  # Comm provides every member `Transport` declares
    assert report["bcast_everywhere"]
    assert report["collect_reduce"] == 1 + 2 + 3
    assert report["collect_stats"] == [0.0, 1.0, 2.0]
    assert report["distribute_everywhere"]
    # Rank 0 obtains: three reductions of 4000 bytes from each of two workers, two gathers of 3 float64 stats
    # from each, and two gathers of an 8-byte flag from each.
    assert report["bytes_received"] == 3 * (2 * 4000) + 2 * (2 * 24) + 2 * (2 * 8)
    # A blocking MPI wait would use a whole core here; polling with sleeps uses a few percent.
    assert report["wait_cpu_fraction"] < 0.25


def test_a_wait_with_a_latency_share_never_sleeps_more_than_that_share_of_its_wait(monkeypatch):
    """The all-reduce's barrier: each sleep at most 5% of the time waited so far (and at most MAX_SLEEP), on a
    simulated clock (time.perf_counter and time.sleep replaced for the test)."""
    from anytimectl.comm import waiting as comm

    clock = {"now": 0.0}
    monkeypatch.setattr(comm.time, "perf_counter", lambda: clock["now"])
    pauses: list[tuple[float, float]] = []  # (waited before the sleep, the sleep)

    def sleep(seconds: float) -> None:
        pauses.append((clock["now"], seconds))
        clock["now"] += seconds

    monkeypatch.setattr(comm.time, "sleep", sleep)
    done_at = 0.2
    monkeypatch.setattr(comm.Pending, "test", lambda self: clock["now"] >= done_at)
    clock["now"] = 0.0
    waited = comm.Pending().wait(spin_seconds=0.0, latency_share=0.05)
    assert waited >= done_at and waited - done_at <= 0.05 * done_at
    assert all(pause <= max(comm.FIRST_SLEEP, 0.05 * before) + 1e-12 for before, pause in pauses)
    assert max(pause for _, pause in pauses) == comm.MAX_SLEEP
    assert len(pauses) < 400  # a few wake-ups per millisecond, not a spin
