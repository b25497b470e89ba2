"""`train amb --backend torch`: the master-worker protocol (AMB's deadline loop included) on the PyTorch engine, a
real 2-worker run through the CLI, writing the same tables as on TensorFlow."""

from __future__ import annotations

import pytest
from helpers import anytimectl, metadata, table

from anytimectl.protocols.master_worker import MasterWorkerProtocol

pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.torch]

TABLES = MasterWorkerProtocol.columns.tables()
STEPS = 6


def test_amb_on_torch_writes_the_documented_tables(tmp_path):
    anytimectl("train", "amb", "--backend", "torch", "--workers", "2", "--induce", "cedar:0.2", "--steps",
               str(STEPS), "--batch-size", "32", "--partitions", "4", "--test-size", "100", "--out", str(tmp_path),
               "--name", "amb", "--quiet")
    run = tmp_path / "amb"
    meta = metadata(run)
    assert meta["status"] == "completed" and meta["backend"] == "torch"
    assert "torch" in meta["versions"] and "tensorflow" not in meta["versions"]
    assert meta["world_size"] == 3 and meta["summary"]["steps"] == STEPS
    master, workers = table(run, "master_stats"), table(run, "worker_stats")
    assert tuple(master.columns) == TABLES["master_stats"]
    assert tuple(workers.columns) == TABLES["worker_stats"]
    assert list(master.step) == list(range(1, STEPS + 1)) and len(workers) == 2 * STEPS
    assert sorted(workers["rank"].unique()) == [1, 2]
    assert (workers.num_samples % 8 == 0).all() and (workers.num_samples <= 32).all()  # whole micro-batches
    assert master.accuracy.notna().all() and master.loss.notna().all()
    assert meta["config"]["time_limit"] > 0
