"""train gossip's figures: the thesis' comparison of methods and gossip probabilities.

- accuracy_vs_bytes: rank 0's test accuracy against the bytes each worker has sent (mean over the workers), one
  line per run: what a method costs in communication for the accuracy it reaches.
- gossip_accuracy_vs_time: the same accuracy against wall-clock time, labelled by method and probability.
- accuracy_spread: the workers' validation accuracy over the updates, the mean as a line and the range from the
  worst to the best worker as a band: how far gossip lets the models drift apart.
- gossip: the three side by side.

Runs are labelled by what tells gossip runs apart (method, --agg-prob, --agg-period, --elastic-alpha, weighted,
allreduce's --compressor); other runs keep their usual labels.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd

from . import style
from .fig_compress import compressor_label
from .fig_curves import time_label
from .registry import Context, axis, panel

METHOD_COLORS = {"allreduce": ("#c0392b", "Reds"), "elastic": ("#1f77b4", "Blues"), "gossip": ("#2ca02c", "Greens"),
                 "nocomm": ("#7f7f7f", "Greys"), "local": ("#000000", "Greys")}
BYTE_UNITS = (("B", 1.0), ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12))


def is_gossip(run) -> bool:
    return run.meta.get("protocol") == "gossip"


def _probability(p: float) -> str:
    fraction = Fraction(p).limit_denominator(4096)
    if fraction.numerator == 1 and fraction.denominator > 1 and abs(float(fraction) - p) < 1e-9:
        return f"1/{fraction.denominator}"
    return f"{p:g}"


@style.variant_label("gossip")
def gossip_label(run) -> str:
    """method, and for the gossiping methods what sets them apart: p, the period, alpha, weighted; for allreduce
    with --compressor, the compressor and its options ("allreduce, topk K=0.01 EF")."""
    if not is_gossip(run):
        return run.label
    c = run.config
    method = str(c.get("rule") or "gossip")
    if method == "allreduce":  # with --compressor, how its gradients travel
        return ", ".join(p for p in (method, compressor_label(run)) if p)
    parts = [method]
    if method in ("elastic", "gossip"):
        parts.append(f"p={_probability(float(c.get('agg_prob', 1.0)))}")
        if int(c.get("agg_period") or 1) != 1:
            parts.append(f"every {c['agg_period']}")
        if method == "elastic" and float(c.get("elastic_alpha", 0.5)) != 0.5:
            parts.append(f"α={c['elastic_alpha']:g}")
        if c.get("weighted"):
            parts.append(f"weighted^{c.get('penalty', 1):g}")
    return " ".join(parts)


def _styles(ctx: Context) -> dict[int, tuple[str, str, str]]:
    """id(run) -> (label, colour, line style): one hue per method, shaded by probability when it repeats.

    Also given to the runs themselves (so a panel's shared legend shows them), except where the user chose a
    label with --label: that label stays."""
    styles = _gossip_styles(ctx)
    defaults = _default_labels(ctx.runs)
    for run in ctx.runs:
        if is_gossip(run):
            label, color, linestyle = styles[id(run)]
            run.color, run.linestyle = color, linestyle
            if run.label == defaults[id(run)]:
                run.label = label
            styles[id(run)] = (run.label, color, linestyle)
    return styles


def _default_labels(runs) -> dict[int, str]:
    """The labels `plot` gives runs when the user names none (to tell them from --label's)."""
    from . import style

    chosen = [(run.label, run.color, run.linestyle) for run in runs]
    style.assign_labels(runs)
    defaults = {id(run): run.label for run in runs}
    for run, (label, color, linestyle) in zip(runs, chosen, strict=True):
        run.label, run.color, run.linestyle = label, color, linestyle
    return defaults


def _gossip_styles(ctx: Context) -> dict[int, tuple[str, str, str]]:
    from matplotlib import colormaps

    labels = {id(r): gossip_label(r) for r in ctx.runs}
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    for run in ctx.runs:  # the same description twice (e.g. two seeds): say which run
        if counts[labels[id(run)]] > 1 and is_gossip(run):
            labels[id(run)] = f"{labels[id(run)]} [{run.name}]"
    groups: dict[str, list] = {}
    for run in ctx.runs:
        if is_gossip(run):
            groups.setdefault(str(run.config.get("rule")), []).append(run)
    styles = {id(r): (labels[id(r)], r.color, r.linestyle) for r in ctx.runs}
    for method, runs in groups.items():
        base, cmap = METHOD_COLORS.get(method, ("#9467bd", "Purples"))
        runs = sorted(runs, key=lambda r: -float(r.config.get("agg_prob", 1.0)))
        shades = [base] if len(runs) == 1 else [colormaps[cmap](x) for x in np.linspace(0.95, 0.45, len(runs))]
        for i, run in enumerate(runs):
            styles[id(run)] = (labels[id(run)], shades[i], "-" if i % 2 == 0 else "--")
    return styles


def byte_unit(largest: float) -> tuple[str, float]:
    for name, scale in reversed(BYTE_UNITS):
        if largest >= scale:
            return name, scale
    return "B", 1.0


def bytes_per_step(ctx: Context, run) -> pd.DataFrame | None:
    """step -> mean over the workers of the cumulative bytes each has sent (worker_stats.bytes_sent)."""
    workers = ctx.data(run, "workers")
    if workers is None or workers.empty or "bytes_sent" not in workers:
        return None
    df = workers[["master_step", "bytes_sent"]].dropna()
    return df.groupby("master_step", sort=True)["bytes_sent"].mean().rename_axis("step").reset_index()


def accuracy_and_bytes(ctx: Context) -> list[tuple[object, pd.DataFrame]]:
    """(run, step/accuracy/bytes_sent rows) for every run with evaluated steps and a byte counter: what the
    accuracy-against-bytes axes of every method draw."""
    series = []
    for run in ctx.runs:
        sent = bytes_per_step(ctx, run)
        if sent is None:
            continue
        df = run.master[["step", "accuracy"]].dropna().merge(sent, on="step", how="inner")
        if not df.empty:
            series.append((run, df))
    return series


@axis("accuracy_vs_bytes", "test accuracy against the bytes each worker sent (mean over workers)",
      in_panel_all=False)
def accuracy_vs_bytes(ax, ctx: Context):
    styles = _styles(ctx)
    series = accuracy_and_bytes(ctx)
    if not series:
        return False
    unit, scale = byte_unit(max(float(df["bytes_sent"].max()) for _, df in series))
    for run, df in series:
        label, color, linestyle = styles[id(run)]
        ax.plot(df["bytes_sent"].to_numpy() / scale, df["accuracy"].to_numpy(), color=color, linestyle=linestyle,
                linewidth=1.6, marker="o" if len(df) < 40 else None, markersize=3, label=label)
        ctx.note(f"{label}: accuracy {df['accuracy'].iloc[-1]:.4f} after {df['bytes_sent'].iloc[-1] / scale:.3g} "
                 f"{unit} sent per worker")
    ax.set(title="Test accuracy vs bytes sent", xlabel=f"bytes sent per worker ({unit}, cumulative)",
           ylabel="test accuracy (worker 1)")
    if ctx.opts.xlog:
        ax.set_xscale("log")
    return True


@axis("gossip_accuracy_vs_time", "test accuracy against wall-clock time, labelled by gossip method",
      in_panel_all=False)
def gossip_accuracy_vs_time(ax, ctx: Context):
    styles = _styles(ctx)
    xlabel, scale = time_label(ctx)
    drew = False
    for run in ctx.runs:
        df = run.master[["time", "accuracy"]].dropna()
        if df.empty:
            continue
        label, color, linestyle = styles[id(run)]
        ax.plot(df["time"].to_numpy() / scale, df["accuracy"].to_numpy(), color=color, linestyle=linestyle,
                linewidth=1.6, marker="o" if len(df) < 40 else None, markersize=3, label=label)
        drew = True
    ax.set(title="Test accuracy vs time", xlabel=xlabel, ylabel="test accuracy (worker 1)")
    return drew


@axis("accuracy_spread", "the workers' validation accuracy: mean line, worst-to-best band", in_panel_all=False)
def accuracy_spread(ax, ctx: Context):
    styles = _styles(ctx)
    drew = False
    for run in ctx.runs:
        workers = ctx.data(run, "workers")
        if workers is None or "val_accuracy" not in workers:
            continue
        df = workers[["master_step", "rank", "val_accuracy"]].dropna()
        if df.empty:
            continue
        by_step = df.groupby("master_step", sort=True)["val_accuracy"]
        mean, low, high = by_step.mean(), by_step.min(), by_step.max()
        label, color, linestyle = styles[id(run)]
        steps = mean.index.to_numpy()
        ax.fill_between(steps, low.to_numpy(), high.to_numpy(), color=color, alpha=0.18, linewidth=0)
        ax.plot(steps, mean.to_numpy(), color=color, linestyle=linestyle, linewidth=1.6, label=label)
        ctx.note(f"{label}: last validation accuracy over {df['rank'].nunique()} workers "
                 f"{low.iloc[-1]:.4f}-{high.iloc[-1]:.4f} (mean {mean.iloc[-1]:.4f}, step {int(steps[-1])})")
        drew = True
    if not drew and not ctx._missing:
        ctx._missing.append("no run has per-worker validation accuracy (a train gossip run's worker_stats)")
    ax.set(title="Workers' validation accuracy (range and mean)", xlabel="update", ylabel="validation accuracy")
    return drew


panel("gossip", "train gossip: accuracy against bytes sent and time, and the workers' accuracy spread",
      ["accuracy_vs_bytes", "gossip_accuracy_vs_time", "accuracy_spread"])
