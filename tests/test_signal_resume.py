"""Exact resume after the scheduler's signal, through the real command line and real MPI jobs: SIGUSR1 (the
default `--checkpoint-on-signal`) or SIGTERM (`--checkpoint-on-signal TERM`) sent to the command the user started,
mid-run; the run checkpoints the step it ends with and exits 130 `interrupted`; resumed, it finishes, and every step
after the signal's has the loss of the same run done in one go, and the final state is bit-identical (the last
checkpoints compared array by array, on the CPU), as the kill -9 tests (test_amb_fmb_checkpoints.py,
test_resume_runs.py) check for a killed rank.

The signal is sent once the run's table holds a given step (not after a sleep), so where the run stops depends on
the machine's load but always lies between that step and the end."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import anytimectl, metadata, signal_mid_run, table, table_rows
from test_amb_fmb_checkpoints import SIM, assert_same_final_state
from test_resume_runs import _assert_equal_states, _final_state

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


def _resume(command: str, run: Path, stopped: int, steps: int) -> None:
    anytimectl(*command.split(), "--resume", str(run), "--quiet")
    meta = metadata(run)
    assert meta["status"] == "completed" and meta["summary"]["steps"] == steps
    assert [r["from_step"] for r in meta["resumes"]] == [stopped]
    assert meta["resumes"][0]["previous_status"] == "interrupted"


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
    straight = shared_run(*command)
    run = tmp_path / "signalled"
    stopped = signalled([*command, *chosen, "--slow", "2:25", "--out", str(tmp_path), "--name", "signalled"],
                             run, sig)
    assert AFTER <= stopped < steps
    _resume("compress train", run, stopped, steps)
    assert_same_rows(straight, run, steps, stopped, 2,
                     ("master_step", "rank", "num_samples", "batch_size", "payload_bytes"))
    for x, y in zip(_final_state(straight, steps), _final_state(run, steps), strict=True):
        _assert_equal_states(x["engine"], y["engine"], "engine")
        _assert_equal_states(x["exchange"], y["exchange"], "exchange")


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
