"""The asynchronous protocol's own axes (the original plot script's async-only types).

- `hist_queued_count`: per contribution, how many new models had reached the worker when it last took one
  (`last_queued_update_count`; above 1, the worker skipped models it never used).
- `hist_staleness`: per contribution, the updates applied between the model it was computed on and the one it was
  applied to (`staleness`; 0 = fresh, as every contribution of synchronous SGD).
- `comm_straggler_dist`: the simulated communication delay (`--async-delay-std S`: |N(0, S)| per message) as a
  density, against the delays the run's messages really drew (`comm_delay`).

Runs without these columns (synchronous runs) are left out of the axis, which says so when none has them.
"""

from __future__ import annotations

import numpy as np

from . import style
from .fig_hists import draw_hist
from .registry import Context, axis


@style.variant_label("async_master_worker")
def async_label(run) -> str:
    """An asynchronous run says so, with its master's rule: "async batch>=4", "async every 0.1 s"."""
    c = run.config
    if (c.get("async_master") or "batch") == "time":
        return f"async every {style.format_duration(float(c.get('async_time_limit') or 0.1))}"
    return f"async batch>={int(c.get('async_batch_min') or 4)}"


def _async_column(ctx: Context, column: str):
    def get(run):
        df = ctx.data(run, "workers")
        if df is None:
            return None
        if column not in df.columns:
            ctx._missing.append(f"{run.label}: no {column} column (not an asynchronous run: --protocol async)")
            return None
        return df[column]

    return get


@axis("hist_queued_count", "async: new models a worker found when it last took one, per contribution")
def hist_queued_count(ax, ctx: Context):
    return draw_hist(ax, ctx, _async_column(ctx, "last_queued_update_count"), title="Queued updates",
                     xlabel="models arrived since the last one taken", integer=True)


@axis("hist_staleness", "async: updates between a contribution's model and the one it was applied to")
def hist_staleness(ax, ctx: Context):
    return draw_hist(ax, ctx, _async_column(ctx, "staleness"), title="Staleness",
                     xlabel="master step - 1 - worker master step", integer=True)


def folded_normal_density(x: np.ndarray, std: float) -> np.ndarray:
    """Density of |N(0, std)| at x >= 0."""
    return np.where(x >= 0, 2.0 * np.exp(-0.5 * (x / std) ** 2) / (std * np.sqrt(2 * np.pi)), 0.0)


@axis("comm_straggler_dist", "async: simulated communication delay, the model |N(0, S)| and the measured delays")
def comm_straggler_dist(ax, ctx: Context):
    ax.set(title="Communication delay", ylabel="density")
    found = []
    for run in ctx.runs:
        std = run.config.get("async_delay_std")
        if not std:
            ctx._missing.append(f"{run.label}: no simulated communication delay (--async-delay-std)")
            continue
        df = ctx.data(run, "workers")
        delays = None
        if df is not None and "comm_delay" in df.columns:
            delays = df["comm_delay"].to_numpy(dtype=float)
            delays = delays[np.isfinite(delays) & (delays >= 0)]
        found.append((run, float(std), delays))
    if not found:
        ax.set_xlabel("delay")
        return False
    xmax = max(4.0 * std for _, std, _ in found)
    for _, _, delays in found:
        if delays is not None and delays.size:
            xmax = max(xmax, float(delays.max()))
    unit, scale = style.time_unit(xmax, allow_ms=True)
    ax.set_xlabel(f"delay ({unit})")
    x = np.linspace(0.0, xmax, 600)
    edges = np.linspace(0.0, xmax, 41)
    stds = sorted({std for _, std, _ in found})
    for std in stds:
        color = "black" if len(stds) == 1 else next(run.color for run, s, _ in found if s == std)
        ax.plot(x / scale, folded_normal_density(x, std) * scale, color=color, linewidth=1.8,
                label=f"model |N(0, {style.format_duration(std)})|", zorder=3)
    for run, _, delays in found:
        if delays is None or not delays.size:
            continue
        ax.hist(delays / scale, bins=edges / scale, density=True, histtype="stepfilled", color=run.color, alpha=0.3,
                label=f"measured {run.label}")
    ax.set_xlim(0, xmax * 1.02 / scale)
    return True
