"""Run under `mpiexec -n 4` by tests/test_async.py: the asynchronous channel on its own (shared memory, or MPI
messages with ANYTIMECTL_SHARED_MEMORY=0).

The master publishes models whose header holds their step, as fast as it can, while taking contributions; each
worker sends ROUNDS contributions, each tagged with (its send number, the step of the newest model it took) and
carrying a count, and takes the newest model between sends. Rank 0 reports what it saw: every contribution
exactly once, the counts summed, the staleness it computed; each worker reports the versions it took (never
older than before) and the queued counts it was told.
"""

import json
import sys
import time

import numpy as np
from mpi4py import MPI

from anytimectl.comm import Comm
from anytimectl.protocols.async_channel import open_async_channel

ROUNDS = 30
PARAMS = 1000
STATS = 4  # send number, model step, count, queued
comm = Comm(MPI.COMM_WORLD)
channel = open_async_channel(comm, PARAMS + 2, STATS, 3, PARAMS)
header = np.zeros(3)
params = np.zeros(PARAMS, dtype=np.float32)

if comm.rank == 0:
    seen: dict[tuple[int, int], tuple[int, int]] = {}
    counts = 0
    staleness_ok = True
    step = 0

    def consume(rank, data, stats):
        global counts, staleness_ok
        key = (rank, int(stats[0]))
        assert key not in seen, f"contribution {key} taken twice"
        seen[key] = (int(stats[1]), step)
        counts += int(data[-2])
        # every value of the contribution equals its count: nothing torn or mixed up between workers
        staleness_ok &= bool(np.all(data[:PARAMS] == data[-2]))

    header[:] = (0, 0, 0)
    channel.publish(header, np.full(PARAMS, 0, dtype=np.float32))
    deadline = time.time() + 60
    while len(seen) < (comm.size - 1) * ROUNDS and time.time() < deadline:
        if channel.poll(consume):
            step += 1
            header[:] = (step, 0, 0)
            channel.publish(header, np.full(PARAMS, step, dtype=np.float32))
        else:
            channel.wait_for_contributions(0.01)
    header[:] = (step, 1, 0)
    channel.publish(header, np.full(PARAMS, step, dtype=np.float32), stop=True)
    channel.finish(consume)
    staleness = [taken_at - model for model, taken_at in seen.values()]
    report = {"contributions": len(seen), "counts": counts,
              "expected_counts": sum(r * 10 + 1 for r in range(1, comm.size) for _ in range(ROUNDS)),
              "payloads_intact": staleness_ok, "min_staleness": min(staleness),
              "shared_memory": type(channel).__name__ == "AsyncShared"}
    workers = [None] * comm.size
    for source in range(1, comm.size):
        workers[source] = json.loads(comm.mpi.recv(source=source, tag=5))
    report["workers"] = workers[1:]
    json.dump(report, sys.stdout)
else:
    taken = [channel.wait_model(header, params)]
    model_step = int(header[0])
    queued_total = 0
    monotonic = True
    consistent = True
    rank_count = comm.rank * 10 + 1
    for number in range(1, ROUNDS + 1):
        data = np.full(PARAMS + 2, rank_count, dtype=np.float32)
        stats = np.array([number, model_step, rank_count, 0.0])
        if not channel.send(data, stats):
            break
        time.sleep(0.002 * comm.rank)
        version = channel.newest(header, params)
        if version:
            monotonic &= version > taken[-1]
            queued_total += version - taken[-1]
            taken.append(version)
            model_step = int(header[0])
            consistent &= bool(np.all(params == header[0]))  # the parameters belong to the header they came with
    while not channel.stopped:
        time.sleep(0.001)
    channel.leave()
    comm.mpi.send(json.dumps({"monotonic": bool(monotonic), "consistent": bool(consistent),
                              "queued_total": queued_total, "span": taken[-1] - taken[0]}), dest=0, tag=5)
