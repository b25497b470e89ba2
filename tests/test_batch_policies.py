"""Each batch policy of `train dynamic` on scripted sequences of epoch losses and times (no MPI, no framework)."""

from __future__ import annotations

import pytest

from anytimectl.protocols.batch_policies import (
    POLICIES,
    PeriodStats,
    PolicyOptions,
    make_policy,
    proportional,
    training_progress,
)
from anytimectl.runtime.errors import UsageError


def epoch(index: int, loss: float = 1.0, time: float = 1.0, workers: int = 2,
          examples: tuple[float, ...] | None = None, compute: tuple[float, ...] | None = None) -> PeriodStats:
    return PeriodStats(index=index, loss=loss, times=(time,) * workers,
                       examples=examples or (100.0,) * workers, compute=compute or (1.0,) * workers)


def run(policy, epochs: list[PeriodStats]) -> list[int]:
    """The per-worker batch after each epoch (uniform policies: every worker the same)."""
    out = []
    for stats in epochs:
        decision = policy.decide(stats)
        assert decision.batches == policy.batches
        assert len(set(decision.batches)) == 1
        out.append(decision.batches[0])
    return out


def test_static_never_changes():
    policy = make_policy("static", 3, 32)
    assert run(policy, [epoch(i, loss=1 / i, time=i, workers=3) for i in range(1, 6)]) == [32] * 5
    assert policy.global_batch == 96


def test_increasing_doubles_every_e_epochs_up_to_the_maximum():
    policy = make_policy("increasing", 2, 16, PolicyOptions(min_batch=4, max_batch=128, every=2))
    assert run(policy, [epoch(i) for i in range(1, 11)]) == [16, 32, 32, 64, 64, 128, 128, 128, 128, 128]


def test_decreasing_halves_down_to_the_minimum():
    policy = make_policy("decreasing", 2, 64, PolicyOptions(min_batch=8, max_batch=128))
    assert run(policy, [epoch(i) for i in range(1, 6)]) == [32, 16, 8, 8, 8]


def test_loss_score_updates_the_previous_score_and_follows_the_tolerance():
    # score = 0.8 loss + 0.2 time; tolerance 0.1
    policy = make_policy("loss", 2, 32, PolicyOptions(tolerance=0.1, min_batch=4, max_batch=128))
    sequence = [
        epoch(1, loss=2.0, time=1.0),  # 1.80: the first score is only the reference
        epoch(2, loss=1.5, time=1.0),  # 1.40 < 1.80 - 0.1: double
        epoch(3, loss=1.45, time=1.0),  # 1.36 within 0.1 of 1.40 (the UPDATED previous, not 1.80): keep
        epoch(4, loss=1.0, time=1.0),  # 1.00 < 1.36 - 0.1: double
        epoch(5, loss=1.2, time=1.5),  # 1.26 > 1.00 + 0.1: halve
        epoch(6, loss=1.2, time=1.5),  # equal: keep
    ]
    assert run(policy, sequence) == [32, 64, 64, 128, 64, 64]
    assert policy.previous == pytest.approx(0.8 * 1.2 + 0.2 * 1.5)


def test_loss_score_weights_are_the_options():
    policy = make_policy("loss", 2, 32, PolicyOptions(loss_weight=0.0, time_weight=1.0, tolerance=0.5))
    assert run(policy, [epoch(1, loss=9, time=5), epoch(2, loss=1, time=6), epoch(3, loss=9, time=4)]) == [
        32, 16, 32]  # only the time counts: 5 -> 6 is worse (halve), 6 -> 4 better (double)


def test_loss_score_uses_the_mean_time_over_every_worker_whatever_their_number():
    policy = make_policy("loss", 5, 32, PolicyOptions(loss_weight=0, time_weight=1, tolerance=0.5))
    policy.decide(PeriodStats(1, 1.0, (1.0,) * 5, (10.0,) * 5, (1.0,) * 5))
    decision = policy.decide(PeriodStats(2, 1.0, (1.0, 1.0, 1.0, 1.0, 6.0), (10.0,) * 5, (1.0,) * 5))
    assert decision.batches == (16,) * 5  # mean 2.0 > 1.0 + 0.5 (a hard-coded 4 ranks would miss the fifth)


def test_training_progress_has_its_one_over_k():
    assert training_progress([1.0]) == 0.0
    assert training_progress([1.0, 1.0, 1.0]) == 0.0
    assert training_progress([1.2, 1.1, 1.0]) == pytest.approx(1000 * (3.3 / 3.0 - 1))  # 100, not 2300


def test_progress_doubles_when_stalled_or_over_the_time_cap_and_halves_while_progressing():
    policy = make_policy("progress", 2, 32, PolicyOptions(progress_k=3, progress_threshold=10,
                                                          target_epoch_time=60, min_batch=4, max_batch=256))
    sequence = [
        epoch(1, loss=2.0),  # one loss: P = 0 < 10, stalled by definition: double
        epoch(2, loss=1.0),  # P_2 = 1000 (1.5 / 1 - 1) = 500: halve
        epoch(3, loss=0.5),  # strip (2, 1, .5): large: halve
        epoch(4, loss=0.5, time=61),  # strip (1, .5, .5): P = 333 but the epoch took 61 s > 60: double
        epoch(5, loss=0.5),  # strip (.5, .5, .5): P = 0: double
        epoch(6, loss=0.501),  # strip (.5, .5, .501): P = 0.67 < 10: double
        epoch(7, loss=0.1),  # strip (.5, .501, .1): P = 3670: halve
    ]
    assert run(policy, sequence) == [64, 32, 16, 32, 64, 128, 64]
    assert list(policy.losses) == [0.5, 0.501, 0.1]


