"""One rank's round, timed in the project's words, for every protocol.

Every method's rank does the same around its arithmetic: start the round, sleep its induced straggler delay
(inside compute, as the original did), compute, stretch the compute if it models a persistently slow rank, hand its
result over (send), wait for what comes back (recv), and go on (exit). `RoundClock` keeps those phase times and
writes them into the rank's row (`records.RowLayout`), with the previous step's send / recv / exit as the original
reported them, so that the tables, the trace and the live view mean the same thing whatever the protocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from anytimectl.runtime.records import RowLayout

#: Longest uninterrupted sleep of an induced delay or a slow rank's padding.
_SLICE = 0.25


@dataclass
class _Phases:
    """The phase starts of one round, absolute time.time() seconds."""

    round_start: float = 0.0
    compute_end: float = 0.0
    send_start: float = 0.0  # every peer is ready and the transfer starts (the wait before it is idle time)
    recv_start: float = 0.0
    exit_start: float = 0.0


class RoundClock:
    def __init__(self, layout: RowLayout, rank: int, seed: int, delay: Any = None, slowdown: float = 1.0):
        """delay: a stragglers.DelayModel (or None); slowdown: k for a rank that computes k times slower."""
        self.layout = layout
        self.rank = rank
        self.seed = seed
        self.delay = delay
        self.slowdown = slowdown
        self.row = layout.new()
        self.current = _Phases()
        self.previous = _Phases()
        self.induced = 0.0
        self.compute_start = 0.0
        #: Set by the protocol to "has this rank been asked to stop" (its shell.Stopper): an induced delay is slept
        #: in slices and cut short then, so that SIGTERM ends a run within seconds even with delays of minutes.
        self.stopped: Any = None

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0 or (self.stopped is not None and self.stopped()):
                return
            time.sleep(min(left, _SLICE))

    def begin(self, step: int) -> None:
        """Start the round of `step`: sleep the induced delay for (seed, rank, step)."""
        self.current = _Phases(round_start=time.time())
        self.induced = self.delay.sample(self.seed, self.rank, step) if self.delay else 0.0
        if self.induced > 0:
            self._sleep(self.induced)
        self.compute_start = time.time()
        self.row[self.layout["step"]] = step

    def real_deadline(self, time_limit: float) -> float:
        """The deadline for real work of a round limited to `time_limit` seconds from its start: a k-times slower
        rank gets 1/k of the budget left after its sleep for real work, and `computed` sleeps the rest."""
        round_start = self.current.round_start
        return self.compute_start + (round_start + time_limit - self.compute_start) / self.slowdown

    def computed(self, examples: int) -> None:
        """The compute phase is over (after `examples` examples): pad for a slow rank, then fill the row."""
        padding = 0.0
        if self.slowdown > 1:
            padding = (self.slowdown - 1) * (time.time() - self.compute_start)
            self._sleep(padding)
        now = time.time()
        self.current.compute_end = now
        f, row, prev = self.layout, self.row, self.previous
        row[f["num_samples"]] = examples
        row[f["sleep_time"]] = self.induced + padding
        row[f["slow_padding"]] = padding
        row[f["compute_time"]] = now - self.current.round_start
        row[f["round_start"]] = self.current.round_start
        if prev.round_start > 0:
            # Waiting for the slowest peer before the transfer is idle time, like waiting for the model.
            row[f["last_send"]] = prev.recv_start - prev.send_start
            row[f["last_recv"]] = (prev.send_start - prev.compute_end) + (prev.exit_start - prev.recv_start)
            row[f["last_exit"]] = self.current.round_start - prev.exit_start
            row[f["prev_compute_end"]] = prev.compute_end
            row[f["prev_send_start"]] = prev.send_start
            row[f["prev_recv_start"]] = prev.recv_start
            row[f["prev_exit_start"]] = prev.exit_start

    def sent(self, transfer_start: float | None = None) -> None:
        """The result is handed over; `transfer_start`: when every peer was ready and it began to move."""
        self.current.send_start = transfer_start or self.current.compute_end
        self.current.recv_start = time.time()
        # A peer's idle wait in this step (a master-worker master overwrites it with its own wait for the workers).
        self.row[self.layout["wait_time"]] = max(0.0, self.current.send_start - self.current.compute_end)

    def received(self) -> None:
        """What comes back has arrived: the round's exit phase starts, and the round becomes the previous one."""
        self.current.exit_start = time.time()
        self.previous = self.current

    def bytes(self, sent: int, received: int) -> None:
        self.row[self.layout["bytes_sent"]] = sent
        self.row[self.layout["bytes_recv"]] = received

    def snapshot(self) -> np.ndarray:
        return self.row.copy()
