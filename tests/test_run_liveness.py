"""A run recorded as `running` whose writer is gone reads as dead: `run_liveness` (rundir) checks the lock rank 0
holds and the heartbeat it keeps; `plot` labels such a run "(dead: no heartbeat since ...)"; `--resume` refuses a
run that is still alive. The real case: kill -9 of the launcher of a real job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest
from helpers import PROCESS_MARKER as MARKER
from helpers import REPO, marked_processes, metadata, wait_for

from anytimectl.runtime.rundir import LOCK_FILE, RunDirectory, run_liveness
from plots.rundir import Run
from plots.style import status_suffix


def test_an_open_run_is_running_and_a_finished_one_its_status(tmp_path):
    run = RunDirectory(tmp_path, {"run_id": "x"}, {"t": ("a",)})
    assert metadata(tmp_path)["writer"]["pid"] == os.getpid()
    assert run_liveness(tmp_path) == "running"
    run.finish("completed")
    assert run_liveness(tmp_path) == "completed"
    assert not (tmp_path / LOCK_FILE).exists() and not (tmp_path / ".space-reserve").exists()
    assert run_liveness(tmp_path / "nothing") == "unknown"


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.torch  # train gossip runs on torch
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; Linux only")
def test_kill_9_of_the_launcher_leaves_a_run_that_reads_as_dead(tmp_path):
    marker = uuid.uuid4().hex
    run = tmp_path / "k"
    args = [sys.executable, "-m", "anytimectl", "train", "gossip", "--workers", "2", "--steps", "100000",
            "--checkpoint-every", "5", "--test-size", "100", "--log-every", "5", "--quiet", "--out", str(tmp_path),
            "--name", "k"]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, MARKER: marker}, start_new_session=True)
    try:
        wait_for(lambda: (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("*/manifest.json")),
                  "a checkpoint")
        assert run_liveness(run) == "running"
        refused = subprocess.run([sys.executable, "-m", "anytimectl", "train", "gossip", "--resume", str(run),
                                  "--steps", "200000"], capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "still running" in refused.stderr, refused.stderr
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        wait_for(lambda: not marked_processes(marker), "the job to end")
    finally:
        for pid in marked_processes(marker):
            os.kill(pid, signal.SIGKILL)
    assert metadata(run)["status"] == "running"  # nobody was left to record the end
    # A dying rank's environment is unreadable (its memory released) a moment before its files, the lock among
    # them, are closed: the run reads as dead once the last one is really gone.
    wait_for(lambda: run_liveness(run).startswith("running (dead: no heartbeat since "), "the run to read as dead",
             seconds=30)
    assert status_suffix(Run(run, metadata(run)).status).startswith(" (dead: no heartbeat since ")
