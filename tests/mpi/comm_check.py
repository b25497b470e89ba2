"""Run under mpiexec by tests/test_comm.py: the comm layer's results, byte counts and waiting cost."""

import json
import sys
import time

import numpy as np
from mpi4py import MPI

from anytimectl.comm import Comm, Transport, Waitable

comm = Comm(MPI.COMM_WORLD)
rank, size = comm.rank, comm.size
report = {"is_transport": isinstance(comm, Transport) and isinstance(comm.dup(), Transport),
          "waitable": isinstance(comm.broadcast(np.zeros(1, dtype=np.float32)), Waitable)}

send = np.full(1000, rank + 1, dtype=np.float32)
recv = np.zeros_like(send) if rank == 0 else None
comm.reduce_sum(send, recv).wait()
if rank == 0:
    report["reduce"] = float(recv[0])

params = np.arange(10, dtype=np.float32) if rank == 0 else np.zeros(10, dtype=np.float32)
comm.broadcast(params).wait()
report_bcast = bool((params == np.arange(10)).all())
flags = np.zeros((size, 1)) if rank == 0 else None
comm.gather(np.array([float(report_bcast)]), flags).wait()
if rank == 0:
    report["bcast_everywhere"] = bool(flags.all())

# A training step's traffic: collect (reduce + stats) and distribute (header + parameters).
stats = np.full(3, float(rank))
all_stats = np.zeros((size, 3)) if rank == 0 else None
comm.collect(send, recv, stats, all_stats)
header = np.array([7.0, 0.0]) if rank == 0 else np.zeros(2)
params = np.arange(5, dtype=np.float32) * (1 if rank == 0 else 0)
comm.distribute(header, params)
ok = np.array([float(header[0] == 7.0 and params[4] == 4.0)])
oks = np.zeros((size, 1)) if rank == 0 else None
comm.gather(ok, oks).wait()
if rank == 0:
    report["collect_reduce"] = float(recv[0])
    report["collect_stats"] = all_stats[:, 0].tolist()
    report["distribute_everywhere"] = bool(oks.all())

# Waiting cost: rank 0 collects while the others sleep for a second before sending.
if rank != 0:
    time.sleep(1.0)
cpu0, wall0 = time.process_time(), time.perf_counter()
comm.collect(send, recv, stats, all_stats)
if rank == 0:
    report["wait_cpu_fraction"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    report["bytes_received"] = comm.bytes.received
    json.dump(report, sys.stdout)
