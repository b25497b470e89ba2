"""Real runs of `train amb|fmb`: in one process and as MPI jobs of 2 workers, on the built-in data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, anytimectl, metadata, ranks_of, table

from anytimectl.protocols.master_worker import MasterWorkerProtocol
from anytimectl.runtime.rundir import read_trace

pytestmark = pytest.mark.mpi

TABLES = MasterWorkerProtocol.columns.tables()
MASTER_COLUMNS, WORKER_COLUMNS, COLLECT_COLUMNS = (TABLES[t] for t in ("master_stats", "worker_stats",
                                                                        "collect_stats"))

STEPS = 6  # must match conftest.real_runs


@pytest.mark.slow
@pytest.mark.parametrize("method", ["amb", "fmb"])
def test_two_worker_run_writes_the_documented_tables(real_runs, method):
    run = real_runs[method]
    meta = metadata(run)
    assert meta["status"] == "completed"
    assert meta["world_size"] == 3 and meta["config"]["workers"] == 2
    assert meta["summary"]["steps"] == STEPS
    # every step the master obtains both workers' gradient buffers and sends both the parameters
    assert meta["summary"]["master_bytes_received"] > 2 * STEPS * 4 * 150_000
    assert meta["summary"]["master_bytes_sent"] > 2 * STEPS * 4 * 150_000
    master, workers, collect = table(run, "master_stats"), table(run, "worker_stats"), table(run, "collect_stats")
    assert tuple(master.columns) == MASTER_COLUMNS
    assert tuple(workers.columns) == WORKER_COLUMNS
    assert tuple(collect.columns) == COLLECT_COLUMNS
    assert len(master) == STEPS and len(collect) == STEPS and len(workers) == 2 * STEPS
    assert list(master.step) == list(range(1, STEPS + 1))
    assert sorted(workers["rank"].unique()) == [1, 2]
    assert (collect.total_samples == workers.groupby("master_step").num_samples.sum().values).all()
    assert master.accuracy.notna().all()
    assert (workers.compute_time >= workers.sleep_time).all()
    first = workers[workers.master_step == 1]
    assert (first[["last_send", "last_recv", "last_exit"]] == -1).all().all()


@pytest.mark.slow
def test_amb_batches_vary_and_fmb_batches_do_not(real_runs):
    amb, fmb = table(real_runs["amb"], "worker_stats"), table(real_runs["fmb"], "worker_stats")
    assert (fmb.num_samples == 32).all()
    assert (amb.num_samples % 8 == 0).all() and (amb.num_samples <= 32).all()
    assert metadata(real_runs["amb"])["config"]["time_limit"] > 0
    assert (table(real_runs["amb"], "collect_stats").time_limit > 0).all()


@pytest.mark.slow
def test_events_are_bunyan_records(real_runs):
    lines = (real_runs["amb"] / "events.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        assert {"v", "level", "name", "hostname", "pid", "time", "msg"} <= set(record)
    assert records[-1]["msg"] == "run completed"


@pytest.mark.slow
def test_trace_has_every_phase_per_worker(real_runs):
    events = read_trace(real_runs["fmb"] / "trace.json")
    spans = [e for e in events if e["ph"] == "X"]
    names = {(e["pid"], e["name"]) for e in spans}
    for rank in (1, 2):
        assert {(rank, "compute"), (rank, "send"), (rank, "recv")} <= names
    assert (0, "collect") in names and (0, "evaluate") in names


@pytest.mark.slow
def test_single_process_run_with_json_summary(tmp_path):
    """The summary is the run shell's, the same for every backend (the simulated one starts in a second)."""
    result = anytimectl("train", "fmb", "--backend", "sim", "--workers", "0", "--steps", "3", "--batch-size", "16",
                        "--out", str(tmp_path), "--json")
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert Path(summary["run_dir"]).is_dir()


@pytest.mark.slow
def test_target_accuracy_stops_the_run(tmp_path):
    result = anytimectl("train", "fmb", "--workers", "0", "--target-accuracy", "0.5", "--log-every", "2",
                        "--out", str(tmp_path), "--json", "--learning-rate", "0.003")
    summary = json.loads(result.stdout)
    assert summary["stopped_by"] == "target accuracy"
    assert summary["final_accuracy"] >= 0.5


