"""`--type partitions`: the two log-log panels of the original test_perf_partitions.py plot, from partitions.csv.

Left: time per step against the number of partitions, one line per batch size. Right: time per sample against
the partition size (examples per micro-batch), one line per batch size; the flat part is where splitting is free.
Batch sizes get colours from a sequential colormap (small batches light, large dark) and a marker cycle, so a
sweep of a dozen sizes stays readable (the original's colours repeated every five lines).
"""

from __future__ import annotations

from anytimectl.runtime.errors import UsageError

from . import style
from .registry import Context, figure

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def study_runs(ctx: Context, kind: str, figure_type: str) -> list:
    runs = [r for r in ctx.runs if r.kind == kind]
    if not runs:
        names = ", ".join(r.name for r in ctx.runs)
        raise UsageError(f"--type {figure_type} draws runs of `anytimectl {kind}`; none among: {names}")
    return runs


def batch_colors(values) -> dict:
    from matplotlib import colormaps

    values = sorted(set(values))
    cmap = colormaps["viridis"]
    if len(values) == 1:
        return {values[0]: cmap(0.35)}
    return {v: cmap(0.9 - 0.85 * i / (len(values) - 1)) for i, v in enumerate(values)}


@figure("partitions", "partition study: time per step vs partitions and time per sample vs partition size (log-log)")
def partitions_figure(ctx: Context):
    runs = study_runs(ctx, "partitions", "partitions")
    many = len(runs) > 1
    fig = ctx.new_figure(style.AX_SIZE[0] * 2, style.AX_SIZE[1] + 0.6)
    step_ax, sample_ax = fig.subplots(1, 2)
    batches = sorted({int(b) for r in runs for b in r.partitions["batch_size"]})
    colors = batch_colors(batches)
    for run_index, run in enumerate(runs):
        df = run.partitions
        linestyle = style.LINESTYLES[run_index % len(style.LINESTYLES)] if many else "-"
        for i, (batch, group) in enumerate(df.groupby("batch_size", sort=True)):
            label = f"B={int(batch)}" + (f" ({run.label})" if many else "")
            common = dict(color=colors[int(batch)], linestyle=linestyle, marker=MARKERS[i % len(MARKERS)],
                          markersize=4, linewidth=1.5)
            step_ax.plot(group["partitions"], group["time_per_step"] * 1e3, label=label, **common)
            sample_ax.plot(group["partition_size"], group["time_per_sample"] * 1e6, label=label, **common)
    model = ", ".join(sorted({str(r.config.get("model", "?")) for r in runs}))
    step_ax.set(title=f"Time per step ({model})", xlabel="partitions (micro-batches per batch)",
                ylabel="time per step (ms)", xscale="log", yscale="log")
    sample_ax.set(title=f"Time per sample ({model})", xlabel="partition size (examples per micro-batch)",
                  ylabel="time per sample (µs)", xscale="log", yscale="log")
    for ax in (step_ax, sample_ax):
        ax.xaxis.set_major_formatter(_plain())
    entries = len(batches) * len(runs)
    sample_ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), ncols=1 if entries <= 14 else 2,
                     title="batch size", frameon=False)
    threshold = runs[0].config.get("threshold")
    summary = runs[0].meta.get("summary") or {}
    advice = (summary.get("recommendation") or {}).get("partition_size")
    if advice and not many:
        sample_ax.axvline(advice, color="0.5", linestyle=":", linewidth=1)
        sample_ax.annotate(f"overhead < {threshold:.0%} from {advice}", (advice, 1), xycoords=("data", "axes fraction"),
                           xytext=(3, -12), textcoords="offset points", fontsize=8, color="0.35")
        ctx.note(f"{runs[0].name}: micro-batches of {advice} examples or more stay under {threshold:.0%} overhead")
    return fig


def _plain():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{value:g}")
