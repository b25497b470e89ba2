"""Exact resume of `train dynamic` and `compress train` through the real command line (2-rank MPI jobs on the
built-in digits): a run killed (kill -9 of a rank) right after its checkpoint at step N and resumed gives, at every
step after N, the losses of the same run done in one go, and ends with bit-identical parameters and optimizer
state (the final checkpoints compared array by array, on the CPU).

Why the dbs case copies instead of killing: dbs sets the batches from measured throughputs, so two separate runs
decide differently whenever their timings differ; the straight run and the resumed one must share the state at N
(the batches decided before N and the policy's history) to be comparable. So the dbs run goes straight to 2N
writing checkpoints at N and 2N, and a copy of it holding only the checkpoint of N is resumed (what a run killed
right after that checkpoint leaves); the window puts the only decision at step N, before the checkpoint, so no
timing enters after N. The compress runs have no timing in their arithmetic and take the kill -9 path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, anytimectl, metadata, ranks_of, signal_mid_run, table

from anytimectl.runtime import checkpoints
from anytimectl.runtime.rundir import read_trace

#: three MPI runs a test: minutes when the machine is shared (load 30 seen), hence more than the default 300 s
#: train dynamic and compress train run on torch
pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.torch, pytest.mark.timeout(900)]

N = 4
COMMON = ("--workers", "2", "--test-size", "50", "--log-every", str(N), "--quiet")
#: stragglers off: no --induce. --slow only sleeps (it changes no arithmetic): it makes the dbs decision
#: unequal, and it slows the compress runs so that the kill lands between the checkpoint of N and the end.
DBS = ("train", "dynamic", "--policy", "dbs", "--batch-size", "16", "--window", str(N), "--slow", "2:3")
#: the torch dbs run, straight to 2N with checkpoints at N and 2N: shared (conftest.py's shared_run) by the copy
#: test here and the scheduler's signal test (tests/test_signal_resume.py). Both workers slowed (worker 2 three
#: times as much: dbs decides 3:1) so that a step after the decision lasts long enough (0.3-0.6 s) for a signal
#: sent after step N + 1 to stop the run before 2N.
DBS_STRAIGHT = ("train", "dynamic", "--policy", "dbs", "--batch-size", "16", "--window", str(N), "--slow", "1:6",
                "--slow", "2:18", *COMMON, "--steps", str(2 * N), "--checkpoint-every", str(N),
                "--keep-checkpoints", "5")
COMPRESS = {
    "topk-ef": ("compress", "train", "--compressor", "topk", "--ratio", "0.05", "--error-feedback"),
    "powersgd": ("compress", "train", "--compressor", "powersgd", "--rank", "2", "--powersgd-start-iter", "2"),
}


def compress_straight(name: str) -> tuple[str, ...]:
    """The straight run of COMPRESS[name] (2N steps, checkpoints at N and 2N), shared (conftest.py's shared_run)
    by the kill -9 test here and the scheduler's signal test (tests/test_signal_resume.py)."""
    return (*COMPRESS[name], *COMMON, "--steps", str(2 * N), "--checkpoint-every", str(N))


def _final_state(run: Path, step: int) -> list[dict]:
    point = checkpoints.ResumePoint(run, step, checkpoints.read_manifest(run, step))
    # tensors as numpy: this test process may hold TensorFlow, and torch must not join it
    return [checkpoints.load_rank(point, rank, tensors=False) for rank in range(2)]


def _assert_equal_states(a, b, where: str = "") -> None:
    """Two checkpoint states (the engine's, the exchange's) equal bit for bit, array by array."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            _assert_equal_states(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal_states(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray) or hasattr(a, "numpy"):
        x, y = np.asarray(a), np.asarray(b)
        assert x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), where
    else:
        assert a == b, where


def _compare(straight: Path, resumed: Path) -> None:
    """Losses at every step after N equal, the final state bit for bit."""
    a, b = table(straight, "master_stats"), table(resumed, "master_stats")
    assert a["step"].tolist() == b["step"].tolist() == list(range(1, 2 * N + 1))
    assert a["loss"].tolist() == b["loss"].tolist()
    assert a["learning_rate"].tolist() == b["learning_rate"].tolist()
    wa, wb = table(straight, "worker_stats"), table(resumed, "worker_stats")
    assert wa["batch_size"].tolist() == wb["batch_size"].tolist()
    for x, y in zip(_final_state(straight, 2 * N), _final_state(resumed, 2 * N), strict=True):
        _assert_equal_states(x["engine"], y["engine"], "engine")
        if "exchange" in x:
            _assert_equal_states(x["exchange"], y["exchange"], "exchange")
    meta = metadata(resumed)
    assert meta["status"] == "completed" and meta["resumes"][-1]["from_step"] == N


def test_dynamic_dbs_resumes_exactly_with_its_decided_batches_and_history(shared_run, tmp_path):
    straight, resumed = shared_run(*DBS_STRAIGHT), tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(checkpoints.step_dir(resumed, 2 * N))  # what a run killed right after step N's checkpoint keeps
    anytimectl("train", "dynamic", "--resume", str(resumed), "--quiet")
    workers = table(straight, "worker_stats")
    after = workers[workers["master_step"] > N]["batch_size"].tolist()
    assert after[:2] != [16, 16] and sum(after[:2]) == 32  # dbs decided at N: the resumed run must keep it
    _compare(straight, resumed)
    # the checkpoints' write time: in the summary, the trace (a span on rank 0's row) and the events
    summary = metadata(straight)["summary"]
    assert summary["checkpoints_written"] == 2 and 0 < summary["checkpoint_max_s"] <= summary["checkpoint_time_s"]
    assert 0 < summary["checkpoint_fraction"] < 1 and summary["checkpoint_bytes_rank0"] > 0
    spans = [e for e in read_trace(straight / "trace.json") if e.get("name") == "checkpoint"]
    assert [s["args"]["step"] for s in spans] == [N, 2 * N] and all(s["pid"] == 1 and s["dur"] > 0 for s in spans)
    written = [json.loads(line) for line in (straight / "events.jsonl").read_text().splitlines()
               if json.loads(line)["msg"] == "checkpoint written"]
    assert [e["step"] for e in written] == [N, 2 * N] and all(e["seconds"] > 0 for e in written)


def test_dynamic_on_tensorflow_resumes_exactly_through_its_input_transform(tmp_path):
    """TensorFlow: every model and optimizer variable of every rank (Adam's moments and step count, the digits
    CNN's dropout seed states), through the input transform's wrapper (--channels 3), and dbs's decided batches."""
    args = (*DBS, "--backend", "tensorflow", "--optimizer", "adam", "--channels", "3", *COMMON)
    anytimectl(*args, "--steps", str(2 * N), "--checkpoint-every", str(N), "--keep-checkpoints", "5",
               "--out", str(tmp_path), "--name", "straight")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(checkpoints.step_dir(resumed, 2 * N))
    anytimectl("train", "dynamic", "--resume", str(resumed), "--quiet")
    assert metadata(resumed)["backend"] == "tensorflow"
    engine = _final_state(straight, 2 * N)[0]["engine"]
    assert set(engine) == {"model", "optimizer"} and len(engine["optimizer"]) > 1  # Adam's slots were saved
    workers = table(straight, "worker_stats")
    after = workers[workers["master_step"] > N]["batch_size"].tolist()
    assert after[:2] != [16, 16] and sum(after[:2]) == 32
    _compare(straight, resumed)



def _run_and_kill_after_checkpoint(args: tuple[str, ...], out: Path, name: str) -> Path:
    """Start the run, wait for the checkpoint of step N to be complete, kill -9 rank 1; the job ends failed."""
    marker = f"i18-resume-{os.getpid()}-{name}-{time.monotonic_ns()}"
    run = out / name
    process = subprocess.Popen(
        [sys.executable, "-m", "anytimectl", *args, "--out", str(out), "--name", name],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "ANYTIMECTL_TEST_PARENT": marker})
    try:
        deadline = time.monotonic() + 240
        while not (checkpoints.step_dir(run, N) / checkpoints.MANIFEST).is_file():
            assert process.poll() is None, f"the run ended before its checkpoint: {process.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint of step N"
            time.sleep(0.02)
        ranks = ranks_of(marker)
        os.kill(ranks[1], signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0
    assert metadata(run)["status"] == "failed"
    assert checkpoints.latest(run).step == N  # killed before the end: no checkpoint of 2N
    return run


@pytest.mark.parametrize("name", sorted(COMPRESS))
def test_compress_resumes_exactly_after_a_rank_is_killed(shared_run, tmp_path, name):
    args = compress_straight(name)
    straight = shared_run(*args)
    killed = _run_and_kill_after_checkpoint((*args, "--slow", "2:25"), tmp_path, "killed")
    anytimectl("compress", "train", "--resume", str(killed), "--quiet")
    _compare(straight, killed)


def test_resume_refuses_changed_options_naming_each_and_accepts_a_repeated_command_line(shared_run, tmp_path):
    """On a copy of the topk-ef test's straight run (conftest.py's shared_run) holding only the checkpoint of N:
    what a run stopped after that checkpoint leaves."""
    args = compress_straight("topk-ef")
    run = tmp_path / "c"
    shutil.copytree(shared_run(*args), run)
    shutil.rmtree(checkpoints.step_dir(run, 2 * N))
    changed = anytimectl("compress", "train", "--resume", str(run), "--ratio", "0.1", "--momentum", "0.5",
                         check=False)
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1, changed.stderr
    assert "--momentum 0.5 (recorded: 0.0)" in changed.stderr and "--ratio 0.1 (recorded: 0.05)" in changed.stderr
    longer = anytimectl("compress", "train", "--resume", str(run), "--steps", "20", check=False)
    assert longer.returncode == 2 and "--steps cannot change" in longer.stderr
    other = anytimectl("train", "dynamic", "--resume", str(run), check=False)
    assert other.returncode == 2 and "not a train dynamic run" in other.stderr
    workers = anytimectl("compress", "train", "--resume", str(run), "--workers", "3", check=False)
    assert workers.returncode == 2 and "resume with --workers 2" in workers.stderr
    # the same command line again with --resume (a batch script's requeue): accepted, the run completes
    anytimectl(*args, "--out", str(tmp_path), "--name", "c", "--resume", str(run))
    assert metadata(run)["status"] == "completed" and table(run, "master_stats")["step"].tolist() == [
        *range(1, 2 * N + 1)]


@pytest.mark.parametrize("sig", ["USR1", "TERM"])
def test_the_checkpoint_signal_to_the_launcher_checkpoints_the_step_and_exits_130(tmp_path, sig):
    """A scheduler's signal (SIGUSR1 by default, SIGTERM when asked) sent to the command the user started: the run
    ends `interrupted` with exit 130 and a checkpoint of its last step although it has no --checkpoint-every;
    resumed, it completes with every step once."""
    chosen = () if sig == "USR1" else ("--checkpoint-on-signal", sig)
    args = ["train", "dynamic", "--policy", "static", "--batch-size", "16", "--steps", "100000", *COMMON, *chosen]
    run = tmp_path / "s"
    stopped = signal_mid_run([*args, "--out", str(tmp_path), "--name", "s"], run, sig, after=6, seconds=240)
    anytimectl("train", "dynamic", "--resume", str(run), "--steps", str(stopped + 3), "--quiet")
    assert table(run, "master_stats")["step"].tolist() == list(range(1, stopped + 4))
    assert metadata(run)["status"] == "completed"