def test_progress_keeps_integer_batches_within_the_bounds():
    policy = make_policy("progress", 2, 5, PolicyOptions(min_batch=3, max_batch=9))
    batches = run(policy, [epoch(1, loss=1.0), epoch(2, loss=0.5), epoch(3, loss=0.2), epoch(4, loss=0.1)])
    assert batches == [9, 4, 3, 3]
    assert all(isinstance(b, int) for b in batches)


def test_probe_tries_doublings_then_keeps_the_fastest_epoch():
    policy = make_policy("probe", 2, 16, PolicyOptions(probe_sizes=4, max_batch=128))
    assert policy.candidates == (16, 32, 64, 128)
    times = [9.0, 7.0, 8.0, 10.0, 1.0, 1.0]  # per epoch at 16, 32, 64, 128, then whatever comes
    assert run(policy, [epoch(i + 1, time=t) for i, t in enumerate(times)]) == [32, 64, 128, 32, 32, 32]
    assert policy.chosen == 32


def test_probe_with_several_epochs_per_size_averages_them():
    policy = make_policy("probe", 2, 16, PolicyOptions(probe_sizes=2, every=2))
    times = [3.0, 1.0, 2.5, 2.5, 0.1]  # 16: mean 2.0; 32: mean 2.5 -> keep 16
    assert run(policy, [epoch(i + 1, time=t) for i, t in enumerate(times)]) == [16, 32, 32, 16, 16]


def test_probe_sizes_stop_at_the_maximum():
    assert make_policy("probe", 1, 48, PolicyOptions(probe_sizes=4, max_batch=128)).candidates == (48, 96, 128)


def test_dbs_gives_each_worker_a_batch_proportional_to_its_throughput():
    policy = make_policy("dbs", 2, 64)
    # worker 2 computes at half the speed of worker 1
    decision = policy.decide(epoch(1, examples=(64.0, 64.0), compute=(1.0, 2.0)))
    assert decision.batches == (85, 43)  # 2:1 of the global 128, largest remainder
    assert policy.global_batch == 128
    # next epoch: the times equalise, so the split stays
    decision = policy.decide(epoch(2, examples=(85.0, 43.0), compute=(1.33, 1.34)))
    assert sum(decision.batches) == 128 and abs(decision.batches[0] - 85) <= 1


def test_dbs_with_four_workers_and_one_at_a_third_of_the_speed():
    policy = make_policy("dbs", 4, 30)
    decision = policy.decide(epoch(1, workers=4, examples=(30.0,) * 4, compute=(1.0, 1.0, 3.0, 1.0)))
    assert decision.batches == (36, 36, 12, 36)


def test_dbs_keeps_every_worker_at_its_minimum():
    policy = make_policy("dbs", 3, 10, PolicyOptions(min_batch=4))
    decision = policy.decide(epoch(1, workers=3, examples=(10.0,) * 3, compute=(1.0, 1.0, 100.0)))
    assert decision.batches == (13, 13, 4)


def test_dbs_window_is_the_option():
    assert make_policy("dbs", 2, 8, PolicyOptions(window=5)).window == 5
    assert make_policy("loss", 2, 8, PolicyOptions(window=5, min_batch=4)).window is None


def test_proportional_rounding_is_exact_and_deterministic():
    assert proportional(10, [1, 1, 1]) == (4, 3, 3)
    assert proportional(7, [0.0, 1.0]) == (4, 3)  # a rank with nothing measured: split evenly
    assert proportional(3, [1, 1000, 1000], floor=5) == (1, 1, 1)  # floors lowered to what the total allows
    for total in (1, 17, 1000):
        assert sum(proportional(total, [0.3, 2.0, 7.7, 1.1])) == total


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_is_registered_and_starts_uniform(name):
    policy = make_policy(name, 3, 32)
    assert policy.batches == (32, 32, 32)


@pytest.mark.parametrize(("name", "options", "fragment"), [
    ("increasing", PolicyOptions(min_batch=64, max_batch=128), "--batch-size 32"),
    ("decreasing", PolicyOptions(min_batch=8, max_batch=4), "--min-batch 8"),
    ("increasing", PolicyOptions(every=0), "--every 0"),
    ("loss", PolicyOptions(tolerance=-1), "--tolerance"),
    ("progress", PolicyOptions(progress_k=0), "--progress-k"),
    ("progress", PolicyOptions(target_epoch_time=0), "--target-epoch-time"),
    ("probe", PolicyOptions(probe_sizes=0), "--probe-sizes"),
    ("dbs", PolicyOptions(window=0), "--window"),
])
def test_bad_options_are_usage_errors(name, options, fragment):
    with pytest.raises(UsageError, match=fragment):
        make_policy(name, 2, 32, options)


def test_unknown_policy():
    with pytest.raises(UsageError, match="static"):
        make_policy("random", 2, 32)
