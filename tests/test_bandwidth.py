"""`anytimectl bandwidth`: real small jobs (re-launched and under mpiexec), the ratio logic, figure, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import anytimectl, metadata, table
from test_cli_errors import assert_one_line_error

from anytimectl.runtime.launch import find_mpiexec
from anytimectl.studies.bandwidth import COLUMNS, ratio_table, target_met

pytestmark = pytest.mark.mpi


@pytest.mark.slow
def test_relaunches_per_worker_count_and_writes_the_documented_table(tmp_path):
    result = anytimectl("bandwidth", "--workers", "1,2", "--sizes", "2^10,2^12", "--rounds", "3", "--warmup", "1",
                        "--out", str(tmp_path), "--name", "b", "--json")
    run = tmp_path / "b"
    meta = metadata(run)
    assert meta["command"] == "bandwidth" and meta["status"] == "completed"
    df = table(run, "bandwidth")
    assert tuple(df.columns) == COLUMNS
    assert len(df) == 2 * 2 * 2  # worker counts x sizes x (ours, raw)
    assert set(df["workers"]) == {1, 2} and set(df["elements"]) == {1024, 4096}
    assert set(df["layer"]) == {"ours", "raw"}
    assert (df["bytes"] == df["elements"] * 4).all()
    assert (df["round_time"] > 0).all() and (df["rounds"] == 3).all()
    assert (df.loc[df["layer"] == "raw", "ratio"] == 1).all()
    assert not [p for p in run.iterdir() if p.name.startswith(".rows")]  # the jobs' hand-over files are gone
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["summary"]["target_0.9_met"] is None  # no message of 1 MiB or more was measured

    figures = tmp_path / "figs"
    anytimectl("plot", str(run), "--type", "master_bandwidth", "--out", str(figures))
    assert list(figures.glob("master_bandwidth__b.png"))
    assert_one_line_error(anytimectl("plot", str(run), "--type", "loss_vs_step", "--out", str(figures),
                                     check=False), "bandwidth run", "master_bandwidth")


@pytest.mark.slow
def test_measures_an_existing_job_and_only_rank_zero_writes(tmp_path):
    command = [find_mpiexec(), "-n", "3", sys.executable, "-m", "mpi4py", "-m", "anytimectl", "bandwidth",
               "--sizes", "2^10", "--rounds", "3", "--warmup", "1", "--model", "mlp", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("bandwidth-w2-")
    df = table(runs[0], "bandwidth")
    assert set(df["workers"]) == {2}
    assert set(df["model"].dropna()) == {"mlp"}  # its buffer: the model's floats + count + loss
    assert "mlp (" in result.stdout and "ms of communication per step" in result.stdout


def test_a_round_ends_when_every_rank_has_the_broadcast(tmp_path):
    """A worker that takes its broadcast 0.3 s late makes the master's round 0.3 s longer, in both layers: the
    master handing its buffer over is not the broadcast's end (across hosts it returns once TCP has the data)."""
    script = Path(__file__).resolve().parent / "mpi" / "bandwidth_round_end.py"
    result = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for layer, seconds in report["bcast_time"].items():
        assert seconds >= report["late"], (layer, seconds)


def rows(workers: int, elements: int, ours: float, raw: float) -> list[dict]:
    base = {"workers": workers, "elements": elements, "bytes": 4 * elements, "model": ""}
    return [{**base, "layer": "ours", "round_time": ours}, {**base, "layer": "raw", "round_time": raw}]


def test_ratio_is_raw_time_over_ours_and_the_target_counts_large_messages_only():
    measured = rows(1, 2**10, 0.002, 0.001) + rows(1, 2**18, 0.010, 0.0095) + rows(4, 2**20, 0.040, 0.038)
    table_ = ratio_table(measured)
    assert [r["ratio"] for r in table_] == pytest.approx([0.5, 0.95, 0.95])
    assert target_met(measured) is True  # the 4 KiB message does not count
    assert target_met(measured + rows(8, 2**20, 0.1, 0.05)) is False
    assert target_met(rows(1, 2**10, 1, 1)) is None


@pytest.mark.parametrize(("args", "fragments"), [
    (["bandwidth", "--workers", "1", "--sizes", "2^40"], ["--sizes", "too large"]),
    (["bandwidth", "--workers", "1", "--sizes", "2^22..2^10"], ["--sizes", "empty"]),
    (["bandwidth", "--workers", "0"], ["--workers 0"]),
    (["bandwidth", "--workers", "1", "--rounds", "0"], ["--rounds 0"]),
    (["bandwidth", "--workers", "1", "--model", "resnet"], ["resnet", "cifar10"]),
    (["bandwidth"], ["--workers"]),
])
def test_bad_input_is_one_line_and_exit_2(args, fragments, tmp_path):
    assert_one_line_error(anytimectl(*args, "--out", str(tmp_path), check=False, timeout=60), *fragments)
    assert not list(tmp_path.iterdir())


def test_allreduce_pattern_measures_every_rank_against_raw_allreduce(tmp_path):
    result = anytimectl("bandwidth", "--pattern", "allreduce", "--workers", "2", "--sizes", "2^10", "--rounds", "3",
                        "--warmup", "1", "--out", str(tmp_path), "--json")
    report = json.loads(result.stdout)
    rows = report["rows"]
    assert {row["layer"] for row in rows} == {"ours", "raw"}
    assert all(row["workers"] == 2 and row["bcast_time"] == 0 for row in rows)
    meta = json.loads((Path(report["run_dir"]) / "metadata.json").read_text())
    assert meta["config"]["pattern"] == "allreduce" and meta["status"] == "completed"
