"""Run across emulated hosts by tests/cluster/test_host_chain.py: the master-worker step's collect and distribute
along the chain of hosts (`anytimectl.comm.host_chain`), on a buffer of several segments, against numpy."""

import json
import sys

import numpy as np
from mpi4py import MPI

from anytimectl.comm import Comm
from anytimectl.comm.host_chain import SEGMENT_BYTES

comm = Comm(MPI.COMM_WORLD)
rank, size = comm.rank, comm.size
length = int(3.5 * SEGMENT_BYTES / 4)  # float32: 3 whole segments and a part
rng = np.random.default_rng(rank)
report = {"spans_hosts": None, "collect_error": [], "distribute_ok": []}
for step in range(3):
    contribution = rng.standard_normal(length).astype(np.float32) if rank else None
    reduced = np.empty(length, dtype=np.float32) if rank == 0 else None
    stats = np.full(2, float(rank))
    comm.collect(contribution, reduced, stats, np.zeros((size, 2)) if rank == 0 else None)
    everyone = MPI.COMM_WORLD.gather(contribution, root=0)
    if rank == 0:
        expected = np.sum([c.astype(np.float64) for c in everyone[1:]], axis=0)
        report["collect_error"].append(float(np.max(np.abs(reduced - expected))))
    params = (np.arange(length, dtype=np.float32) + step) if rank == 0 else np.zeros(length, dtype=np.float32)
    comm.distribute(np.array([float(step)]), params)
    ok = bool((params == np.arange(length, dtype=np.float32) + step).all())
    oks = MPI.COMM_WORLD.gather(ok, root=0)
    if rank == 0:
        report["distribute_ok"].append(all(oks))
report["spans_hosts"] = comm.spans_hosts
counts = MPI.COMM_WORLD.gather((comm.bytes.across_sent, comm.bytes.across_received), root=0)
if rank == 0:
    report["across"] = counts
    report["buffer_bytes"] = length * 4
    json.dump(report, sys.stdout)
