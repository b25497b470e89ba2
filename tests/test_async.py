"""Asynchronous AMB/FMB (`--protocol async`): the channel on its own, and real runs through the run shell.

What must hold: every contribution a worker hands over reaches the master exactly once (applied, or left over when
the run stopped) and the counts add up; staleness is the master step minus one minus the step of the model the
contribution used; workers take only newer models; a stopped run ends every rank within seconds, recorded as
interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import anytimectl, metadata, table

from anytimectl.protocols.async_master_worker import ASYNC_FIELDS, AsyncMasterWorkerProtocol
from anytimectl.runtime.launch import find_mpiexec

pytestmark = pytest.mark.mpi

CHANNEL = Path(__file__).parent / "mpi" / "async_channel.py"
SIM = ["--backend", "sim", "--sim-example-time", "0.0005", "--sim-params", "2000", "--induce", "niagara:0.03"]


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shared-memory", "mpi-messages"])
def test_channel_delivers_every_contribution_once_and_only_newer_models(shared_memory):
    env = {**os.environ, "ANYTIMECTL_SHARED_MEMORY": "1" if shared_memory else "0"}
    result = subprocess.run([find_mpiexec(), "-n", "4", sys.executable, "-m", "mpi4py", str(CHANNEL)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shared_memory"] is shared_memory
    assert report["contributions"] == 3 * 30 and report["counts"] == report["expected_counts"]
    assert report["payloads_intact"] and report["min_staleness"] >= 0
    for worker in report["workers"]:
        assert worker["monotonic"] and worker["consistent"]
        assert worker["queued_total"] == worker["span"]  # each take says how many models arrived since the last


def _check_invariants(run: Path, summary: dict) -> None:
    workers = table(run, "worker_stats")
    collect = table(run, "collect_stats")
    master = table(run, "master_stats")
    # never applied twice, never lost
    assert not workers.duplicated(["rank", "worker_step"]).any()
    assert summary["contributions_sent"] == summary["contributions_taken"]
    assert summary["examples_sent"] == summary["examples_applied"] + summary["examples_left_at_stop"]
    assert workers.num_samples.sum() == collect.total_samples.sum() == summary["examples_applied"]
    per_step = workers.groupby("master_step").size().reindex(collect.step).to_numpy()
    assert (collect.worker_count.to_numpy() == per_step).all()
    # staleness: the updates applied between the contribution's model and the one it was applied to
    assert (workers.staleness == workers.master_step - 1 - workers.worker_master_step).all()
    assert (workers.staleness >= 0).all() and (workers.worker_master_step < workers.master_step).all()
    # each worker's contributions arrive in the order it sent them
    for _, rows in workers.groupby("rank"):
        assert rows.worker_step.is_monotonic_increasing
    assert list(master.step) == list(range(1, len(master) + 1))


@pytest.mark.parametrize("rule", [["--async-master", "batch", "--async-batch-min", "3"],
                                  ["--async-master", "time", "--async-time-limit", "0.05"]], ids=["batch", "time"])
def test_async_amb_run_accounts_for_every_contribution(tmp_path, rule):
    result = anytimectl("train", "amb", "--protocol", "async", "--workers", "3", "--steps", "15", *SIM, *rule,
                        "--out", str(tmp_path), "--name", "run", "--json")
    summary = json.loads(result.stdout)
    run = tmp_path / "run"
    meta = metadata(run)
    assert meta["status"] == "completed" and meta["protocol"] == "async_master_worker"
    workers = table(run, "worker_stats")
    assert list(workers.columns) == list(AsyncMasterWorkerProtocol.columns.tables()["worker_stats"])
    assert set(ASYNC_FIELDS) <= set(workers.columns)
    _check_invariants(run, summary)
    if rule[1] == "batch":
        assert (table(run, "collect_stats").worker_count >= 3).all()


@pytest.mark.slow
def test_async_fmb_over_mpi_messages_with_simulated_delays(tmp_path):
    result = anytimectl("train", "fmb", "--protocol", "async", "--workers", "3", "--steps", "12", *SIM,
                        "--batch-size", "32", "--async-batch-min", "2", "--async-delay-std", "0.01",
                        "--out", str(tmp_path), "--name", "run", "--json",
                        env={"ANYTIMECTL_SHARED_MEMORY": "0"})
    summary = json.loads(result.stdout)
    run = tmp_path / "run"
    _check_invariants(run, summary)
    workers = table(run, "worker_stats")
    assert (workers.comm_delay > 0).mean() > 0.9 and (workers.num_samples == 32).all()
    # a new model every 2 of the 3 workers' contributions: many contributions follow a take that found one, and
    # no worker counts more new models than the master made
    assert (workers.last_queued_update_count >= 1).mean() > 0.25
    assert (workers.groupby("rank").last_queued_update_count.sum() <= len(table(run, "master_stats"))).all()
    assert metadata(run)["config"]["async_delay_std"] == 0.01
    figures = tmp_path / "figures"
    plotted = anytimectl("plot", str(run), "--subset", "hist_queued_count", "--subset", "hist_staleness",
                         "--subset", "comm_straggler_dist",
                         "--save", "--out", str(figures))
    assert plotted.returncode == 0, plotted.stderr
    assert [p.suffix for p in figures.iterdir()] == [".png"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("torch", marks=pytest.mark.torch)])
def test_async_amb_on_a_framework_backend(tmp_path, backend):
    """The engines' own micro-batch loops take the newer models (TensorFlow: inside the compiled loop)."""
    result = anytimectl("train", "amb", "--backend", backend, "--protocol", "async", "--workers", "2", "--steps",
                        "6", "--batch-size", "32", "--partitions", "4", "--test-size", "100", "--out", str(tmp_path),
                        "--name", backend, "--json")
    summary = json.loads(result.stdout)
    _check_invariants(tmp_path / backend, summary)
    assert summary["final_accuracy"] is not None


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_a_stopped_async_run_ends_every_rank_and_is_recorded(tmp_path, how):
    process = subprocess.Popen(
        [sys.executable, "-m", "anytimectl", "train", "amb", "--protocol", "async", "--workers", "3", "--steps",
         "100000", *SIM, "--out", str(tmp_path), "--name", "stopped", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run = tmp_path / "stopped"
    deadline = time.time() + 120
    while not ((run / "master_stats.csv").exists() and len((run / "master_stats.csv").read_text().splitlines()) > 5):
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, "no progress"
        time.sleep(0.2)
    if how == "SIGINT":
        os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
    else:
        process.send_signal(signal.SIGTERM)  # a batch scheduler's polite kill, to the launcher only
    stopped_at = time.time()
    _, stderr = process.communicate(timeout=60)
    assert time.time() - stopped_at < 15
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    meta = metadata(run)
    assert meta["status"] == "interrupted"
    assert meta["summary"]["steps"] == len(table(run, "master_stats"))
    assert meta["summary"]["examples_sent"] == (meta["summary"]["examples_applied"]
                                                + meta["summary"]["examples_left_at_stop"])
    leftover = subprocess.run(["pgrep", "-f", f"--out {tmp_path}"], capture_output=True, text=True)
    assert not leftover.stdout.strip(), "ranks left running"


@pytest.mark.slow
def test_sync_runs_have_no_async_columns(real_runs):
    workers = table(real_runs["amb"], "worker_stats")
    assert not set(ASYNC_FIELDS) & set(workers.columns)
    assert np.isfinite(workers.compute_time).all()


def test_a_checkpoint_cut_keeps_exactly_the_contributions_in_flight(tmp_path):
    """The master's side of a mid-run checkpoint (CheckpointCuts), in-process: after its copy at step 5 it keeps
    the contributions taken that may have been in flight (on a model older than 5, or a worker's first on 5 or
    newer), writes its file only once every worker has saved and it has taken each worker's last contribution
    before its point, and puts exactly those up to that point in it; a cut that a worker never reached before the
    stop is removed."""
    from anytimectl.protocols.async_master_worker import ASYNC_LAYOUT, CheckpointCuts
    from anytimectl.runtime import checkpoints

    checkpointer = checkpoints.Checkpointer(tmp_path, 5, 5, 0, 3, "sim", lambda *a, **k: None)
    cuts = CheckpointCuts(checkpointer, workers=2)

    def take(rank: int, number: int, model: int) -> None:
        stats = ASYNC_LAYOUT.new()
        stats[ASYNC_LAYOUT["worker_step"]], stats[ASYNC_LAYOUT["worker_master_step"]] = number, model
        data = np.full(3, 10.0 * rank + number, dtype=np.float32)
        cuts.taken(rank, data, stats)
        stats[:] = -1.0  # the channel reuses its buffers: the cut must have copied
        data[:] = -1.0

    take(1, 6, 4)  # before the copy: in the master's own state
    cuts.start(5, {"master": {"examples": 80}}, {"examples": 80, "epoch": 0.1, "elapsed": 1.0})
    take(1, 7, 4)  # on a model older than 5: in flight if worker 1's point is after it
    take(1, 8, 5)  # worker 1's first on model 5 (taken between two micro-batches): its point may follow it
    take(1, 9, 5)  # a second on model 5: after worker 1's point, never kept
    take(2, 3, 3)
    checkpoints.save_rank(tmp_path, 5, 1, {"worker": {"contributions": 8}})
    checkpoints.save_rank(tmp_path, 5, 2, {"worker": {"contributions": 4}})
    cuts.complete()
    assert not checkpoints.rank_path(tmp_path, 5, 0).exists()  # worker 2's contribution 4 is not taken yet
    take(2, 4, 4)
    take(2, 5, 6)  # after worker 2's point
    assert [int(s[ASYNC_LAYOUT["worker_step"]]) for _, _, s in cuts.open[5]["taken"]] == [7, 8, 3, 4, 5]
    cuts.complete()
    assert checkpointer.pending() == [5] and not cuts.open
    point = checkpoints.ResumePoint(tmp_path, 5, {})
    master = checkpoints.load_rank(point, 0)["master"]
    assert master["examples"] == 80
    kept = [(rank, int(stats[ASYNC_LAYOUT["worker_step"]]), data.tolist()) for rank, data, stats in master["in_flight"]]
    assert kept == [(1, 7, [17.0] * 3), (1, 8, [18.0] * 3), (2, 3, [23.0] * 3), (2, 4, [24.0] * 3)]
    # a cut that worker 2 never reached (the stop came first): removed after the stop, nothing pending
    cuts.start(10, {"master": {}}, {})
    checkpoints.save_rank(tmp_path, 10, 1, {"worker": {"contributions": 12}})
    cuts.complete(final=True)
    assert not checkpoints.step_dir(tmp_path, 10).exists() and not cuts.open and checkpointer.pending() == [5]
