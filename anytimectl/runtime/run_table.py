"""The results table of many runs: one row of figures per run directory, filtered, sorted and grouped over seeds.

Comparing fifty runs of a sweep should not mean writing pandas by hand. Every figure here is read from the run
directory through the same reader the plots use (`plots/rundir.py`): the metadata's summary where the run wrote
one, its tables where it did not (a run still going, or killed before it could write its summary). Nothing here
knows a method: the variant comes from the labels each method's figure module registers, and whether a run has a
master from its world size against its workers.

The table is a pandas DataFrame whose columns are `COLUMNS`; formatting for people (rich, markdown) and for
programs (csv, json) is done at the end, by `render`.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from anytimectl.plots.rundir import MissingTable, Run, find_runs
from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.run_config import current_keys


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    kind: str  # text | int | float | fraction | seconds | bytes | rate
    help: str


COLUMNS: tuple[Column, ...] = (
    Column("name", "run", "text", "run directory name"),
    Column("method", "method", "text", "training method (amb, fmb, dynamic, gossip, compress, ...)"),
    Column("variant", "variant", "text", "what tells the method's runs apart (policy, gossip rule, codec, sync/async)"),
    Column("backend", "backend", "text", "engine: tensorflow, torch or sim"),
    Column("dataset", "data", "text", "data set"),
    Column("workers", "workers", "int", "workers"),
    Column("seed", "seed", "int", "--seed"),
    Column("status", "status", "text", "running, completed, interrupted or failed"),
    Column("ended", "ended by", "text", "why it ended: steps, epochs, target accuracy, a signal, an error"),
    Column("steps", "steps", "int", "steps (updates) done"),
    Column("epochs", "epochs", "float", "epochs of the training data done"),
    Column("wall_s", "wall time", "seconds", "seconds from the first step to the last"),
    Column("final_accuracy", "final acc", "fraction", "last test accuracy"),
    Column("best_accuracy", "best acc", "fraction", "best test accuracy"),
    Column("final_loss", "final loss", "float", "last training loss"),
    Column("time_to_target_s", "to target", "seconds", "seconds to --target-accuracy / --target-loss (first logged "
           "row that reaches it; empty: not reached)"),
    Column("examples_per_s", "examples/s", "rate", "training examples per second, all workers together"),
    Column("bytes_sent", "bytes sent", "bytes", "payload bytes sent by all ranks"),
    Column("started_at", "started", "text", "start time (UTC)"),
    Column("path", "path", "text", "run directory"),
)
COLUMN = {c.key: c for c in COLUMNS}
NUMERIC = {c.key for c in COLUMNS if c.kind != "text"}
#: what a terminal shows by default (every column goes to csv/json); --columns chooses others
DEFAULT_SHOWN = ("name", "method", "variant", "backend", "workers", "status", "ended", "steps", "wall_s",
                 "final_accuracy", "best_accuracy", "time_to_target_s", "examples_per_s", "bytes_sent")
#: the figures a group of runs is summarised by (mean and spread, or median and range)
AGGREGATED = ("steps", "wall_s", "final_accuracy", "best_accuracy", "final_loss", "time_to_target_s",
              "examples_per_s", "bytes_sent")


@dataclass(frozen=True)
class Target:
    """--target-accuracy or --target-loss: the master_stats column, the value and which side reaches it."""

    column: str
    value: float
    higher_is_better: bool

    @classmethod
    def of(cls, accuracy: float | None, loss: float | None) -> Target | None:
        if accuracy is not None and loss is not None:
            raise UsageError("give one of --target-accuracy and --target-loss, not both")
        if accuracy is not None:
            if not 0 < accuracy <= 1:
                raise UsageError(f"--target-accuracy {accuracy:g}: a test accuracy is a fraction in (0, 1], e.g. 0.9")
            return cls("accuracy", float(accuracy), True)
        if loss is not None:
            if not (math.isfinite(loss) and loss > 0):
                raise UsageError(f"--target-loss {loss:g}: give a training loss above 0, e.g. 0.1")
            return cls("loss", float(loss), False)
        return None


# --- reading ---------------------------------------------------------------------------------------------------------
def _load(path: Path) -> Run:
    try:
        meta = json.loads((path / "metadata.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"corrupt metadata {path / 'metadata.json'}: {exc}") from None
    if not isinstance(meta, dict):
        raise UsageError(f"corrupt metadata {path / 'metadata.json'}: expected a JSON object")
    return Run(path=path, meta=meta)


def _table(run: Run, name: str) -> pd.DataFrame | None:
    """The run's table, or None when it has none (a study, or a run that has not started a step)."""
    try:
        return run.table(name)
    except MissingTable:
        return None


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def variant_of(run: Run) -> str:
    """The method's variant as its own figure module labels it; for master-worker runs, sync or async."""
    from anytimectl.plots import style
    from anytimectl.plots.registry import load_all

    load_all()  # each method's figure module registers its variant label
    text = style._variant(run)
    return text or str(run.config.get("protocol") or "")


