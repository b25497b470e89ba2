"""One lifecycle for the studies (`partitions`, `compress bench`, `bandwidth`): how a study opens its run
directory, honours stop signals, and records how it ended, so that each study does it the way training runs do.

A training run's shell (`anytimectl.runtime.shell`) owns its run directory and signals; a study measures in one process
(or hands the measuring to a child process or an MPI job) and needs the same guarantees:

- the run directory is reserved and opened together, and released again when opening fails;
- Ctrl-C, SIGTERM and SIGHUP (those the starter did not ignore: `nohup` keeps a study going) stop it at once,
  through `shell.Stopper` in its `at_once` mode: a KeyboardInterrupt carrying "interrupted by SIGTERM" unwinds the
  study, so a measuring child started with `subprocess.run` is killed on the way out instead of being orphaned;
- the end is recorded: `completed`, `interrupted` (with the signal's words) or `failed` (with the error's first
  line), and the command then exits 130 (interrupted) as training does; a bad input (UsageError) found before
  anything was measured leaves no run directory, as a training command's does;
- `available_memory` is the one free-memory figure every pre-launch check uses (MemAvailable, or less under a
  cgroup limit, as in a container or a Slurm job).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["Study", "available_memory"]


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, or less under a cgroup (container) limit; None when
    the system does not say (not Linux)."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


class Study:
    """A study's run: `with Study(out, name, default_id, metadata, tables) as study:` reserves and opens the run
    directory (`study.run`, a RunDirectory) and installs the stop signals; leaving the block records the end.

    Inside the block, call `study.complete(summary)` once the measurement is done; leaving without it (an
    exception) records `interrupted` for a KeyboardInterrupt (a signal or Ctrl-C) and `failed` otherwise, with
    the summary `partial()` gives (what was measured so far), and the exception goes on to the command line,
    which turns it into one line and exit code 130 or the error's.
    """

    def __init__(self, out: Path, name: str | None, default_id: str, metadata: dict[str, Any],
                 tables: dict[str, Sequence[str]], partial: Callable[[], dict[str, Any] | None] | None = None):
        self.out, self.name, self.default_id = Path(out), name, default_id
        self.metadata, self.tables = metadata, tables
        self.partial = partial or (lambda: None)
        self.path: Path | None = None
        self.run: Any = None
        self.measured = False
        self._stopper: Any = None

    def __enter__(self) -> Study:
        from anytimectl.runtime.rundir import RunDirectory, release, reserve
        from anytimectl.runtime.shell import Stopper

        self._stopper = Stopper(at_once=True)
        self._stopper.install()
        try:
            self.path = reserve(self.out, self.name, self.default_id)
            try:
                self.run = RunDirectory(self.path, {"run_id": self.path.name, **self.metadata}, self.tables)
            except BaseException:
                release(self.path)
                raise
        except BaseException:
            self._stopper.restore()
            raise
        return self

    def write(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        """Rows of the study's table (flushed at once, as training's tables are)."""
        self.run.tables[table].write(rows)
        self.measured = True

    def complete(self, summary: dict[str, Any] | None = None) -> None:
        self.run.finish("completed", summary=summary)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        from anytimectl.runtime.errors import UsageError

        try:
            if isinstance(error, UsageError) and not self.measured:
                self._discard()  # a bad input found before anything was measured: no run, as for training
                return
            if error is None:
                self.run.finish("completed", summary=self.partial())  # a no-op after complete()
            elif isinstance(error, KeyboardInterrupt):
                reason = str(error) or "interrupted by Ctrl-C"
                self.run.finish("interrupted", reason, summary=self.partial())
                # the command line then exits 130 without a word (typer turns the interrupt into Exit(130))
                print(f"anytimectl: {reason}; what was measured is kept in {self.path}", file=sys.stderr,
                      flush=True)
            else:
                self.run.finish("failed", f"{type(error).__name__}: {error}".splitlines()[0], summary=self.partial())
        finally:
            self._stopper.restore()

    def _discard(self) -> None:
        import shutil

        from anytimectl.runtime.rundir import release_out

        self.run.finish("failed")  # closes its files
        shutil.rmtree(self.path, ignore_errors=True)
        release_out(self.path.parent)
