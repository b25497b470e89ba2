"""`anytimectl runs`: the results table of many run directories, and one run in full (`runs show`).

For pipelines: stdout carries the table (or the run's account) and nothing else; notes and skipped runs go to
stderr. Exit codes: 0 with rows, 1 when the filters leave none (as grep), 2 for bad input (no run directory
found, an unknown column, a malformed --where). Kept light at import: pandas loads only when a command runs.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from anytimectl.runtime.errors import UsageError


class _ListByDefault(TyperGroup):
    """`anytimectl runs PATHS...` lists runs; `runs show RUN` and `runs list` are subcommands. Anything that is not a
    subcommand's name (a path, an option) goes to `list`."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


runs_app = typer.Typer(
    cls=_ListByDefault,
    help="Compare run directories: one row per run (`anytimectl runs [PATHS]`), or one run in full "
         "(`anytimectl runs show RUN`), or TensorBoard files (`anytimectl runs export`). Listing is the default: "
         "`anytimectl runs list --help` gives its options (filter, sort, group, format).\n\n"
         "\b\nExamples:\n"
         "  anytimectl runs                                   # every run under ./runs\n"
         "  anytimectl runs sweep/ --where method=amb --status completed \\\n"
         "      --sort -best_accuracy\n"
         "  anytimectl runs sweep/ --target-accuracy 0.85 --group-by method,variant \\\n"
         "      --format markdown\n"
         "  anytimectl runs show runs/amb-digits-w4-0312",
    rich_markup_mode=None,
    add_completion=False,  # a subcommand of anytimectl, which has the completion options
)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"


class Statistic(StrEnum):
    mean = "mean"
    median = "median"


def _warn(message: str) -> None:
    print(f"anytimectl runs: {message}", file=sys.stderr)


