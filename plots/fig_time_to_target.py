"""time_to_target: wall-clock time for each run to reach a test accuracy or a training loss, and speedups.

The time of a run is that of the first logged row at which its curve reaches the target (accuracy >= target,
or loss <= target); with --smooth the EWM-smoothed curve is used, else the raw one. The test accuracy is logged
only every --log-every steps, so its resolution is that of the evaluations. Speedup of a run = baseline time /
run time (above 1: faster than the baseline).

Runs of several seeds (a sweep) are compared seed by seed: with the default baseline (FMB) or one named by its
method, each run's baseline is that method's run of the same seed, because a speedup against another seed's run
mixes the method's effect with the seed's (the seeds of one method differ by as much as the methods). A run whose
seed has no baseline run gets no speedup. A baseline named by number or run name is one run for all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from anytimectl.runtime.errors import UsageError

from . import style
from .registry import Context, figure


@dataclass(frozen=True)
class Target:
    column: str  # master_stats column
    value: float
    higher_is_better: bool
    text: str  # e.g. "test accuracy ≥ 0.9"


def target_of(ctx: Context) -> Target:
    acc, loss = ctx.opts.target_accuracy, ctx.opts.target_loss
    if (acc is None) == (loss is None):
        raise UsageError(
            "time_to_target needs exactly one of --target-accuracy (e.g. 0.9) or --target-loss "
            "(training loss, e.g. 0.1)"
        )
    if acc is not None:
        return Target("accuracy", float(acc), True, f"test accuracy ≥ {acc:g}")
    return Target("loss", float(loss), False, f"training loss ≤ {loss:g}")


def curve(master: pd.DataFrame, column: str, span: float) -> pd.DataFrame:
    """time, step and the (smoothed when span > 1) values of `column` at the rows where it was logged."""
    df = master[["time", "step", column]].dropna().reset_index(drop=True)
    df["value"] = style.smooth(df[column], span).to_numpy()
    return df


def reach(master: pd.DataFrame, target: Target, span: float = 0.0) -> tuple[float, int] | None:
    """(time, step) of the first row whose curve reaches the target, or None if it never does."""
    df = curve(master, target.column, span)
    hit = (df["value"] >= target.value) if target.higher_is_better else (df["value"] <= target.value)
    if not hit.any():
        return None
    i = int(np.argmax(hit.to_numpy()))
    return float(df["time"].iloc[i]), int(df["step"].iloc[i])


def speedups(times: list[float | None], baseline: int) -> list[float | None]:
    base = times[baseline]
    return [None if (t is None or base is None or t <= 0) else base / t for t in times]


def _seed(run) -> object:
    return run.config.get("seed", run.meta.get("seed"))


def baselines_of(runs, spec: str | None) -> tuple[list[int | None], str | None]:
    """The baseline run of each run, and the method whose runs are the baselines when it is one per seed: one run
    for all, or, across seeds with a baseline chosen by method, that method's run of the same seed (None where
    that seed has none)."""
    base, by_method = _resolve_baseline(runs, spec)
    if not by_method or len({_seed(r) for r in runs}) < 2:
        return [base] * len(runs), None
    method = runs[base].method
    first_of_seed: dict[object, int] = {}
    for i, run in enumerate(runs):
        if run.method == method:
            first_of_seed.setdefault(_seed(run), i)
    return [first_of_seed.get(_seed(run)) for run in runs], method


def _labelled_with_seed(run) -> str:
    """The run's label naming its seed (labels name it already when the runs differ only by it and more)."""
    return run.label if "seed" in run.label.lower() else f"{run.label} seed {_seed(run)}"


def resolve_baseline(runs, spec: str | None) -> int:
    """Index of the baseline run: --baseline as a 1-based index, a run name, a label or a method; by default
    the first FMB run, else the first run."""
    return _resolve_baseline(runs, spec)[0]


def _resolve_baseline(runs, spec: str | None) -> tuple[int, bool]:
    """`resolve_baseline`, and whether the run was chosen by its method (the default, or --baseline naming one)."""
    if spec is None:
        return next((i for i, r in enumerate(runs) if r.method == "fmb"), 0), True
    text = spec.strip()
    if text.isdigit():
        i = int(text)
        if 1 <= i <= len(runs):
            return i - 1, False
        raise UsageError(f"--baseline {spec}: no run number {i}; runs are numbered 1 to {len(runs)}")
    low = text.lower()
    for key in (lambda r: r.name, lambda r: r.label, lambda r: r.label.split(" (")[0]):
        matches = [i for i, r in enumerate(runs) if key(r).lower() == low]
        if len(matches) == 1:
            return matches[0], False
    methods = [i for i, r in enumerate(runs) if r.method == low]
    if len(methods) >= 1:
        return methods[0], True
    choices = "; ".join(f"{i + 1} = {r.label}" for i, r in enumerate(runs))
    raise UsageError(f"--baseline {spec!r} matches no run; give a number, run name, label or method ({choices})")


