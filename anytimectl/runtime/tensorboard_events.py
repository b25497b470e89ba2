"""TensorBoard event files from run directories, written without TensorFlow or torch.

The obvious writers both import TensorFlow when it is installed: tensorboard's `EventFileWriter` opens its file
through `tensorboard.compat.tf`, which is `import tensorflow` whenever that succeeds, and
`torch.utils.tensorboard.SummaryWriter` is built on that same writer. In a torch process that is the TensorFlow +
torch combination that crashes. So this module writes the file itself: TensorBoard's own protocol buffers
(`tensorboard.compat.proto`, plain generated code) framed by its own `RecordWriter` (length, masked CRC32C),
into a file it opens with `open`. The `tensorboard` package is needed (to write the protos, and to view them), but
no framework is.

`export_run` converts one run directory's tables: the master's loss, learning rate, test loss and accuracy and
epoch per step, and per worker its compute, sleep, send and idle (recv) times, examples and bytes sent.
"""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from anytimectl.runtime.errors import UsageError

#: master_stats column -> tag
MASTER_TAGS = {"loss": "train/loss", "learning_rate": "train/learning_rate", "epoch": "train/epoch",
               "test_loss": "test/loss", "accuracy": "test/accuracy"}
#: worker_stats column -> tag under workers/<n>/ (recv is the previous step's idle wait, as the tables define)
WORKER_TAGS = {"compute_time": "compute_s", "sleep_time": "sleep_s", "last_send": "send_s", "last_recv": "idle_s",
               "num_samples": "examples", "bytes_sent": "bytes_sent"}


def _protos():
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        raise UsageError("TensorBoard event files need the tensorboard package: pip install tensorboard") from None
    return event_pb2, summary_pb2, RecordWriter


class ScalarWriter:
    """One event file of scalars in `logdir`, appended to as values come and flushed on demand."""

    def __init__(self, logdir: Path):
        self._event_pb2, self._summary_pb2, record_writer = _protos()
        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}.anytimectl"
        self.path = logdir / name
        self._file = open(self.path, "wb")  # noqa: SIM115 - kept open for the writer's life; closed by close()
        self._records = record_writer(self._file)
        self._write(self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def scalars(self, step: int, values: dict[str, float], wall_time: float | None = None) -> None:
        """Scalars of one step; values that are unknown (None, NaN, negative 'not measured') are left out."""
        fields = [self._summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
                  for tag, value in values.items() if value is not None and math.isfinite(float(value))]
        if fields:
            self._write(self._event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time,
                                              step=int(step), summary=self._summary_pb2.Summary(value=fields)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start_time(meta: dict) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(meta.get("started_at"))).timestamp()
    except ValueError:
        return 0.0


def export_run(run_path: Path, logdir: Path) -> tuple[Path, int]:
    """Write one run's tables as scalars into `logdir`; (the event file, how many steps it holds).

    Wall times are the run's start plus each row's `time`, so TensorBoard's relative-time axis is the run's clock.
    """
    import json

    import pandas as pd

    from anytimectl.plots.rundir import TABLES as RUN_TABLES
    from anytimectl.plots.rundir import MissingTable, Run

    try:
        meta = json.loads((run_path / "metadata.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"corrupt metadata {run_path / 'metadata.json'}: {exc}") from None
    run = Run(path=run_path, meta=meta)
    try:
        master = run.master
    except MissingTable:
        raise UsageError(f"{run_path}: not a training run with steps (no {RUN_TABLES['master'][0]})") from None
    try:
        workers = run.workers
    except MissingTable:
        workers = pd.DataFrame()
    origin = _start_time(meta)
    steps = 0
    with ScalarWriter(logdir) as writer:
        rows_by_step = {int(s): g for s, g in workers.groupby("master_step")} if len(workers) else {}
        for _, row in master.iterrows():
            step = int(row["step"])
            values = {tag: row.get(column) for column, tag in MASTER_TAGS.items() if column in master.columns}
            for _, w in rows_by_step.get(step, pd.DataFrame()).iterrows():
                worker = int(w["rank"])
                for column, tag in WORKER_TAGS.items():
                    value = w.get(column)
                    if value is not None and not pd.isna(value) and float(value) >= 0:
                        values[f"workers/{worker}/{tag}"] = value
            writer.scalars(step, values, wall_time=origin + float(row["time"]))
            steps += 1
    return writer.path, steps