@pytest.mark.slow
def test_persistent_slow_rank_reports_fewer_examples(tmp_path):
    """The slow rank's padding is the run shell's (runtime/round_clock.py), the same for every backend: the simulated
    one checks it without a framework's start-up."""
    anytimectl("train", "amb", "--backend", "sim", "--workers", "2", "--slow", "2:4", "--time-limit", "0.2",
               "--batch-size", "256", "--partitions", "32", "--steps", "5", "--out", str(tmp_path), "--name", "slow",
               "--quiet")
    workers = table(tmp_path / "slow", "worker_stats")
    per_rank = workers.groupby("rank").num_samples.mean()
    assert per_rank[1] > 1.5 * per_rank[2]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "anytimectl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_rows(path: Path, rows: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) > rows:
            return
        if process.poll() is not None:
            raise AssertionError(f"run ended early: {process.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError("no progress")



@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the ranks")
def test_killed_worker_ends_the_job_and_marks_the_run_failed(tmp_path):
    marker = str(os.getpid())
    process = subprocess.Popen(
        # the simulated backend: the run shell's failure handling is under test, not a framework (no start-up cost)
        [sys.executable, "-m", "anytimectl", "train", "fmb", "--backend", "sim", "--workers", "2", "--steps",
         "100000", "--out", str(tmp_path), "--name", "victim", "--quiet", "--batch-size", "16"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "ANYTIMECTL_TEST_PARENT": marker})
    run = tmp_path / "victim"
    _wait_for_rows(run / "master_stats.csv", 5, process)
    ranks = ranks_of(int(marker))
    assert 1 in ranks, ranks
    os.kill(ranks[1], signal.SIGKILL)
    killed_at = time.time()
    stdout, stderr = process.communicate(timeout=60)
    assert time.time() - killed_at < 30
    assert process.returncode != 0
    meta = metadata(run)
    assert meta["status"] == "failed" and "exit code" in meta["reason"]
    # the tool says what happened in its own words, once
    assert stderr.count(f"anytimectl: error: {meta['reason']}") == 1, stderr[-2000:]
    assert stdout.strip() == ""  # mpiexec's report of the killed rank is not for scripts: it went to stderr
    master = table(run, "master_stats")
    assert len(master) >= 5 and list(master.step) == list(range(1, len(master) + 1))


def test_ctrl_c_stops_cleanly_and_marks_the_run_interrupted(tmp_path):
    process = _start(["train", "amb", "--backend", "sim", "--workers", "2", "--steps", "100000", "--out",
                      str(tmp_path), "--name", "stopped", "--batch-size", "32", "--partitions", "4"])
    run = tmp_path / "stopped"
    _wait_for_rows(run / "master_stats.csv", 3, process)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    meta = metadata(run)
    assert meta["status"] == "interrupted"
    assert meta["summary"]["steps"] == len(table(run, "master_stats"))
    assert read_trace(run / "trace.json")[-1]["ph"] == "X"
    assert "Traceback" not in stderr


def test_python_dash_m_and_console_script_agree():
    script = Path(sys.executable).parent / "anytimectl"
    if not script.exists():
        pytest.skip("console script not installed next to this Python")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("anytimectl ")


@pytest.mark.slow
def test_a_job_started_with_mpiexec_takes_its_size_from_the_job(tmp_path):
    """The size comes from the launch, before any backend: the simulated one spares a framework's start-up."""
    from anytimectl.runtime.launch import find_mpiexec

    script = Path(sys.executable).parent / "anytimectl"
    if not script.exists():
        pytest.skip("console script not installed next to this Python")
    result = subprocess.run([find_mpiexec(), "-n", "3", str(script), "train", "fmb", "--backend", "sim", "--steps",
                             "2", "--batch-size", "16", "--out", str(tmp_path), "--name", "direct", "--quiet"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "direct")  # printed once, by rank 0
    meta = metadata(tmp_path / "direct")
    assert meta["status"] == "completed" and meta["world_size"] == 3 and meta["config"]["workers"] == 2


@pytest.mark.slow
def test_epochs_stop_the_run(tmp_path):
    result = anytimectl("train", "fmb", "--workers", "0", "--epochs", "0.5", "--batch-size", "64", "--out",
                        str(tmp_path), "--json")
    summary = json.loads(result.stdout)
    assert summary["stopped_by"] == "epochs"
    assert 0.5 <= summary["epochs"] < 0.5 + 64 / 1437 + 1e-9  # stops at the first step that reaches it


@pytest.mark.slow
def test_learning_rate_schedule_reaches_the_optimizer_log(tmp_path):
    anytimectl("train", "fmb", "--workers", "0", "--steps", "5", "--batch-size", "16", "--lr-schedule",
               "exponential", "--lr-decay-steps", "2", "--lr-decay-rate", "0.5", "--out", str(tmp_path),
               "--name", "lr", "--quiet")
    rates = table(tmp_path / "lr", "master_stats").learning_rate.tolist()
    assert rates == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


@pytest.mark.slow
def test_args_json_gives_the_originals_scripts_their_names(real_runs):
    """The original's analysis scripts read args.json: the AMB limit the workers used, counts, the delay model."""
    amb = json.loads((real_runs["amb"] / "args.json").read_text())
    meta = metadata(real_runs["amb"])
    assert amb["dist_opt"] == "amb" and amb["dist_sgy"] == "syncr" and amb["num_workers"] == 2
    assert amb["amb_time_limit"] == meta["config"]["time_limit"] > 0  # the calibrated limit, not "auto"
    assert amb["amb_num_partitions"] == 4 and amb["batch_size"] == 32 and amb["intr_opt"] == "rms"
    assert amb["induce_comp"] == "cedar:0.2" and len(amb["induce_comp_dist"]) == 4
    fmb = json.loads((real_runs["fmb"] / "args.json").read_text())
    assert fmb["dist_opt"] == "fmb" and fmb["amb_time_limit"] is None and fmb["last_step"] == STEPS
