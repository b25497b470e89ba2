"""worker_utilisation: where each worker's round time goes, one group of stacked bars per run.

Bottom to top: compute without sleep (the utilisation), induced sleep, send, recv (idle: waiting for the
next model), and the rest of the round. A straggler-bound FMB run shows tall recv bars on its fast workers.
"""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import PercentFormatter
from matplotlib.transforms import blended_transform_factory

from . import style
from .registry import Context, axis
from .workers import utilisation

LAYERS = (
    ("compute", "compute (utilisation)"),
    ("sleep", "sleep (induced)"),
    ("send", "send"),
    ("recv", "recv (idle)"),
    ("exit", "other"),
)


@axis("worker_utilisation", "per-worker utilisation and idle share, one group of bars per run")
def worker_utilisation(ax, ctx: Context):
    groups = []
    for run in ctx.runs:
        df = ctx.data(run, "workers")
        if df is None:
            continue
        shares = utilisation(df)
        if not shares.empty:
            groups.append((run, shares))
    ax.set(title="Worker utilisation", ylabel="share of round time")
    if not groups:
        if not ctx._missing:
            ctx._missing.append("no run has two consecutive steps per worker yet")
        return False
    offset = 0.0
    centers, ticks, ticklabels = [], [], []
    many = max(len(s) for _, s in groups) > 16
    for gi, (run, shares) in enumerate(groups):
        n = len(shares)
        x = offset + np.arange(n)
        bottom = np.zeros(n)
        for key, text in LAYERS:
            values = shares[key].to_numpy(dtype=float)
            ax.bar(
                x,
                values,
                bottom=bottom,
                width=0.8,
                color=style.PHASE_COLORS[key],
                label=text if gi == 0 else "_nolegend_",
                edgecolor="white",
                linewidth=0.4,
            )
            bottom += values
        # the run's colour as a strip under its group, tying it to the other figures' legends
        ax.bar(x, -0.03, bottom=0, width=1.0, color=run.color, label="_nolegend_")
        step = max(1, n // 8) if many else 1
        for i in range(0, n, step):
            ticks.append(x[i])
            ticklabels.append(str(int(shares["rank"].iloc[i])))
        centers.append((x.mean(), run))
        weights = shares["rounds"].to_numpy(dtype=float)
        util = float(np.average(shares["compute"], weights=weights))
        idle = float(np.average(shares["recv"], weights=weights))
        ax.text(x.mean(), 1.01, f"util {util:.0%}\nidle {idle:.0%}", ha="center", va="bottom", fontsize=8)
        ctx.note(f"{run.label}: utilisation {util:.1%}, idle {idle:.1%} (mean over {len(shares)} workers)")
        offset += n + 1.0
    ax.set_xticks(ticks, ticklabels, fontsize=8)
    ax.set_xlabel("worker rank, grouped by run", labelpad=22 if len(groups) else 4)
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for cx, run in centers:
        ax.text(cx, -0.1, run.label, ha="center", va="top", transform=trans, fontsize=8, color=run.color, wrap=True)
    ax.set_ylim(-0.03, 1.18)
    ax.set_xlim(-0.7, offset - 1.3)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.grid(axis="x", visible=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False, handlelength=1.0)
    return True
