"""Run by tests/test_bandwidth.py under mpiexec -n 2: a worker that takes its broadcast 0.3 s late. A bandwidth
round ends when every rank has the master's buffer, so the master's broadcast time includes the worker's lateness,
through our layer and through raw MPI alike (a small message leaves the master at once either way)."""

import json
import sys
import time

import numpy as np
from mpi4py import MPI

from anytimectl.comm import Comm
from anytimectl.studies.bandwidth import _round

LATE = 0.3


class _LateBcast:
    """The worker's MPI communicator, whose Bcast starts LATE seconds late."""

    def __init__(self, mpi):
        self._mpi = mpi

    def __getattr__(self, name):
        return getattr(self._mpi, name)

    def Bcast(self, *args, **kwargs):  # noqa: N802 - mpi4py's name
        time.sleep(LATE)
        return self._mpi.Bcast(*args, **kwargs)


comm = Comm(MPI.COMM_WORLD)
elements = 256
send = np.full(elements, float(comm.rank), dtype=np.float32)
recv = np.zeros(elements, dtype=np.float32) if comm.rank == 0 else None
model = np.ones(elements, dtype=np.float32)
if comm.rank == 1:
    distribute = comm.distribute

    def late_distribute(*args, **kwargs):
        time.sleep(LATE)
        return distribute(*args, **kwargs)

    comm.distribute = late_distribute
times = {}
for layer in ("ours", "raw"):
    if comm.rank == 1 and layer == "raw":
        comm.mpi = _LateBcast(comm.mpi)
    comm.barrier()
    times[layer] = _round(comm, layer, send, recv, model)[1]
if comm.rank == 0:
    json.dump({"late": LATE, "bcast_time": times}, sys.stdout)
