"""The run directory: the one contract between training and plotting, written by one writer.

Everything is flushed as it is produced, so a run killed at any moment keeps every completed step, and
`metadata.json` is always replaced atomically (write a temporary file, then rename) so it always parses.
The CSV columns keep the original system's names and order; new columns are only ever appended.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anytimectl.runtime.errors import OutputError, UsageError

#: The original system's columns, in its order: every run keeps them, so existing analysis scripts keep working.
ORIGINAL_MASTER_COLUMNS = ("time", "step", "loss", "learning_rate", "test_loss", "accuracy")
ORIGINAL_WORKER_COLUMNS = (
    "time", "master_step", "rank", "num_samples", "last_send", "last_recv", "last_exit", "sleep_time",
    "compute_time", "master_wait_time",
)
ORIGINAL_COLLECT_COLUMNS = ("step", "worker_count", "wait_time", "total_samples")
# What a run writes (these, then anytimectl's common columns, then each method's) is records.py's: this writer
# takes any columns it is given.

#: Bunyan's numeric levels.
LEVELS = {"debug": 20, "info": 30, "warn": 40, "error": 50}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


#: What a run name may not be: it names one folder inside --out, and never a hidden one.
_NAME_RULE = ("a run name is one folder name inside --out: not empty, no '/' or '\\', no '..', not starting "
              "with '.', no control characters, at most 255 bytes")


def check_name(out: Path, name: str) -> None:
    """Refuse a `--name` that is not a plain new folder inside `out` (`a/b`, `../x`, `.hidden`, ``)."""
    bad = (
        not name.strip()
        or "/" in name or "\\" in name or (os.altsep is not None and os.altsep in name)
        or ".." in name
        or name.startswith(".")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or len(os.fsencode(name)) > 255
    )
    if not bad and not os.path.lexists(out / name):  # an existing entry is refused as existing by `reserve`
        bad = (out / name).resolve().parent != out.resolve()
    if bad:
        raise UsageError(f"--name {name!r}: {_NAME_RULE}")


def reserve(out: Path, run_id: str | None, default_id: str) -> Path:
    """Create the run's folder, never reusing an existing one.

    A name the user chose must be a plain folder name (see `check_name`) and new (exit 2 otherwise); a generated
    name gets a numeric suffix instead. The folder gets the mode the process umask allows (like the CSVs), so
    other users can read a shared run. If the run then fails before writing anything, `release` removes it.
    """
    if run_id is not None:
        check_name(out, run_id)
    missing = [folder for folder in (out, *out.parents) if not os.path.lexists(folder)]
    try:
        out.mkdir(parents=True, exist_ok=True)
        _CREATED[out.resolve()] = [folder.resolve() for folder in missing]
    except OSError as error:
        raise UsageError(f"--out {out}: cannot create it ({error.strerror}); choose a writable folder") from None
    if not out.is_dir():
        raise UsageError(f"--out {out}: not a folder; choose a folder for the run directories")
    candidates = [run_id] if run_id else [default_id if n == 1 else f"{default_id}-{n}" for n in range(1, 1000)]
    for candidate in candidates:
        path = out / candidate
        try:
            path.mkdir()  # mode 0o777 & ~umask
            return path
        except FileExistsError:
            if run_id:
                raise UsageError(f"run directory {path} already exists; choose another --name or --out "
                                 "(runs are never overwritten)") from None
        except OSError as error:
            raise UsageError(f"--out {out}: cannot create a run directory in it ({error.strerror}); choose a "
                             "writable folder") from None
    raise UsageError(f"too many runs named {default_id} in {out}; pass --name")


#: Folders `reserve` created for --out (it and missing parents), per --out: `release` removes them again when
#: they are left empty, so a run that fails before it starts leaves nothing behind.
_CREATED: dict[Path, list[Path]] = {}


def release(path: Path) -> bool:
    """Remove a reserved run directory that nothing was written to; True if it was removed.

    Call it when a run fails before it starts (a bad --mpiexec, a usage error found after reserving), so that no
    empty run directory is left behind and a corrected retry with the same --name is accepted. A directory
    holding any file is a run that started, and is kept.
    """
    try:
        path.rmdir()
    except OSError:  # not empty, already gone, or not ours to remove
        return False
    release_out(path.parent)
    return True


def release_out(out: Path) -> None:
    """Remove the --out folders `reserve` created (innermost first) while they are empty."""
    for folder in _CREATED.pop(Path(out).resolve(), []):
        try:
            folder.rmdir()
        except OSError:
            return


def file_mode() -> int:
    """The mode `open()` gives a new file in this process: 0o666 without the bits the umask removes."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux reports it without changing it, which matters with threads (os.umask can only read by setting)
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` with `data` as JSON so that readers only ever see the old or the new file, complete.

    JSON has no NaN or Infinity (Python would write them, and `jq` and most other readers then reject the file),
    so a non-finite number anywhere in `data` is written as null: the file stays valid and the value reads
    as "none". The file gets the same mode as the CSVs (`file_mode`), not mkstemp's private 0600.
    """
    text = to_json(data, indent=2)
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    except OSError as error:
        raise OutputError(path, error) from None
    try:
        os.fchmod(handle, file_mode())
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            Path(temporary).unlink(missing_ok=True)
        raise OutputError(path, error) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def to_json(data: Any, indent: int | None = None) -> str:
    """Strict JSON text for `data`: numpy values become Python ones and non-finite floats become null."""
    try:
        return json.dumps(data, indent=indent, default=_json_default, allow_nan=False)
    except ValueError:  # a NaN or an infinity somewhere: the rare case pays for the walk
        return json.dumps(finite(data), indent=indent, default=_json_default, allow_nan=False)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity (also inside numpy values, lists and dicts) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return finite(value.tolist())
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return finite(value.tolist())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class CsvTable:
    """A CSV file written row by row and flushed after each batch of rows.

    A table may feed views: tables of the same columns that receive only the rows where one column is set
    (`RunDirectory(views=...)`), written and flushed together with it.
    """

    def __init__(self, path: Path, columns: Sequence[str], append: bool = False):
        """append: continue an existing table of the same columns (a resumed run) instead of starting one."""
        self.path = path
        self.columns = tuple(columns)
        append = append and path.is_file() and path.stat().st_size > 0
        self._stream = open(path, "a" if append else "w", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.writer(self._stream)
        if not append:
            self._writer.writerow(self.columns)
        self._stream.flush()
        self.rows = 0
        self.views: list[tuple[CsvTable, int]] = []  # (view, index of the column that must be set)

    def add_view(self, view: CsvTable, column: str) -> None:
        if view.columns != self.columns:
            raise ValueError(f"view {view.path.name} must have the columns of {self.path.name}")
        self.views.append((view, self.columns.index(column)))

    def write(self, rows: Iterable[Sequence[Any]]) -> None:
        try:
            self._write(rows)
        except OSError as error:  # a full disk, a quota, a removed folder: one line naming the file
            raise OutputError(self.path, error) from None

    def _write(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            formatted = [_format(value) for value in row]
            self._writer.writerow(formatted)
            self.rows += 1
            for view, index in self.views:
                if formatted[index] != "":
                    view._writer.writerow(formatted)
                    view.rows += 1
        self._stream.flush()
        for view, _ in self.views:
            view._stream.flush()

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError as error:
            raise OutputError(self.path, error) from None
        finally:
            for view, _ in self.views:
                view.close()


def keep_rows_through(path: Path, columns: Sequence[str], step: int) -> None:
    """Prepare a table of a resumed run for appending: its header must be `columns`; the rows of steps after
    `step` (which the resumed run does again) and a cut-short last line are dropped, the rest is kept as it is."""
    if not path.is_file():
        return
    with open(path, newline="") as stream:
        text = stream.read()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    if not lines:
        return
    header = next(csv.reader([lines[0]]))
    if tuple(header) != tuple(columns):
        raise UsageError(f"{path} has columns {', '.join(header)}; this run writes {', '.join(columns)}: it "
                         "cannot be continued here")
    index = header.index("step") if "step" in header else header.index("master_step")
    kept = [lines[0]]
    for line in lines[1:]:
        cells = next(csv.reader([line]), [])
        try:
            if float(cells[index]) <= step:
                kept.append(line)
        except (IndexError, ValueError):
            continue
    if len(kept) != len(lines) or "".join(lines) != text:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".csv")
        with os.fdopen(handle, "w", newline="") as stream:
            stream.writelines(kept)
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)


#: The tables every step writes to; a run's last complete step is the last step all of them hold.
STEP_TABLES = ("master_stats", "worker_stats", "collect_stats")


def _last_step(path: Path) -> int | None:
    """The largest step in a table's whole lines (None: no such table; 0: no rows)."""
    try:
        with open(path, newline="") as stream:
            text = stream.read()
    except OSError:
        return None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    if not lines:
        return 0
    header = next(csv.reader([lines[0]]))
    column = "step" if "step" in header else "master_step" if "master_step" in header else None
    if column is None:
        return None
    index, last = header.index(column), 0
    for line in lines[1:]:
        cells = next(csv.reader([line]), [])
        try:
            last = max(last, int(float(cells[index])))
        except (IndexError, ValueError):
            continue
    return last


def trim_to_complete_step(run: Path) -> dict[str, Any] | None:
    """After a job that ended without rank 0 closing its tables (a rank killed while rank 0 wrote a step, rank 0
    itself killed): keep in every table only the steps that all of STEP_TABLES hold, so that master_stats.csv
    never has a step that worker_stats.csv and collect_stats.csv lack (rank 0 writes a step's master row first).
    Returns {"to_step": S, "rows_removed": {table: n}} when rows were removed, else None."""
    last = [step for step in (_last_step(run / f"{name}.csv") for name in STEP_TABLES) if step is not None]
    if len(last) != len(STEP_TABLES):
        return None
    complete = min(last)
    removed: dict[str, int] = {}
    for name in (*STEP_TABLES, *EVALUATED_MASTER_VIEW):
        path = run / f"{name}.csv"
        try:
            with open(path, newline="") as stream:
                header = next(csv.reader(stream), None)
        except OSError:
            continue
        if not header:
            continue
        before = _count_rows(path)
        try:
            keep_rows_through(path, header, complete)
        except (OSError, UsageError):
            continue
        if before != _count_rows(path):
            removed[name] = before - _count_rows(path)
    return {"to_step": complete, "rows_removed": removed} if removed else None


def _count_rows(path: Path) -> int:
    with open(path, newline="") as stream:
        return max(0, sum(1 for _ in stream) - 1)


#: The row-per-evaluation view of master_stats: with --log-every N > 1 the original wrote one full row every N
#: steps, and scripts that plot its test columns directly expect that. Pass it as `RunDirectory(views=...)`.
EVALUATED_MASTER_VIEW: dict[str, tuple[str, str]] = {"master_stats_eval": ("master_stats", "accuracy")}


def write_view(run: Path, source: str, column: str, name: str) -> Path:
    """Write `<run>/<name>.csv`: the rows of `<run>/<source>.csv` whose `column` is set, for runs written without
    the view (it keeps the header, and any incomplete last line of a running run is left out)."""
    source_path = run / f"{source}.csv"
    with open(source_path, newline="") as stream:
        text = stream.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or column not in header:
        raise UsageError(f"{source_path} has no column {column!r}")
    index = header.index(column)
    target = run / f"{name}.csv"
    with open(target, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(row for row in reader if len(row) > index and row[index].strip() != "")
    return target


def _format(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e5 else f"{value:.6f}"
    return value


class EventLog:
    """Bunyan-compatible JSON lines, readable by `bunyan` and `jq`."""

    def __init__(self, path: Path, name: str = "anytimectl"):
        self.path = path
        self._stream = open(path, "a")  # noqa: SIM115 - closed in close()
        self._base = {"v": 0, "name": name, "hostname": socket.gethostname(), "pid": os.getpid()}

    def log(self, msg: str, level: str = "info", **fields: Any) -> None:
        record = {**self._base, "level": LEVELS[level], "time": now_iso(), "msg": msg, **fields}
        try:
            self._stream.write(to_json(record) + "\n")
            self._stream.flush()
        except OSError as error:
            raise OutputError(self.path, error) from None

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError as error:
            raise OutputError(self.path, error) from None


class Trace:
    """Chrome trace events for Perfetto, streamed as an open JSON array.

    The trace format allows the closing bracket to be missing, which is what lets a killed run keep a
    readable trace; `close` adds it when the run ends normally.
    """

    def __init__(self, path: Path, origin: float, append: bool = False):
        """append: continue the trace of a resumed run (reopening a closed array, dropping a cut-short line)."""
        self.origin = origin
        if append and path.is_file():
            text = path.read_text()
            closed = text.rstrip().endswith("]")
            if closed:
                text = text.rstrip()[:-1].rstrip()
                text = text if text.endswith("[") else text + ","
            else:
                text = text[: max(text.rfind(",\n") + 1, text.find("[") + 1)]
            path.write_text(text + "\n")
            self._stream = open(path, "a")  # noqa: SIM115 - closed in close()
        else:
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
        try:
            self._stream.write(to_json(event) + ",\n")
        except OSError as error:
            raise OutputError(self._stream.name, error) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as error:
            raise OutputError(self._stream.name, error) from None

    def close(self) -> None:
        try:
            self._close()
        except OSError as error:
            with contextlib.suppress(OSError):
                self._stream.close()
            raise OutputError(self._stream.name, error) from None

    def _close(self) -> None:
        self._stream.flush()
        end = self._stream.tell()
        with open(self._stream.name, "rb") as stream:
            stream.seek(max(0, end - 2))
            tail = stream.read()
        if tail == b",\n":  # drop the last event's separator; an empty trace keeps its "[" alone
            self._stream.seek(end - 2)
            self._stream.truncate()
            self._stream.write("\n")
        self._stream.write("]\n")
        self._stream.close()


def read_trace(path: Path) -> list[dict[str, Any]]:
    """Parse a trace written by `Trace`, whether or not the run closed it."""
    text = Path(path).read_text().rstrip()
    if not text.endswith("]"):
        text = text.rstrip(",") + "]"
    return json.loads(text)


#: Liveness of a run (see `run_liveness`): rank 0 holds an exclusive lock on this file while the run is open and
#: touches it every HEARTBEAT_SECONDS; metadata.json's `writer` says which host and process that is.
LOCK_FILE = ".running.lock"
HEARTBEAT_SECONDS = 5.0
#: A run on another host whose lock file is older than this is taken for dead (its writer stopped touching it).
HEARTBEAT_STALE_SECONDS = 60.0
#: Space set aside when the run directory opens, freed to write the final metadata.json on a full disk.
RESERVE_FILE = ".space-reserve"
RESERVE_BYTES = 256 * 1024


class _Liveness:
    """Rank 0's side of `run_liveness`: the lock (released by the kernel however the process ends, kill -9
    included) and a daemon thread that refreshes the lock file's time, for readers on other hosts."""

    def __init__(self, path: Path):
        self.path = path / LOCK_FILE
        self._stop = threading.Event()
        self._handle: int | None = None
        try:
            self._handle = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a file system without locks (some network mounts): the heartbeat alone tells
            pass
        self._thread = threading.Thread(target=self._beat, name="anytimectl-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self._handle is not None:
            with contextlib.suppress(OSError):
                os.close(self._handle)
            self._handle = None


def writer_info() -> dict[str, Any]:
    """metadata.json's `writer`: where the process that writes the run directory runs (rank 0)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "lock": LOCK_FILE,
            "heartbeat_seconds": HEARTBEAT_SECONDS}


def run_liveness(run_dir: Path) -> str:
    """The run's status as metadata.json says, with a recorded `running` checked against its writer.

    Returns the recorded status ("completed", "failed", "interrupted", "unknown" when metadata.json cannot be
    read) or, for a run recorded as running: "running" when its writer is alive, else "running (dead: no
    heartbeat since <ISO time>)" (the writer was killed, e.g. kill -9 of the launcher, before it could record how
    the run ended). On the writer's host the lock decides; elsewhere the heartbeat's age (older than
    HEARTBEAT_STALE_SECONDS is dead). A run written before the writer was recorded is reported as "running".
    """
    run_dir = Path(run_dir)
    try:
        metadata = json.loads((run_dir / "metadata.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return "unknown"
    if not isinstance(metadata, dict):
        return "unknown"
    status = str(metadata.get("status") or "unknown")
    writer = metadata.get("writer")
    if status != "running" or not isinstance(writer, dict):
        return status
    lock = run_dir / str(writer.get("lock") or LOCK_FILE)
    try:
        beat = lock.stat().st_mtime
    except OSError:
        beat = None
    since = datetime.fromtimestamp(beat, UTC).isoformat(timespec="seconds") if beat is not None else \
        str(metadata.get("started_at") or "its start")
    dead = f"running (dead: no heartbeat since {since})"
    if beat is None:
        return dead
    if writer.get("host") == socket.gethostname():
        held = _lock_held(lock)
        if held is not None:
            return "running" if held else dead
    return "running" if time.time() - beat < HEARTBEAT_STALE_SECONDS else dead


def _lock_held(lock: Path) -> bool | None:
    """Whether another process holds the run's lock (None: this file system cannot say)."""
    try:
        handle = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(handle)
    return False


def _reserve_space(path: Path) -> None:
    """Set RESERVE_BYTES aside in the run directory (allocated, not sparse), so that the final metadata.json can
    still be written after the disk fills: `finish` frees it first."""
    target = path / RESERVE_FILE
    with contextlib.suppress(OSError):
        handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode())
        try:
            os.posix_fallocate(handle, 0, RESERVE_BYTES)
        except OSError:
            os.close(handle)
            handle = -1
            target.unlink(missing_ok=True)
        if handle >= 0:
            os.close(handle)


def _free_space(path: Path) -> None:
    with contextlib.suppress(OSError):
        (path / RESERVE_FILE).unlink()


class RunDirectory:
    """Owns every file of one run; only the master rank creates one."""

    def __init__(self, path: Path, metadata: dict[str, Any], tables: dict[str, Sequence[str]],
                 views: dict[str, tuple[str, str]] | None = None, resumed_from: int | None = None):
        """`views` maps a view's name to (its source table, the column that must be set): e.g.
        EVALUATED_MASTER_VIEW writes master_stats_eval.csv with only the evaluated rows of master_stats.

        `resumed_from`: reopen the existing run at `path`, continuing from its checkpoint of that step
        (anytimectl.runtime.checkpoints): the tables are appended to (their rows after the step dropped first), the
        events and trace go on, and metadata keeps its history with the resume added and status `running`."""
        self.path = path
        self.origin = time.time()
        append = resumed_from is not None
        if append:
            self.metadata = _resumed_metadata(path, metadata, resumed_from)
        else:
            self.metadata = {"status": "running", "reason": None, "started_at": now_iso(), "ended_at": None,
                             **metadata}
        self.metadata["writer"] = writer_info()
        _reserve_space(path)
        self._liveness = _Liveness(path)
        self.save_metadata()
        files = {name: (name, columns) for name, columns in tables.items()}
        files.update({name: (name, tables[source]) for name, (source, _) in (views or {}).items()})
        if append:
            for name, columns in files.values():
                keep_rows_through(path / f"{name}.csv", columns, resumed_from)
        self.tables = {name: CsvTable(path / f"{name}.csv", columns, append) for name, columns in tables.items()}
        for name, (source, column) in (views or {}).items():
            self.tables[source].add_view(CsvTable(path / f"{name}.csv", self.tables[source].columns, append), column)
        self.events = EventLog(path / "events.jsonl")
        self.trace = Trace(path / "trace.json", self.origin, append)
        self._closed = False

    def save_metadata(self) -> None:
        write_json_atomic(self.path / "metadata.json", self.metadata)

    def finish(self, status: str, reason: str | None = None, summary: dict[str, Any] | None = None) -> None:
        """Record how the run ended; safe to call more than once (the first call wins)."""
        if self._closed:
            return
        self._closed = True
        _free_space(self.path)
        failures: list[OSError] = []
        level = "info" if status == "completed" else "warn"
        closings = (lambda: self.events.log(f"run {status}" + (f": {reason}" if reason else ""), level=level,
                                            status=status),
                    *(t.close for t in self.tables.values()), self.trace.close, self.events.close)
        for closing in closings:
            try:
                closing()
            except (OSError, ValueError) as error:  # a full disk or a removed folder (ValueError: closed already)
                if isinstance(error, OSError):
                    failures.append(error)
        if failures and status == "completed":  # the tables are not whole: not a completed run
            status, reason = "failed", str(failures[0])
        self.metadata.update(status=status, reason=reason, ended_at=now_iso())
        if summary is not None:
            self.metadata["summary"] = summary
        self._liveness.close()
        self.save_metadata()
        if failures and self.metadata["reason"] == str(failures[0]):
            raise failures[0]


def _resumed_metadata(path: Path, fresh: dict[str, Any], step: int) -> dict[str, Any]:
    """The run's recorded metadata, updated by the resumed job's `fresh` one, with the resume in `resumes`."""
    try:
        old = json.loads((path / "metadata.json").read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot resume {path}: its metadata.json is unreadable ({error})") from None
    resume = {"at": now_iso(), "from_step": step, "previous_status": old.get("status"),
              "previous_reason": old.get("reason"), "previous_ended_at": old.get("ended_at"), "argv": fresh.get("argv")}
    return {**old, **fresh, "status": "running", "reason": None, "ended_at": None,
            "started_at": old.get("started_at"), "summary": old.get("summary") or {},
            "resumes": [*(old.get("resumes") or []), resume]}


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
    _free_space(path)  # the space set aside for this rewrite, on a full disk
    write_json_atomic(meta_path, metadata)
    with contextlib.suppress(OSError):
        (path / LOCK_FILE).unlink()
    return True


def update_metadata(path: Path, **fields: Any) -> bool:
    """Set `fields` in the run's metadata.json (atomically); False when there is no readable metadata.

    For the re-launching parent, which knows things rank 0 could not: e.g. that the SIGTERM the ranks received
    was the user's Ctrl-C, passed on (`reason="interrupted by Ctrl-C"`).
    """
    meta_path = path / "metadata.json"
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    metadata.update(fields)
    write_json_atomic(meta_path, metadata)
    return True
