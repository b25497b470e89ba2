"""After a killed rank, the run's recorded reason names it, never a survivor: the launching parent watches its
ranks end (pidfds) and names the one that ended first (mpiexec's own "BAD TERMINATION ... PID" names any process
of the job, often one it killed itself while cleaning up). Real jobs: kill -9 of a worker of `train amb` (sync and
async, simulated backend)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from helpers import PROCESS_MARKER, marked_processes, metadata

from anytimectl.runtime.rundir import STEP_TABLES, RunDirectory, trim_to_complete_step
from anytimectl.runtime.shell import _record_failure

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks in /proc")


def _rank_pid(marker: str, rank: int) -> int | None:
    for pid in marked_processes(marker):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in environ:
            return pid
    return None


def _rows(path: Path) -> int:
    try:
        return len(path.read_text().splitlines()) - 1
    except OSError:
        return 0


def _kill_a_worker(tmp_path: Path, name: str, protocol: str, victim: int) -> tuple[Path, int, str]:
    """A 2-worker sim `train amb` whose rank `victim` gets kill -9 once the run has 4 steps: (run, pid, stderr)."""
    marker = uuid.uuid4().hex
    process = subprocess.Popen(
        [sys.executable, "-m", "anytimectl", "train", "amb", "--backend", "sim", "--protocol", protocol, "--workers",
         "2", "--steps", "100000", "--out", str(tmp_path), "--name", name, "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, PROCESS_MARKER: marker})
    run = tmp_path / name
    try:
        deadline = time.monotonic() + 240
        while _rows(run / "master_stats.csv") < 4:
            assert process.poll() is None and time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.1)
        pid = _rank_pid(marker, victim)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return run, pid, stderr


@pytest.mark.mpi
@pytest.mark.parametrize(("protocol", "victim"), [("sync", 2), ("async", 1)])
def test_kill_9_of_a_worker_is_blamed_on_it(tmp_path, protocol, victim):
    """The launcher names the killed rank, never a survivor. When the launcher wakes after mpiexec has already
    killed the others (or they ended on the closed connection), it sees several ranks end at once and names none
    (about one kill in eight here, `_RankWatch`): that try is repeated, up to three tries in all."""
    for attempt in range(3):
        run, pid, stderr = _kill_a_worker(tmp_path, f"victim{attempt}", protocol, victim)
        meta = metadata(run)
        assert meta["status"] == "failed"
        if not meta["reason"].startswith("the MPI job ended with exit code"):  # it names a rank: the right one
            break
    assert meta["reason"].startswith(f"rank {victim} (worker {victim}, pid {pid}) ended first"), meta["reason"]
    assert stderr.count(f"anytimectl: error: {meta['reason']}") == 1, stderr[-2000:]
    assert meta["pids"][victim] == pid  # every rank's pid is recorded, to match what a launcher reports
    # the tables end at the same step (a step rank 0 was writing when the job ended is dropped)
    master, workers, collect = (pd.read_csv(run / f"{name}.csv") for name in STEP_TABLES)
    assert len(master) >= 4 and list(master.step) == list(range(1, len(master) + 1))
    assert workers.master_step.max() == master.step.max() == collect.step.max()


def _failed_run(path: Path, reason: str) -> Path:
    path.mkdir()
    run = RunDirectory(path, {"run_id": "r", "pids": [10, 11, 12]}, {"master_stats": ("time", "step")})
    run.finish("failed", reason)
    return path


def test_a_survivors_reason_gives_way_to_the_rank_that_ended_first(tmp_path, capsys):
    """A survivor that lost contact with a killed rank records its own MPI error, which would blame itself."""
    run = _failed_run(tmp_path / "r", "rank 2: Exception: Other MPI error, error stack: connection reset")
    _record_failure(run, 9, ((1, 11),), has_master=True)
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["reason"].startswith("rank 1 (worker 1, pid 11) ended first")
    assert meta["survivor_reason"].startswith("rank 2: Exception")
    assert "rank 1 (worker 1" in capsys.readouterr().err


@pytest.mark.parametrize(("reason", "first"), [("rank 1: ValueError: bad data", 1), ("ValueError: at the master", 0)])
def test_a_rank_that_failed_by_itself_keeps_its_own_reason(tmp_path, reason, first):
    run = _failed_run(tmp_path / "r", reason)
    _record_failure(run, 1, ((first, 10 + first),), has_master=True)
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["reason"] == reason and "survivor_reason" not in meta


def test_ranks_seen_ending_together_or_none_blame_nobody(tmp_path):
    for first in [(), ((1, 11), (2, 12))]:
        run = tmp_path / f"r{len(first)}"
        run.mkdir()
        RunDirectory(run, {"run_id": "r"}, {"master_stats": ("time", "step")})
        _record_failure(run, 9, first, has_master=False)
        reason = json.loads((run / "metadata.json").read_text())["reason"]
        assert reason.startswith("the MPI job ended with exit code 9") and "(a rank crashed or was killed)" in reason


def test_the_tables_are_trimmed_to_the_last_step_they_all_hold(tmp_path):
    """Rank 0 writes a step's master row first, then its worker and collect rows: killed in between (the job
    ended by a killed worker), master_stats.csv held one step more. The launching parent trims it."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "master_stats.csv").write_text("time,step,loss,accuracy\n0.1,1,2.3,0.5\n0.2,2,2.2,\n0.3,3,2.1,0.6\n")
    (run / "master_stats_eval.csv").write_text("time,step,loss,accuracy\n0.1,1,2.3,0.5\n0.3,3,2.1,0.6\n")
    (run / "worker_stats.csv").write_text("time,master_step,rank\n0.1,1,1\n0.1,1,2\n0.2,2,1\n0.2,2,2\n0.3,3,")
    (run / "collect_stats.csv").write_text("step,worker_count\n1,2\n2,2\n")
    assert trim_to_complete_step(run) == {"to_step": 2, "rows_removed": {
        "master_stats": 1, "worker_stats": 1, "master_stats_eval": 1}}  # worker_stats: its cut-short line
    assert list(pd.read_csv(run / "master_stats.csv").step) == [1, 2]
    assert list(pd.read_csv(run / "master_stats_eval.csv").step) == [1]
    assert (run / "worker_stats.csv").read_text().endswith("0.2,2,2\n")  # the cut-short line goes too
    assert trim_to_complete_step(run) is None  # consistent now: nothing to do


