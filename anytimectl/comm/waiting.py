"""Waiting without burning a core: the one sleep-polling loop behind every wait of every transport.

A rank blocked in an MPI call spins at 100% of a core (docs/platform-facts.md), which on an oversubscribed laptop
steals the CPU from the ranks doing real work and makes every straggler look slower than it is. So every wait that
may last polls a non-blocking operation with short sleeps (`poll_until`): a waiting rank uses a few percent of a
core. This module is the leaf of the communication layer: it imports nothing of anytimectl.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Spin on Test() this long before sleeping: short waits then cost no sleep latency.
SPIN_SECONDS = 50e-6
#: Sleep between polls grows from the first value to the second.
FIRST_SLEEP = 50e-6
MAX_SLEEP = 1e-3
#: The all-reduce's wait for the slowest rank sleeps at most this share of the time waited so far (Pending.wait):
#: every step of the peer methods meets there, so its wake-up latency is paid on every step.
ALLREDUCE_LATENCY_SHARE = 0.05


def poll_until(done: Callable[[], bool], spin: bool = False, spin_seconds: float = SPIN_SECONDS,
               latency_share: float | None = None) -> float:
    """Poll `done` until it says True; return the seconds spent waiting.

    spin=True never sleeps: for transfers already under way, where a sleeping poller would add up to
    MAX_SLEEP of latency to every one of MPI's internal handshakes. `spin_seconds` is how long to spin
    before the first sleep: longer for a large transfer that MPI progresses only while we call Test().
    `latency_share` caps each sleep at that share of the time waited so far (and at MAX_SLEEP), instead of
    doubling it: a short wait then adds at most that share of itself, where the doubling could add as much as
    the wait (a rank that waited 1.2 ms for an all-reduce partner slept 0.8 ms more); a long one costs the
    same few wake-ups per millisecond.
    """
    start = time.perf_counter()
    if spin:
        while not done():
            pass
        return time.perf_counter() - start
    if done():
        return time.perf_counter() - start
    spin_until = start + spin_seconds
    while time.perf_counter() < spin_until:
        if done():
            return time.perf_counter() - start
    pause = FIRST_SLEEP
    while not done():
        time.sleep(pause)
        if latency_share is None:
            pause = min(MAX_SLEEP, pause * 2)
        else:
            pause = min(MAX_SLEEP, max(FIRST_SLEEP, latency_share * (time.perf_counter() - start)))
    return time.perf_counter() - start


@dataclass
class ByteCounter:
    """Payload bytes a rank handed over / obtained per operation (whatever algorithm moves them), and, apart, the
    bytes its own messages moved between hosts for the master-worker step (`comm.host_chain`)."""

    sent: int = 0
    received: int = 0
    across_sent: int = 0
    across_received: int = 0


@dataclass
class Pending:
    """A set of outstanding requests that complete together."""

    requests: list[Any] = field(default_factory=list)

    def add(self, request: Any) -> Pending:
        self.requests.append(request)
        return self

    def test(self) -> bool:
        from mpi4py import MPI

        return not self.requests or bool(MPI.Request.Testall(self.requests))

    def wait(self, spin: bool = False, spin_seconds: float = SPIN_SECONDS,
             latency_share: float | None = None) -> float:
        """Sleep-poll until every request completes (`poll_until`); the seconds spent waiting."""
        return poll_until(self.test, spin, spin_seconds, latency_share)
