"""Histograms of per-worker and per-step quantities, overlaid per run on common bins.

Each run's histogram is normalised to fractions (runs of different length compare directly), drawn filled and
outlined in the run's colour, with its mean as a dashed vertical line.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from . import style
from .registry import Context, axis

MAX_BINS = 50
MIN_BINS = 20


def bin_edges(arrays: list[np.ndarray], integer: bool) -> np.ndarray:
    values = np.concatenate(arrays)
    lo, hi = float(values.min()), float(values.max())
    if integer:
        width = max(1, int(np.ceil((hi - lo + 1) / MAX_BINS)))
        return np.arange(np.floor(lo) - 0.5 * width, hi + width, width)
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        return np.linspace(lo - pad, hi + pad, 11)
    edges = np.histogram_bin_edges(values, bins="auto")
    if not MIN_BINS <= len(edges) - 1 <= MAX_BINS:
        edges = np.linspace(lo, hi, min(max(len(edges) - 1, MIN_BINS), MAX_BINS) + 1)
    return edges


def draw_hist(
    ax,
    ctx: Context,
    values: Callable[[object], pd.Series | None],
    *,
    title: str,
    xlabel: str,
    integer: bool = False,
    seconds: bool = False,
) -> bool:
    """`values(run)` gives the run's sample (or None when the run lacks the table)."""
    data = []
    for run in ctx.runs:
        series = values(run)
        if series is None:
            continue
        arr = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        arr = arr[np.isfinite(arr)]
        if arr.size:
            data.append((run, arr))
    ax.set(title=title, ylabel="fraction")
    if not data:
        ax.set_xlabel(xlabel)
        return False
    scale = 1.0
    if seconds:
        unit, scale = style.time_unit(max(float(a.max()) for _, a in data), allow_ms=True)
        xlabel = f"{xlabel} ({unit})"
        data = [(r, a / scale) for r, a in data]
    ax.set_xlabel(xlabel)
    edges = bin_edges([a for _, a in data], integer)
    for run, arr in data:
        weights = np.full(arr.size, 1.0 / arr.size)
        ax.hist(
            arr, bins=edges, weights=weights, histtype="stepfilled", color=run.color, alpha=0.25, label="_nolegend_"
        )
        ax.hist(
            arr,
            bins=edges,
            weights=weights,
            histtype="step",
            color=run.color,
            linewidth=1.4,
            linestyle=run.linestyle,
            label=run.label,
        )
        ax.axvline(arr.mean(), color=run.color, linestyle="--", linewidth=1, label="_nolegend_")
    if integer and edges[-1] - edges[0] < 8:  # a few integer values: keep the bars narrow and centred
        mid = 0.5 * (edges[0] + edges[-1])
        ax.set_xlim(mid - 4, mid + 4)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if ctx.opts.ylog:
        ax.set_yscale("log")
    return True


def _worker_col(ctx: Context, col: str, positive: bool = False):
    def get(run):
        df = ctx.data(run, "workers")
        if df is None:
            return None
        s = df[col]
        return s[s >= 0] if positive else s  # last_* are -1 on a worker's first step

    return get


def _collect_col(ctx: Context, col: str):
    def get(run):
        df = ctx.data(run, "collect")
        return None if df is None else df[col]

    return get


@axis("hist_compute_time", "worker compute time per step (includes induced sleep)")
def hist_compute_time(ax, ctx: Context):
    return draw_hist(
        ax, ctx, _worker_col(ctx, "compute_time"), title="Worker compute time", xlabel="compute time", seconds=True
    )


@axis("hist_batch_size", "worker batch size per step (varies under AMB)")
def hist_batch_size(ax, ctx: Context):
    return draw_hist(
        ax,
        ctx,
        _worker_col(ctx, "num_samples"),
        title="Worker batch size",
        xlabel="examples per worker step",
        integer=True,
    )


@axis("hist_send", "worker send time per step")
def hist_send(ax, ctx: Context):
    return draw_hist(
        ax,
        ctx,
        _worker_col(ctx, "last_send", positive=True),
        title="Worker send time",
        xlabel="send time",
        seconds=True,
    )


@axis("hist_recv", "worker idle time: waiting for and receiving the next model")
def hist_recv(ax, ctx: Context):
    return draw_hist(
        ax,
        ctx,
        _worker_col(ctx, "last_recv", positive=True),
        title="Worker recv (idle) time",
        xlabel="recv time",
        seconds=True,
    )


@axis("hist_exit", "worker exit time: the rest of a round")
def hist_exit(ax, ctx: Context):
    return draw_hist(
        ax,
        ctx,
        _worker_col(ctx, "last_exit", positive=True),
        title="Worker exit time",
        xlabel="exit time",
        seconds=True,
    )


@axis("hist_total_samples", "master batch size: examples summed over the workers heard each step")
def hist_total_samples(ax, ctx: Context):
    return draw_hist(
        ax,
        ctx,
        _collect_col(ctx, "total_samples"),
        title="Master batch size",
        xlabel="examples per master step",
        integer=True,
    )


@axis("hist_worker_count", "number of workers the master heard from each step")
def hist_worker_count(ax, ctx: Context):
    return draw_hist(
        ax, ctx, _collect_col(ctx, "worker_count"), title="Workers heard per step", xlabel="workers", integer=True
    )


@axis("hist_wait_time", "master wait for the workers each step")
def hist_wait_time(ax, ctx: Context):
    return draw_hist(
        ax, ctx, _collect_col(ctx, "wait_time"), title="Master wait time", xlabel="wait time", seconds=True
    )


@axis("hist_master_round_time", "time between consecutive master steps")
def hist_master_round_time(ax, ctx: Context):
    def get(run):
        return run.master["time"].diff().dropna()

    return draw_hist(ax, ctx, get, title="Master round time", xlabel="round time", seconds=True)