def _split(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


#: The run directories a listing or an export reads (declared once for both commands).
RunPaths = Annotated[
    list[Path] | None,
    typer.Argument(help="Run directories, or folders searched recursively for them. Default: ./runs.",
                   show_default=False),
]


@runs_app.command("list")
def list_runs(
    paths: RunPaths = None,
    where: Annotated[
        list[str] | None,
        typer.Option("--where", "-w", metavar="KEY=VALUE",
                     help="Keep runs where KEY=VALUE (also !=, >, <, >=, <=; * matches any text). KEY is a column "
                          "or a key of the run's configuration (induce, batch_size, policy, ...). Repeatable; all "
                          "must hold."),
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", metavar="STATUS",
                     help="Keep runs of this status: running, completed, interrupted, failed (repeatable)."),
    ] = None,
    sort_by: Annotated[
        str | None,
        typer.Option("--sort", "-s", metavar="KEYS",
                     help="Sort by these columns, comma-separated; -KEY (or --desc) sorts descending."),
    ] = None,
    desc: Annotated[bool, typer.Option("--desc", help="Sort descending.")] = False,
    group_by: Annotated[
        list[str] | None,
        typer.Option("--group-by", "-g", metavar="KEYS",
                     help="One row per group (e.g. method,variant: the seeds of each configuration), with each "
                          "figure's mean and spread over the group's runs."),
    ] = None,
    statistic: Annotated[
        Statistic, typer.Option("--stat", help="With --group-by: mean ± standard deviation, or median [min, max].")
    ] = Statistic.mean,
    target_accuracy: Annotated[
        float | None,
        typer.Option("--target-accuracy", metavar="F", help="Time to reach this test accuracy (to target column)."),
    ] = None,
    target_loss: Annotated[
        float | None,
        typer.Option("--target-loss", metavar="F", help="Time to reach this training loss (to target column)."),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option("--columns", "-c", metavar="KEYS",
                     help="Columns to show, comma-separated (default: the main ones on a terminal, all in csv and "
                          "json); --list-columns names them all."),
    ] = None,
    output_format: Annotated[
        Format, typer.Option("--format", "-f", help="table (rich, for a terminal), csv, json or markdown.")
    ] = Format.table,
    list_columns: Annotated[bool, typer.Option("--list-columns", help="List the columns and exit.")] = False,
) -> int:
    """One row per run directory found under PATHS: method and variant, backend, workers, how it ended, steps,
    wall time, final and best test accuracy, time to a target, examples/s and bytes sent.

    Runs that are still going, were interrupted or failed are listed with what they have on disk. With --group-by
    each row is a group of runs (e.g. seeds) with `runs` counted and each figure's mean ± std (or --stat median
    with [min, max]); `reached` counts the runs that reached the target, whose times alone are averaged.

    Output: only the table goes to stdout (notes to stderr), so it pipes. Exit code 0 with rows; 1 when
    --where/--status leave none (an empty table: csv header only, json []); 2 for bad input, including
    PATHS holding no run directory.

    \b
    Examples:
      anytimectl runs
      anytimectl runs sweep/ --where method=amb --where workers=4 \\
          --status completed
      anytimectl runs sweep/ --where induce=niagara* --sort -best_accuracy
      anytimectl runs sweep/ --target-accuracy 0.85 --group-by method,variant \\
          --format markdown > results.md
      anytimectl runs sweep/ --format csv \\
          | python -c "import pandas, sys; print(pandas.read_csv(sys.stdin))"
      anytimectl runs sweep/ --format json \\
          | jq '.[] | select(.status == "failed") | .path'
    """
    from anytimectl.runtime import run_table as rt
    if list_columns:
        for column in rt.COLUMNS:
            typer.echo(f"{column.key:<18} {column.help}")
        return 0
    target = rt.Target.of(target_accuracy, target_loss)
    if not paths:
        default = Path("runs")
        if not default.exists():
            raise UsageError("no run directories given and ./runs does not exist; give run directories or folders "
                             "holding them, e.g. anytimectl runs sweep/")
        paths = [default]
    frame = rt.collect(paths, target, warn=_warn)
    if status:
        allowed = {"running", "completed", "interrupted", "failed"}
        wanted = {s.lower() for s in _split(status)}
        bad = sorted(wanted - allowed)
        if bad:
            raise UsageError(f"--status {bad[0]}: not a status; give running, completed, interrupted or failed")
        frame = frame[frame["status"].isin(wanted)]
    frame = rt.where(frame, where or [])
    group_keys = _split(group_by)
    shown = _split([columns]) if columns else None
    if shown:
        unknown = [c for c in shown if c not in rt.COLUMN]
        if unknown:
            raise UsageError(f"--columns {unknown[0]}: no such column; --list-columns names them")
    if group_keys:
        table = rt.group(frame, group_keys, statistic.value) if len(frame) else frame
        figures = [c for c in (shown or rt.AGGREGATED) if c in rt.AGGREGATED]
        if target is None and "time_to_target_s" in figures:
            figures.remove("time_to_target_s")
        suffixes = ("_median", "_min", "_max") if statistic == Statistic.median else ("_mean", "_std")
        counts = ["runs", "reached"] if target is not None else ["runs"]
        machine_columns = [*group_keys, *counts, *(f + s for f in figures for s in suffixes)]
        people_columns = [*group_keys, *counts, *figures]
        stat = statistic.value
    else:
        table = frame
        people_columns = shown or [c for c in rt.DEFAULT_SHOWN if target is not None or c != "time_to_target_s"]
        machine_columns = shown or [c.key for c in rt.COLUMNS]
        stat = None
    if sort_by:
        keys = _split([sort_by])
        if group_keys:
            keys = [_group_sort_key(k, statistic.value) for k in keys]
        table = rt.sort(table, keys, desc)
    if table.empty:
        _warn("no run matches the filters")
        if group_keys:
            import pandas as pd

            table = pd.DataFrame(columns=machine_columns)
    _print(table, output_format, machine_columns, people_columns, stat)
    return 1 if table.empty else 0


def _group_sort_key(key: str, statistic: str) -> str:
    """--sort best_accuracy on a grouped table sorts by its mean (or median)."""
    from anytimectl.runtime import run_table as rt
    name = key.lstrip("-")
    if name in rt.AGGREGATED:
        return key[: len(key) - len(name)] + f"{name}_{statistic}"
    return key


