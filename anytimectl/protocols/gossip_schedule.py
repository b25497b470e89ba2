"""Who gossips with whom in each round, known to every rank without asking anyone.

The original made every worker join a global all_gather (with barriers) every round just to learn which workers
had chosen it. Here each rank derives every rank's choice for a round from a generator that all ranks seed alike,
with (--seed, round), so each knows its partners at once and only partners talk, point to point: a straggler
delays only the workers that gossip with it.

The draws are the original's:
- every `period` updates, each worker initiates with probability `prob` (Bernoulli);
- uniform: peer = (floor(U * (W - 1)) + 1 + rank) mod W, so never the worker itself;
- weighted: the workers get random locations on the unit square (one draw per run, from --seed), and worker i
  picks j != i with probability proportional to 1 / (distance(i, j) + 1e-5) ** penalty, by cumulative intervals.

Partners (elastic gossip): P_i = {the peer i chose} U {j : j chose i}, a set, so j is in P_i exactly when i is in
P_j and every pair exchanges once. Pull gossip uses the two halves apart: i receives from its peer and sends to
each of its requesters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: No gossip from this worker in this round.
NO_PEER = -1
#: Tags that keep the schedule's generators apart from every other stream seeded by --seed.
_CHOICE_STREAM = 0x6055_1D
_LOCATION_STREAM = 0x6055_10C
#: The original's guard against a zero distance.
DISTANCE_EPSILON = 1e-5


def uniform_peer(rank: int, size: int, u: float | np.ndarray) -> int | np.ndarray:
    """The original's uniform pick from U in [0, 1): one of the other size - 1 workers, never `rank`."""
    return (np.floor(np.asarray(u) * (size - 1)).astype(np.int64) + 1 + rank) % size


def location_weights(size: int, seed: int, penalty: float) -> np.ndarray:
    """Row-stochastic (size, size) peer weights from random locations on the unit square; zero diagonal."""
    points = np.random.default_rng([seed, _LOCATION_STREAM]).random((size, 2))
    distance = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    weights = 1.0 / (distance + DISTANCE_EPSILON) ** penalty
    np.fill_diagonal(weights, 0.0)
    return weights / weights.sum(axis=1, keepdims=True)


def weighted_peer(rank: int, weights: np.ndarray, u: float) -> int:
    """The peer whose cumulative interval of row `rank` holds U (never `rank`: its interval is empty)."""
    row = weights[rank]
    cumulative = np.cumsum(row)
    peer = int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))
    if peer >= len(row) or row[peer] == 0:  # u * total rounded onto the last boundary
        peer = int(np.flatnonzero(row > 0)[-1])
    return peer


@dataclass(frozen=True)
class GossipSchedule:
    """Every rank's choice in every round, derived identically on every rank (no communication)."""

    size: int
    seed: int
    prob: float = 1.0
    period: int = 1
    weights: np.ndarray | None = field(default=None, compare=False)  # weighted gossip: (size, size)

    @classmethod
    def create(cls, size: int, seed: int, prob: float = 1.0, period: int = 1, weighted: bool = False,
               penalty: float = 1.0) -> GossipSchedule:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob {prob} must be in [0, 1]")
        if period < 1:
            raise ValueError(f"period {period} must be >= 1")
        weights = location_weights(size, seed, penalty) if weighted and size > 1 else None
        return cls(size=size, seed=seed, prob=prob, period=period, weights=weights)

    def active(self, step: int) -> bool:
        """Gossip is attempted only on updates that are a multiple of the period (the original's agg_period)."""
        return self.size > 1 and step % self.period == 0

    def choices(self, step: int) -> np.ndarray:
        """Each worker's chosen peer in the round of update `step` (NO_PEER: it does not initiate)."""
        chosen = np.full(self.size, NO_PEER, dtype=np.int64)
        if not self.active(step):
            return chosen
        rng = np.random.default_rng([self.seed, _CHOICE_STREAM, step])
        initiate = rng.random(self.size) < self.prob
        u = rng.random(self.size)
        ranks = np.arange(self.size)
        if self.weights is None:
            peers = uniform_peer(ranks, self.size, u)
        else:
            peers = np.array([weighted_peer(r, self.weights, u[r]) for r in ranks], dtype=np.int64)
        chosen[initiate] = peers[initiate]
        return chosen

    def peer(self, step: int, rank: int) -> int:
        return int(self.choices(step)[rank])

    def requesters(self, step: int, rank: int) -> tuple[int, ...]:
        """The workers that chose `rank` in this round."""
        return tuple(int(j) for j in np.flatnonzero(self.choices(step) == rank))

    def partners(self, step: int, rank: int) -> tuple[int, ...]:
        """P_rank = {its peer} U {j : j chose it}, sorted."""
        return partners_of(self.choices(step), rank)


def partners_of(choices: np.ndarray, rank: int) -> tuple[int, ...]:
    """{choices[rank]} U {j : choices[j] == rank} without NO_PEER, sorted; from any rank's view of the round."""
    found = set(int(j) for j in np.flatnonzero(choices == rank))
    if choices[rank] != NO_PEER:
        found.add(int(choices[rank]))
    return tuple(sorted(found))


def partner_mask(partners: tuple[int, ...] | list[int]) -> float:
    """The partner set as a bit mask in a float64 row field (exact for worlds of up to 52 ranks)."""
    return float(sum(1 << p for p in partners))


def mask_partners(mask: float) -> list[int]:
    """The ranks of a `partner_mask`."""
    bits = int(mask)
    return [rank for rank in range(bits.bit_length()) if bits >> rank & 1]


#: The largest world whose partner masks are exact in a float64.
MASK_RANKS = 52
