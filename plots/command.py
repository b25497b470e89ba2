"""`anytimectl plot`: the Typer command. Kept light at import (matplotlib and pandas load only when it runs),
so that `anytimectl --help` stays fast; registered by the CLI with `app.command(name="plot")(plot)`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from anytimectl.runtime.errors import UsageError

_EXTS = ("png", "pdf", "svg")


def _regroup(paths: list[Path], subset: list[str], ext: list[str]) -> tuple[list[Path], list[str], list[str]]:
    """Typer options take one value each, so `--subset a b` and `--ext png pdf` leave `b` and `pdf` among the
    paths. A path that does not exist and names an axis (when --subset is used) or a format (when --ext is
    used) is given back to that option."""
    from .registry import AXES, load_all

    load_all()
    kept = []
    for p in paths:
        name = str(p)
        if not p.exists() and subset and name in AXES:
            subset.append(name)
        elif not p.exists() and ext and name.lower().lstrip(".") in _EXTS:
            ext.append(name)
        else:
            kept.append(p)
    return kept, subset, ext


def _check_numbers(target_accuracy: float | None, target_loss: float | None, smooth: float) -> None:
    """Values typer lets through but no figure can use (a NaN passes its range checks)."""
    import math

    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise UsageError(f"--target-accuracy {target_accuracy:g}: a test accuracy is a fraction in (0, 1], e.g. 0.9")
    if target_loss is not None and not (math.isfinite(target_loss) and target_loss > 0):
        raise UsageError(f"--target-loss {target_loss:g}: give a training loss above 0, e.g. 0.1")
    if not math.isfinite(smooth):
        raise UsageError(f"--smooth {smooth:g}: give an EWM span of 0 (off) or more, e.g. 20")


def _types_table() -> str:
    from .registry import AXES, FIGURES, load_all

    load_all()
    lines = ["figure types (--type):"]
    for name in sorted(FIGURES, key=lambda n: (n in AXES, n)):
        lines.append(f"  {name:<24} {FIGURES[name].description}")
    lines.append("axes (--subset, --separate; each is also a --type): " + ", ".join(AXES))
    return "\n".join(lines)


def plot(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Run directories, or folders searched for run directories.", show_default=False),
    ] = None,
    type: Annotated[str, typer.Option("--type", "-t", help="Figure type; --list-types shows them all.")] = "panel_main",
    subset: Annotated[
        list[str] | None,
        typer.Option("--subset", help="Axes to draw as one panel instead of --type: --subset a b c."),
    ] = None,
    separate: Annotated[bool, typer.Option("--separate", help="Also save each axis of the panel on its own.")] = False,
    save: Annotated[bool, typer.Option("--save", help="Save the figures (default unless --show).")] = False,
    ext: Annotated[
        list[str] | None, typer.Option("--ext", help="File formats: png, pdf, svg (several allowed).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the figures.")] = Path("figures"),
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Label for the runs, in order (repeat the option).")
    ] = None,
    smooth: Annotated[
        float, typer.Option("--smooth", help="EWM span for loss and accuracy curves; 0 = off.", min=0)
    ] = 0.0,
    xlog: Annotated[bool, typer.Option("--xlog", help="Log scale on the x axis of curves.")] = False,
    ylog: Annotated[bool, typer.Option("--ylog", help="Log scale on the y axis of curves and histograms.")] = False,
    steps: Annotated[
        str | None, typer.Option("--steps", help="Steps A:B (both included) for worker_timeline; default the last 10.")
    ] = None,
    target_accuracy: Annotated[
        float | None, typer.Option("--target-accuracy", help="time_to_target: test accuracy to reach.")
    ] = None,
    target_loss: Annotated[
        float | None, typer.Option("--target-loss", help="time_to_target: training loss to reach.")
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="time_to_target: baseline run (number from 1, name, label or method); default the first FMB run.",
        ),
    ] = None,
    show: Annotated[
        bool, typer.Option("--show", help="Open the figures in a window (where a display exists).")
    ] = False,
    dpi: Annotated[int, typer.Option("--dpi", help="Resolution of PNG files.", min=30, max=1200)] = 150,
    list_types: Annotated[
        bool, typer.Option("--list-types", help="List the figure types and axes, then exit.")
    ] = False,
) -> list[Path]:
    """Draw figures from run directories (never re-runs anything).

    Runs are overlaid, coloured by method (AMB blue, FMB red, shades when a method repeats) and labelled from
    their metadata, keeping only what differs between them. A run still in progress is drawn up to its last
    complete step and labelled "(running)".

    Output: figures are written to --out as <type>__<runs>.<ext> and their paths printed, one a line.
    Without --show this always happens (headless, no display needed); with --show the figures open in a
    window instead, and --save writes them as well.

    Figure types (--type): panel_main (default, the original 3x3), panel_hist, panel_all, loss,
    any single axis (loss_vs_step, loss_vs_time, accuracy_vs_step, accuracy_vs_time, step_vs_time,
    learning_rate_vs_step, cumsum_vs_step, hist_compute_time, hist_batch_size, hist_send, hist_recv,
    hist_exit, hist_total_samples, hist_worker_count, hist_wait_time, hist_master_round_time,
    comp_straggler_dist, worker_utilisation, ...), and time_to_target, worker_timeline.
    --list-types lists them all.

    time_to_target: the time of the first logged row at which the curve reaches the target (test accuracy
    >= --target-accuracy, or training loss <= --target-loss); the smoothed curve with --smooth, else raw.
    Speedup = baseline time / run time, printed on the figure and here.

    \b
    Examples:
      anytimectl plot runs/
      anytimectl plot runs/amb-* runs/fmb-* --type panel_main --save --ext png pdf
      anytimectl plot runs/ --subset accuracy_vs_time loss_vs_step --out figures/
      anytimectl plot runs/a runs/b --type time_to_target --target-accuracy 0.9 \\
          --smooth 20
      anytimectl plot runs/a --type worker_timeline --steps 10:20
      anytimectl plot runs/ --type worker_utilisation --label AMB --label FMB \\
          --ext svg
    """
    if list_types:
        typer.echo(_types_table())
        return []
    _check_numbers(target_accuracy, target_loss, smooth)
    subset_names = list(subset or [])
    ext_names = list(ext or [])
    path_list, subset_names, ext_names = _regroup(list(paths or []), subset_names, ext_names)
    if not path_list:
        raise UsageError("give at least one run directory or folder of runs (e.g. anytimectl plot runs/)")

    from . import render
    from .fig_worker_timeline import parse_steps
    from .registry import Options

    exts = render.check_extensions(ext_names)
    options = Options(
        smooth=smooth,
        xlog=xlog,
        ylog=ylog,
        steps=parse_steps(steps),
        target_accuracy=target_accuracy,
        target_loss=target_loss,
        baseline=baseline,
    )
    import matplotlib

    if show:
        import matplotlib.pyplot as plt

        if matplotlib.get_backend().lower() in ("agg", "pdf", "svg", "ps", "cairo", "template"):
            typer.echo("no display available for --show; saving the figures instead", err=True)
            show, save = False, True
    else:
        matplotlib.use("Agg")

    figures, ctx = render.build_figures(
        path_list,
        kind=type,
        subset=subset_names,
        separate=separate,
        options=options,
        labels=list(label or []),
        show=show,
        warn=lambda m: typer.echo(m, err=True),
    )
    for line in dict.fromkeys(ctx.notes):  # once each, even when --separate draws an axis twice
        typer.echo(line)
    written: list[Path] = []
    if save or not show:
        written = render.save_figures(figures, out, exts, dpi=dpi)
        for path in written:
            typer.echo(str(path))
    sys.stdout.flush()
    if show:
        plt.show()
    return written
