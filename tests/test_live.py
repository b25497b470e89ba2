"""The live view: one row per worker on a terminal, one plain line per interval elsewhere."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from anytimectl.live import LiveView
from anytimectl.master_worker import STAT, STAT_FIELDS, StepResult


def step(number: int, workers: int = 2) -> StepResult:
    stats = np.full((workers, len(STAT_FIELDS)), -1.0)
    for index in range(workers):
        stats[index, STAT["num_samples"]] = 32 * (index + 1)
        stats[index, STAT["compute_time"]] = 0.5
        stats[index, STAT["sleep_time"]] = 0.1 * index
        stats[index, STAT["round_start"]] = 100.0 + number
        if number > 1:
            stats[index, STAT["last_send"]] = 0.01
            stats[index, STAT["last_recv"]] = 0.2
    return StepResult(step=number, time=float(number), loss=1.0 / number, learning_rate=1e-3, epoch=0.1 * number,
                      wait_time=0.4, total_samples=96, worker_stats=stats, accuracy=0.5 + 0.01 * number)


def test_terminal_table_has_a_row_per_worker_with_timing_words():
    view = LiveView("demo", ["host-a", "host-b"], mode="table")
    view.console = Console(file=io.StringIO(), force_terminal=True, width=160)
    with view:
        for number in (1, 2, 3):
            view.update(step(number))
    output = view.console.file.getvalue()
    for word in ("rank", "compute", "sleep", "send", "recv (idle)", "examples", "util", "host-a", "host-b"):
        assert word in output
    assert "step 3" in output and "test acc 0.5300" in output
    assert view.workers[2].utilisation == pytest.approx((0.5 - 0.1) / 1.0)  # (compute - sleep) / round time


def test_without_a_terminal_it_prints_plain_lines():
    view = LiveView("demo", ["h"], mode="auto", interval=0)
    view.console = Console(file=io.StringIO(), force_terminal=False, width=200)
    view.mode = "lines"
    with view:
        view.update(step(1, workers=1))
        view.update(step(2, workers=1))
    lines = view.console.file.getvalue().strip().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("demo: step 2")


def test_off_prints_nothing():
    view = LiveView("demo", ["h"], mode="off")
    view.console = Console(file=io.StringIO(), force_terminal=True)
    with view:
        view.update(step(1, workers=1))
    view.note("hello")
    assert view.console.file.getvalue() == ""
