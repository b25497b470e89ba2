"""batch_size: each worker's batch against wall-clock time, the picture of a dynamic-batching run.

One step line per worker, from worker_stats.csv: the `batch_size` column where the run has one (`train dynamic`),
else the examples the worker processed (`num_samples`: AMB's batch varies too). With one run every worker gets
its own colour (and a thinner line than the one before, so that workers with the same batch stay visible); with
several, each run keeps its colour and its workers are told apart by line style.
"""

from __future__ import annotations

from matplotlib import colormaps

from . import style
from .fig_compress import compressor_label
from .fig_curves import time_label
from .registry import Context, axis

MAX_LEGEND_WORKERS = 12


@style.variant_label("dynamic")
def policy_label(run) -> str:
    """A dynamic-batching run's policy and, with --compressor, how its gradients travel, as the labels of every
    figure show them ("dbs, topk K=0.01 EF")."""
    return ", ".join(p for p in (str(run.config.get("policy") or ""), compressor_label(run)) if p)


@axis("batch_size", "per-worker batch size against wall-clock time (train dynamic's policies; AMB's batches)")
def batch_size(ax, ctx: Context):
    xlabel, scale = time_label(ctx)
    ax.set(title="Batch size per worker", xlabel=xlabel, ylabel="examples per worker step")
    drew = False
    single = len(ctx.runs) == 1
    for run in ctx.runs:
        workers = ctx.data(run, "workers")
        if workers is None or workers.empty:
            continue
        column = "batch_size" if "batch_size" in workers.columns else "num_samples"
        ranks = sorted(int(r) for r in workers["rank"].dropna().unique())
        palette = colormaps["tab10" if len(ranks) <= 10 else "viridis"]
        for i, rank in enumerate(ranks):
            df = workers[workers["rank"] == rank][["time", column]].dropna().sort_values("time", kind="stable")
            if df.empty:
                continue
            color = palette(i if len(ranks) <= 10 else i / max(1, len(ranks) - 1)) if single else run.color
            linestyle = "-" if single else style.LINESTYLES[i % len(style.LINESTYLES)]
            labelled = single and len(ranks) <= MAX_LEGEND_WORKERS or not single and i == 0
            label = (f"worker {rank}" if single else run.label) if labelled else "_nolegend_"
            # lines that coincide (a uniform policy) stay visible: each worker's is drawn thinner than the last
            width = max(0.8, 2.6 - 1.8 * i / max(1, len(ranks) - 1)) if single else 1.4
            ax.plot(df["time"].to_numpy() / scale, df[column].to_numpy(), drawstyle="steps-post", color=color,
                    linestyle=linestyle, linewidth=width, label=label)
            drew = True
    if drew:
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.05)
    return drew
