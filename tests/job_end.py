"""How long a job takes to end: from a stop signal to its last step, from the last step to the recorded end, and
from the recorded end to the moment the launching process and every process of the job are gone.

Shared by the teardown tests (tests/test_teardown.py, tests/cluster/) and the benchmark (tests/bench/teardown.py).
Every process the job starts inherits a marker in its environment (helpers.PROCESS_MARKER), which is how the job's
processes are found in /proc, on emulated hosts too (their namespaces share this machine's process table).

The instants, all from file modification times and this watcher's clock (the same machine's clock):
- last step: the last write of the step tables (master_stats.csv, worker_stats.csv, collect_stats.csv);
- recorded: the last write of events.jsonl, whose last line rank 0 writes when it records the end (the launching
  parent may rewrite metadata.json later, to name the signal the user sent, so metadata.json's time is not it);
- launcher exit: the command we started has exited (polled every 20 ms);
- all gone: no process with the marker is left (mpiexec, Hydra's proxies, every rank, on every host).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import PROCESS_MARKER, marked_processes

#: The tables a step writes to.
STEP_TABLES = ("master_stats.csv", "worker_stats.csv", "collect_stats.csv")
_POLL = 0.02


@dataclass
class JobEndTimes:
    status: str
    reason: str | None
    returncode: int
    stop_sent: float | None  # time.time() the signal was sent (None: the run finished by itself)
    last_step: float
    recorded: float
    launcher_exit: float
    all_gone: float
    stderr: str
    metadata: dict

    @property
    def stop_to_last_step(self) -> float | None:
        return None if self.stop_sent is None else self.last_step - self.stop_sent

    @property
    def step_to_recorded(self) -> float:
        return self.recorded - self.last_step

    @property
    def recorded_to_launcher_exit(self) -> float:
        return self.launcher_exit - self.recorded

    @property
    def recorded_to_all_gone(self) -> float:
        return self.all_gone - self.recorded

    def line(self) -> str:
        stop = "-" if self.stop_to_last_step is None else f"{self.stop_to_last_step:.2f}"
        return (f"{self.status:11s} rc={self.returncode:<4d} stop->last step {stop:>5s} s  last step->recorded "
                f"{self.step_to_recorded:5.2f} s  recorded->launcher exit {self.recorded_to_launcher_exit:5.2f} s  "
                f"recorded->all gone {self.recorded_to_all_gone:5.2f} s")


def rows(path: Path) -> int:
    try:
        with open(path, "rb") as stream:
            return max(0, sum(1 for _ in stream) - 1)
    except OSError:
        return 0


def watch_job(command: list[str], run_dir: Path, stop: int | None = None, rows_before_stop: int = 3,
              env: dict[str, str] | None = None, timeout: float = 300.0) -> JobEndTimes:
    """Start `command` (a launcher that writes `run_dir`), send `stop` to it once master_stats.csv has
    `rows_before_stop` rows (None: let it finish), and time its end. Everything it started is killed if it is still
    there after `timeout` seconds (an AssertionError then says so)."""
    marker = f"end{os.getpid()}{secrets.token_hex(3)}"
    process = subprocess.Popen(command, env={**(env or os.environ), PROCESS_MARKER: marker}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    stderr_chunks: list[bytes] = []
    import threading

    reader = threading.Thread(target=lambda: stderr_chunks.append(process.stderr.read()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    stop_sent = launcher_exit = None
    try:
        while True:
            now = time.time()
            if stop is not None and stop_sent is None and rows(run_dir / "master_stats.csv") >= rows_before_stop:
                process.send_signal(stop)
                stop_sent = now
            if launcher_exit is None and process.poll() is not None:
                launcher_exit = now
            if launcher_exit is not None and not marked_processes(marker):
                all_gone = time.time()
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the job ({' '.join(command[-12:])}) was not gone within {timeout:.0f} s")
            time.sleep(_POLL)
    finally:
        _kill_marked(marker, process)
        reader.join(timeout=10)
    metadata = json.loads((run_dir / "metadata.json").read_text())
    last_step = max(os.stat(run_dir / name).st_mtime for name in STEP_TABLES if (run_dir / name).exists())
    recorded = os.stat(run_dir / "events.jsonl").st_mtime
    return JobEndTimes(metadata["status"], metadata.get("reason"), process.returncode, stop_sent, last_step, recorded,
                       launcher_exit, all_gone, b"".join(stderr_chunks).decode(errors="replace"), metadata)


def _kill_marked(marker: str, process: subprocess.Popen) -> None:
    """Whatever of the job is left (a failed check, a timeout): SIGKILL it, so that no test leaves a job behind."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in marked_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
