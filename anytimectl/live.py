"""The live view on the master: what every worker is doing, fed by the same step records that go to disk.

On a terminal it is a rich table redrawn in place. Without one (piped, CI, a batch job's log) rich's Live
prints nothing until the end, so we print one plain line per interval instead. Everything goes to stderr,
keeping stdout for the final summary (or `--json`), which scripts read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from anytimectl.master_worker import STAT, StepResult


@dataclass
class WorkerTotals:
    """Running sums per worker, in the project's timing words."""

    host: str = ""
    steps: int = 0
    compute: float = 0.0
    sleep: float = 0.0
    send: float = 0.0
    recv: float = 0.0
    examples: float = 0.0
    round_time: float = 0.0
    last: dict[str, float] = field(default_factory=dict)
    _last_round_start: float = -1.0

    def add(self, row: np.ndarray) -> None:
        compute, sleep = row[STAT["compute_time"]], row[STAT["sleep_time"]]
        self.steps += 1
        self.compute += compute
        self.sleep += sleep
        self.examples += row[STAT["num_samples"]]
        if row[STAT["last_send"]] >= 0:
            self.send += row[STAT["last_send"]]
            self.recv += row[STAT["last_recv"]]
        if self._last_round_start > 0:
            self.round_time += row[STAT["round_start"]] - self._last_round_start
        self._last_round_start = row[STAT["round_start"]]
        self.last = {"compute": compute, "sleep": sleep, "send": row[STAT["last_send"]],
                     "recv": row[STAT["last_recv"]], "examples": row[STAT["num_samples"]]}

    @property
    def utilisation(self) -> float:
        """(compute - sleep) / round time, over the rounds whose length is known."""
        if self.round_time <= 0 or self.steps < 2:
            return float("nan")
        per_step = (self.compute - self.sleep) / self.steps
        return per_step / (self.round_time / (self.steps - 1))


class LiveView:
    def __init__(self, title: str, hosts: list[str], mode: str = "auto", interval: float = 5.0):
        """mode: "auto" (table on a terminal, lines otherwise), "lines", or "off" (--quiet / --json)."""
        self.console = Console(stderr=True)
        self.title = title
        self.workers = {rank: WorkerTotals(host=host) for rank, host in enumerate(hosts, start=1)}
        if mode == "auto":
            mode = "table" if self.console.is_terminal else "lines"
        self.mode = mode
        self.interval = interval
        self.start = time.time()
        self.step = 0
        self.loss = float("nan")
        self.accuracy: float | None = None
        self.epoch = 0.0
        self._last_line = 0.0
        self._live: Live | None = None

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

    def update(self, result: StepResult) -> None:
        self.step = max(self.step, result.step)
        self.loss = result.loss
        self.epoch = result.epoch
        if result.accuracy is not None:
            self.accuracy = result.accuracy
        for rank, row in enumerate(result.worker_stats, start=1):
            self.workers[rank].add(row)
        if self._live is not None:
            self._live.update(self._table())
        elif self.mode == "lines" and time.time() - self._last_line >= self.interval:
            self._last_line = time.time()
            self.console.print(self._line(), highlight=False, soft_wrap=True)

    def _header(self) -> str:
        elapsed = time.time() - self.start
        rate = self.step / elapsed if elapsed > 0 else 0.0
        accuracy = "-" if self.accuracy is None else f"{self.accuracy:.4f}"
        return (f"step {self.step}  elapsed {elapsed:.1f}s  loss {self.loss:.4f}  test acc {accuracy}  "
                f"epoch {self.epoch:.2f}  {rate:.2f} steps/s")

    def _line(self) -> str:
        utilisation = [w.utilisation for w in self.workers.values()]
        mean_util = np.nanmean(utilisation) if any(np.isfinite(utilisation)) else float("nan")
        batch = np.mean([w.examples / max(1, w.steps) for w in self.workers.values()])
        return f"{self.title}: {self._header()}  mean batch {batch:.1f}  utilisation {mean_util:.2f}"

    def _table(self) -> Table:
        table = Table(title=f"{self.title}\n{self._header()}", title_justify="left")
        for column in ("rank", "host", "compute", "mean", "sleep", "send", "recv (idle)", "examples", "util"):
            table.add_column(column, justify="right" if column not in ("host",) else "left")
        for rank, w in self.workers.items():
            if not w.steps:
                table.add_row(str(rank), w.host, *["-"] * 7)
                continue
            sent = w.steps - 1 if w.steps > 1 else 1
            table.add_row(
                str(rank), w.host, _ms(w.last["compute"]), _ms(w.compute / w.steps), _ms(w.sleep / w.steps),
                _ms(w.send / sent), _ms(w.recv / sent), f"{w.examples / w.steps:.1f}",
                "-" if not np.isfinite(w.utilisation) else f"{w.utilisation:.0%}",
            )
        return table


def _ms(seconds: float) -> str:
    if seconds < 0:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"

