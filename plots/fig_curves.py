"""Curves from master_stats.csv (and the cumulative sample count): one line per run, two when smoothed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import style
from .registry import Context, axis

SPARSE = 40  # fewer points than this get markers, so evaluations every N steps stay visible


def _max_time(ctx: Context) -> float:
    return max(float(r.master["time"].max()) for r in ctx.runs)


def time_label(ctx: Context, what: str = "wall-clock time") -> tuple[str, float]:
    unit, scale = style.time_unit(_max_time(ctx))
    return f"{what} ({unit})", scale


def draw_lines(ax, ctx: Context, x: str, y: str, *, smoothable: bool = True, x_scale: float = 1.0) -> bool:
    """Plot column `y` against column `x` of each run's master table; rows where `y` is empty are skipped."""
    drew = False
    for run in ctx.runs:
        df = run.master[[x, y]].dropna()
        if df.empty:
            continue
        xs = df[x].to_numpy() / x_scale
        ys = df[y]
        marker = "o" if len(df) < SPARSE else None
        if smoothable and ctx.opts.smooth and ctx.opts.smooth > 1:
            ax.plot(xs, ys.to_numpy(), color=run.color, alpha=0.25, linewidth=0.8, label="_nolegend_")
            ys = style.smooth(ys, ctx.opts.smooth)
        ax.plot(
            xs,
            ys.to_numpy(),
            color=run.color,
            linestyle=run.linestyle,
            linewidth=1.6,
            marker=marker,
            markersize=3,
            label=run.label,
        )
        drew = True
    _scales(ax, ctx)
    return drew


def _scales(ax, ctx: Context) -> None:
    if ctx.opts.xlog:
        ax.set_xscale("log")
    if ctx.opts.ylog:
        ax.set_yscale("log")


def _smoothed(ctx: Context, text: str) -> str:
    return f"{text} (EWM span {ctx.opts.smooth:g})" if ctx.opts.smooth and ctx.opts.smooth > 1 else text


@axis("loss_vs_step", "training loss against master step")
def loss_vs_step(ax, ctx: Context):
    ax.set(title=_smoothed(ctx, "Training loss vs step"), xlabel="step", ylabel="training loss")
    return draw_lines(ax, ctx, "step", "loss")


@axis("loss_vs_time", "training loss against wall-clock time")
def loss_vs_time(ax, ctx: Context):
    xlabel, scale = time_label(ctx)
    ax.set(title=_smoothed(ctx, "Training loss vs time"), xlabel=xlabel, ylabel="training loss")
    return draw_lines(ax, ctx, "time", "loss", x_scale=scale)


@axis("accuracy_vs_step", "test accuracy against master step")
def accuracy_vs_step(ax, ctx: Context):
    ax.set(title=_smoothed(ctx, "Test accuracy vs step"), xlabel="step", ylabel="test accuracy")
    return draw_lines(ax, ctx, "step", "accuracy")


@axis("accuracy_vs_time", "test accuracy against wall-clock time")
def accuracy_vs_time(ax, ctx: Context):
    xlabel, scale = time_label(ctx)
    ax.set(title=_smoothed(ctx, "Test accuracy vs time"), xlabel=xlabel, ylabel="test accuracy")
    return draw_lines(ax, ctx, "time", "accuracy", x_scale=scale)


@axis("test_loss_vs_step", "test loss against master step")
def test_loss_vs_step(ax, ctx: Context):
    ax.set(title=_smoothed(ctx, "Test loss vs step"), xlabel="step", ylabel="test loss")
    return draw_lines(ax, ctx, "step", "test_loss")


@axis("test_loss_vs_time", "test loss against wall-clock time")
def test_loss_vs_time(ax, ctx: Context):
    xlabel, scale = time_label(ctx)
    ax.set(title=_smoothed(ctx, "Test loss vs time"), xlabel=xlabel, ylabel="test loss")
    return draw_lines(ax, ctx, "time", "test_loss", x_scale=scale)


@axis("step_vs_time", "master step against wall-clock time (the slope is steps per unit time)")
def step_vs_time(ax, ctx: Context):
    xlabel, scale = time_label(ctx)
    ax.set(title="Steps vs time", xlabel=xlabel, ylabel="step")
    return draw_lines(ax, ctx, "time", "step", smoothable=False, x_scale=scale)


@axis("learning_rate_vs_step", "learning rate against master step")
def learning_rate_vs_step(ax, ctx: Context):
    ax.set(title="Learning rate", xlabel="step", ylabel="learning rate")
    return draw_lines(ax, ctx, "step", "learning_rate", smoothable=False)


def samples_per_step(ctx: Context, run) -> pd.DataFrame | None:
    """Σ num_samples per master step (the master's batch), from collect_stats or else from worker_stats."""
    collect = ctx.data(run, "collect")
    if collect is not None and not collect.empty:
        df = collect[["step", "total_samples"]].dropna()
        return df.groupby("step", sort=True)["total_samples"].sum().reset_index()
    workers = ctx.data(run, "workers")
    if workers is not None and not workers.empty:
        df = workers.groupby("master_step", sort=True)["num_samples"].sum().reset_index()
        return df.rename(columns={"master_step": "step", "num_samples": "total_samples"})
    return None


@axis("cumsum_vs_step", "cumulative number of examples processed against master step")
def cumsum_vs_step(ax, ctx: Context):
    ax.set(title="Examples processed", xlabel="step", ylabel="cumulative examples")
    drew = False
    for run in ctx.runs:
        df = samples_per_step(ctx, run)
        if df is None or df.empty:
            continue
        ax.plot(
            df["step"].to_numpy(),
            np.cumsum(df["total_samples"].to_numpy()),
            color=run.color,
            linestyle=run.linestyle,
            linewidth=1.6,
            label=run.label,
        )
        drew = True
    _scales(ax, ctx)
    return drew
