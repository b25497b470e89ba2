"""What every training method reports per step, in the project's timing words, whatever its protocol.

A *row* is one rank's account of one step, as a flat float64 vector (so it travels through MPI as raw memory):
the fields every method shares (examples, compute, sleep, the previous step's send / recv / exit, the phase
timestamps the trace is drawn from, bytes moved) followed by the method's own fields (AMB's micro-batches done,
dynamic batching's batch size, gossip's partner count, ...). A `RowLayout` names the fields; the run shell's
recorder and live view read rows only through it, so a new method adds fields without touching either.

A `StepRecord` is the step as the reporting rank (rank 0) sees it: the training loss and learning rate of the
update, its evaluation if any, and the rows of the ranks that took part, when it has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anytimectl.runtime.rundir import ORIGINAL_COLLECT_COLUMNS, ORIGINAL_MASTER_COLUMNS, ORIGINAL_WORKER_COLUMNS

#: Fields every row has. Times are seconds; `*_start`/`*_end` and `time` are absolute `time.time()` readings.
COMMON_ROW_FIELDS = (
    "step",  # the step (update) this row belongs to
    "time",  # when the update of this step was applied (absolute)
    "num_samples",  # examples this rank processed in the step
    "last_send", "last_recv", "last_exit",  # the previous step's phases (-1 on the first)
    "sleep_time",  # induced delay inside compute (straggler model plus persistent-slowness padding)
    "compute_time",  # round start to the start of the send, sleep included
    "wait_time",  # master-worker: the master's wait for the workers; peers: this rank's idle wait in the step
    "round_start",  # absolute
    "bytes_sent", "bytes_recv",  # cumulative payload bytes this rank handed over / obtained
    "slow_padding",  # the part of sleep_time that models a persistently slow rank (drawn at the end of compute)
    "prev_compute_end", "prev_send_start", "prev_recv_start", "prev_exit_start",  # previous step's phase starts
    "loss",  # this rank's mean training loss in the step (nan where the protocol does not compute one)
)

#: The CSV columns every method writes: the original system's, in its order, then anytimectl's common ones.
MASTER_COLUMNS = (*ORIGINAL_MASTER_COLUMNS, "epoch")
WORKER_COLUMNS = (*ORIGINAL_WORKER_COLUMNS, "host", "round_start", "bytes_sent", "bytes_recv")
COLLECT_COLUMNS = ORIGINAL_COLLECT_COLUMNS


class RowLayout:
    """Names the fields of a row vector: the common ones, then a method's `extras`."""

    def __init__(self, extras: tuple[str, ...] = ()):
        clash = set(extras) & set(COMMON_ROW_FIELDS)
        assert not clash, f"method row fields clash with the common ones: {clash}"
        self.fields = (*COMMON_ROW_FIELDS, *extras)
        self.extras = tuple(extras)
        self._index = {name: index for index, name in enumerate(self.fields)}

    def __len__(self) -> int:
        return len(self.fields)

    def __getitem__(self, name: str) -> int:
        return self._index[name]

    def new(self) -> np.ndarray:
        """A row with every field unknown (-1), as the original marked the first step's previous phases."""
        row = np.full(len(self.fields), -1.0)
        row[self["loss"]] = np.nan
        return row

    def new_table(self, ranks: int) -> np.ndarray:
        return np.stack([self.new() for _ in range(ranks)]) if ranks else np.zeros((0, len(self.fields)))


@dataclass
class Columns:
    """A method's appended CSV columns: row fields (worker_stats) and step values (master/collect_stats)."""

    worker: tuple[str, ...] = ()  # names of row fields (RowLayout extras) appended to worker_stats.csv
    master: tuple[str, ...] = ()  # keys of StepRecord.master appended to master_stats.csv
    collect: tuple[str, ...] = ()  # keys of StepRecord.collect appended to collect_stats.csv

    def tables(self) -> dict[str, tuple[str, ...]]:
        return {
            "master_stats": (*MASTER_COLUMNS, *self.master),
            "worker_stats": (*WORKER_COLUMNS, *self.worker),
            "collect_stats": (*COLLECT_COLUMNS, *self.collect),
        }


@dataclass
class LiveColumn:
    """A method's own column in the live table: the last value of a row field, formatted."""

    title: str
    row_field: str
    format: str = "{:.0f}"


@dataclass
class StepRecord:
    """One step as rank 0 reports it."""

    step: int
    time: float  # absolute time.time() when the update was applied
    loss: float
    learning_rate: float
    epoch: float
    ranks: list[int] = field(default_factory=list)  # the rank of each row below
    rows: np.ndarray | None = None  # (len(ranks), len(layout)); None when the rows arrive separately
    test_loss: float | None = None
    accuracy: float | None = None
    wait_time: float | None = None  # master-worker: the master's wait; None: derived from the rows
    master: dict[str, Any] = field(default_factory=dict)  # values of Columns.master
    collect: dict[str, Any] = field(default_factory=dict)  # values of Columns.collect
    spans: list[tuple[str, float, float, dict[str, Any]]] = field(default_factory=list)  # rank 0's own phases
