"""The live view: one row per worker on a terminal, one plain line per interval elsewhere."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from anytimectl.runtime.live import LiveView, Progress
from anytimectl.runtime.records import LiveColumn, RowLayout, StepRecord

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


def test_progress_counts_the_end_that_comes_first_and_estimates_the_time_left():
    by_steps = Progress(steps=100)
    by_steps.seen(10, 0.0, now=0.0)  # a resumed run, or after start-up: the pace counts from the first step seen
    assert by_steps.eta(10, 0.0, now=0.0) is None  # no pace yet
    assert by_steps.eta(30, 0.0, now=20.0) == pytest.approx(0.7 * 20.0 / 0.2)
    assert by_steps.text(30, 0.0, now=20.0) == "step 30/100 (30%), ETA 1m10s"
    both = Progress(steps=1000, epochs=2.0)
    assert both.fraction(100, 1.5) == pytest.approx(0.75) and both.by_epochs(100, 1.5)
    assert both.text(100, 1.5, now=5.0).startswith("step 100  epoch 1.50/2 (75%), ETA")
    assert not both.by_epochs(900, 0.5) and both.fraction(900, 0.5) == pytest.approx(0.9)
    assert Progress().text(5, 0.1, now=1.0) == ""  # only --target-accuracy: no known end


@pytest.mark.parametrize("mode", ["table", "lines"])
def test_the_view_shows_progress_and_eta_in_the_table_and_the_plain_lines(mode):
    view = LiveView("demo", hosts("h"), LAYOUT, mode=mode, interval=0)
    view.expect(steps=10, epochs=None)  # what the recorder tells it from the run's configuration
    view.console = Console(file=io.StringIO(), force_terminal=mode == "table", width=200)
    with view:
        for number in (1, 2, 3):
            feed(view, step(number, workers=1))
    output = view.console.file.getvalue()
    assert "step 3/10 (30%), ETA " in output and "ETA -" in output  # the first step: no pace yet
    if mode == "lines":
        assert output.strip().splitlines()[-1].startswith("demo: step 3/10 (30%), ETA ")


def test_the_plain_line_shows_a_dash_until_a_worker_has_reported():
    """The first step's header comes before its rows: no `mean batch 0.0  utilisation nan`, a dash until there is
    data (utilisation needs two rounds of a rank)."""
    view = LiveView("demo", hosts("a", "b"), LAYOUT, mode="lines", interval=0)
    view.console = Console(file=io.StringIO(), force_terminal=False, width=300)
    first = step(1)
    with view:
        view.update(first)  # the header, as the recorder gives it, before the rows
        view.update(ranks=first.ranks, rows=first.rows)
        feed(view, step(2))
    lines = view.console.file.getvalue().strip().splitlines()
    assert lines[0].endswith("mean batch -  utilisation -"), lines[0]
    assert lines[1].endswith("mean batch 48.0  utilisation -"), lines[1]  # (32 + 64) / 2; one round each
    assert lines[-1].endswith("mean batch 48.0  utilisation 0.45"), lines[-1]  # 0.5 and 0.4 (compute - sleep) / 1 s
    assert "nan" not in view.console.file.getvalue()