def _print(table, output_format: Format, machine_columns: list[str], people_columns: list[str],
           statistic: str | None) -> None:
    from anytimectl.runtime import run_table as rt
    if output_format == Format.csv:
        sys.stdout.write(rt.machine_frame(table, machine_columns).to_csv(index=False))
    elif output_format == Format.json:
        sys.stdout.write(rt.to_json(rt.machine_frame(table, machine_columns)) + "\n")
    else:
        titles, rows = rt.people_cells(table, people_columns, statistic)
        if output_format == Format.markdown:
            sys.stdout.write(rt.markdown(titles, rows) + "\n")
        else:
            _rich_table(titles, rows, people_columns)


def _rich_table(titles: list[str], rows: list[list[str]], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from anytimectl.runtime import run_table as rt
    terminal = sys.stdout.isatty()
    # off a terminal (a pipe, a file) the table keeps every cell whole rather than wrapping to 80 columns
    console = Console(file=sys.stdout, width=None if terminal else 100_000, color_system="auto" if terminal else None)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for title, column in zip(titles, columns, strict=True):
        kind = rt._kind_of(column)[0] if column not in rt.AGGREGATED else rt.COLUMN[column].kind
        table.add_column(title, justify="left" if kind == "text" else "right", no_wrap=not terminal)
    for cells in rows:
        status = cells[columns.index("status")] if "status" in columns else ""
        style = {"failed": "red", "interrupted": "yellow", "running": "cyan"}.get(status)
        table.add_row(*cells, style=style if terminal else None)
    console.print(table, soft_wrap=not terminal)


@runs_app.command("show")
def show(
    run: Annotated[Path, typer.Argument(help="A run directory.", show_default=False)],
    output_format: Annotated[
        Format, typer.Option("--format", "-f", help="table (for people) or json (options, segments, summary).")
    ] = Format.table,
) -> int:
    """One run in full: its options, its segments (the first job and each --resume), how it ended and its summary
    figures.

    \b
    Examples:
      anytimectl runs show runs/gossip-digits-w4-0312
      anytimectl runs show runs/amb-digits-w4-0312 --format json | jq .summary
    """
    import json

    from anytimectl.runtime import run_table as rt
    if output_format in (Format.csv, Format.markdown):
        raise UsageError(f"--format {output_format.value}: runs show writes table or json")
    if not (run / "metadata.json").is_file():
        raise UsageError(f"{run}: not a run directory (no metadata.json); `anytimectl runs {run}` lists the runs "
                         "inside a folder")
    row = rt.read_row(run)
    meta = rt._load(run).meta
    segments = rt.segments(meta)
    if output_format == Format.json:
        out = {"path": str(run), "name": run.name, "command": meta.get("command"), "method": row["method"],
               "variant": row["variant"], "backend": row["backend"], "status": meta.get("status"),
               "reason": meta.get("reason"), "ended_by": row["ended"], "started_at": meta.get("started_at"),
               "ended_at": meta.get("ended_at"), "segments": segments, "options": meta.get("config") or {},
               "summary": meta.get("summary") or {},
               "figures": {k: row[k] for k in ("steps", "epochs", "wall_s", "final_accuracy", "best_accuracy",
                                               "final_loss", "examples_per_s", "bytes_sent")}}
        sys.stdout.write(json.dumps(_no_nan(out), indent=2, default=str) + "\n")
        return 0
    _show_people(run, meta, row, segments)
    return 0


@runs_app.command("export")
def export(
    paths: RunPaths = None,
    tensorboard: Annotated[
        Path | None,
        typer.Option("--tensorboard", metavar="DIR",
                     help="Write each run's scalars as TensorBoard event files under DIR/<run name>/."),
    ] = None,
) -> int:
    """Convert finished (or still running) runs for other tools: TensorBoard event files, one folder per run.

    Scalars per step: train/loss, train/learning_rate, train/epoch, test/loss, test/accuracy, and per worker
    workers/<n>/compute_s, sleep_s, send_s, idle_s, examples and bytes_sent. Written without TensorFlow or torch
    (the tensorboard package's own record format); view them with `tensorboard --logdir DIR`. Prints each event
    file written, one a line.

    \b
    Examples:
      anytimectl runs export sweep/ --tensorboard tb/ && tensorboard --logdir tb/
      anytimectl runs export runs/amb-digits-w4-0312 --tensorboard tb/
    """
    from anytimectl.plots.rundir import find_runs
    from anytimectl.runtime.tensorboard_events import export_run

    if tensorboard is None:
        raise UsageError("say what to export: --tensorboard DIR (e.g. anytimectl runs export runs/ --tensorboard tb/)")
    if tensorboard.exists() and not tensorboard.is_dir():
        raise UsageError(f"--tensorboard {tensorboard}: exists and is not a folder; give a folder for the event files")
    written = 0
    for run, direct in find_runs(list(paths or [Path("runs")])):
        try:
            path, steps = export_run(run, tensorboard / run.name)
        except UsageError as exc:
            if direct:
                raise
            _warn(f"skipped: {exc}")
            continue
        print(path)
        written += 1
    if not written:
        raise UsageError("no training run with steps to export")
    return 0


def _no_nan(value):
    """JSON has no NaN: unknown figures are null."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def _show_people(run: Path, meta: dict, row: dict, segments: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    from anytimectl.runtime import run_table as rt
    terminal = sys.stdout.isatty()
    console = Console(file=sys.stdout, width=None if terminal else 120, color_system="auto" if terminal else None)
    variant = f" ({row['variant']})" if row["variant"] else ""
    console.print(f"[bold]{run.name}[/bold]  {meta.get('command', '')} {row['method']}{variant}, backend "
                  f"{row['backend'] or '-'}, {rt._format(row['workers'], 'int')} workers", highlight=False)
    ended = f" ({row['ended']})" if row["ended"] else ""
    console.print(f"status: {meta.get('status')}{ended}; started {meta.get('started_at')}, ended "
                  f"{meta.get('ended_at') or '-'}", highlight=False)
    console.print(f"path: {run}", highlight=False)

    figures = Table(title="summary", title_justify="left", show_header=False, box=None, pad_edge=False)
    figures.add_column(justify="left")
    figures.add_column(justify="right")
    for key in ("steps", "epochs", "wall_s", "final_accuracy", "best_accuracy", "final_loss", "examples_per_s",
                "bytes_sent"):
        column = rt.COLUMN[key]
        figures.add_row(column.help, rt._format(row[key], column.kind))
    summary = meta.get("summary") or {}
    for key, value in summary.items():
        if key in ("steps", "epochs", "wall_time_s", "final_accuracy", "final_loss", "stopped_by"):
            continue
        figures.add_row(key, _summary_value(value))
    console.print(figures)

    parts = Table(title=f"segments ({len(segments)})", title_justify="left", header_style="bold", box=None,
                  pad_edge=False)
    for title in ("#", "started", "ended", "from step", "how it ended"):
        parts.add_column(title)
    for segment in segments:
        how = segment["status"] or "-"
        if segment.get("reason"):
            how += f" ({segment['reason']})"
        parts.add_row(str(segment["segment"]), str(segment["started_at"] or "-"), str(segment["ended_at"] or "-"),
                      str(segment["from_step"] if segment["from_step"] is not None else "-"), how)
    console.print(parts)

    options = Table(title="options", title_justify="left", show_header=False, box=None, pad_edge=False)
    options.add_column(justify="left")
    options.add_column(justify="left", overflow="fold")
    for key, value in (meta.get("config") or {}).items():
        options.add_row(key, _summary_value(value))
    console.print(options)
    if meta.get("argv"):
        console.print("command line: anytimectl " + " ".join(str(a) for a in meta["argv"]), highlight=False,
                      soft_wrap=True)


def _summary_value(value) -> str:
    import json

    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "-" if value is None else str(value)
