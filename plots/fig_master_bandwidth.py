"""`--type master_bandwidth`: the master's reduce + broadcast time against the number of workers, from
bandwidth.csv (`anytimectl bandwidth`), one line per message size; the original plotted the same from
test_bandwidth output. Solid lines are our communication layer, dashed the raw mpi4py baseline of the same job.
"""

from __future__ import annotations

from . import style
from .fig_partitions import MARKERS, batch_colors, study_runs
from .registry import Context, figure


def _size_label(elements: int) -> str:
    size = elements * 4
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


@figure("master_bandwidth", "bandwidth study: master reduce + broadcast time vs number of workers, per size")
def master_bandwidth(ctx: Context):
    runs = study_runs(ctx, "bandwidth", "master_bandwidth")
    fig = ctx.new_figure(style.AX_SIZE[0] * 1.35, style.AX_SIZE[1] + 0.4)
    ax = fig.subplots(1, 1)
    sizes = sorted({int(e) for r in runs for e in r.bandwidth["elements"]})
    colors = batch_colors(sizes)
    for run in runs:
        df = run.bandwidth
        for i, (elements, group) in enumerate(df.groupby("elements", sort=True)):
            models = {str(m) for m in group.get("model", []) if isinstance(m, str) and m}
            name = _size_label(int(elements)) + (f" ({', '.join(sorted(models))})" if models else "")
            for layer, linestyle in (("ours", "-"), ("raw", "--")):
                part = group[group["layer"] == layer].sort_values("workers")
                if part.empty:
                    continue
                ax.plot(part["workers"], part["round_time"] * 1e3, color=colors[int(elements)], linestyle=linestyle,
                        marker=MARKERS[i % len(MARKERS)], markersize=4, linewidth=1.5,
                        label=name if layer == "ours" else "_nolegend_")
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", linestyle="-"), Line2D([], [], color="0.3", linestyle="--")]
    labels += ["anytimectl.comm", "raw mpi4py"]
    ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="message size")
    ax.set(title="Master reduce + broadcast per round", xlabel="workers", ylabel="round time (ms)", yscale="log")
    if len({int(w) for r in runs for w in r.bandwidth["workers"]}) > 2:
        ax.set_xscale("log", base=2)
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    return fig