@pytest.mark.parametrize("job_ranks", [2, 3])
def test_the_rank_watch_names_the_first_to_end_only_when_it_sees_every_rank(job_ranks):
    """Two stand-in ranks below a stand-in mpiexec (a shell); one is killed. With a third rank that the watch
    cannot see (another node's), nobody is named: the first of ours to end may be a survivor killed after it."""
    from anytimectl.runtime.launch import _RankWatch

    script = " & ".join(f"PMI_RANK={r} {sys.executable} -c 'import time; time.sleep(60)' mpi4py anytimectl"
                        for r in (0, 1)) + " & wait"  # the words the watch looks for in a rank's command line
    root = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    watch = _RankWatch(job_ranks)
    try:
        watch.start(root.pid)
        deadline = time.monotonic() + 30
        while len(watch._found) < 2:
            assert time.monotonic() < deadline, "the stand-in ranks were not found"
            watch.wait(watch.next_look() or 0.05)
        victim = next(pid for _, (r, pid) in watch._fds.items() if r == 1)
        os.kill(victim, signal.SIGKILL)
        while not watch._seen_end:
            watch.wait(5)
        assert watch.first_ended == ([(1, victim)] if job_ranks == 2 else [])
    finally:
        os.killpg(root.pid, signal.SIGKILL)
        root.wait()
        watch.close()


def test_a_rank_whose_mpi_call_failed_does_not_blame_itself():
    """Under your own mpiexec no launching process names the killed rank: a survivor whose MPI call failed says it
    lost contact, instead of recording the failure as its own ("rank 2: Exception: ...")."""
    from anytimectl.runtime.launch import RankInfo
    from anytimectl.runtime.shell import Stopper, _describe_failure

    mpi_error = type("Exception", (RuntimeError,), {"__module__": "mpi4py.MPI"})("Other MPI error, connection reset")
    status, reason = _describe_failure(mpi_error, Stopper(), RankInfo(2, 3, "h", 0, 1, 1, None))
    assert status == "failed"
    assert reason.startswith("rank 2 lost contact with the job, probably because another rank ended")
    assert not reason.startswith("rank 2:")
    status, reason = _describe_failure(ValueError("bad data"), Stopper(), RankInfo(2, 3, "h", 0, 1, 1, None))
    assert reason == "rank 2: ValueError: bad data"  # its own error names it
