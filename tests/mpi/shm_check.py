"""Run under `mpiexec -n 3` by tests/test_shm.py: the shared-memory step and its doorbells.

Checks, reported by rank 0 as JSON: collect sums in rank order with rank 0 adding nothing of its own; distribute
delivers header and parameters; `outgoing` buffers go out without a copy; `acknowledge` / `wait_acknowledged`;
a rank waiting on a doorbell burns almost no CPU and wakes promptly when the awaited rank arrives.
"""

import json
import sys
import time

import numpy as np
from mpi4py import MPI

from anytimectl.comm import Comm

world = MPI.COMM_WORLD
comm = Comm(world)
rank, size = comm.rank, comm.size
report = {}
stats = np.full(4, float(rank))
all_stats = np.zeros((size, 4)) if rank == 0 else None

# collect: contributions summed at rank 0, which passes None (it adds nothing of its own)
contribution = np.full(1000, rank, dtype=np.float32)
reduced = np.full(1000, -7.0, dtype=np.float32) if rank == 0 else None
comm.collect(None if rank == 0 else contribution, reduced, stats, all_stats)
if rank == 0:
    report["sum"] = float(reduced[0])
    report["stats"] = all_stats[:, 0].tolist()
    report["shared_memory"] = comm.uses_shared_memory

# distribute, then outgoing: the next distribute of these shapes sends the buffers rank 0 filled in place
header = np.zeros(3)
params = np.zeros(500, dtype=np.float32)
if rank == 0:
    header[:] = (1, 2, 3)
    params[:] = 5
comm.distribute(header, params)
ok = bool(header[2] == 3 and params[-1] == 5)
if rank == 0:
    out_header, out_params = comm.outgoing(header, params)
    report["zero_copy"] = not np.shares_memory(out_params, params)
    out_header[:] = (4, 5, 6)
    out_params[:] = 9
    comm.distribute(out_header, out_params)
else:
    comm.distribute(header, params, acknowledge=False)
    ok &= bool(header[0] == 4 and params[0] == 9)
    time.sleep(0.3 * rank)  # rank 0's wait_acknowledged must last until the slowest acknowledges
    comm.acknowledge()
if rank == 0:
    start = time.perf_counter()
    report["acknowledged"] = comm.wait_acknowledged(timeout=10)
    report["ack_wait"] = time.perf_counter() - start
oks = np.zeros((size, 1)) if rank == 0 else None
comm.gather(np.array([float(ok)]), oks).wait()

# waiting: rank 0 sleeps on its doorbell while the others sleep 1 s, then measures how soon it woke
world.Barrier()
if rank != 0:
    time.sleep(1.0)
sent = np.array([time.time()])
cpu, wall = time.process_time(), time.perf_counter()
comm.collect(None if rank == 0 else contribution, reduced, np.full(4, sent[0]), all_stats)
woke = time.time()
if rank == 0:
    report["wait_cpu_fraction"] = (time.process_time() - cpu) / (time.perf_counter() - wall)
    report["wake_latency"] = woke - float(all_stats[1:, 0].max())
    report["everyone_ok"] = bool(oks.all())
    json.dump(report, sys.stdout)
