"""The live view: one row per worker on a terminal, one plain line per interval elsewhere."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from anytimectl.live import LiveView
from anytimectl.records import LiveColumn, RowLayout, StepRecord

LAYOUT = RowLayout(("batch_size",))


def step(number: int, workers: int = 2) -> StepRecord:
    rows = LAYOUT.new_table(workers)
    for index in range(workers):
        rows[index, LAYOUT["num_samples"]] = 32 * (index + 1)
        rows[index, LAYOUT["compute_time"]] = 0.5
        rows[index, LAYOUT["sleep_time"]] = 0.1 * index
        rows[index, LAYOUT["round_start"]] = 100.0 + number
        rows[index, LAYOUT["batch_size"]] = 16 * (index + 1)
        if number > 1:
            rows[index, LAYOUT["last_send"]] = 0.01
            rows[index, LAYOUT["last_recv"]] = 0.2
    return StepRecord(step=number, time=float(number), loss=1.0 / number, learning_rate=1e-3, epoch=0.1 * number,
                      ranks=list(range(1, workers + 1)), rows=rows, accuracy=0.5 + 0.01 * number)


def feed(view: LiveView, record: StepRecord) -> None:
    view.update(record, record.ranks, record.rows)


def hosts(*names: str) -> dict[int, str]:
    return dict(enumerate(names, start=1))


def test_terminal_table_has_a_row_per_worker_with_timing_words():
    view = LiveView("demo", hosts("host-a", "host-b"), LAYOUT, mode="table",
                    columns=(LiveColumn("batch", "batch_size"),))
    view.console = Console(file=io.StringIO(), force_terminal=True, width=160)
    with view:
        for number in (1, 2, 3):
            feed(view, step(number))
    output = view.console.file.getvalue()
    for word in ("rank", "compute", "sleep", "send", "recv (idle)", "examples", "util", "host-a", "host-b", "batch"):
        assert word in output
    assert "step 3" in output and "test acc 0.5300" in output
    assert view.ranks[2].utilisation == pytest.approx((0.5 - 0.1) / 1.0)  # (compute - sleep) / round time


def test_without_a_terminal_it_prints_plain_lines():
    view = LiveView("demo", hosts("h"), LAYOUT, mode="lines", interval=0)
    view.console = Console(file=io.StringIO(), force_terminal=False, width=200)
    with view:
        feed(view, step(1, workers=1))
        feed(view, step(2, workers=1))
    lines = view.console.file.getvalue().strip().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("demo: step 2")


def test_off_prints_nothing():
    view = LiveView("demo", hosts("h"), LAYOUT, mode="off")
    view.console = Console(file=io.StringIO(), force_terminal=True)
    with view:
        feed(view, step(1, workers=1))
    view.note("hello")
    assert view.console.file.getvalue() == ""
