"""Checkpoints and exact resume of `train amb` and `train fmb`, synchronous and asynchronous, through the real
command line and real MPI jobs: a run of 2N steps against a run killed with kill -9 of a worker right after its
checkpoint at step N and resumed; refusals of a checkpoint that another method, protocol, worker count or model
wrote. Mostly the simulated backend (no framework start-up); one torch FMB and one TensorFlow AMB run too (their
checkpoints are read here as numpy arrays: this process must not import torch beside TensorFlow)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import anytimectl, metadata, ranks_of, table

from anytimectl.runtime import checkpoints

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

#: a step of 16 examples takes 0.16 s: slow enough to kill a worker between two checkpoints, fast enough for a test
SIM = ("--backend", "sim", "--sim-example-time", "0.01", "--sim-params", "4096", "--sim-half-examples", "200",
       "--batch-size", "16", "--seed", "7", "--test-size", "50", "--log-every", "4", "--quiet")



def kill_after_checkpoint(args: list[str], run: Path, step: int, timeout: float = 240) -> int:
    """Start `anytimectl *args`, wait until the checkpoint of `step` is complete (its manifest), kill -9 worker 1
    at once; returns the step of the latest complete checkpoint the killed run left."""
    parent = f"i18mw-{os.getpid()}-{time.monotonic_ns()}"
    process = subprocess.Popen([sys.executable, "-m", "anytimectl", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "ANYTIMECTL_TEST_PARENT": parent})
    manifest = checkpoints.step_dir(run, step) / checkpoints.MANIFEST
    deadline = time.monotonic() + timeout
    try:
        while not manifest.is_file():
            if process.poll() is not None:
                raise AssertionError(f"the run ended before its checkpoint of step {step}: {process.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no checkpoint of step {step} within {timeout} s")
            time.sleep(0.02)
        ranks = ranks_of(parent)
        assert 1 in ranks, ranks
        os.kill(ranks[1], signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode != 0, stderr
    assert metadata(run)["status"] == "failed"
    return checkpoints.latest(run).step


def engine_state(run: Path, step: int, rank: int = 0) -> dict:
    point = checkpoints.ResumePoint(run, step, checkpoints.read_manifest(run, step))
    return checkpoints.load_rank(point, rank, tensors=False)  # this process may hold TensorFlow: never torch


def straight_and_resumed(tmp_path: Path, command: list[str], steps: int, every: int,
                         shared_run=None) -> tuple[Path, Path, int]:
    """Run `command` for `steps` steps straight, and again killed right after its checkpoint at `every` and resumed
    to the end; returns both run directories and the step the resumed job continued from. With `shared_run`
    (conftest.py's fixture) the straight run is the one another test of the session may share."""
    out = str(tmp_path)
    length = ["--steps", str(steps), "--checkpoint-every", str(every)]
    if shared_run is not None:
        straight = shared_run(*command, *length)
    else:
        anytimectl(*command, *length, "--out", out, "--name", "straight")
        straight = tmp_path / "straight"
    resumed = tmp_path / "resumed"
    start = kill_after_checkpoint([*command, *length, "--out", out, "--name", "resumed"], resumed, every)
    assert every <= start < steps
    anytimectl(*command[:2], "--resume", str(resumed), "--quiet")
    meta = metadata(resumed)
    assert meta["status"] == "completed" and meta["summary"]["steps"] == steps
    assert [r["from_step"] for r in meta["resumes"]] == [start]
    assert meta["resumes"][0]["previous_status"] == "failed"
    return straight, resumed, start


def assert_same_tables(straight: Path, resumed: Path, steps: int, workers: int) -> None:
    master_a, master_b = table(straight, "master_stats"), table(resumed, "master_stats")
    assert master_b["step"].tolist() == list(range(1, steps + 1))  # appended: no step twice, none missing
    assert master_b["time"].is_monotonic_increasing  # the clock continues from the checkpoint's
    # the tables hold 6 significant digits; assert_same_final_state compares the models bit for bit
    assert master_a["loss"].tolist() == master_b["loss"].tolist()
    assert master_a["learning_rate"].tolist() == master_b["learning_rate"].tolist()
    assert master_a["epoch"].tolist() == master_b["epoch"].tolist()
    assert master_a["test_loss"].dropna().tolist() == master_b["test_loss"].dropna().tolist()
    workers_a, workers_b = table(straight, "worker_stats"), table(resumed, "worker_stats")
    assert len(workers_b) == steps * workers
    for column in ("master_step", "rank", "num_samples", "partitions_done"):
        assert workers_a[column].tolist() == workers_b[column].tolist(), column
    assert metadata(resumed)["summary"]["examples"] == metadata(straight)["summary"]["examples"]


def checkpoint_entries(run: Path, step: int, rank: int) -> dict[str, bytes]:
    """The entries of a rank's checkpoint file (its state tree as JSON, one .npy per array or tensor), as bytes."""
    import zipfile

    checkpoints.read_manifest(run, step)  # complete and whole
    with zipfile.ZipFile(checkpoints.rank_path(run, step, rank)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def assert_same_final_state(straight: Path, resumed: Path, steps: int, ranks: int) -> None:
    """The last checkpoint of each run (written after the last step) is the same, bit for bit, on every rank:
    every number of its state (counters, data positions, byte counts, AMB's limit) and every byte of every array
    (the model, the optimizer's state, the framework's generators). Compared as the files' entries, so the test
    process imports no framework."""
    import json

    for rank in range(ranks):
        a, b = checkpoint_entries(straight, steps, rank), checkpoint_entries(resumed, steps, rank)
        assert a.keys() == b.keys(), rank
        differ = [name for name in a if name != "state.json" and a[name] != b[name]]
        assert not differ, (rank, differ)
        # the byte counts are the traffic of the jobs: the resumed one sent the model to its workers once more
        tree_a, tree_b = json.loads(a["state.json"])["tree"], json.loads(b["state.json"])["tree"]
        bytes_a, bytes_b = tree_a.pop("bytes"), tree_b.pop("bytes")
        assert tree_a == tree_b, rank
        assert all(x <= y for x, y in zip(bytes_a["__ckpt_tuple"], bytes_b["__ckpt_tuple"], strict=True))


@pytest.mark.parametrize("method, replicated", [("fmb", True), ("amb", True), ("fmb", False)])
def test_sync_resume_after_kill_9_continues_bit_for_bit(tmp_path, monkeypatch, method, replicated):
    """Replicated updates (every rank applies them: one host, CPU) and the master's broadcast of parameters."""
    if not replicated:
        monkeypatch.setenv("ANYTIMECTL_REPLICATED", "0")
    # amb: a time limit no round reaches, so every worker finishes all its micro-batches and the run repeats
    # (with a limit that cuts rounds short, the batch is whatever the clock allowed: no two runs are equal)
    extra = ["--partitions", "4", "--time-limit", "30"] if method == "amb" else []
    command = ["train", method, "--workers", "2", *SIM, *extra]
    straight, resumed, start = straight_and_resumed(tmp_path, command, 16, 6)
    assert metadata(resumed)["summary"]["replicated_updates"] is replicated
    assert_same_tables(straight, resumed, 16, 2)
    assert_same_final_state(straight, resumed, 16, 3)


#: the asynchronous run of the kill -9 test and the scheduler's signal test (tests/test_signal_resume.py), whose
#: straight run they share (conftest.py's shared_run)
ASYNC_AMB = ("train", "amb", "--protocol", "async", "--workers", "2", "--partitions", "4", *SIM)
ASYNC_LENGTH = ("--steps", "16", "--checkpoint-every", "6")


def test_async_amb_resume_after_kill_9_continues_from_the_checkpoint(shared_run, tmp_path):
    """Asynchronous: which contributions an update takes depends on when they arrive, so no two runs are equal,
    straight or resumed (two straight runs with the same seed differ the same way). What must hold: the resumed
    master continues from the checkpoint's model and counters, with the contributions that were in flight at the
    checkpoint (one to four per checkpoint in these runs) neither lost nor applied twice; the steps, the workers'
    contribution counts and the examples continue, and the losses follow the straight run's within the simulated
    noise and staleness."""
    straight, resumed, start = straight_and_resumed(tmp_path, list(ASYNC_AMB), 16, 6, shared_run)
    assert_async_resume_continues(straight, resumed, start, 16)


def assert_async_resume_continues(straight: Path, resumed: Path, start: int, steps: int) -> None:
    """An asynchronous run resumed from its checkpoint of `start` against the straight run: every step once, the
    clock and epochs go on, the losses after `start` within 40% of the straight run's at every step and 15% on
    average (the simulated noise and staleness; a run trained from scratch again would show the start's loss), and
    every contribution applied or queued exactly once (`assert_every_contribution_once`), the straight run's too."""
    master_a, master_b = table(straight, "master_stats"), table(resumed, "master_stats")
    assert master_b["step"].tolist() == list(range(1, steps + 1))
    assert master_b["time"].is_monotonic_increasing and master_b["epoch"].is_monotonic_increasing
    after_a = master_a[master_a.step > start]["loss"].to_numpy()
    after_b = master_b[master_b.step > start]["loss"].to_numpy()
    first_loss = master_b["loss"].iloc[0]
    assert after_b.max() < 0.8 * first_loss  # not trained from scratch again
    assert np.all(np.abs(after_b - after_a) <= 0.4 * after_a), (after_a, after_b)
    assert abs(after_b.mean() - after_a.mean()) <= 0.15 * after_a.mean()
    # the simulated model counts the examples it was trained on: at the end it holds exactly the examples of every
    # row in the tables, the stopped job's up to the checkpoint and the resumed job's after it
    workers = table(resumed, "worker_stats")
    final = engine_state(resumed, steps)
    params = final["engine"]["params"]
    progress = float(params[-2]) * (1 << 24) + float(params[-1])
    assert progress == final["master"]["examples"] == workers["num_samples"].sum()
    for rank, rows in workers.groupby("rank"):  # each worker's count of contributions goes on, never back
        assert rows["worker_step"].is_monotonic_increasing, rank
    assert_every_contribution_once(straight, steps, 2)
    assert_every_contribution_once(resumed, steps, 2)


def assert_every_contribution_once(run: Path, steps: int, workers: int) -> None:
    """An asynchronous run's tables and its last checkpoint (quiescent: taken after the stop) against what each
    worker handed over: every contribution, named by (worker, worker_step), is once either applied (a row of
    worker_stats) or in the master's queue (taken, not applied), for worker_step 1 to the worker's count; and the
    examples the master applied plus those queued are the examples the workers sent. Across a resume this says
    that the contributions in flight at the checkpoint were neither lost nor applied twice."""
    from anytimectl.protocols.async_master_worker import ASYNC_LAYOUT

    final = engine_state(run, steps)
    queue = final["master"]["queue"]
    assert not final["master"].get("in_flight")  # the last checkpoint is taken after the stop: nothing in flight
    workers_table = table(run, "worker_stats")
    number = ASYNC_LAYOUT["worker_step"]
    queued_rows = [(int(rank), row) for rank, row in zip(queue["ranks"], queue["rows"], strict=True)]
    queued_rows += [(int(rank), row) for _, rank, _, row in queue["held"]]
    for rank in range(1, workers + 1):
        sent = engine_state(run, steps, rank)["worker"]["contributions"]
        applied = workers_table[workers_table["rank"] == rank]["worker_step"].astype(int).tolist()
        queued = [int(row[number]) for r, row in queued_rows if r == rank]
        assert sorted(applied + queued) == list(range(1, sent + 1)), (rank, sorted(applied), sorted(queued), sent)
    queued_examples = float(queue["accumulated"][-2]) if queue["rows"] else 0.0
    queued_examples += sum(float(data[-2]) for _, _, data, _ in queue["held"])
    handed = sum(engine_state(run, steps, r)["worker"]["examples_sent"] for r in range(1, workers + 1))
    assert final["master"]["examples"] == workers_table["num_samples"].sum()
    assert final["master"]["examples"] + queued_examples == handed


def test_resume_refuses_another_method_protocol_worker_count_and_model_in_one_line(tmp_path):
    out = str(tmp_path)
    base = ["--workers", "2", *SIM, "--steps", "4", "--checkpoint-every", "2", "--out", out]
    anytimectl("train", "fmb", *base, "--name", "fmb")
    anytimectl("train", "amb", *base, "--partitions", "4", "--time-limit", "30", "--name", "amb")
    anytimectl("train", "amb", *base, "--partitions", "4", "--protocol", "async", "--name", "async")
    anytimectl("train", "fmb", *base, "--name", "small", "--sim-params", "1024")

    def refused(*args: str) -> str:
        result = anytimectl(*args, check=False)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("anytimectl: error:"), result.stderr
        assert "Traceback" not in result.stderr
        return lines[0]

    assert "fmb" in refused("train", "amb", "--resume", str(tmp_path / "fmb"), "--steps", "8")
    assert "workers" in refused("train", "fmb", "--resume", str(tmp_path / "fmb"), "--steps", "8", "--workers", "3")
    # a checkpoint copied from another run: the asynchronous protocol's into a synchronous run of the same method
    shutil.rmtree(tmp_path / "amb" / "checkpoints")
    shutil.copytree(tmp_path / "async" / "checkpoints", tmp_path / "amb" / "checkpoints")
    assert "protocol" in refused("train", "amb", "--resume", str(tmp_path / "amb"), "--steps", "8")
    # another model size
    shutil.rmtree(tmp_path / "small" / "checkpoints")
    shutil.copytree(tmp_path / "fmb" / "checkpoints", tmp_path / "small" / "checkpoints")
    assert "--sim-params" in refused("train", "fmb", "--resume", str(tmp_path / "small"), "--steps", "8")


def framework_straight_and_resumed(shared_run, tmp_path: Path, command: tuple[str, ...], steps: int,
                                   every: int) -> tuple[Path, Path]:
    """As `straight_and_resumed` for a framework backend, whose steps are too fast to kill a worker between two
    given checkpoints: the killed run is open-ended and the resumed one ends at `steps` (--steps may change on
    resume; the constant learning rate does not depend on it), so the checkpoint it continues from is whichever
    was the latest when the worker died. The straight run (`--steps steps --checkpoint-every steps`) is
    conftest.py's shared_run: tests/test_signal_resume.py compares against the same one."""
    out = str(tmp_path)
    straight = shared_run(*command, "--steps", str(steps), "--checkpoint-every", str(steps))
    resumed = tmp_path / "resumed"
    start = kill_after_checkpoint([*command, "--steps", "100000", "--checkpoint-every", str(every), "--out", out,
                                   "--name", "resumed"], resumed, every)
    assert every <= start < steps, start
    anytimectl(*command[:2], "--resume", str(resumed), "--steps", str(steps), "--quiet")
    meta = metadata(resumed)
    assert meta["status"] == "completed" and meta["summary"]["steps"] == steps
    assert [r["from_step"] for r in meta["resumes"]] == [start]
    return straight, resumed


#: the framework runs of the kill -9 tests and the scheduler's signal tests (tests/test_signal_resume.py), which
#: share their straight runs of FRAMEWORK_STEPS steps
TORCH_FMB = ("train", "fmb", "--backend", "torch", "--workers", "2", "--optimizer", "momentum", "--batch-size",
             "32", "--seed", "5", "--test-size", "50", "--log-every", "5", "--quiet")
TF_AMB = ("train", "amb", "--backend", "tensorflow", "--workers", "2", "--optimizer", "adam", "--batch-size", "32",
          "--partitions", "4", "--time-limit", "30", "--seed", "5", "--test-size", "50", "--log-every", "5", "--quiet")
FRAMEWORK_STEPS = 40


@pytest.mark.torch
@pytest.mark.timeout(900)  # three framework jobs of three ranks on two shared cores
def test_torch_fmb_resume_after_kill_9_continues_bit_for_bit(shared_run, tmp_path):
    """PyTorch: model, momentum and the generators (the digits CNN has dropout) of every rank."""
    straight, resumed = framework_straight_and_resumed(shared_run, tmp_path, TORCH_FMB, FRAMEWORK_STEPS, 5)
    assert_same_tables(straight, resumed, 40, 2)
    assert_same_final_state(straight, resumed, 40, 3)


@pytest.mark.timeout(900)
def test_tensorflow_amb_resume_after_kill_9_continues_bit_for_bit(shared_run, tmp_path):
    """TensorFlow: every model and optimizer variable (Adam's moments and step count) of every rank; AMB with a
    limit no round reaches (see the sim test)."""
    straight, resumed = framework_straight_and_resumed(shared_run, tmp_path, TF_AMB, FRAMEWORK_STEPS, 5)
    assert_same_tables(straight, resumed, 40, 2)
    assert_same_final_state(straight, resumed, 40, 3)


@pytest.mark.parametrize("protocol", ["sync", "async"])
def test_checkpoint_on_signal_saves_the_last_step_and_the_run_resumes_from_it(tmp_path, protocol):
    """A scheduler's warning signal (--checkpoint-on-signal, default SIGUSR1) to the launcher, without
    --checkpoint-every: every rank saves the step the master ended with, the run ends interrupted (exit 130) and
    --resume continues from that step."""
    run = tmp_path / "warned"
    args = ["train", "amb", "--protocol", protocol, "--workers", "2", "--partitions", "4", *SIM, "--steps",
            "100000", "--out", str(tmp_path), "--name", "warned"]
    process = subprocess.Popen([sys.executable, "-m", "anytimectl", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        master = run / "master_stats.csv"
        while not (master.is_file() and len(master.read_text().splitlines()) > 4):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGUSR1)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, stderr
    meta = metadata(run)
    assert meta["status"] == "interrupted"
    steps = meta["summary"]["steps"]
    point = checkpoints.latest(run)
    assert point is not None and point.step == steps and point.manifest["ranks"] == 3
    anytimectl("train", "amb", "--resume", str(run), "--steps", str(steps + 5), "--quiet")
    meta = metadata(run)
    assert meta["status"] == "completed" and meta["resumes"][0]["from_step"] == steps
    assert table(run, "master_stats")["step"].tolist() == list(range(1, steps + 6))
