"""Run under `mpiexec -n 3` by tests/test_protocol_equivalence.py: `protocol_equivalence.py METHOD BACKEND`.

Two workers each hold a disjoint shard of B examples; after synchronous steps through the real MPI transport,
rank 0 compares the model with one computed in a single process on all 2B examples.
"""

import json
import math
import sys

import numpy as np
from mpi4py import MPI

from anytimectl.backends import EngineSpec, configure, create_engine
from anytimectl.comm import Comm
from anytimectl.data import BatchStream
from anytimectl.evaluation import Evaluator
from anytimectl.protocols.master_worker import (
    HEADER_SIZE,
    Master,
    MpiMasterTransport,
    ProtocolConfig,
    Worker,
    worker_loop,
)
from anytimectl.shell import Stopper

method, backend = sys.argv[1], sys.argv[2]
BATCH, PARTITIONS, STEPS, LR = 24, (4 if method == "amb" else 1), 2, 0.05
comm = Comm(MPI.COMM_WORLD)
configure(backend, 1, 0)
rng = np.random.default_rng(7)
x = rng.random((2 * BATCH, 8, 8, 1), dtype=np.float32)
y = rng.integers(0, 10, 2 * BATCH).astype(np.int64)
config = ProtocolConfig(method=method, batch_size=BATCH, partitions=PARTITIONS,
                        time_limit=3600.0 if method == "amb" else None, match_batch=None, steps=STEPS,
                        epochs=None, target_accuracy=None, log_every=1, seed=0, train_examples=2 * BATCH)


def engine():
    return create_engine(backend, EngineSpec("digits-cnn", (8, 8, 1), 10, "sgd", LR, 1e-3))


if comm.rank == 0:
    master_engine = engine()
    initial = master_engine.get_params()
    master = Master(master_engine, config, Evaluator(master_engine, x[:8], y[:8]), lambda step, epoch: LR,
                    Stopper(), lambda result: None, lambda msg, **fields: None)
    transport = MpiMasterTransport(master, comm, master_engine.param_count)
    master.run(transport.collect, transport.broadcast)
    distributed = master_engine.get_params()

    reference = engine()
    reference.set_params(initial)
    for _ in range(STEPS):  # the same updates, computed on all 2B examples in one process
        contribution, _, _ = reference.compute(x, y, 1, math.inf)
        reference.apply(contribution, LR)
    difference = np.abs(distributed - reference.get_params()).max()
    moved = np.abs(distributed - initial).max()
    json.dump({"max_difference": float(difference), "max_update": float(moved)}, sys.stdout)
else:
    shard = slice((comm.rank - 1) * BATCH, comm.rank * BATCH)
    worker = Worker(comm.rank, engine(), BatchStream(x[shard], y[shard], 0, comm.rank), config, None, 1.0)
    worker_loop(worker, comm, np.zeros(worker.engine.param_count, np.float32), np.zeros(HEADER_SIZE))
