"""The re-launching parent and real signals: the job stops when asked, dies with its parent, and never leaks.

Each test starts a real parent process (the `bandwidth` command, or `launcher_job.py`, a stand-in whose ranks
behave in ways a real step cannot be made to on demand) with a unique marker in its environment, which every
process of its job inherits; /proc then tells which of them are still alive.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
import uuid
from pathlib import Path

import pytest
from helpers import metadata

from anytimectl.runtime import launch

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; Linux only"),
              pytest.mark.mpi]

MARKER = "ANYTIMECTL_TEST_MARKER"
JOB = Path(__file__).with_name("launcher_job.py")


def marked(marker: str) -> list[int]:
    """Processes whose environment carries our marker (the parent, mpiexec, hydra's proxy, the ranks)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as stream:
                if needle in stream.read().split(b"\0"):
                    with open(f"/proc/{entry}/stat", "rb") as stat:
                        if stat.read().rsplit(b")", 1)[1].split()[0] != b"Z":  # a zombie is dead, only unreaped
                            found.append(int(entry))
        except OSError:
            continue
    return found


def ranks(marker: str) -> list[int]:
    """The rank processes (mpiexec's own command line names mpi4py and anytimectl too)."""
    return [pid for pid in marked(marker) if launch._is_rank(pid) and not _command(pid).endswith("mpiexec")]


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            return stream.read().split(b"\0")[0].decode()
    except OSError:
        return ""


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def assert_no_leftovers(marker: str, timeout: float = 5.0) -> None:
    wait_until(lambda: not marked(marker), timeout, "every process of the job to be gone")


_STARTED: list[Parent] = []


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test():
    """A failed assertion must not leave a job of 10^8 rounds running for the rest of the suite."""
    yield
    while _STARTED:
        parent = _STARTED.pop()
        for pid in marked(parent.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


class Parent:
    """A parent process under test, in its own session (so signals we send reach it alone)."""

    def __init__(self, command: list[str], tmp_path: Path, **popen):
        self.marker = uuid.uuid4().hex
        _STARTED.append(self)
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
            env={**os.environ, MARKER: self.marker, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=tmp_path,
            start_new_session=True, **popen,
        )

    def wait_for_ranks(self, count: int = 2, listening: bool = True, timeout: float = 120) -> None:
        def ready():
            found = ranks(self.marker)
            return len(found) >= count and (not listening or all(launch._catches(p, signal.SIGTERM) for p in found))
        wait_until(ready, timeout, f"{count} ranks{' handling SIGTERM' if listening else ''}")

    def send(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            for pid in marked(self.marker):
                os.kill(pid, signal.SIGKILL)
            raise
        return self.process.returncode, out, err


def bandwidth(tmp_path: Path) -> Parent:
    return Parent([sys.executable, "-m", "anytimectl", "bandwidth", "--workers", "1", "--sizes", "2^10",
                   "--rounds", "100000000", "--warmup", "0", "--out", str(tmp_path), "--name", "run"], tmp_path)


def assert_clean_stop(code: int, err: str, run: Path, words: str) -> None:
    assert code == 130, err
    assert "BAD TERMINATION" not in err and "Traceback" not in err and "Sending Ctrl-C" not in err, err
    meta = metadata(run)
    assert meta["status"] == "interrupted" and meta["reason"] == f"interrupted by {words}"


@pytest.mark.parametrize(("signum", "words"), [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM"),
                                                (signal.SIGHUP, "SIGHUP")])
def test_a_signal_to_the_parent_stops_the_job_cleanly(tmp_path, signum, words):
    parent = bandwidth(tmp_path)
    parent.wait_for_ranks()
    parent.send(signum)
    code, _, err = parent.finish()
    assert_clean_stop(code, err, tmp_path / "run", words)
    assert_no_leftovers(parent.marker)


def test_a_signal_during_start_up_waits_for_the_ranks_to_listen(tmp_path):
    """Ctrl-C right after starting: ranks not yet handling SIGTERM would die of it (and hydra would print its
    dump), so the parent holds the signal until they handle it."""
    parent = bandwidth(tmp_path)
    parent.wait_for_ranks(listening=False)
    assert not all(launch._catches(p, signal.SIGTERM) for p in ranks(parent.marker))  # still importing
    parent.send(signal.SIGINT)
    code, _, err = parent.finish()
    assert_clean_stop(code, err, tmp_path / "run", "Ctrl-C")
    assert_no_leftovers(parent.marker)


def test_a_signal_the_parent_was_started_to_ignore_is_ignored(tmp_path):
    """`nohup anytimectl ...` keeps running when the terminal closes; the next SIGTERM still stops it."""
    parent = Parent([sys.executable, "-m", "anytimectl", "bandwidth", "--workers", "1", "--sizes", "2^10",
                     "--rounds", "100000000", "--warmup", "0", "--out", str(tmp_path), "--name", "run"], tmp_path,
                    preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    parent.wait_for_ranks()
    parent.send(signal.SIGHUP)
    time.sleep(2)
    assert parent.process.poll() is None and len(ranks(parent.marker)) == 2
    parent.send(signal.SIGTERM)
    code, _, err = parent.finish()
    assert_clean_stop(code, err, tmp_path / "run", "SIGTERM")
    assert_no_leftovers(parent.marker)


def test_kill_9_of_the_parent_takes_the_job_down(tmp_path):
    parent = bandwidth(tmp_path)
    parent.wait_for_ranks()
    parent.send(signal.SIGKILL)
    parent.finish()
    assert_no_leftovers(parent.marker)


def test_a_closed_terminal_stops_the_job(tmp_path):
    """The parent's controlling terminal goes away (SIGHUP from the kernel), as when a terminal window closes."""
    controller, terminal = pty.openpty()
    name = os.ttyname(terminal)

    def take_terminal():  # a session leader's first terminal becomes its controlling terminal
        os.close(os.open(name, os.O_RDWR))

    parent = Parent([sys.executable, "-m", "anytimectl", "bandwidth", "--workers", "1", "--sizes", "2^10",
                     "--rounds", "100000000", "--warmup", "0", "--out", str(tmp_path), "--name", "run"], tmp_path,
                    preexec_fn=take_terminal)
    os.close(terminal)
    try:
        parent.wait_for_ranks()
    finally:
        os.close(controller)  # hang up
    code, _, err = parent.finish()
    assert code == 130, err
    meta = metadata(tmp_path / "run")
    assert meta["status"] == "interrupted" and meta["reason"] == "interrupted by SIGHUP"
    assert_no_leftovers(parent.marker)


def stand_in(tmp_path: Path, behaviour: str, **popen) -> Parent:
    return Parent([sys.executable, str(JOB), "parent", behaviour, str(tmp_path)], tmp_path, **popen)


def logs(tmp_path: Path) -> list[str]:
    return [p.read_text() for p in sorted(tmp_path.glob("rank-*.log"))]


def test_a_second_signal_kills_a_job_that_is_still_stopping(tmp_path):
    parent = stand_in(tmp_path, "slow-stop")
    parent.wait_for_ranks()
    parent.send(signal.SIGINT)
    wait_until(lambda: all("got SIGTERM" in text for text in logs(tmp_path)) and len(logs(tmp_path)) == 2, 10,
               "both ranks to receive the forwarded SIGTERM")
    assert ranks(parent.marker)  # still finishing their "step"
    started = time.monotonic()
    parent.send(signal.SIGINT)
    code, out, err = parent.finish(timeout=30)
    assert time.monotonic() - started < 10
    assert code == 130 and "BAD TERMINATION" not in err, err
    end = json.loads(out)
    assert end["signal"] == signal.SIGINT and end["code"] != 0
    assert_no_leftovers(parent.marker)


def test_a_signal_before_the_ranks_handle_it_is_delivered_once_they_do(tmp_path):
    parent = stand_in(tmp_path, "late-handler")
    parent.wait_for_ranks(listening=False)
    parent.send(signal.SIGTERM)
    code, out, err = parent.finish()
    texts = logs(tmp_path)
    assert len(texts) == 2 and all(t.splitlines() == ["starting", "ready", "got SIGTERM", "stopped"] for t in texts)
    assert code == 130 and json.loads(out) == {"code": 0, "signal": signal.SIGTERM, "exit_code": 130}, err
    assert_no_leftovers(parent.marker)


def test_the_terminal_width_reaches_the_ranks_only_from_a_terminal(tmp_path):
    (tmp_path / "piped").mkdir()
    code, _, err = stand_in(tmp_path / "piped", "env").finish()
    assert code == 0, err
    assert logs(tmp_path / "piped") == ["width=\n", "width=\n"]

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 97, 0, 0))
    (tmp_path / "tty").mkdir()
    process = subprocess.Popen([sys.executable, str(JOB), "parent", "env", str(tmp_path / "tty")],
                               stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL)
    os.close(terminal)
    try:
        process.communicate(timeout=60)
    finally:
        os.close(controller)
    assert process.returncode == 0
    assert logs(tmp_path / "tty") == ["width=97\n", "width=97\n"]


def test_job_end_exit_codes():
    assert launch.JobEnd(0).exit_code == 0
    assert launch.JobEnd(3).exit_code == 3
    assert launch.JobEnd(-9).exit_code == 137  # killed by SIGKILL, as a shell reports it
    assert launch.JobEnd(-9, signal.SIGINT).exit_code == 130
    assert launch.JobEnd(0, signal.SIGTERM).exit_code == 130
