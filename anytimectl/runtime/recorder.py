"""Rank 0's recorder: turns each step's record and rows into CSV rows, trace spans, events and the live view, and
keeps the summary figures. One recorder serves every method; what differs (extra columns, row fields) comes in
as data (`Columns`, `RowLayout`), so adding a method never touches it.

Rows may arrive with their step (master-worker: the master gathers them) or apart from it (peer methods: the rows
of a step reach rank 0 when the slowest rank has reported it); each part is written the moment it is known, and
the step's collect_stats row once both are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from anytimectl.runtime.records import Columns, RowLayout, StepRecord
from anytimectl.runtime.rundir import RunDirectory

#: Formats a method's row field for the CSV: (value, rank, step) -> cell.
CellFormatter = Callable[[float, int, int], Any]


class Recorder:
    def __init__(self, run_dir: RunDirectory, hosts: dict[int, str], layout: RowLayout, columns: Columns,
                 view: Any, has_master: bool, formatters: dict[str, CellFormatter] | None = None,
                 tensorboard: Path | None = None):
        self.run_dir = run_dir
        self.hosts = hosts
        self.layout = layout
        self.columns = columns
        self.view = view
        self.formatters = formatters or {}
        # the view shows progress against the run's length, which every method records in its configuration
        config = getattr(run_dir, "metadata", {}).get("config") or {}
        expect = getattr(view, "expect", None)
        if expect is not None:
            expect(config.get("steps"), config.get("epochs"))
        self.tensorboard = _tensorboard_writer(tensorboard, Path(getattr(run_dir, "path", "run")).name)
        self.origin = time.time()
        self.cpu_start = time.process_time()
        self.last: StepRecord | None = None
        #: The first step whose training loss was NaN or infinite (the model diverged), for the summary's warning.
        self.first_nonfinite_step: int | None = None
        self.last_accuracy: float | None = None
        self.last_test_loss: float | None = None
        self.steps = 0
        self.examples = 0.0
        self.row_count = 0
        #: checkpoints rank 0 wrote in this job: count, seconds (total, longest), bytes of rank 0's files
        self.checkpoints = {"count": 0, "seconds": 0.0, "max_seconds": 0.0, "bytes": 0}
        self.checkpoint_pid = 0 if has_master else 1  # rank 0's row in the trace: the master, or worker 1
        self._records: dict[int, StepRecord] = {}  # steps whose rows have not all arrived
        self._row_steps: dict[int, tuple[int, float, float]] = {}  # step -> (rows, examples, wait) before its record
        #: how rank 0 is named in the summary: "master", or "rank0" in the methods without a master
        self.rank0_name = "master" if has_master else "rank0"
        trace = run_dir.trace
        if has_master:
            trace.name_process(0, "master")
        for rank, host in sorted(hosts.items()):
            trace.name_process(rank, f"worker {rank} ({host})")

    def start_clock(self, origin: float | None = None) -> None:
        """Times in the tables are seconds since this moment (the first step's start)."""
        self.origin = time.time() if origin is None else origin
        self.run_dir.trace.origin = self.origin
        self.cpu_start = time.process_time()

    # --- writing ---------------------------------------------------------------------------------------------------
    def step(self, record: StepRecord) -> None:
        tables = self.run_dir.tables
        tables["master_stats"].write([(record.time - self.origin, record.step, record.loss, record.learning_rate,
                                       record.test_loss, record.accuracy, record.epoch,
                                       *(record.master.get(name) for name in self.columns.master))])
        for name, start, end, args in record.spans:
            self.run_dir.trace.span(name, 0, start, end, step=record.step, **args)
        if record.accuracy is not None:
            self.last_accuracy, self.last_test_loss = record.accuracy, record.test_loss
            self.run_dir.events.log("evaluated", step=record.step, accuracy=record.accuracy,
                                    test_loss=record.test_loss)
        self.steps = max(self.steps, record.step)
        self.last = record
        if self.first_nonfinite_step is None and record.loss is not None and not math.isfinite(record.loss):
            self.first_nonfinite_step = record.step
        self.view.update(record)
        if self.tensorboard is not None:
            from anytimectl.runtime.tensorboard_events import MASTER_TAGS

            values = {"loss": record.loss, "learning_rate": record.learning_rate, "epoch": record.epoch,
                      "test_loss": record.test_loss, "accuracy": record.accuracy}
            self.tensorboard.scalars(record.step, {MASTER_TAGS[k]: v for k, v in values.items()}, record.time)
            self.tensorboard.flush()  # processes leave with os._exit (launch.leave_process): no data may wait
        if record.rows is not None:
            self.rows(record.ranks, record.rows, record)
        elif record.step in self._row_steps:
            self._collect_row(record, *self._row_steps.pop(record.step))
        else:
            self._records[record.step] = record
        self.run_dir.trace.flush()

    def checkpoint_written(self, step: int, start: float, end: float, size: int) -> None:
        """Rank 0 wrote its checkpoint file of `step` (gathering the state included): a trace span, the live
        view's last write time, the summary's totals."""
        seconds = end - start
        totals = self.checkpoints
        totals["count"] += 1
        totals["seconds"] += seconds
        totals["max_seconds"] = max(totals["max_seconds"], seconds)
        totals["bytes"] += size
        self.run_dir.trace.span("checkpoint", self.checkpoint_pid, start, end, step=step, bytes=size)
        shown = getattr(self.view, "checkpoint", None)
        if shown is not None:
            shown(step, seconds)

    def rows(self, ranks: list[int], rows: np.ndarray, record: StepRecord | None = None) -> None:
        """Rows of one step (every rank that took part), written at once."""
        if not len(rows):
            return
        layout = self.layout
        step = int(rows[0, layout["step"]])
        out = []
        for rank, row in zip(ranks, rows, strict=True):
            out.append(self._worker_cells(rank, step, row))
            self._spans(rank, step, row)
        self.run_dir.tables["worker_stats"].write(out)
        examples = float(np.sum(rows[:, layout["num_samples"]]))
        self.examples += examples
        self.row_count += len(rows)
        wait = float(np.mean(rows[:, layout["wait_time"]]))
        record = record or self._records.pop(step, None)
        if record is not None:
            self._collect_row(record, len(rows), examples, record.wait_time if record.wait_time is not None else wait)
        else:
            self._row_steps[step] = (len(rows), examples, wait)
        self.view.update(ranks=ranks, rows=rows)
        if self.tensorboard is not None:
            self._tensorboard_rows(step, ranks, rows)
        self.run_dir.trace.flush()

    def _tensorboard_rows(self, step: int, ranks: list[int], rows: np.ndarray) -> None:
        """Each worker's timing words, examples and bytes of the step, as the tables have them; flushed at once so
        that TensorBoard shows the run as it goes."""
        from anytimectl.runtime.tensorboard_events import WORKER_TAGS

        layout = self.layout
        values = {}
        for rank, row in zip(ranks, rows, strict=True):
            for field, tag in WORKER_TAGS.items():
                value = float(row[layout[field]])
                if value >= 0:  # -1: not known (the first step's previous phases)
                    values[f"workers/{rank}/{tag}"] = value
        self.tensorboard.scalars(step, values, float(np.max(rows[:, layout["time"]])))
        self.tensorboard.flush()

    def _collect_row(self, record: StepRecord, count: int, examples: float, wait: float) -> None:
        self.run_dir.tables["collect_stats"].write([(
            record.step, count, wait, int(round(examples)), *(record.collect.get(name) for name in self.columns.collect)
        )])

    def _worker_cells(self, rank: int, step: int, row: np.ndarray) -> tuple[Any, ...]:
        f = self.layout
        extras = []
        for name in self.columns.worker:
            value = row[f[name]]
            formatter = self.formatters.get(name)
            extras.append(formatter(value, rank, step) if formatter else _number(value))
        return (row[f["time"]] - self.origin, step, rank, int(row[f["num_samples"]]), row[f["last_send"]],
                row[f["last_recv"]], row[f["last_exit"]], row[f["sleep_time"]], row[f["compute_time"]],
                row[f["wait_time"]], self.hosts.get(rank, ""), row[f["round_start"]] - self.origin,
                int(row[f["bytes_sent"]]), int(row[f["bytes_recv"]]), *extras)

    def _spans(self, rank: int, step: int, row: np.ndarray) -> None:
        """The rank's phases in Perfetto: this step's compute (and sleep), the previous step's send/recv/exit."""
        f = self.layout
        trace = self.run_dir.trace
        start = row[f["round_start"]]
        end = start + row[f["compute_time"]]
        padding = max(0.0, row[f["slow_padding"]])
        trace.span("compute", rank, start, end, step=step, examples=int(row[f["num_samples"]]))
        induced = row[f["sleep_time"]] - padding
        if induced > 0:
            trace.span("sleep", rank, start, start + induced, step=step)
        if padding > 0:
            trace.span("sleep", rank, end - padding, end, step=step, slow_rank=True)
        if row[f["prev_send_start"]] > 0:
            trace.span("recv", rank, row[f["prev_compute_end"]], row[f["prev_send_start"]], step=step - 1,
                       waiting_for="the slowest peer")
            trace.span("send", rank, row[f["prev_send_start"]], row[f["prev_recv_start"]], step=step - 1)
            trace.span("recv", rank, row[f["prev_recv_start"]], row[f["prev_exit_start"]], step=step - 1)
            trace.span("exit", rank, row[f["prev_exit_start"]], start, step=step - 1)

    # --- the summary -------------------------------------------------------------------------------------------------
    def summary(self, stopped_by: str | None, **extra: Any) -> dict[str, Any]:
        last = self.last
        wall = (last.time - self.origin) if last else 0.0
        steps = self.steps
        summary = {
            "steps": steps,
            "stopped_by": stopped_by,
            "wall_time_s": wall,
            "mean_step_time_s": wall / steps if steps else None,
            "final_loss": last.loss if last and math.isfinite(last.loss) else None,
            "final_accuracy": self.last_accuracy,
            "final_test_loss": self.last_test_loss,
            "examples": int(self.examples),
            "epochs": last.epoch if last else 0.0,
            "mean_worker_batch": self.examples / self.row_count if self.row_count else None,
            # Rank 0's CPU time over the run (threads included): shows what waiting costs it.
            f"{self.rank0_name}_cpu_fraction": (time.process_time() - self.cpu_start) / wall if wall > 0 else None,
        }
        totals = self.checkpoints
        if totals["count"]:
            summary.update(checkpoints_written=totals["count"], checkpoint_time_s=totals["seconds"],
                           checkpoint_max_s=totals["max_seconds"], checkpoint_bytes_rank0=totals["bytes"],
                           checkpoint_fraction=totals["seconds"] / wall if wall > 0 else None)
        summary.update(extra)
        return summary


#: TensorBoard event files written as the run goes, into DIR/<run name>/
TENSORBOARD_VARIABLE = "ANYTIMECTL_TENSORBOARD"


def _tensorboard_writer(where: Path | None, run_name: str) -> Any:
    """A scalar writer when the run asked for TensorBoard (--tensorboard DIR, or ANYTIMECTL_TENSORBOARD=DIR for a
    whole sweep), else None. Framework-free (anytimectl.runtime.tensorboard_events), so any method's rank 0 may
    write."""
    import os

    where = where or os.environ.get(TENSORBOARD_VARIABLE)
    if not where:
        return None
    from anytimectl.runtime.tensorboard_events import ScalarWriter

    return ScalarWriter(Path(str(where)) / run_name)


def _number(value: float) -> Any:
    if np.isfinite(value) and float(value).is_integer():
        return int(value)
    return float(value)
