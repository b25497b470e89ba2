"""The run directory: the one contract between training and plotting, written by one writer.

Everything is flushed as it is produced, so a run killed at any moment keeps every completed step, and
`metadata.json` is always replaced atomically (write a temporary file, then rename) so it always parses.
The CSV columns keep the original system's names and order; new columns are only ever appended.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anytimectl.errors import UsageError

#: The original system's columns, in its order: every run keeps them, so existing analysis scripts keep working.
ORIGINAL_MASTER_COLUMNS = ("time", "step", "loss", "learning_rate", "test_loss", "accuracy")
ORIGINAL_WORKER_COLUMNS = (
    "time", "master_step", "rank", "num_samples", "last_send", "last_recv", "last_exit", "sleep_time",
    "compute_time", "master_wait_time",
)
ORIGINAL_COLLECT_COLUMNS = ("step", "worker_count", "wait_time", "total_samples")
#: What anytimectl writes: the original columns, then its own appended ones (never inserted).
MASTER_COLUMNS = (*ORIGINAL_MASTER_COLUMNS, "epoch")
WORKER_COLUMNS = (
    *ORIGINAL_WORKER_COLUMNS, "host", "round_start", "partitions_done", "bytes_sent", "bytes_recv",
)
COLLECT_COLUMNS = (*ORIGINAL_COLLECT_COLUMNS, "time_limit")

#: Bunyan's numeric levels.
LEVELS = {"debug": 20, "info": 30, "warn": 40, "error": 50}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def reserve(out: Path, run_id: str | None, default_id: str) -> Path:
    """Create the run's folder, never reusing an existing one.

    A name the user chose must be new (exit 2 otherwise); a generated name gets a numeric suffix instead.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {out}: cannot create it ({error.strerror}); choose a writable folder") from None
    if run_id:
        path = out / run_id
        try:
            path.mkdir()
        except FileExistsError:
            raise UsageError(
                f"run directory {path} already exists; choose another --name or --out (runs are never overwritten)"
            ) from None
        return path
    for attempt in range(1, 1000):
        path = out / (default_id if attempt == 1 else f"{default_id}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UsageError(f"too many runs named {default_id} in {out}; pass --name")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=2, default=_json_default)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class CsvTable:
    """A CSV file written row by row and flushed after each batch of rows."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path = path
        self.columns = tuple(columns)
        self._stream = open(path, "w", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.writer(self._stream)
        self._writer.writerow(self.columns)
        self._stream.flush()
        self.rows = 0

    def write(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self._writer.writerow(_format(value) for value in row)
            self.rows += 1
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


def _format(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e5 else f"{value:.6f}"
    return value


class EventLog:
    """Bunyan-compatible JSON lines, readable by `bunyan` and `jq`."""

    def __init__(self, path: Path, name: str = "anytimectl"):
        self._stream = open(path, "a")  # noqa: SIM115 - closed in close()
        self._base = {"v": 0, "name": name, "hostname": socket.gethostname(), "pid": os.getpid()}

    def log(self, msg: str, level: str = "info", **fields: Any) -> None:
        record = {**self._base, "level": LEVELS[level], "time": now_iso(), "msg": msg, **fields}
        self._stream.write(json.dumps(record, default=_json_default) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


class Trace:
    """Chrome trace events for Perfetto, streamed as an open JSON array.

    The trace format allows the closing bracket to be missing, which is what lets a killed run keep a
    readable trace; `close` adds it when the run ends normally.
    """

    def __init__(self, path: Path, origin: float):
        self.origin = origin
        self._stream = open(path, "w")  # noqa: SIM115 - closed in close()
        self._stream.write("[\n")
        self._named: set[int] = set()

    def name_process(self, pid: int, name: str) -> None:
        if pid in self._named:
            return
        self._named.add(pid)
        self._emit({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}})
        self._emit({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})

    def span(self, name: str, pid: int, start: float, end: float, **args: Any) -> None:
        """A phase from `start` to `end` (absolute `time.time()` seconds)."""
        if end < start:
            return
        self._emit({
            "name": name, "ph": "X", "pid": pid, "tid": 0,
            "ts": round((start - self.origin) * 1e6, 1), "dur": round((end - start) * 1e6, 1), "args": args,
        })

    def _emit(self, event: dict[str, Any]) -> None:
        self._stream.write(json.dumps(event) + ",\n")

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.seek(self._stream.tell() - 2)  # drop the trailing ",\n"
        self._stream.truncate()
        self._stream.write("\n]\n")
        self._stream.close()


def read_trace(path: Path) -> list[dict[str, Any]]:
    """Parse a trace written by `Trace`, whether or not the run closed it."""
    text = Path(path).read_text().rstrip()
    if not text.endswith("]"):
        text = text.rstrip(",") + "]"
    return json.loads(text)


class RunDirectory:
    """Owns every file of one run; only the master rank creates one."""

    def __init__(self, path: Path, metadata: dict[str, Any], tables: dict[str, Sequence[str]]):
        self.path = path
        self.origin = time.time()
        self.metadata = {"status": "running", "reason": None, "started_at": now_iso(), "ended_at": None, **metadata}
        self.save_metadata()
        self.tables = {name: CsvTable(path / f"{name}.csv", columns) for name, columns in tables.items()}
        self.events = EventLog(path / "events.jsonl")
        self.trace = Trace(path / "trace.json", self.origin)
        self._closed = False

    def save_metadata(self) -> None:
        write_json_atomic(self.path / "metadata.json", self.metadata)

    def finish(self, status: str, reason: str | None = None, summary: dict[str, Any] | None = None) -> None:
        """Record how the run ended; safe to call more than once (the first call wins)."""
        if self._closed:
            return
        self._closed = True
        self.metadata.update(status=status, reason=reason, ended_at=now_iso())
        if summary is not None:
            self.metadata["summary"] = summary
        level = "info" if status == "completed" else "warn"
        self.events.log(f"run {status}" + (f": {reason}" if reason else ""), level=level, status=status)
        for table in self.tables.values():
            table.close()
        self.trace.close()
        self.events.close()
        self.save_metadata()


def mark_if_unfinished(path: Path, status: str, reason: str) -> bool:
    """After a job died without rank 0 recording it, say so in its metadata. Returns True if it changed."""
    meta_path = path / "metadata.json"
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if metadata.get("status") != "running":
        return False
    metadata.update(status=status, reason=reason, ended_at=now_iso())
    write_json_atomic(meta_path, metadata)
    return True
