"""worker_timeline: a Gantt chart of each worker's phases over a window of steps, one row of axes per run.

Read from trace.json (complete events only), or, for a run without one, rebuilt from worker_stats.csv. Each
worker's compute bar has its induced sleep drawn over its start, then send, recv (idle) and exit; the master's
collect / apply / broadcast / evaluate run along the top row. Dotted lines mark where each step's rounds begin.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from anytimectl.runtime.errors import UsageError

from . import style
from .registry import Context, figure
from .rundir import MissingTable
from .rundir import _short as short
from .workers import phases_from_stats

DEFAULT_WINDOW = 10
WORKER_PHASES = ("compute", "sleep", "send", "recv", "exit")
MASTER_COLORS = {"collect": "#d9d9d9", "apply": "#4c72b0", "broadcast": "#55a868", "evaluate": "#937860"}
LEGEND = [
    ("compute", "compute"),
    ("sleep", "sleep (induced)"),
    ("send", "send"),
    ("recv", "recv (idle)"),
    ("exit", "exit"),
]


def window(ctx: Context, run) -> tuple[int, int]:
    last = int(run.master["step"].max())
    if ctx.opts.steps is None:
        return max(int(run.master["step"].min()), last - DEFAULT_WINDOW + 1), last
    first, last_asked = ctx.opts.steps
    return first, min(last_asked, last)


def segments(run, first: int, last: int) -> tuple[pd.DataFrame, str]:
    """Events in the window and where they came from."""
    try:
        trace = run.trace
    except MissingTable:
        trace = None
    if trace is not None and not trace.empty:
        ev = trace[(trace["step"] >= first) & (trace["step"] <= last)]
        if not ev.empty:
            return ev, "trace.json"
    try:
        workers = run.workers
    except MissingTable:
        raise UsageError(
            f"run {short(run.path)} has neither trace.json nor worker_stats.csv for worker_timeline"
        ) from None
    return phases_from_stats(workers, first, last), "worker_stats.csv"


def draw_run(ax, run, ev: pd.DataFrame, first: int, last: int, source: str) -> None:
    ranks = sorted(int(p) for p in ev["pid"].unique())
    has_master = 0 in ranks
    workers = [r for r in ranks if r != 0]
    t0 = float(ev["ts"].min())
    t1 = float((ev["ts"] + ev["dur"]).max())
    unit, scale = style.time_unit(t1, allow_ms=False)
    height = 0.7
    for rank in workers:
        mine = ev[ev["pid"] == rank]
        for phase in WORKER_PHASES:
            seg = mine[mine["name"] == phase]
            if not seg.empty:
                ax.broken_barh(
                    list(zip(seg["ts"] / scale, seg["dur"] / scale, strict=True)),
                    (rank - height / 2, height),
                    facecolors=style.PHASE_COLORS[phase],
                    edgecolor="none",
                )
    if has_master:
        mine = ev[ev["pid"] == 0]
        for phase, color in MASTER_COLORS.items():
            seg = mine[mine["name"] == phase]
            if not seg.empty:
                ax.broken_barh(
                    list(zip(seg["ts"] / scale, seg["dur"] / scale, strict=True)),
                    (-height / 2, height),
                    facecolors=color,
                    edgecolor="none",
                )
    # step boundaries: the earliest round start of each step
    starts = ev[(ev["pid"] != 0) & (ev["name"] == "compute")].groupby("step")["ts"].min()
    for step, ts in starts.items():
        ax.axvline(ts / scale, color="0.3", linestyle=":", linewidth=0.8)
        if len(starts) <= 30:
            ax.text(
                ts / scale,
                1.0,
                f" {int(step)}",
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                va="bottom",
                ha="left",
                color="0.3",
            )
    rows = ([0] if has_master else []) + workers
    ax.set_yticks(rows, (["master"] if has_master else []) + [f"worker {r}" for r in workers])
    ax.set_ylim(max(rows) + 0.6, min(rows) - 0.6)
    pad = 0.01 * (t1 - t0)
    ax.set_xlim((t0 - pad) / scale, (t1 + pad) / scale)
    ax.set_xlabel(f"time since run start ({unit})")
    ax.grid(axis="y", visible=False)
    ax.set_title(f"{run.label}: steps {first}–{last}", loc="left", color=run.color, pad=12)
    if source != "trace.json":
        ax.text(1.0, 1.0, f"from {source}", transform=ax.transAxes, fontsize=7, ha="right", va="bottom", color="0.4")


@figure("worker_timeline", "Gantt chart of each worker's compute, sleep, send and recv over --steps A:B")
def worker_timeline(ctx: Context):
    panels = []
    for run in ctx.runs:
        first, last = window(ctx, run)
        ev, source = segments(run, first, last)
        if ev.empty:
            have = f"{int(run.master['step'].min())}:{int(run.master['step'].max())}"
            asked = f"{first}:{ctx.opts.steps[1]}" if ctx.opts.steps and ctx.opts.steps[1] < 10**12 else f"{first}:"
            raise UsageError(f"run {short(run.path)}: no worker phases in steps {asked} (it has steps {have})")
        panels.append((run, ev, first, last, source))
    heights = [0.32 * (ev["pid"].nunique()) + 1.3 for _, ev, *_ in panels]
    fig = ctx.new_figure(12, sum(heights) + 0.5)
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights).ravel()
    for ax, (run, ev, first, last, source) in zip(axes, panels, strict=True):
        draw_run(ax, run, ev, first, last, source)
    handles = [Patch(color=style.PHASE_COLORS[k], label=text) for k, text in LEGEND]
    if any(0 in set(ev["pid"].astype(int)) for _, ev, *_ in panels):
        handles += [Patch(color=c, label=f"master {k}") for k, c in MASTER_COLORS.items()]
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 5), frameon=False, fontsize=9)
    return fig


def parse_steps(text: str | None) -> tuple[int, int] | None:
    """`A:B` -> (A, B), both included; `A:` and `:B` leave an end open, `A` alone is one step."""
    if text is None:
        return None
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            first = int(a) if a.strip() else 0
            last = int(b) if b.strip() else np.iinfo(np.int64).max
        else:
            first = last = int(text)
    except ValueError:
        raise UsageError(f"--steps {text!r}: expected A:B, e.g. 10:20 (steps A to B, both included)") from None
    if first > last:
        raise UsageError(f"--steps {text!r}: the first step is after the last")
    return first, last