def _reached(master: pd.DataFrame, target: Target) -> float:
    from anytimectl.plots.fig_time_to_target import Target as PlotTarget
    from anytimectl.plots.fig_time_to_target import reach

    if target.column not in master.columns:
        return math.nan
    hit = reach(master, PlotTarget(target.column, target.value, target.higher_is_better, ""))
    return hit[0] if hit else math.nan


def _bytes_sent(run: Run, workers: pd.DataFrame | None, summary: dict) -> float:
    """Payload bytes sent by every rank: each worker's cumulative count at its last row, plus the master's when the
    run has one (world size = workers + 1; without a master, rank 0 is worker 1 and already counted)."""
    total = math.nan
    if workers is not None and not workers.empty and "bytes_sent" in workers.columns:
        last = pd.to_numeric(workers.groupby("rank")["bytes_sent"].max(), errors="coerce")
        last = last[last >= 0]  # -1: not counted (e.g. --workers 0, where nothing travels)
        if len(last):
            total = float(last.sum())
    worker_count = _number(run.config.get("workers"))
    has_master = _number(run.meta.get("world_size")) == worker_count + 1
    if has_master and summary.get("master_bytes_sent") is not None:
        total = (0.0 if math.isnan(total) else total) + float(summary["master_bytes_sent"])
    return total


