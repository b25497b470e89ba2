"""The all-reduce pattern for `anytimectl bandwidth` (anytimectl/studies/bandwidth_allreduce.py): a real job of 2 and 3
ranks measures Comm.allreduce_sum against raw Allreduce and writes rows in bandwidth.csv's columns."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from anytimectl.runtime.launch import find_mpiexec
from anytimectl.studies.bandwidth import ratio_table, target_met
from anytimectl.studies.bandwidth_allreduce import COLUMNS

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("ranks", [2, 3])
def test_an_mpi_job_measures_both_layers_interleaved(ranks):
    result = subprocess.run([find_mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m",
                             "anytimectl.studies.bandwidth_allreduce", "--sizes", "2^10,2^12", "--rounds", "3",
                             "--warmup", "1", "--json"],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])  # printed once, by rank 0
    assert len(rows) == 2 * 2
    for row in rows:
        assert tuple(row) == COLUMNS
        assert row["workers"] == ranks and row["bytes"] == 4 * row["elements"] and row["rounds"] == 3
        assert row["round_time"] == row["reduce_time"] > 0 and row["bcast_time"] == 0
        assert row["gbps"] > 0
    assert {r["layer"] for r in rows} == {"ours", "raw"}
    assert [r["ratio"] for r in rows if r["layer"] == "raw"] == [1.0, 1.0]
    assert len(ratio_table(rows)) == 2
    assert target_met(rows) is None  # nothing of 1 MiB or more was measured
