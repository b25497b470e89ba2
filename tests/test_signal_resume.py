"""Exact resume after the scheduler's signal, through the real command line and real MPI jobs: SIGUSR1 (the
default `--checkpoint-on-signal`) or SIGTERM (`--checkpoint-on-signal TERM`) sent to the command the user started,
mid-run; the run checkpoints the step it ends with and exits 130 `interrupted`; resumed, it finishes, and every step
after the signal's has the loss of the same run done in one go, and the final state is bit-identical (the last
checkpoints compared array by array, on the CPU), as the kill -9 tests (test_amb_fmb_checkpoints.py,
test_resume_runs.py) check for a killed rank. The one exception is the asynchronous protocol, which no run repeats:
there every contribution must be applied or queued exactly once and the losses follow the straight run's.
Where a kill -9 test runs the same straight run, the two share it (conftest.py's shared_run).

The signal is sent once the run's table holds a given step (not after a sleep), so where the run stops depends on
the machine's load but always lies between that step and the end."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import anytimectl, metadata, signal_mid_run, table, table_rows
from test_amb_fmb_checkpoints import (
    ASYNC_AMB,
    ASYNC_LENGTH,
    FRAMEWORK_STEPS,
    SIM,
    TORCH_FMB,
    assert_async_resume_continues,
    assert_same_final_state,
)
from test_resume_runs import DBS_STRAIGHT, N, _assert_equal_states, _final_state, compress_straight

from anytimectl.runtime import checkpoints

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

#: the step whose row in master_stats.csv triggers the signal
AFTER = 4


def signalled(args: list[str], run: Path, sig: str) -> int:
    """`helpers.signal_mid_run` at step AFTER; the tables then hold exactly the steps the run made."""
    stopped = signal_mid_run(args, run, sig, after=AFTER)
    assert table_rows(run) == stopped
    return stopped


def assert_same_rows(straight: Path, resumed: Path, steps: int, stopped: int, workers: int,
                     worker_columns: tuple[str, ...]) -> None:
    """The tables of the run stopped at `stopped` and resumed against the straight run's: every step once, the
    same losses, learning rates and epochs at every step, the same test losses where the straight run evaluated,
    the same worker rows. The one difference allowed: a run that ends evaluates its last step, so the interrupted
    run has a test loss at `stopped` too (the evaluation changes nothing in the training: the losses after it are
    equal)."""
    a, b = table(straight, "master_stats"), table(resumed, "master_stats")
    assert b["step"].tolist() == list(range(1, steps + 1)) and b["time"].is_monotonic_increasing
    for column in ("loss", "learning_rate", "epoch"):
        assert a[column].tolist() == b[column].tolist(), column
    evaluated_a, evaluated_b = a.dropna(subset=["test_loss"]), b.dropna(subset=["test_loss"])
    assert set(evaluated_b["step"]) - set(evaluated_a["step"]) <= {stopped}
    both = evaluated_a.merge(evaluated_b, on="step", suffixes=("_a", "_b"))
    assert len(both) == len(evaluated_a) and both["test_loss_a"].tolist() == both["test_loss_b"].tolist()
    wa, wb = table(straight, "worker_stats"), table(resumed, "worker_stats")
    assert len(wb) == steps * workers
    for column in worker_columns:
        assert wa[column].equals(wb[column]), column


def _resume(command: str, run: Path, stopped: int, steps: int, earlier: tuple[int, ...] = ()) -> None:
    """Resume the interrupted run to its end; `earlier`: the steps of resumes before the signalled segment."""
    anytimectl(*command.split(), "--resume", str(run), "--quiet")
    meta = metadata(run)
    assert meta["status"] == "completed" and meta["summary"]["steps"] == steps
    assert [r["from_step"] for r in meta["resumes"]] == [*earlier, stopped]
    assert meta["resumes"][-1]["previous_status"] == "interrupted"


@pytest.mark.parametrize("sig", ["USR1", "TERM"])
def test_sync_amb_stopped_by_the_schedulers_signal_resumes_bit_for_bit(shared_run, tmp_path, sig):
    """Simulated AMB, synchronous, with a time limit no round reaches (see test_amb_fmb_checkpoints.py: with a
    limit that cuts rounds, the batches are whatever the clock allowed and no two runs are equal). The straight
    run, which no signal reaches, is one for both signals (conftest.py's shared_run)."""
    steps = 40
    chosen = [] if sig == "USR1" else ["--checkpoint-on-signal", sig]
    command = ["train", "amb", "--workers", "2", *SIM, "--partitions", "4", "--time-limit", "30", "--steps",
               str(steps), "--checkpoint-every", str(steps)]
    straight = shared_run(*command)
    run = tmp_path / "signalled"
    stopped = signalled([*command, *chosen, "--out", str(tmp_path), "--name", "signalled"], run, sig)
    assert AFTER <= stopped < steps
    _resume("train amb", run, stopped, steps)
    assert_same_rows(straight, run, steps, stopped, 2, ("master_step", "rank", "num_samples", "partitions_done"))
    assert metadata(run)["summary"]["examples"] == metadata(straight)["summary"]["examples"]
    assert_same_final_state(straight, run, steps, 3)


@pytest.mark.torch
@pytest.mark.timeout(900)  # three torch jobs of two ranks on two shared cores
@pytest.mark.parametrize("sig", ["USR1", "TERM"])
def test_compress_topk_ef_stopped_by_the_schedulers_signal_resumes_bit_for_bit(shared_run, tmp_path, sig):
    """compress train, top-k 5% with error feedback: the model, the optimizer and every rank's error-feedback
    memory. `--slow 2:25` (it only sleeps: no arithmetic changes) makes the signalled run's steps long enough for
    the signal to land well before its end. The straight run is one for both signals (conftest.py's shared_run)."""
    steps = 16
    chosen = [] if sig == "USR1" else ["--checkpoint-on-signal", sig]
    command = ["compress", "train", "--compressor", "topk", "--ratio", "0.05", "--error-feedback", "--workers", "2",
               "--test-size", "50", "--log-every", "4", "--quiet", "--steps", str(steps), "--checkpoint-every",
               str(steps)]
    _compress_signalled_matches_straight(shared_run(*command), [*command, *chosen], tmp_path, sig, steps)


def test_sync_fmb_stopped_by_the_schedulers_signal_resumes_bit_for_bit(tmp_path):
    """Simulated FMB, synchronous, SIGUSR1 (cheap: no framework)."""
    steps = 40
    command = ["train", "fmb", "--workers", "2", *SIM, "--steps", str(steps), "--checkpoint-every", str(steps),
               "--out", str(tmp_path)]
    anytimectl(*command, "--name", "straight")
    run = tmp_path / "signalled"
    stopped = signalled([*command, "--name", "signalled"], run, "USR1")
    assert AFTER <= stopped < steps
    _resume("train fmb", run, stopped, steps)
    assert_same_rows(tmp_path / "straight", run, steps, stopped, 2, ("master_step", "rank", "num_samples"))
    assert_same_final_state(tmp_path / "straight", run, steps, 3)


@pytest.mark.torch
@pytest.mark.timeout(900)
def test_elastic_gossip_stopped_by_the_schedulers_signal_resumes_bit_for_bit(tmp_path):
    """train gossip, elastic averaging with p = 1/2, SIGTERM with --checkpoint-on-signal TERM: the models, momentum
    and data positions of every worker; the partners follow from (seed, step). The ranks of a gossip run may be up
    to 16 updates apart, and an agreed stop lands up to 16 updates after the signal: a run of 64 steps (not slowed:
    a slowed rank makes the others run ahead to that window's end)."""
    steps = 64
    command = ["train", "gossip", "--method", "elastic", "--agg-prob", "0.5", "--workers", "2", "--test-size", "50",
               "--log-every", "8", "--quiet", "--steps", str(steps), "--checkpoint-every", str(steps),
               "--checkpoint-on-signal", "TERM", "--out", str(tmp_path)]
    anytimectl(*command, "--name", "straight")
    run = tmp_path / "signalled"
    stopped = signalled([*command, "--name", "signalled"], run, "TERM")
    assert AFTER <= stopped < steps
    _resume("train gossip", run, stopped, steps)
    straight = tmp_path / "straight"
    assert_same_rows(straight, run, steps, stopped, 2, ("master_step", "rank", "partners", "bytes_sent"))
    for x, y in zip(_final_state(straight, steps), _final_state(run, steps), strict=True):
        _assert_equal_states(x, y, "state")


@pytest.mark.torch
@pytest.mark.timeout(900)
def test_powersgd_stopped_by_the_schedulers_signal_resumes_bit_for_bit(shared_run, tmp_path):
    """compress train with PowerSGD rank 2 and its error feedback: the model, the optimizer, every rank's
    error-feedback memory, Q and its seed position. The straight run is the kill -9 test's
    (test_resume_runs.py, conftest.py's shared_run); `--slow 2:25` only sleeps."""
    args = compress_straight("powersgd")
    _compress_signalled_matches_straight(shared_run(*args), args, tmp_path, "USR1", 2 * N)


def _compress_signalled_matches_straight(straight: Path, command: list[str], tmp_path: Path, sig: str,
                                         steps: int) -> None:
    """`compress train COMMAND`, slowed (`--slow 2:25` only sleeps), stopped by SIG<sig> once step AFTER is in its
    table and resumed to `steps`: its rows after the stop and its final state (the model, the optimizer and the
    exchange's memory) are the straight run's, bit for bit."""
    run = tmp_path / "signalled"
    stopped = signalled([*command, "--slow", "2:25", "--out", str(tmp_path), "--name", "signalled"], run, sig)
    assert AFTER <= stopped < steps
    _resume("compress train", run, stopped, steps)
    assert_same_rows(straight, run, steps, stopped, 2,
                     ("master_step", "rank", "num_samples", "batch_size", "payload_bytes"))
    for x, y in zip(_final_state(straight, steps), _final_state(run, steps), strict=True):
        _assert_equal_states(x["engine"], y["engine"], "engine")
        _assert_equal_states(x["exchange"], y["exchange"], "exchange")


@pytest.mark.torch
@pytest.mark.timeout(900)
def test_dynamic_dbs_stopped_by_the_schedulers_signal_resumes_bit_for_bit(shared_run, tmp_path):
    """train dynamic --policy dbs with SIGTERM (--checkpoint-on-signal TERM). dbs decides the batches from measured
    throughputs, so two separate runs may decide differently (test_resume_runs.py): the signalled run shares the
    straight run's history up to its checkpoint of N, where dbs has just decided. It is a copy of the straight run
    holding only that checkpoint, and its master table cut there (what a run killed right after it leaves),
    resumed with the signal sent once step N + 1 is in the table, then resumed again to the end: every step after
    the signal's has the straight run's loss, batches and rows, and the model and optimizer end bit for bit the
    same. No decision falls after N before the end."""
    steps = 2 * N
    straight = shared_run(*DBS_STRAIGHT)
    run = tmp_path / "signalled"
    shutil.copytree(straight, run)
    shutil.rmtree(checkpoints.step_dir(run, steps))
    master = run / "master_stats.csv"
    master.write_text("".join(master.read_text().splitlines(keepends=True)[:N + 1]))
    stopped = signal_mid_run(["train", "dynamic", "--resume", str(run), "--checkpoint-on-signal", "TERM", "--quiet"],
                             run, "TERM", after=N + 1)
    assert table_rows(run) == stopped and N + 1 <= stopped < steps
    _resume("train dynamic", run, stopped, steps, earlier=(N,))
    assert_same_rows(straight, run, steps, stopped, 2, ("master_step", "rank", "num_samples", "batch_size"))
    workers = table(straight, "worker_stats")
    after = workers[workers["master_step"] > N]["batch_size"].tolist()
    assert after[:2] != [16, 16] and sum(after[:2]) == 32  # dbs decided at N: the resumed runs kept it
    for x, y in zip(_final_state(straight, steps), _final_state(run, steps), strict=True):
        _assert_equal_states(x["engine"], y["engine"], "engine")


def test_async_amb_stopped_by_the_schedulers_signal_resumes_with_every_contribution_once(shared_run, tmp_path):
    """Simulated asynchronous AMB: no two asynchronous runs are equal (which contributions an update takes depends
    on when they arrive; see test_amb_fmb_checkpoints.py), so the comparison is what must hold: the resumed run
    goes on from the stop's checkpoint (taken after the stop, when the master has taken everything handed over),
    its losses follow the straight run's within the simulated noise and staleness, and every contribution a
    worker handed over is applied or queued exactly once. The straight run is the kill -9 test's."""
    straight = shared_run(*ASYNC_AMB, *ASYNC_LENGTH)
    steps = int(ASYNC_LENGTH[1])
    run = tmp_path / "signalled"
    stopped = signalled([*ASYNC_AMB, *ASYNC_LENGTH, "--out", str(tmp_path), "--name", "signalled"], run, "USR1")
    assert AFTER <= stopped < steps
    _resume("train amb", run, stopped, steps)
    assert_async_resume_continues(straight, run, stopped, steps)


def _framework_signalled(shared_run, tmp_path: Path, command: tuple[str, ...], sig: str) -> tuple[Path, Path, int]:
    """The kill -9 test's straight run of `command` (test_amb_fmb_checkpoints.py, shared) and the same run
    stopped by `sig` and resumed to its end."""
    length = ("--steps", str(FRAMEWORK_STEPS), "--checkpoint-every", str(FRAMEWORK_STEPS))
    straight = shared_run(*command, *length)
    chosen = [] if sig == "USR1" else ["--checkpoint-on-signal", sig]
    run = tmp_path / "signalled"
    stopped = signalled([*command, *length, *chosen, "--out", str(tmp_path), "--name", "signalled"], run, sig)
    assert AFTER <= stopped < FRAMEWORK_STEPS
    _resume(" ".join(command[:2]), run, stopped, FRAMEWORK_STEPS)
    return straight, run, stopped


@pytest.mark.torch
@pytest.mark.timeout(900)
def test_torch_fmb_stopped_by_the_schedulers_signal_resumes_bit_for_bit(shared_run, tmp_path):
    """PyTorch FMB with momentum, SIGUSR1: model, momentum and the generators (dropout) of every rank."""
    straight, run, stopped = _framework_signalled(shared_run, tmp_path, TORCH_FMB, "USR1")
    assert_same_rows(straight, run, FRAMEWORK_STEPS, stopped, 2, ("master_step", "rank", "num_samples"))
    assert_same_final_state(straight, run, FRAMEWORK_STEPS, 3)