def read_row(path: Path, target: Target | None = None) -> dict[str, Any]:
    """The figures of one run directory, from its summary where written, else from its tables."""
    run = _load(path)
    meta, config = run.meta, run.config
    summary = meta.get("summary") if isinstance(meta.get("summary"), dict) else {}
    row: dict[str, Any] = {c.key: (math.nan if c.key in NUMERIC else "") for c in COLUMNS}
    row.update(name=run.name, path=str(path), status=run.status, started_at=str(meta.get("started_at") or ""),
               backend=str(meta.get("backend") or config.get("backend") or ""),
               dataset=str(config.get("dataset") or ""), workers=_number(config.get("workers")),
               seed=_number(config.get("seed")))
    reason = meta.get("reason")
    row["ended"] = str(reason or summary.get("stopped_by") or "")
    if run.kind != "train":  # a study (partitions, bandwidth, compress bench): no training figures
        row["method"] = run.kind
        return row
    row["method"] = run.method
    row["variant"] = variant_of(run)
    master = _table(run, "master")
    workers = _table(run, "workers")
    has_steps = master is not None and not master.empty
    row["steps"] = _number(summary.get("steps")) if summary.get("steps") is not None else (
        float(master["step"].max()) if has_steps else 0.0)
    row["epochs"] = _number(summary.get("epochs"))
    row["wall_s"] = _number(summary.get("wall_time_s"))
    row["final_loss"] = _number(summary.get("final_loss"))
    row["final_accuracy"] = _number(summary.get("final_accuracy"))
    if has_steps:
        last = master.iloc[-1]
        if math.isnan(row["wall_s"]):
            row["wall_s"] = float(master["time"].max())
        if math.isnan(row["epochs"]) and "epoch" in master.columns:
            row["epochs"] = _number(last.get("epoch"))
        if math.isnan(row["final_loss"]):
            row["final_loss"] = _number(master["loss"].dropna().iloc[-1]) if master["loss"].notna().any() else math.nan
        accuracy = master["accuracy"].dropna()
        if not accuracy.empty:
            if math.isnan(row["final_accuracy"]):
                row["final_accuracy"] = float(accuracy.iloc[-1])
            row["best_accuracy"] = float(accuracy.max())
        if target is not None:
            row["time_to_target_s"] = _reached(master, target)
    if not math.isnan(row["best_accuracy"]) and not math.isnan(row["final_accuracy"]):
        row["best_accuracy"] = max(row["best_accuracy"], row["final_accuracy"])
    elif not math.isnan(row["final_accuracy"]):
        row["best_accuracy"] = row["final_accuracy"]
    examples = _number(summary.get("examples"))
    if math.isnan(examples) and workers is not None and "num_samples" in workers.columns:
        examples = float(workers["num_samples"].sum())
    if row["wall_s"] and row["wall_s"] > 0 and not math.isnan(examples):
        row["examples_per_s"] = examples / row["wall_s"]
    row["bytes_sent"] = _bytes_sent(run, workers, summary)
    return row


def collect(paths: Sequence[Path], target: Target | None = None, warn: Callable[[str], None] | None = None
            ) -> pd.DataFrame:
    """One row per run directory found under `paths` (recursively); unreadable ones are skipped with a warning when
    found inside a folder, an error when named directly."""
    rows = []
    for path, direct in find_runs(list(paths)):
        try:
            rows.append(read_row(path, target))
        except UsageError as exc:
            if direct:
                raise
            if warn is not None:
                warn(f"skipped: {exc}")
    frame = pd.DataFrame(rows, columns=[c.key for c in COLUMNS])
    for key in NUMERIC:
        frame[key] = pd.to_numeric(frame[key], errors="coerce")
    return frame


# --- choosing rows -------------------------------------------------------------------------------------------------
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "!=": operator.ne, ">=": operator.ge, "<=": operator.le, "=": operator.eq, ">": operator.gt, "<": operator.lt,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(!=|>=|<=|=|>|<)(.*)$")


def config_value(path: str, key: str) -> Any:
    """A value of the run's resolved configuration (`config.<key>` in metadata.json), for --where and --group-by
    keys that are not table columns (e.g. induce, batch_size, policy)."""
    try:
        meta = json.loads((Path(path) / "metadata.json").read_text())
    except (OSError, ValueError):
        return None
    config = current_keys(meta.get("method"), meta.get("config") or {})
    key = key.removeprefix("config.")
    return config.get(key, meta.get(key))


