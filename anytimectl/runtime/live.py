"""The live view on rank 0: what every rank is doing, fed by the same rows that go to disk.

On a terminal it is a rich table redrawn in place. Under mpiexec rank 0's output is a pipe even when the user sits
at a terminal, so the re-launching parent, which knows, passes its terminal width down (`TERMINAL_WIDTH_VARIABLE`)
and the table is drawn through mpiexec's forwarding; under a user's own `mpirun`, `--live table` forces it. Without
a terminal (piped, CI, a batch job's log) rich's Live would print nothing until the end, so the view prints one
plain line per interval instead. Everything goes to stderr, keeping stdout for the final summary (or `--json`).

The view knows nothing of any method: rows are read through their `RowLayout`, and a method's own columns come as
`LiveColumn`s naming a row field.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from anytimectl.runtime.launch import TERMINAL_WIDTH_VARIABLE
from anytimectl.runtime.records import LiveColumn, RowLayout, StepRecord

#: Width of a forced table when nothing says how wide the terminal is.
DEFAULT_WIDTH = 120


@dataclass
class RankTotals:
    """Running sums per rank, in the project's timing words."""

    host: str = ""
    steps: int = 0
    compute: float = 0.0
    sleep: float = 0.0
    send: float = 0.0
    recv: float = 0.0
    phases: int = 0  # steps whose previous phases (send, recv) are known
    examples: float = 0.0
    round_time: float = 0.0
    last: dict[str, float] = field(default_factory=dict)
    _last_round_start: float = -1.0

    def add(self, row: np.ndarray, layout: RowLayout) -> None:
        compute, sleep = row[layout["compute_time"]], row[layout["sleep_time"]]
        self.steps += 1
        self.compute += compute
        self.sleep += sleep
        self.examples += row[layout["num_samples"]]
        if row[layout["last_send"]] >= 0:
            self.phases += 1
            self.send += row[layout["last_send"]]
            self.recv += row[layout["last_recv"]]
        start = row[layout["round_start"]]
        if self._last_round_start > 0 and start > self._last_round_start:
            self.round_time += start - self._last_round_start
        self._last_round_start = start
        self.last = {name: float(row[layout[name]]) for name in layout.fields}

    @property
    def utilisation(self) -> float:
        """(compute - sleep) / round time, over the rounds whose length is known."""
        if self.round_time <= 0 or self.steps < 2:
            return float("nan")
        per_step = (self.compute - self.sleep) / self.steps
        return per_step / (self.round_time / (self.steps - 1))


@dataclass
class Progress:
    """How far a run is against its length, and when it will end at the pace seen so far.

    A run stops at the first of --steps and --epochs (whichever the command was given; every method records both
    in its configuration), so its progress is the larger of the two fractions. The pace is measured from the first
    step this view saw (a resumed run starts part-way), never from the start-up before it, which would make the
    estimate too long. A run bounded only by --target-accuracy has no known end: no progress is shown.
    """

    steps: int | None = None
    epochs: float | None = None
    _first: tuple[float, float] | None = None  # (time, fraction) at the first step seen

    def fraction(self, step: int, epoch: float) -> float | None:
        parts = []
        if self.steps:
            parts.append(step / self.steps)
        if self.epochs:
            parts.append(epoch / self.epochs)
        return min(1.0, max(parts)) if parts else None

    def seen(self, step: int, epoch: float, now: float) -> None:
        fraction = self.fraction(step, epoch)
        if self._first is None and fraction is not None:
            self._first = (now, fraction)

    def eta(self, step: int, epoch: float, now: float) -> float | None:
        """Seconds left at the pace since the first step seen; None until the pace is known."""
        fraction = self.fraction(step, epoch)
        if fraction is None or self._first is None:
            return None
        start, first = self._first
        if fraction <= first or now <= start:
            return None
        return (1.0 - fraction) * (now - start) / (fraction - first)

    def text(self, step: int, epoch: float, now: float) -> str:
        """e.g. "step 30/100 (30%), ETA 1m20s", or in epochs when those end the run first; "" without a length."""
        fraction = self.fraction(step, epoch)
        if fraction is None:
            return ""
        done = f"step {step}  epoch {epoch:.2f}/{self.epochs:g}" if self.by_epochs(step, epoch) else \
            f"step {step}/{self.steps}"
        eta = self.eta(step, epoch, now)
        return f"{done} ({fraction:.0%}), ETA {'-' if eta is None else _duration(eta)}"

    def by_epochs(self, step: int, epoch: float) -> bool:
        """Whether --epochs, not --steps, ends the run first (at the pace so far)."""
        return bool(self.epochs) and (not self.steps or epoch / self.epochs >= step / self.steps)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _console(mode: str) -> tuple[Console, str]:
    """The console and the mode it supports: `auto` becomes `table` where a user will see it, else `lines`."""
    width = os.environ.get(TERMINAL_WIDTH_VARIABLE)
    plain = Console(stderr=True)
    if mode == "off":
        return plain, "off"
    if mode == "lines":
        return plain, "lines"
    if plain.is_terminal:
        return plain, "table"
    if width or mode == "table":
        forced = Console(stderr=True, force_terminal=True, width=int(width) if width and width.isdigit()
                         else DEFAULT_WIDTH)
        return forced, "table"
    return plain, "lines"


