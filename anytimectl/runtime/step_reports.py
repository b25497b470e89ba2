"""Step reports for methods without a master: every rank's row reaches rank 0, and all ranks agree when to stop,
without a global synchronisation point in the step.

Each step every rank posts two non-blocking collectives on a communicator of their own: a gather of its row to
rank 0 and an all-reduce (max) of its stop wish (a signal arrived, rank 0 reached the target accuracy). Nobody
waits for them in the step. A rank only has to have completed the reports of step s - lag before it starts step
s, so no rank runs more than `lag` steps ahead of the slowest, and the first report that carries a stop wish, that
of step t, makes step t + lag - 1 the last step of every rank: each learns it before it could have passed it, so
all ranks run exactly the same steps and no partner is left waiting for one that left.

Lock-step methods (all-reduce every step) use lag 1: they stop after the very step in which the wish arose, and
the reports of a step are complete a moment after the step's all-reduce. Gossip uses a larger lag, so that a
straggler delays only the ranks that gossip with it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from anytimectl.comm import Comm, Pending


@dataclass
class _Report:
    step: int
    pending: Pending
    rows: np.ndarray | None  # rank 0: (size, fields)
    wish: np.ndarray


class StepReports:
    """comm None: a single process, whose reports complete as they are posted."""

    def __init__(self, comm: Comm | None, row_length: int, lag: int):
        assert lag >= 1
        self.comm = comm.dup() if comm is not None else None
        self.row_length = row_length
        self.lag = lag
        self.last_step: int | None = None  # agreed: no rank starts a step after it
        #: agreed: the stop wish asked for a checkpoint of the last step (--checkpoint-on-signal on some rank)
        self.checkpoint_wished = False
        self._outstanding: deque[_Report] = deque()
        self._done: list[tuple[int, np.ndarray]] = []

    def post(self, step: int, row: np.ndarray, stop: bool | int) -> None:
        """This rank's row of `step` and whether it wishes to stop (2: stop and checkpoint the last step; the
        ranks agree on the largest wish); returns at once."""
        row = np.ascontiguousarray(row, dtype=np.float64)
        assert row.shape == (self.row_length,)
        if self.comm is None:
            self._complete(_Report(step, Pending(), row[None, :].copy(), np.array([int(stop)])), wait=False)
            return
        mpi = self.comm.mpi
        rows = np.empty((self.comm.size, self.row_length)) if self.comm.rank == 0 else None
        wish = np.array([int(stop)], dtype=np.int32)
        agreed = np.zeros(1, dtype=np.int32)
        from mpi4py import MPI

        pending = Pending().add(mpi.Igather(row.copy(), rows, root=0))
        pending.add(mpi.Iallreduce(wish, agreed, op=MPI.MAX))
        self._outstanding.append(_Report(step, pending, rows, agreed))
        self._advance(block_until=None)

    def before(self, step: int) -> bool:
        """Call before starting `step`: waits (sleeping) until this rank is at most `lag` steps ahead of the
        slowest. Returns False when the agreed last step is behind us: do not start `step`."""
        self._advance(block_until=step - self.lag)
        return self.last_step is None or step <= self.last_step

    def completed(self) -> list[tuple[int, np.ndarray]]:
        """Rank 0: (step, rows of every rank) for each step whose reports completed since the last call."""
        self._advance(block_until=None)
        done, self._done = self._done, []
        return done

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """Wait for every outstanding report (every rank posted the same steps, so this ends); rank 0 gets the
        rows not yet handed out."""
        while self._outstanding:
            self._complete(self._outstanding.popleft(), wait=True)
        done, self._done = self._done, []
        return done

    def _advance(self, block_until: int | None) -> None:
        while self._outstanding:
            report = self._outstanding[0]
            must = block_until is not None and report.step <= block_until
            if not must and not report.pending.test():
                return
            self._complete(self._outstanding.popleft(), wait=must)

    def _complete(self, report: _Report, wait: bool) -> None:
        if wait:
            report.pending.wait()
        if report.wish[0] and self.last_step is None:
            self.last_step = report.step + self.lag - 1
        if report.wish[0] >= 2:
            self.checkpoint_wished = True
        if report.rows is not None:
            self._done.append((report.step, report.rows))