def _column(frame: pd.DataFrame, key: str, option: str) -> pd.Series:
    """A table column, or a configuration key read from each run's metadata (as text)."""
    if key in frame.columns:
        return frame[key]
    values = [config_value(p, key) for p in frame["path"]]
    if all(v is None for v in values) and len(values):
        known = ", ".join(c.key for c in COLUMNS)
        raise UsageError(f"{option} {key}: no such column and no run has it in its configuration (columns: {known}; "
                         "or any key of metadata.json's config, e.g. induce, batch_size)")
    return pd.Series(["" if v is None else (json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                      for v in values], index=frame.index, dtype=object)


def where(frame: pd.DataFrame, conditions: Sequence[str]) -> pd.DataFrame:
    """Keep the rows meeting every `key=value` (also !=, >, <, >=, <=); numbers compare as numbers, text as text
    (case-insensitive; `*` matches anything)."""
    for condition in conditions:
        match = _CONDITION.match(condition)
        if not match:
            raise UsageError(f"--where {condition}: expected KEY=VALUE (or KEY!=VALUE, KEY>VALUE, ...), "
                             "e.g. --where method=amb")
        key, op_text, value = match.group(1), match.group(2), match.group(3).strip()
        column = _column(frame, key, "--where")
        op = _OPERATORS[op_text]
        if key in NUMERIC:
            try:
                number = float(value)
            except ValueError:
                raise UsageError(f"--where {condition}: {key} is a number; give one, e.g. {key}{op_text}4") from None
            keep = op(column, number) & column.notna() if op_text != "!=" else column.isna() | op(column, number)
        else:
            text = column.fillna("").astype(str).str.lower()
            wanted = value.lower()
            if op_text in ("=", "!="):
                pattern = "^" + ".*".join(re.escape(part) for part in wanted.split("*")) + "$"
                hit = text.str.match(pattern)
                keep = hit if op_text == "=" else ~hit
            else:
                numbers = pd.to_numeric(column, errors="coerce")
                try:
                    keep = op(numbers, float(value)) & numbers.notna()
                except ValueError:
                    keep = op(text, wanted)
        frame = frame[keep.to_numpy(dtype=bool)]
    return frame


def sort(frame: pd.DataFrame, keys: Sequence[str], descending: bool = False) -> pd.DataFrame:
    """Sort by the keys in order; a key written `-key` sorts that key descending. Missing values go last."""
    if not keys:
        return frame
    names, ascending = [], []
    for key in keys:
        name = key.lstrip("-")
        if name not in frame.columns:
            frame = frame.assign(**{name: _column(frame, name, "--sort")})
        names.append(name)
        ascending.append(key.startswith("-") == descending)
    return frame.sort_values(names, ascending=ascending, kind="stable", na_position="last")


def group(frame: pd.DataFrame, keys: Sequence[str], statistic: str = "mean") -> pd.DataFrame:
    """One row per group of runs (e.g. seeds of one configuration): `runs` counted, and for each figure in
    AGGREGATED its mean and standard deviation (`statistic="mean"`) or its median, min and max ("median").
    Runs that did not reach the target count in `reached`, not in the time's statistics."""
    frame = frame.copy()
    for key in keys:
        if key not in frame.columns:
            frame[key] = _column(frame, key, "--group-by")
        frame[key] = frame[key].fillna("").astype(str) if key not in NUMERIC else frame[key]
    grouped = frame.groupby(list(keys), sort=True, dropna=False)
    out = grouped.size().rename("runs").to_frame()
    out["reached"] = grouped["time_to_target_s"].count()
    for key in AGGREGATED:
        series = grouped[key]
        if statistic == "median":
            out[f"{key}_median"] = series.median()
            out[f"{key}_min"] = series.min()
            out[f"{key}_max"] = series.max()
        else:
            out[f"{key}_mean"] = series.mean()
            out[f"{key}_std"] = series.std(ddof=1)
    return out.reset_index()


# --- showing -------------------------------------------------------------------------------------------------------
def _format(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "int":
        return f"{int(value)}"
    if kind == "fraction":
        return f"{value:.4f}"
    if kind == "seconds":
        return format_seconds(float(value))
    if kind == "bytes":
        return format_bytes(float(value))
    if kind == "rate":
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    if kind == "float":
        return f"{value:.4g}"
    return str(value)


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_bytes(value: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def _kind_of(column: str) -> tuple[str, str]:
    """(kind, title) of a table column or of a grouped statistic such as `final_accuracy_mean`."""
    if column in COLUMN:
        return COLUMN[column].kind, COLUMN[column].title
    for suffix in ("_mean", "_std", "_median", "_min", "_max"):
        base = column.removesuffix(suffix)
        if base != column and base in COLUMN:
            return COLUMN[base].kind, f"{COLUMN[base].title} {suffix[1:]}"
    if column in ("runs", "reached"):
        return "int", column
    return "text", column


def people_cells(frame: pd.DataFrame, columns: Sequence[str], statistic: str | None) -> tuple[list[str], list[list]]:
    """Titles and formatted cells for people: grouped figures shown as `mean ± std` or `median [min, max]`."""
    titles, getters = [], []
    if statistic is None:
        for column in columns:
            kind, title = _kind_of(column)
            titles.append(title)
            getters.append(lambda row, c=column, k=kind: _format(row[c], k))
    else:
        for column in columns:
            if column in AGGREGATED:
                kind, title = _kind_of(column)
                if statistic == "median":
                    titles.append(f"{title} (median [min, max])")
                    getters.append(lambda row, c=column, k=kind: _spread_median(row, c, k))
                else:
                    titles.append(f"{title} (mean ± std)")
                    getters.append(lambda row, c=column, k=kind: _spread_mean(row, c, k))
            else:
                kind, title = _kind_of(column)
                titles.append(title)
                getters.append(lambda row, c=column, k=kind: _format(row[c], k))
    rows = [[get(row) for get in getters] for _, row in frame.iterrows()]
    return titles, rows


def _spread_mean(row: pd.Series, column: str, kind: str) -> str:
    mean, std = row[f"{column}_mean"], row[f"{column}_std"]
    text = _format(mean, kind)
    return text if text == "-" or pd.isna(std) else f"{text} ± {_format(std, kind)}"


def _spread_median(row: pd.Series, column: str, kind: str) -> str:
    text = _format(row[f"{column}_median"], kind)
    if text == "-":
        return text
    return f"{text} [{_format(row[f'{column}_min'], kind)}, {_format(row[f'{column}_max'], kind)}]"


def markdown(titles: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned), for READMEs and papers."""
    numeric = [all(_looks_numeric(r[i]) for r in rows) and bool(rows) for i in range(len(titles))]

    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(escape(t) for t in titles) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _looks_numeric(text: str) -> bool:
    return text == "-" or bool(re.match(r"^[\d.,]+", text))


def machine_frame(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The chosen columns with raw numbers (seconds, bytes, fractions), for csv and json; counts as integers."""
    out = frame.loc[:, list(columns)].copy()
    for column in out.columns:
        if _kind_of(column)[0] in ("int", "bytes") and not column.endswith(("_mean", "_std", "_median")):
            out[column] = pd.to_numeric(out[column], errors="coerce").round().astype("Int64")
    return out


def to_json(frame: pd.DataFrame) -> str:
    """Records with NaN as null (JSON has no NaN)."""
    records = json.loads(frame.to_json(orient="records", double_precision=15))
    return json.dumps(records, indent=2)


# --- one run in full -------------------------------------------------------------------------------------------------
def segments(meta: dict) -> list[dict[str, Any]]:
    """The run's stretches of training, one per job: the first, then one per `--resume` (metadata's `resumes`).

    Each has when it started and ended, the step it started from and how it ended: a resumed segment's end is what
    the next resume recorded as the previous status; the last one's is the run's status and reason.
    """
    resumes = [r for r in (meta.get("resumes") or []) if isinstance(r, dict)]
    out = []
    starts = [(meta.get("started_at"), 0, meta.get("argv"))] + [(r.get("at"), r.get("from_step"), r.get("argv"))
                                                                  for r in resumes]
    for index, (started, from_step, argv) in enumerate(starts):
        if index + 1 < len(starts):
            following = resumes[index]
            ended, status, reason = (following.get("previous_ended_at"), following.get("previous_status"),
                                     following.get("previous_reason"))
        else:
            ended, status, reason = meta.get("ended_at"), meta.get("status"), meta.get("reason")
        out.append({"segment": index + 1, "started_at": started, "ended_at": ended, "from_step": from_step,
                    "status": status, "reason": reason, "argv": argv})
    return out