class LiveView:
    def __init__(self, title: str, hosts: dict[int, str], layout: RowLayout, mode: str = "auto",
                 columns: tuple[LiveColumn, ...] = (), interval: float = 5.0, steps: int | None = None,
                 epochs: float | None = None):
        """hosts: rank -> host of every rank that reports rows; mode: auto, table, lines or off; steps, epochs: the
        run's length, for progress and ETA (also settable later with `expect`)."""
        self.console, self.mode = _console(mode)
        self.title = title
        self.layout = layout
        self.columns = columns
        self.ranks = {rank: RankTotals(host=host) for rank, host in sorted(hosts.items())}
        self.interval = interval
        self.start = time.time()
        self.step = 0
        self.loss = float("nan")
        self.accuracy: float | None = None
        self.epoch = 0.0
        self._last_line = 0.0
        self._checkpoint = ""  # the last checkpoint's step and write time
        self._live: Live | None = None
        self.progress = Progress(steps, epochs)

    def expect(self, steps: int | None, epochs: float | None) -> None:
        """The run's length (--steps, --epochs; None where not given), for the progress and ETA shown."""
        self.progress = Progress(int(steps) if steps else None, float(epochs) if epochs else None)

    def __enter__(self) -> LiveView:
        if self.mode == "table":
            self._live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(None, None, None)
            self._live = None

    def note(self, message: str) -> None:
        if self.mode != "off":
            self.console.print(message, highlight=False)

    def checkpoint(self, step: int, seconds: float) -> None:
        """Rank 0 wrote the checkpoint of `step` in `seconds`: shown in the header until the next one."""
        self._checkpoint = f"  ckpt @{step} {seconds:.2f}s"

    def update(self, record: StepRecord | None = None, ranks: list[int] | None = None,
               rows: np.ndarray | None = None) -> None:
        """A step's header values, and/or rows of any step (rows may arrive apart from their step)."""
        if record is not None:
            self.step = max(self.step, record.step)
            self.loss = record.loss
            self.epoch = record.epoch
            self.progress.seen(self.step, self.epoch, time.time())
            if record.accuracy is not None:
                self.accuracy = record.accuracy
        if rows is not None and ranks is not None:
            for rank, row in zip(ranks, rows, strict=True):
                self.ranks.setdefault(rank, RankTotals()).add(row, self.layout)
        if self._live is not None:
            self._live.update(self._table())
        elif self.mode == "lines" and time.time() - self._last_line >= self.interval:
            self._last_line = time.time()
            self.console.print(self._line(), highlight=False, soft_wrap=True)

    def _header(self) -> str:
        elapsed = time.time() - self.start
        rate = self.step / elapsed if elapsed > 0 else 0.0
        accuracy = "-" if self.accuracy is None else f"{self.accuracy:.4f}"
        # progress first: a narrow terminal wraps the title, and how far the run is matters most
        progress = self.progress.text(self.step, self.epoch, time.time()) or f"step {self.step}"
        epoch = "" if self.progress.by_epochs(self.step, self.epoch) else f"epoch {self.epoch:.2f}  "
        return (f"{progress}  elapsed {elapsed:.1f}s  loss {self.loss:.4f}  test acc {accuracy}  "
                f"{epoch}{rate:.2f} steps/s{self._checkpoint}")

    def _line(self) -> str:
        """The plain line; the worker figures are over the ranks that reported a row, a dash until one has (the
        first step's header comes before its rows) and for utilisation until a rank has two rounds."""
        seen = [w for w in self.ranks.values() if w.steps]
        batch = f"{np.mean([w.examples / w.steps for w in seen]):.1f}" if seen else "-"
        utilisation = [w.utilisation for w in seen if np.isfinite(w.utilisation)]
        mean_util = f"{np.mean(utilisation):.2f}" if utilisation else "-"
        return f"{self.title}: {self._header()}  mean batch {batch}  utilisation {mean_util}"

    def _table(self) -> Table:
        table = Table(title=f"{self.title}\n{self._header()}", title_justify="left")
        headings = ["rank", "host", "compute", "mean", "sleep", "send", "recv (idle)", "examples", "util",
                    *(column.title for column in self.columns)]
        for heading in headings:
            table.add_column(heading, justify="left" if heading == "host" else "right")
        for rank, w in self.ranks.items():
            if not w.steps:
                table.add_row(str(rank), w.host, *["-"] * (len(headings) - 2))
                continue
            phases = max(1, w.phases)
            own = [_value(column, w.last.get(column.row_field)) for column in self.columns]
            table.add_row(
                str(rank), w.host, _ms(w.last["compute_time"]), _ms(w.compute / w.steps), _ms(w.sleep / w.steps),
                _ms(w.send / phases) if w.phases else "-", _ms(w.recv / phases) if w.phases else "-",
                f"{w.examples / w.steps:.1f}", "-" if not np.isfinite(w.utilisation) else f"{w.utilisation:.0%}",
                *own,
            )
        return table


def _value(column: LiveColumn, value: float | None) -> str:
    if value is None or not np.isfinite(value) or value < 0:
        return "-"
    return column.format.format(value)


def _ms(seconds: float) -> str:
    if seconds < 0:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"
