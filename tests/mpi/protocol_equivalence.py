"""Run under `mpiexec -n 3` by tests/test_protocol_equivalence.py:
`protocol_equivalence.py BACKEND METHOD:MODE [METHOD:MODE ...]`, MODE broadcast or replicated: each case in turn in
the one job (one framework start-up per rank for all of them), its report one JSON line.

Two workers each hold a disjoint shard of B examples; after synchronous steps through the real MPI transport,
rank 0 compares the model with one computed in a single process on all 2B examples. `replicated`: the master
sends the summed contributions and every rank applies them itself (the master-worker protocol's fast path);
the workers' final parameters are compared too. Each case starts from fresh engines, data and protocol objects.
ANYTIMECTL_SHARED_MEMORY=0 in the environment keeps the transport on MPI messages instead of shared memory.
"""

import json
import math
import sys

import numpy as np
from mpi4py import MPI

from anytimectl.backends import EngineSpec, configure, create_engine
from anytimectl.comm import Comm
from anytimectl.data import BatchStream
from anytimectl.protocols.master_worker import (
    HEADER_SIZE,
    Master,
    MpiMasterTransport,
    ProtocolConfig,
    Worker,
    worker_loop,
)
from anytimectl.runtime.evaluation import Evaluator
from anytimectl.runtime.shell import Stopper

backend, cases = sys.argv[1], [case.split(":") for case in sys.argv[2:]]
comm = Comm(MPI.COMM_WORLD)
configure(backend, 1, 0)


def run_case(method: str, replicated: bool) -> None:
    BATCH, PARTITIONS, STEPS, LR = 24, (4 if method == "amb" else 1), 3 if replicated else 2, 0.05
    rng = np.random.default_rng(7)
    if backend == "sim":
        x = np.arange(2 * BATCH, dtype=np.float32)[:, None]
        spec = EngineSpec("sim", (1,), 10, "sgd", LR, 1e-3, options={"params": 1000, "example_time": 0.0})
    else:
        x = rng.random((2 * BATCH, 8, 8, 1), dtype=np.float32)
        spec = EngineSpec("digits-cnn", (8, 8, 1), 10, "sgd", LR, 1e-3)
    y = rng.integers(0, 10, 2 * BATCH).astype(np.int64)
    config = ProtocolConfig(method=method, batch_size=BATCH, partitions=PARTITIONS,
                            time_limit=3600.0 if method == "amb" else None, match_batch=None, steps=STEPS,
                            epochs=None, target_accuracy=None, log_every=1, seed=0, train_examples=2 * BATCH)

    def engine():
        return create_engine(backend, spec)

    if comm.rank == 0:
        master_engine = engine()
        initial = master_engine.get_params()
        master = Master(master_engine, config, Evaluator(master_engine, x[:8], y[:8]), lambda step, epoch: LR,
                        Stopper(), lambda result: None, lambda msg, **fields: None)
        transport = MpiMasterTransport(master, comm, master_engine.param_count, replicated)
        master.run(transport.collect, transport.broadcast, replicated=replicated)
        distributed = master_engine.get_params()
        workers = np.zeros((comm.size, master_engine.param_count), dtype=np.float32)
        comm.gather(distributed, workers).wait()

        reference = engine()
        reference.set_params(initial)
        for _ in range(STEPS):  # the same updates, computed on all 2B examples in one process
            contribution, _, _ = reference.compute(x, y, 1, math.inf)
            reference.apply(contribution, LR)
        difference = np.abs(distributed - reference.get_params()).max()
        moved = np.abs(distributed - initial).max()
        print(json.dumps({"case": f"{method}:{'replicated' if replicated else 'broadcast'}",
                          "max_difference": float(difference), "max_update": float(moved),
                          "workers_equal_master": bool(np.all(workers[1:] == distributed)) if replicated else None,
                          "shared_memory": comm.uses_shared_memory}), flush=True)
    else:
        shard = slice((comm.rank - 1) * BATCH, comm.rank * BATCH)
        worker = Worker(comm.rank, engine(), BatchStream(x[shard], y[shard], 0, comm.rank), config, None, 1.0)
        worker_loop(worker, comm, np.zeros(worker.engine.param_count, np.float32), np.zeros(HEADER_SIZE), replicated)
        comm.gather(worker.engine.get_params(), None).wait()


for method, mode in cases:
    run_case(method, mode == "replicated")
