"""Peer selection and partner sets of train gossip, ported from the original's test_pairwise.py (its hypothesis
property test becomes an exhaustive sweep over world sizes, seeds, updates and the edges of U), plus the
invariants of deriving every rank's choice without any communication."""

from __future__ import annotations

import numpy as np
import pytest

from anytimectl.protocols.gossip_schedule import (
    NO_PEER,
    GossipSchedule,
    location_weights,
    mask_partners,
    partner_mask,
    partners_of,
    uniform_peer,
    weighted_peer,
)

EDGES = (0.0, 1e-12, 0.5, 1 - 1e-12, np.nextafter(1.0, 0.0))


@pytest.mark.parametrize("size", range(2, 40))
def test_uniform_peer_is_never_the_worker_itself_and_reaches_every_other(size):
    rng = np.random.default_rng(size)
    draws = np.concatenate([EDGES, rng.random(400)])
    for rank in range(size):
        peers = uniform_peer(rank, size, draws)
        assert peers.dtype.kind == "i"
        assert ((peers >= 0) & (peers < size)).all()
        assert (peers != rank).all()
    # a fine grid of U reaches every other worker exactly equally often
    grid = (np.arange(size - 1) + 0.5) / (size - 1)
    assert sorted(uniform_peer(0, size, grid).tolist()) == list(range(1, size))


@pytest.mark.parametrize("size", [2, 3, 5, 8, 17, 64])
@pytest.mark.parametrize("weighted", [False, True])
def test_scheduled_choices_are_never_self_and_initiate_at_the_given_rate(size, weighted):
    schedule = GossipSchedule.create(size, seed=3, prob=0.25, weighted=weighted, penalty=2.0)
    chosen = np.stack([schedule.choices(step) for step in range(1, 801)])
    ranks = np.arange(size)
    assert not (chosen == ranks).any()
    assert ((chosen == NO_PEER) | ((chosen >= 0) & (chosen < size))).all()
    rate = (chosen != NO_PEER).mean()
    assert abs(rate - 0.25) < 4 * np.sqrt(0.25 * 0.75 / chosen.size)


def test_weighted_selection_follows_its_weights():
    size, steps = 6, 20000
    schedule = GossipSchedule.create(size, seed=11, prob=1.0, weighted=True, penalty=1.0)
    weights = location_weights(size, 11, 1.0)
    assert np.allclose(weights.sum(axis=1), 1.0) and np.all(np.diag(weights) == 0)
    assert np.allclose(schedule.weights, weights)
    counts = np.zeros((size, size))
    for step in range(1, steps + 1):
        chosen = schedule.choices(step)
        counts[np.arange(size), chosen] += 1
    frequencies = counts / steps
    # every frequency within 4 standard errors of its weight
    assert (np.abs(frequencies - weights) <= 4 * np.sqrt(weights * (1 - weights) / steps) + 1e-12).all()


def test_weighted_selection_prefers_near_workers_more_with_a_larger_penalty():
    near = location_weights(8, 5, 4.0)
    flat = location_weights(8, 5, 0.0)
    assert np.allclose(flat[~np.eye(8, dtype=bool)], 1 / 7)  # penalty 0: uniform over the others
    for rank in range(8):
        assert near[rank].argmax() == location_weights(8, 5, 1.0)[rank].argmax()
        assert near[rank].max() > location_weights(8, 5, 1.0)[rank].max()


def test_weighted_peer_never_lands_on_itself_at_the_interval_edges():
    weights = location_weights(5, 0, 1.0)
    for rank in range(5):
        for u in EDGES:
            assert weighted_peer(rank, weights, u) != rank


def test_partner_sets_are_peer_plus_requesters_and_symmetric():
    for size in (2, 3, 4, 7, 16):
        schedule = GossipSchedule.create(size, seed=1, prob=0.5)
        for step in range(1, 200):
            chosen = schedule.choices(step)
            for rank in range(size):
                expected = {int(j) for j in np.flatnonzero(chosen == rank)}
                if chosen[rank] != NO_PEER:
                    expected.add(int(chosen[rank]))
                partners = schedule.partners(step, rank)
                assert set(partners) == expected and rank not in partners
                assert list(partners) == sorted(partners)
                for other in partners:  # j in P_i exactly when i in P_j
                    assert rank in schedule.partners(step, other)
                assert schedule.peer(step, rank) == chosen[rank]
                assert set(schedule.requesters(step, rank)) == {int(j) for j in np.flatnonzero(chosen == rank)}


def test_every_rank_derives_the_same_choices_from_seed_and_update_alone():
    """What makes the collective unnecessary: a fresh schedule on any rank, at any time, in any order of updates,
    gives the same choices; another seed gives others."""
    a = GossipSchedule.create(9, seed=42, prob=0.3, weighted=True)
    b = GossipSchedule.create(9, seed=42, prob=0.3, weighted=True)
    forward = [a.choices(step) for step in range(1, 300)]
    backward = [b.choices(step) for step in reversed(range(1, 300))][::-1]
    assert all((x == y).all() for x, y in zip(forward, backward, strict=True))
    other = GossipSchedule.create(9, seed=43, prob=0.3, weighted=True)
    assert any((x != other.choices(step)).any() for step, x in enumerate(forward, start=1))


def test_agg_period_and_probability():
    schedule = GossipSchedule.create(4, seed=0, prob=1.0, period=3)
    for step in range(1, 50):
        chosen = schedule.choices(step)
        if step % 3:
            assert (chosen == NO_PEER).all()
        else:
            assert (chosen != NO_PEER).all()  # prob 1: everyone initiates, as in the original's init_comm_check
    assert (GossipSchedule.create(4, seed=0, prob=0.0).choices(7) == NO_PEER).all()
    assert (GossipSchedule.create(1, seed=0).choices(1) == NO_PEER).all()  # one worker: nobody to talk to
    with pytest.raises(ValueError):
        GossipSchedule.create(4, seed=0, prob=1.5)


def test_partner_masks_round_trip():
    for partners in [(), (0,), (1, 3), tuple(range(52)), (5, 51)]:
        assert mask_partners(partner_mask(partners)) == list(partners)
    assert partners_of(np.array([1, NO_PEER, 1]), 1) == (0, 2)
    assert partners_of(np.array([1, 0]), 0) == (1,)  # chose each other: one partner, once
