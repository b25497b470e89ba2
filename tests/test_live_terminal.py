"""The live table where users look: `--workers N` on a terminal (rank 0 runs under mpiexec, whose output is a pipe;
the re-launching parent passes its terminal down), checked under a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
from helpers import REPO

pytestmark = [pytest.mark.mpi, pytest.mark.slow]


def run_on_a_terminal(args: list[str], columns: int = 100, timeout: float = 240) -> tuple[int, str]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "anytimectl", *args], stdin=slave, stdout=slave, stderr=slave,
                               cwd=REPO, close_fds=True, env={k: v for k, v in os.environ.items()
                                                               if k not in ("COLUMNS", "LINES")})
    os.close(slave)
    output = bytearray()
    deadline = time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    return process.wait(timeout=30), output.decode(errors="replace")


def test_workers_on_a_terminal_draw_the_rich_table(tmp_path):
    code, output = run_on_a_terminal(["train", "fmb", "--workers", "2", "--steps", "8", "--batch-size", "16",
                                      "--test-size", "50", "--out", str(tmp_path)])
    assert code == 0, output[-3000:]
    # the table's frame and headings, drawn in place (cursor movements), not the plain 5-second lines
    assert "recv (idle)" in output and "┏" in output and "\x1b[" in output, output[-3000:]
    assert "fmb-digits" in output  # the final summary still reaches the terminal
    assert "step 8/8 (100%), ETA 0s" in output  # progress against --steps, from the run's configuration


def test_live_off_prints_no_table_on_a_terminal(tmp_path):
    """The live view is the run shell's, the same for every backend: the simulated one spares TensorFlow's
    start-up (the test above draws the table of a TensorFlow run)."""
    code, output = run_on_a_terminal(["train", "fmb", "--backend", "sim", "--workers", "2", "--steps", "3",
                                      "--batch-size", "16", "--out", str(tmp_path), "--live", "off"])
    assert code == 0, output[-3000:]
    assert "recv (idle)" not in output