@figure("time_to_target", "time for each run to reach --target-accuracy or --target-loss, speedup vs --baseline")
def time_to_target(ctx: Context):
    target = target_of(ctx)
    span = ctx.opts.smooth if ctx.opts.smooth and ctx.opts.smooth > 1 else 0.0
    runs = ctx.runs
    bases, per_seed_method = baselines_of(runs, ctx.opts.baseline)
    reached = [reach(r.master, target, span) for r in runs]
    times = [x[0] if x else None for x in reached]
    ups = [None if b is None else speedups(times, b)[i] for i, b in enumerate(bases)]
    how = f"EWM span {span:g}" if span else "raw curve"

    if per_seed_method is None:
        against = f"baseline [{bases[0] + 1}] {runs[bases[0]].label}"
    else:
        against = f"baseline: the {per_seed_method} run of the same seed"
    ctx.note(f"time to {target.text} ({how}; first logged row at or past the target), {against}:")
    for i, (run, hit, up) in enumerate(zip(runs, reached, ups, strict=True)):
        label = _labelled_with_seed(run) if per_seed_method else run.label
        if hit is None:
            best = _best(run.master, target)
            ctx.note(f"  [{i + 1}] {label}: not reached (best {best:.4g})")
            continue
        t, step = hit
        if bases[i] == i:
            extra = " (baseline)"
        elif bases[i] is None:
            extra = ", no baseline run of this seed"
        else:
            extra = f", speedup ×{up:.2f}" if up is not None else ""
        ctx.note(f"  [{i + 1}] {label}: {style.format_duration(t)} at step {step}{extra}")

    fig = ctx.new_figure(2 * style.AX_SIZE[0], style.AX_SIZE[1] + 0.3 * len(runs))
    ax_curve, ax_bar = fig.subplots(1, 2, width_ratios=[1.2, 1])

    # left: the curves against time, the target and where each run crosses it
    tmax = max(float(r.master["time"].max()) for r in runs)
    unit, scale = style.time_unit(tmax)
    for run, hit in zip(runs, reached, strict=True):
        df = curve(run.master, target.column, span)
        if span:
            ax_curve.plot(
                df["time"] / scale, df[target.column], color=run.color, alpha=0.25, linewidth=0.8, label="_nolegend_"
            )
        ax_curve.plot(
            df["time"] / scale, df["value"], color=run.color, linestyle=run.linestyle, linewidth=1.6, label=run.label
        )
        if hit:
            ax_curve.plot(
                [hit[0] / scale],
                [target.value],
                marker="o",
                color=run.color,
                markersize=7,
                markeredgecolor="black",
                zorder=5,
                label="_nolegend_",
            )
            ax_curve.axvline(hit[0] / scale, color=run.color, linestyle=":", linewidth=1)
    ax_curve.axhline(target.value, color="black", linestyle="--", linewidth=1, label=f"target {target.value:g}")
    ax_curve.set(
        title=f"{target.text.split(' ≥')[0].split(' ≤')[0].capitalize()} ({how})",
        xlabel=f"wall-clock time ({unit})",
        ylabel=target.text.split(" ≥")[0].split(" ≤")[0],
    )
    if ctx.opts.ylog:
        ax_curve.set_yscale("log")
    ax_curve.legend(loc="best")

    # right: one bar per run, time to target, speedup written at its end
    reached_times = [t for t in times if t is not None]
    unit_b, scale_b = style.time_unit(max(reached_times) if reached_times else tmax)
    y = np.arange(len(runs))
    for i, (run, t, up) in enumerate(zip(runs, times, ups, strict=True)):
        if t is None:
            ax_bar.text(0, i, "  not reached", va="center", ha="left", fontsize=9, color="0.35")
            continue
        ax_bar.barh(
            i, t / scale_b, color=run.color, height=0.5, edgecolor="black" if bases[i] == i else "none",
            linewidth=1.2
        )
        text = "(baseline)" if bases[i] == i else (f"speedup ×{up:.2f}" if up is not None else "")
        ax_bar.text(t / scale_b, i, f"  {style.format_duration(t)}  {text}", va="center", ha="left", fontsize=9)
    ax_bar.set_yticks(y, [_labelled_with_seed(r) if per_seed_method else r.label for r in runs], fontsize=9)
    ax_bar.set_ylim(len(runs) - 0.4, -0.6)
    ax_bar.grid(axis="y", visible=False)
    right = max(reached_times) / scale_b if reached_times else 1.0
    ax_bar.set_xlim(0, right * 1.6)
    ax_bar.set(title=f"Time to {target.text}", xlabel=f"time to target ({unit_b})")
    return fig


def _best(master: pd.DataFrame, target: Target) -> float:
    values = master[target.column].dropna()
    if values.empty:
        return float("nan")
    return float(values.max() if target.higher_is_better else values.min())
