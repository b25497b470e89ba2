"""The gossip update rules on flat buffers (the original's elastic_gossip_check and gossiping_sgd_check, in
numpy), the validation hold-out, and the command's checks that need no job."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import anytimectl, anytimectl_each, selected_argvs

from anytimectl.protocols.gossip import elastic_correction, holdout, pull_correction
from anytimectl.protocols.gossip_schedule import GossipSchedule
from anytimectl.runtime.errors import UsageError


def _asymmetric(size: int, n: int = 50) -> list[np.ndarray]:
    rng = np.random.default_rng(size)
    return [rng.standard_normal(n).astype(np.float32) * (r + 1) + r for r in range(size)]


def test_elastic_update_is_alpha_times_the_sum_over_partners():
    x = _asymmetric(4)
    rank, peer, requester = 1, 2, 0  # as the original's check: peer = r+1, requester = r-1
    for alpha in (0.05, 0.5, 0.95):
        s = elastic_correction(x[rank], [x[peer], x[requester]], alpha)
        assert np.allclose(s, alpha * ((x[rank] - x[peer]) + (x[rank] - x[requester])), atol=1e-5)


def test_elastic_with_alpha_half_and_one_partner_meets_at_the_midpoint():
    a, b = _asymmetric(2)
    new_a = a - elastic_correction(a, [b], 0.5)
    new_b = b - elastic_correction(b, [a], 0.5)
    assert np.allclose(new_a, (a + b) / 2, atol=1e-6) and np.allclose(new_b, new_a, atol=1e-6)


def test_elastic_exchanges_conserve_the_sum_of_parameters_over_workers():
    size = 7
    x = _asymmetric(size)
    schedule = GossipSchedule.create(size, seed=5, prob=0.5)
    for step in range(1, 40):
        total = np.sum(x, axis=0, dtype=np.float64)
        corrections = [elastic_correction(x[r], [x[p] for p in schedule.partners(step, r)], 0.3) for r in range(size)]
        x = [x[r] - corrections[r] for r in range(size)]
        assert np.allclose(np.sum(x, axis=0, dtype=np.float64), total, rtol=1e-5, atol=1e-4)


def test_pull_gossip_moves_the_initiator_halfway_and_not_the_peer():
    a, b = _asymmetric(2)
    s = pull_correction(a, b)
    assert np.allclose(s, (a - b) / 2, atol=1e-6)
    assert np.allclose(a - s, (a + b) / 2, atol=1e-6)


def test_holdout_is_fixed_and_disjoint():
    train, val = holdout(1437, 237)
    assert len(train) == 1200 and len(val) == 237
    assert not set(train) & set(val) and set(train) | set(val) == set(range(1437))
    again_train, again_val = holdout(1437, 237)
    assert (again_train == train).all() and (again_val == val).all()
    assert len(holdout(10, 0)[1]) == 0
    with pytest.raises(UsageError):
        holdout(10, 10)


@pytest.fixture(scope="module")
def bad_input_results(request):
    """Each selected case's real CLI in a fresh interpreter, started two at a time (helpers.anytimectl_each)."""
    return anytimectl_each(selected_argvs(request, {
        "test_bad_input_is_one_line_and_exit_2": lambda args, **_: ("train", "gossip", *args)}))


@pytest.mark.parametrize("args, message", [
    (["--method", "local", "--workers", "3"], "--method local runs one process"),
    (["--workers", "4", "--global-batch-size", "3"], "--global-batch-size 3 is split over 4 workers"),
    (["--batch-size", "8", "--global-batch-size", "32"], "give one"),
    (["--augment", "crop-flip-cutout"], "8x8 cutout"),  # digits are 8x8: refused before launching
    (["--momentum", "0", "--nesterov"], "--nesterov needs a positive --momentum"),
    (["--agg-prob", "1.5"], "1.5"),
    (["--method", "elasticgossip2"], "elasticgossip2"),
    (["--val-size", "1437"], "--val-size 1437"),
    (["--resume", "/nonexistent/run"], "not a run directory"),
    # options given with --resume are compared with the recorded ones (tests/test_resume_runs.py): the run comes first
    (["--resume", "/nonexistent/run", "--agg-prob", "0.5"], "--resume /nonexistent/run: not a run directory"),
])
def test_bad_input_is_one_line_and_exit_2(bad_input_results, args, message):
    result = bad_input_results[("train", "gossip", *args)]
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.slow
@pytest.mark.torch
def test_momentum_0_alone_means_plain_sgd(tmp_path):
    """The dataset's Nesterov default goes with its momentum; only an explicit --nesterov asks for momentum."""
    result = anytimectl("train", "gossip", "--method", "local", "--momentum", "0", "--steps", "2", "--json",
                        "--out", str(tmp_path), "--name", "plain", timeout=120)
    config = json.loads((tmp_path / "plain" / "metadata.json").read_text())["config"]
    assert result.returncode == 0 and config["momentum"] == 0 and config["nesterov"] is False


def test_help_lists_methods_and_the_originals_names():
    result = anytimectl("train", "gossip", "--help", env={"COLUMNS": "80"}, timeout=60)
    text = result.stdout
    for word in ("local", "nocomm", "allreduce", "elastic", "gossip", "--agg-prob", "--weighted-gossip",
                 "--elastic-alpha", "--anneal-milestones", "--checkpoint-every", "--resume", "--no-nesterov"):
        assert word in text, word
    assert max(len(line) for line in text.splitlines()) <= 80


def test_batch_size_is_per_worker_and_says_so_once(capsys, monkeypatch):
    """`train gossip --batch-size` is per worker, as in every command; it meant the total before, so the launching
    process says so in one line (a relaunched rank does not repeat it), once every check has passed (a refusal
    stays one line: tests/test_reliability_inputs.py)."""
    from anytimectl.cli.commands.train_gossip import EXPERIMENTS, _batches, _note_batch_size_changed
    from anytimectl.runtime.launch import RELAUNCHED

    digits = EXPERIMENTS["digits"]
    monkeypatch.delenv(RELAUNCHED, raising=False)
    assert _batches(8, None, digits, 4, 4) == (8, 32)
    assert capsys.readouterr().err == ""
    _note_batch_size_changed(8)
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "--batch-size 8 is per worker now" in note[0] and "--global-batch-size" in note[0]
    assert _batches(None, 32, digits, 4, 4) == (8, 32)
    assert _batches(None, None, digits, 4, 4) == (digits.batch_size // 4, digits.batch_size)
    assert _batches(None, 32, digits, None, 1) == (None, 32)  # your own mpiexec: the ranks split it
    assert _batches(8, None, digits, None, 1)[0] == 8
    capsys.readouterr()
    monkeypatch.setenv(RELAUNCHED, "1")
    _batches(8, None, digits, 4, 4)
    assert capsys.readouterr().err == ""
