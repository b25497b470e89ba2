"""`anytimectl compress`'s figures.

From `compress train` runs (worker_stats' payload columns, master_stats, metadata's summary):
- compress_accuracy: test accuracy against epochs, each run labelled by what sets compression runs apart (method,
  mode, K / V / s, error feedback, value dtype).
- payload_bytes: each step's payload per worker (mean over the workers) on a log scale, with the dense float32
  gradient it replaces as a dotted line of the run's colour: what compression saves, step by step (other methods'
  runs: what their cumulative bytes_sent grew by each step).
- compress_accuracy_vs_bytes: test accuracy against the bytes each worker sent (cumulative, log scale), labelled as
  above (`accuracy_vs_bytes`, the gossip figures' axis, draws the same data with the generic run labels).
- compress: those three side by side, with one legend.
- compress_accuracy_vs_step_bytes: every method on one axis: the final test accuracy of each configuration (mean of
  its runs, e.g. seeds, whiskers from the worst to the best) against the bytes each worker sends per step (mean
  over the steps and workers, log scale), the dense float32 gradient's size dotted.
- layerwise_vs_entire: the paper's comparison: for each method, the final test accuracy of its layerwise and its
  entire-model runs side by side (mean of the runs, whiskers from the worst to the best), and their compression
  ratios (dense over payload bytes, log scale). Runs of other methods count as dense (ratio 1). The casts (fp16,
  bf16) have one bar, "cast": cast element by element, both modes send the same; powersgd has no entire mode.

From `compress bench` run directories (compress_bench.csv):
- compress_bench: per method, layerwise beside entire: the compression ratio against dense float32 (log scale,
  bytes over the packing bound written on each bar), the relative error ||C(g) - g|| / ||g||, and encode + decode
  time as a share of the backward pass, in CPU time (the issue's 10% budget as a dotted line). The casts' one row
  (mode "dense" in the table) is drawn as "cast", as in layerwise_vs_entire.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import style
from .fig_partitions import study_runs
from .registry import Context, axis, figure

MODE_HATCH = {"layerwise": "", "entire": "//", "dense": "..", "cast": "xx"}
MODE_SHADE = {"layerwise": 1.0, "entire": 0.6, "dense": 0.8, "cast": 0.8}
MODE_MARKER = {"layerwise": "o", "entire": "s", "dense": "D", "cast": "D"}
MODES = ("layerwise", "entire", "dense", "cast")
METHOD_ORDER = ("none", "topk", "randomk", "threshold", "adaptive-threshold", "terngrad", "qsgd", "fp16", "bf16",
                "signsgd", "ef-signsgd", "powersgd")
# tab10, then two of tab20b's dark colours for the 11th and 12th method
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939")
CASTS = ("fp16", "bf16")  # cast element by element: layerwise and entire send the same, no mode
ALWAYS_EF = ("ef-signsgd",)  # error feedback is part of the method, not an option


def method_color(method: str):
    from matplotlib.colors import to_rgb

    return to_rgb(PALETTE[METHOD_ORDER.index(method)]) if method in METHOD_ORDER else (0.5, 0.5, 0.5)


def compress_mode(run) -> str:
    """layerwise or entire; dense for the uncompressed baseline and runs of other methods; cast for fp16 and bf16."""
    if not is_compress(run):
        return "dense"
    method = str(run.config.get("compressor"))
    if method == "none":
        return "dense"
    if method in CASTS:
        return "cast"
    return str(run.config.get("mode") or "layerwise")


def is_compress(run) -> bool:
    return run.meta.get("command") == "compress" and run.meta.get("protocol") == "compressed"


@style.variant_label("compressed")
def compress_label(run) -> str:
    """method, mode and the option that method uses, then error feedback, dtype and rescale when set."""
    if not is_compress(run):
        return run.label
    c = run.config
    method = str(c.get("compressor") or "?")
    if method == "none":
        return "none (dense)"
    return exchange_words(c, method, run.meta)


def exchange_words(c: dict, method: str, meta: dict | None = None, default_mode: str | None = None) -> str:
    """How gradients travel, from the exchange options a run's config holds (`--compressor`'s group): the method,
    its mode (not for the casts and powersgd, nor when it is `default_mode`), the option that method uses, then
    error feedback, dtype and rescale when set. E.g. "topk layerwise K=0.01 EF"."""
    mode = str(c.get("mode") or "")
    parts = [method, "" if method in CASTS or method == "powersgd" or mode == default_mode else mode]
    if method in ("topk", "randomk"):
        parts.append(f"K={c.get('ratio'):g}")
    elif method == "threshold":
        parts.append(f"V={c.get('threshold'):g}")
    elif method == "qsgd":
        parts.append(f"s={c.get('levels')}")
    elif method == "powersgd":
        rank = c.get("powersgd_rank") or ((meta or {}).get("compression") or {}).get("rank")
        parts.append(f"r={rank}")
    if c.get("error_feedback") and method not in ALWAYS_EF:
        parts.append("EF")
    if method == "powersgd":
        if c.get("warm_start") is False:
            parts.append("no warm start")
        if c.get("powersgd_start_iter"):
            parts.append(f"from step {c.get('powersgd_start_iter')}")
    if c.get("value_dtype") == "float16" and method in ("none", "topk", "randomk", "threshold", "adaptive-threshold"):
        parts.append("fp16")
    if c.get("rescale"):
        parts.append("rescaled")
    return " ".join(p for p in parts if p)


def compressor_label(run) -> str:
    """`--compressor` of a `train dynamic` or `train gossip --method allreduce` run as its labels show it ("topk
    K=0.01 EF"; the mode only when it is not layerwise); empty for uncompressed gradients."""
    c = run.config
    method = str(c.get("compressor") or "none")
    return "" if method == "none" else exchange_words(c, method, run.meta, default_mode="layerwise")


def _labels(ctx: Context) -> dict[int, str]:
    labels = {id(r): compress_label(r) for r in ctx.runs}
    values = list(labels.values())
    for run in ctx.runs:  # the same configuration twice (e.g. two seeds): say which run
        if values.count(labels[id(run)]) > 1 and is_compress(run):
            labels[id(run)] = f"{labels[id(run)]} [{run.name}]"
    return labels


def _colors(ctx: Context) -> dict[int, object]:
    """One colour per compression method (PALETTE in METHOD_ORDER), so a method's modes share it (told apart by line
    style); with error feedback as an option turned on, a darker shade of it."""
    colors: dict[int, object] = {}
    for run in ctx.runs:
        method = str(run.config.get("compressor")) if is_compress(run) else None
        if method not in METHOD_ORDER:
            colors[id(run)] = run.color
            continue
        base = method_color(method)
        darker = run.config.get("error_feedback") and method not in ALWAYS_EF
        colors[id(run)] = tuple(0.55 * c for c in base) if darker else base
    return colors


def _linestyle(run) -> str:
    return "--" if run.config.get("mode") == "entire" else "-"


@axis("compress_accuracy", "compress train: test accuracy against epochs, labelled by method, mode and options",
      in_panel_all=False)
def compress_accuracy(ax, ctx: Context):
    labels, colors = _labels(ctx), _colors(ctx)
    drew = False
    for run in ctx.runs:
        df = run.master[["epoch", "accuracy"]].dropna()
        if df.empty:
            continue
        ax.plot(df["epoch"].to_numpy(), df["accuracy"].to_numpy(), color=colors[id(run)], linestyle=_linestyle(run),
                marker="o" if len(df) < 40 else None, markersize=3, linewidth=1.6, label=labels[id(run)])
        drew = True
    ax.set(title="Test accuracy", xlabel="epoch", ylabel="test accuracy")
    return drew


def step_payload(ctx: Context, run) -> pd.DataFrame | None:
    """master_step -> the bytes each worker sent that step (mean over the workers): the payload column of runs with
    a compressed exchange (with `dense_bytes`, the float32 gradient it replaces); for other runs, what the
    cumulative bytes_sent grew by. None when the run has neither."""
    workers = ctx.data(run, "workers")
    if workers is None or workers.empty:
        return None
    if "payload_bytes" in workers:
        df = workers[["master_step", "payload_bytes", "dense_bytes"]].dropna()
        per_step = df.groupby("master_step", sort=True).mean()
    elif "bytes_sent" in workers:
        df = workers[["master_step", "rank", "bytes_sent"]].dropna().sort_values(["rank", "master_step"])
        df["payload_bytes"] = df.groupby("rank")["bytes_sent"].diff()
        per_step = df.dropna().groupby("master_step", sort=True)[["payload_bytes"]].mean()
    else:
        return None
    return None if per_step.empty else per_step


@axis("payload_bytes", "bytes each worker sends per step (log): compress train's payload with the dense gradient "
      "dotted; other runs' per-step bytes_sent", in_panel_all=False)
def payload_bytes(ax, ctx: Context):
    from .fig_gossip import byte_unit

    labels, colors = _labels(ctx), _colors(ctx)
    series = [(run, per_step) for run in ctx.runs if (per_step := step_payload(ctx, run)) is not None]
    if not series:
        return False
    unit, scale = byte_unit(max(float(df.max().max()) for _, df in series))
    for run, df in series:
        color = colors[id(run)]
        ax.plot(df.index.to_numpy(), df["payload_bytes"].to_numpy() / scale, color=color, linestyle=_linestyle(run),
                linewidth=1.4, label=labels[id(run)])
        if "dense_bytes" in df:
            ax.axhline(float(df["dense_bytes"].iloc[0]) / scale, color=color, linestyle=":", linewidth=0.9)
        ratio = (run.meta.get("summary") or {}).get("compression_ratio")
        if ratio and is_compress(run):
            ctx.note(f"{labels[id(run)]}: {ratio:.1f}x fewer gradient bytes than dense float32")
    log = all((df["payload_bytes"] > 0).all() for _, df in series)
    if log:  # payloads and the dense size differ by orders of magnitude; a run that sent nothing stays linear
        ax.set_yscale("log")
    ax.set(title="Bytes per worker per step (dotted: dense float32)", xlabel="step",
           ylabel=f"bytes sent per step ({unit}{', log' if log else ''})")
    return True


@axis("compress_accuracy_vs_bytes", "compress train: test accuracy against the bytes each worker sent (cumulative), "
      "labelled by method, mode and options", in_panel_all=False)
def compress_accuracy_vs_bytes(ax, ctx: Context):
    from .fig_gossip import accuracy_and_bytes, byte_unit

    labels, colors = _labels(ctx), _colors(ctx)
    series = accuracy_and_bytes(ctx)
    if not series:
        return False
    unit, scale = byte_unit(max(float(df["bytes_sent"].max()) for _, df in series))
    for run, df in series:
        ax.plot(df["bytes_sent"].to_numpy() / scale, df["accuracy"].to_numpy(), color=colors[id(run)],
                linestyle=_linestyle(run), linewidth=1.6, marker="o" if len(df) < 40 else None, markersize=3,
                label=labels[id(run)])
        ctx.note(f"{labels[id(run)]}: accuracy {df['accuracy'].iloc[-1]:.4f} after "
                 f"{df['bytes_sent'].iloc[-1] / scale:.3g} {unit} sent per worker")
    ax.set(title="Test accuracy vs bytes sent", xlabel=f"bytes sent per worker ({unit}, cumulative; log)",
           ylabel="test accuracy")
    ax.set_xscale("log")  # compressed and dense runs differ by orders of magnitude
    return True


@axis("compress_accuracy_vs_step_bytes", "every method on one axis: final test accuracy (mean of a configuration's "
      "runs, whiskers worst to best) against the bytes each worker sends per step (log), dense dotted",
      in_panel_all=False)
def compress_accuracy_vs_step_bytes(ax, ctx: Context):
    from matplotlib.lines import Line2D

    from .fig_gossip import byte_unit

    colors = _colors(ctx)
    rows, dense = [], []
    for run in ctx.runs:
        accuracy = run.master["accuracy"].dropna() if "accuracy" in run.master else pd.Series(dtype=float)
        per_step = step_payload(ctx, run)
        if accuracy.empty or per_step is None:
            continue
        if "dense_bytes" in per_step:
            dense.append(float(per_step["dense_bytes"].mean()))
        # one configuration's runs (seeds) share a point: the label without the run's name
        method = str(run.config.get("compressor")) if is_compress(run) else ""
        order = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
        rows.append({"label": compress_label(run) if is_compress(run) else run.label, "mode": compress_mode(run),
                     "order": order,
                     "color": colors[id(run)], "accuracy": float(accuracy.iloc[-1]),
                     "bytes": float(per_step["payload_bytes"].mean())})
    if not rows:
        return False
    df = pd.DataFrame(rows)
    groups = df.groupby("label", sort=False).agg(
        accuracy=("accuracy", "mean"), low=("accuracy", "min"), high=("accuracy", "max"), runs=("accuracy", "size"),
        bytes=("bytes", "mean"), mode=("mode", "first"), color=("color", "first"), order=("order", "first"),
    ).reset_index().sort_values(["order", "label"], kind="stable")  # the legend in METHOD_ORDER
    unit, scale = byte_unit(max([*groups["bytes"], *dense]))
    handles = []
    for row in groups.itertuples():
        x = row.bytes / scale
        if row.high > row.low:
            ax.plot([x, x], [row.low, row.high], color=row.color, linewidth=1.0)
        marker = MODE_MARKER.get(row.mode, "o")
        ax.plot([x], [row.accuracy], marker=marker, markersize=7, color=row.color, markeredgecolor="0.2",
                markeredgewidth=0.6, linestyle="none")
        runs = f" ({row.runs} runs)" if row.runs > 1 else ""
        handles.append(Line2D([], [], marker=marker, markersize=7, color=row.color, markeredgecolor="0.2",
                              markeredgewidth=0.6, linestyle="none", label=f"{row.label}{runs}"))
        ratio = f", {max(dense) / row.bytes:.1f}x fewer than dense" if dense and row.bytes > 0 else ""
        ctx.note(f"{row.label}: final accuracy {row.accuracy:.4f} (mean of {row.runs} run(s), {row.low:.4f} to "
                 f"{row.high:.4f}) at {row.bytes:,.0f} bytes per worker per step{ratio}")
    if dense:
        ax.axvline(max(dense) / scale, color="0.4", linestyle=":", linewidth=1)
        handles.append(Line2D([], [], color="0.4", linestyle=":", linewidth=1, label="dense float32 gradient"))
    log = bool((groups["bytes"] > 0).all())
    if log:
        ax.set_xscale("log")
    ax.set(title="Final test accuracy vs bytes per step", ylabel="final test accuracy",
           xlabel=f"bytes each worker sends per step ({unit}{', log' if log else ''})")
    ax.legend(handles=handles, loc="best", fontsize=7, frameon=False)
    return True


COMPRESS_PANEL = ("compress_accuracy_vs_bytes", "compress_accuracy", "payload_bytes")


@figure("compress", "compress train: accuracy against bytes sent (log) and against epochs, bytes per step",
        COMPRESS_PANEL)
def compress_panel(ctx: Context):
    from matplotlib.lines import Line2D

    from .registry import draw_axis

    labels, colors = _labels(ctx), _colors(ctx)
    width = style.AX_SIZE[0] * len(COMPRESS_PANEL)
    handles = [Line2D([], [], color=colors[id(r)], linestyle=_linestyle(r), linewidth=2, label=labels[id(r)])
               for r in ctx.runs]
    columns = max(1, min(len(handles), int(width // ((max(len(h.get_label()) for h in handles) + 6) / 13.0))))
    fig = ctx.new_figure(width, style.AX_SIZE[1] + 0.25 * -(-len(handles) // columns))
    for ax, name in zip(fig.subplots(1, len(COMPRESS_PANEL)), COMPRESS_PANEL, strict=True):
        draw_axis(ctx, ax, name, standalone=False)
    fig.legend(handles=handles, loc="outside upper center", ncols=columns, frameon=False)
    return fig


def _mode_bars(ax, table: pd.DataFrame, value: str, low: str | None = None,
               high: str | None = None) -> dict[tuple[str, str], float]:
    """Bars per method (x), its modes side by side and centred on its tick; optional whiskers from `low` to `high`.
    Returns each (method, mode)'s bar position."""
    from matplotlib.patches import Patch

    methods = [m for m in METHOD_ORDER if m in set(table["method"])]
    methods += sorted(set(table["method"]) - set(methods))
    modes = [m for m in MODES if m in set(table["mode"])]
    width = 0.8 / max(1, max(table.groupby("method")["mode"].nunique()))
    labelled: set[str] = set()
    positions: dict[tuple[str, str], float] = {}
    for i, method in enumerate(methods):
        rows = [(mode, table[(table["method"] == method) & (table["mode"] == mode)]) for mode in modes]
        rows = [(mode, row.iloc[0]) for mode, row in rows if not row.empty]
        for j, (mode, row) in enumerate(rows):
            x = i + (j - (len(rows) - 1) / 2) * width
            positions[(method, mode)] = x
            ax.bar(x, row[value], width=width * 0.95, color=method_color(method), alpha=MODE_SHADE.get(mode, 0.8),
                   hatch=MODE_HATCH.get(mode, ""), edgecolor="0.25", linewidth=0.6)
            labelled.add(mode)
            if low and high and np.isfinite(row[low]) and np.isfinite(row[high]) and row[high] > row[low]:
                ax.plot([x, x], [row[low], row[high]], color="0.2", linewidth=1.0)
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right")
    # the modes in grey: a bar's colour is its method's, the legend says only what each hatch means
    ax.legend(handles=[Patch(facecolor="0.7", alpha=MODE_SHADE.get(m, 0.8), hatch=MODE_HATCH.get(m, ""),
                             edgecolor="0.25", linewidth=0.6, label=m) for m in modes if m in labelled],
              loc="best", frameon=False)
    return positions


@figure("layerwise_vs_entire", "per method, final accuracy and compression ratio of layerwise and entire-model "
        "compress train runs side by side (the AAAI'20 paper's comparison; other runs count as dense)")
def layerwise_vs_entire(ctx: Context):
    rows = []
    for run in ctx.runs:
        accuracy = run.master["accuracy"].dropna() if "accuracy" in run.master else pd.Series(dtype=float)
        if accuracy.empty:
            continue
        c, summary = run.config, run.meta.get("summary") or {}
        if is_compress(run):
            method, mode = str(c.get("compressor")), compress_mode(run)
            ratio = summary.get("compression_ratio") or np.nan
        else:  # every other method sends its gradients dense
            method, mode, ratio = run.method, "dense", 1.0
        rows.append({"method": method, "mode": mode, "accuracy": float(accuracy.iloc[-1]), "ratio": ratio})
    if not rows:
        from anytimectl.runtime.errors import UsageError

        raise UsageError("cannot draw layerwise_vs_entire: no run has an evaluated test accuracy")
    df = pd.DataFrame(rows).groupby(["method", "mode"], sort=False).agg(
        accuracy=("accuracy", "mean"), low=("accuracy", "min"), high=("accuracy", "max"), runs=("accuracy", "size"),
        ratio=("ratio", "mean")).reset_index()
    fig = ctx.new_figure(style.AX_SIZE[0] * 2, style.AX_SIZE[1] + 0.4)
    accuracy_ax, ratio_ax = fig.subplots(1, 2)
    _mode_bars(accuracy_ax, df, "accuracy", "low", "high")
    top = float(df["high"].max())
    bottom = max(0.0, float(df["low"].min()) - 0.1 * (top - float(df["low"].min()) + 0.01))
    accuracy_ax.set_ylim(bottom, min(1.0, top + 0.02))
    accuracy_ax.set(title="Final test accuracy (mean; whiskers: worst to best run)", ylabel="test accuracy")
    _mode_bars(ratio_ax, df, "ratio")
    ratio_ax.set_yscale("log")
    ratio_ax.set(title="Compression ratio (dense float32 / payload bytes)", ylabel="x fewer bytes")
    for row in df.itertuples():
        ctx.note(f"{row.method} {row.mode}: accuracy {row.accuracy:.4f} over {row.runs} run(s), "
                 f"compression {row.ratio:.1f}x")
    if "powersgd" in set(df["method"]):
        ctx.note("powersgd: layerwise only (one low-rank approximation per tensor; no entire mode)")
    if set(df["method"]) & set(CASTS):
        ctx.note("fp16, bf16: cast element by element, the same bytes and sums in either mode (bar: cast)")
    return fig


@figure("compress_bench", "compress bench: compression ratio (bytes / packing bound), relative error and codec "
        "time against the backward pass, per method and mode")
def compress_bench(ctx: Context):
    runs = study_runs(ctx, "compress bench", "compress_bench")
    frames = []
    for run in runs:
        df = run.compress_bench.copy()
        # CPU time where recorded: other processes on the cores inflate wall times, not this process's CPU time
        cpu = df.get("codec_cpu_over_backward_cpu")
        df["share"] = cpu if cpu is not None and cpu.notna().all() else (df["encode_s"] + df["decode_s"]) / df[
            "backward_s"]
        frames.append(df)
    df = pd.concat(frames, ignore_index=True).drop_duplicates(["method", "mode"], keep="last")
    df.loc[df["method"].isin(CASTS), "mode"] = "cast"  # the bench's one "dense" row of a cast: not uncompressed
    fig = ctx.new_figure(style.AX_SIZE[0] * 3, style.AX_SIZE[1] + 0.4)
    ratio_ax, error_ax, time_ax = fig.subplots(1, 3)
    positions = _mode_bars(ratio_ax, df, "compression_ratio")
    ratio_ax.set_yscale("log")
    for row in df.itertuples():
        if (row.method, row.mode) in positions and np.isfinite(row.bytes_over_bound):
            ratio_ax.annotate(f"{row.bytes_over_bound:.3f}", (positions[(row.method, row.mode)], row.compression_ratio),
                              xytext=(0, 2), textcoords="offset points", ha="center", fontsize=6, rotation=90)
    model = ", ".join(sorted({str(r.config.get("model")) for r in runs}))
    ratio_ax.set(title=f"Compression vs dense float32 ({model}; labels: bytes / bound)", ylabel="x fewer bytes")
    _mode_bars(error_ax, df, "relative_error")
    error_ax.set(title="Relative error ||C(g) - g|| / ||g||", ylabel="relative error")
    _mode_bars(time_ax, df, "share")
    time_ax.axhline(0.10, color="0.4", linestyle=":", linewidth=1)
    batch = ", ".join(sorted({str(int(b)) for b in df["batch_size"].dropna()}))
    time_ax.set(title=f"Encode + decode / backward (batch {batch}, CPU time)", ylabel="share of the backward pass")
    time_ax.yaxis.set_major_formatter(_percent())
    ctx.note(f"worst bytes/bound {df['bytes_over_bound'].max():.4f}; worst (encode + decode)/backward "
             f"{df['share'].max():.1%}")
    return fig


def _percent():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=0)
