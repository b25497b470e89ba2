"""Read run directories: find them, parse their tables tolerantly, and say clearly when one is unusable.

A run directory is a folder holding `metadata.json`. Its CSV tables are written row by row while the run goes on,
so the last line may be cut short (a killed run, or one still running): that line is dropped, never guessed at.
Anything else that does not parse is a corrupt file, reported as a one-line `UsageError` naming the file.
Tables are read lazily (only the figures that need them pay for them) and entirely with vectorised pandas.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.run_config import current_keys
from anytimectl.runtime.rundir import (
    ORIGINAL_COLLECT_COLUMNS,
    ORIGINAL_MASTER_COLUMNS,
    ORIGINAL_WORKER_COLUMNS,
    run_liveness,
)

METADATA = "metadata.json"

# The original column names, which every run keeps (new columns may follow them). Numeric unless listed in TEXT.
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "master": ("master_stats.csv", ORIGINAL_MASTER_COLUMNS),
    "workers": ("worker_stats.csv", ORIGINAL_WORKER_COLUMNS),
    "collect": ("collect_stats.csv", ORIGINAL_COLLECT_COLUMNS),
    # the two studies' tables (`anytimectl partitions`, `anytimectl bandwidth`)
    "partitions": ("partitions.csv", ("batch_size", "partitions", "partition_size", "time_per_step",
                                      "time_per_sample", "overhead")),
    "bandwidth": ("bandwidth.csv", ("workers", "elements", "bytes", "layer", "round_time")),
    "compress_bench": ("compress_bench.csv", ("bytes", "bound_bytes", "compression_ratio", "relative_error")),
}
TEXT_COLUMNS = {"host", "layer", "model"}
#: run directories of the studies: metadata "command" -> (their table, the figure type that draws them)
STUDIES = {"partitions": ("partitions", "partitions"), "bandwidth": ("bandwidth", "master_bandwidth"),
           "compress bench": ("compress_bench", "compress_bench")}
STUDY_FIGURES = {figure: command for command, (_, figure) in STUDIES.items()}
TRACE = "trace.json"


class MissingTable(UsageError):
    """A table a figure needs is absent from a run (e.g. a run type that does not write it)."""


def _short(path: Path) -> str:
    """Paths in messages: relative to the working directory when that is shorter."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def complete_bytes(path: Path) -> bytes:
    """The file's bytes up to and including its last newline: a final line without one is still being written."""
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return data
    cut = data.rfind(b"\n")
    return data[: cut + 1] if cut >= 0 else b""


def read_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """Parse one CSV table by column name; every complete row is kept, a corrupt file raises UsageError."""
    where = _short(path)
    try:
        data = complete_bytes(path)
    except OSError as exc:
        raise UsageError(f"cannot read {where} ({exc.strerror or exc}); ask its owner to make it readable") from None
    if not data.strip():
        return pd.DataFrame({c: pd.Series(dtype=float) for c in required})
    try:
        df = pd.read_csv(io.BytesIO(data), skipinitialspace=True, low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"corrupt table {where}: {detail}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UsageError(
            f"corrupt table {where}: missing column(s) {', '.join(missing)} (expected {', '.join(required)})"
        )
    for col in df.columns:
        if col in TEXT_COLUMNS or col.startswith("Unnamed"):
            continue
        if df[col].dtype.kind in "biuf":
            continue
        raw = df[col]
        numeric = pd.to_numeric(raw, errors="coerce")
        bad = numeric.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
        if bad.any():
            if col not in required:  # an appended column we do not know: keep it as text rather than fail
                continue
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UsageError(
                f"corrupt table {where}: line {row + 2}, column {col!r} holds {str(raw.iloc[row])[:30]!r}, not a number"
            )
        df[col] = numeric
    return df


def read_trace(path: Path) -> pd.DataFrame:
    """Complete 'X' events of a Chrome trace as a frame (name, ts, dur, pid, step), times in seconds.

    The file is a JSON array written one event per line; a running or killed run leaves it without its closing
    bracket, and maybe with a half-written last line, so both are repaired before parsing.
    """
    text = complete_bytes(path).decode("utf-8", errors="replace").strip()
    if text.endswith("]"):
        text = text[:-1]
    text = text.strip().rstrip(",")
    if not text.startswith("["):
        raise UsageError(f"corrupt trace {_short(path)}: expected a JSON array of trace events")
    try:
        events = json.loads(text + "]")
    except json.JSONDecodeError as exc:
        raise UsageError(f"corrupt trace {_short(path)}: {exc}") from None
    rows = [e for e in events if isinstance(e, dict) and e.get("ph") == "X"]
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in ("name", "ts", "dur", "pid", "step")})
    df = pd.DataFrame.from_records(rows, columns=["name", "ts", "dur", "pid", "args"])
    df["step"] = pd.to_numeric(df["args"].map(lambda a: a.get("step") if isinstance(a, dict) else None))
    df = df.drop(columns="args")
    df["ts"] = pd.to_numeric(df["ts"], errors="coerce") / 1e6
    df["dur"] = pd.to_numeric(df["dur"], errors="coerce") / 1e6
    df["pid"] = pd.to_numeric(df["pid"], errors="coerce")
    return df.dropna(subset=["ts", "dur", "pid"])


@dataclass(eq=False)
class Run:
    """One run directory: its metadata now, its tables when first asked for."""

    path: Path
    meta: dict
    label: str = ""
    color: str = "C0"
    linestyle: str = "-"
    extras: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict:
        """metadata.json's config under this version's field names (an earlier version's `method` of a gossip run
        reads as `rule`, of a compress run as `compressor`)."""
        return current_keys(self.meta.get("method"), self.meta.get("config") or {})

    @property
    def method(self) -> str:
        return str(self.meta.get("method") or (self.meta.get("config") or {}).get("method") or "run").lower()

    @cached_property
    def status(self) -> str:
        """The recorded status; a run recorded as running whose writer is gone reads "running (dead: ...)"."""
        status = str(self.meta.get("status") or "unknown")
        return run_liveness(self.path) if status == "running" else status

    @property
    def straggler(self) -> dict | None:
        model = self.meta.get("straggler")
        return model if isinstance(model, dict) and model.get("components") else None

    @property
    def kind(self) -> str:
        """"train", or the study that wrote it ("partitions", "bandwidth")."""
        command = self.meta.get("command")
        return command if command in STUDIES else "train"

    def file(self, table: str) -> Path:
        return self.path / TABLES[table][0]

    def _load(self, table: str) -> pd.DataFrame:
        path = self.file(table)
        if not path.is_file():
            if self.kind != "train":
                raise MissingTable(f"run {_short(self.path)} is a {self.kind} run, not a training run: draw it "
                                   f"with --type {STUDIES[self.kind][1]}")
            raise MissingTable(f"run {_short(self.path)} has no {path.name}")
        return read_table(path, TABLES[table][1])

    @cached_property
    def master(self) -> pd.DataFrame:
        df = self._load("master")
        return df.dropna(subset=["step", "time"]).sort_values("step", kind="stable").reset_index(drop=True)

    @cached_property
    def workers(self) -> pd.DataFrame:
        df = self._load("workers").dropna(subset=["master_step", "rank"])
        return df.sort_values(["rank", "master_step"], kind="stable").reset_index(drop=True)

    @cached_property
    def collect(self) -> pd.DataFrame:
        return self._load("collect").dropna(subset=["step"]).reset_index(drop=True)

    @cached_property
    def partitions(self) -> pd.DataFrame:
        df = self._load("partitions").dropna(subset=["batch_size", "partitions", "time_per_step"])
        return df.sort_values(["batch_size", "partitions"], kind="stable").reset_index(drop=True)

    @cached_property
    def bandwidth(self) -> pd.DataFrame:
        df = self._load("bandwidth").dropna(subset=["workers", "elements", "round_time"])
        return df.sort_values(["elements", "workers"], kind="stable").reset_index(drop=True)

    @cached_property
    def compress_bench(self) -> pd.DataFrame:
        return self._load("compress_bench").reset_index(drop=True)

    @cached_property
    def trace(self) -> pd.DataFrame:
        path = self.path / TRACE
        if not path.is_file():
            raise MissingTable(f"run {_short(self.path)} has no {TRACE}")
        return read_trace(path)

    def table(self, table: str) -> pd.DataFrame:
        return getattr(self, table)


def _is_run(path: Path) -> bool:
    return (path / METADATA).is_file()


def find_runs(paths: list[Path]) -> list[tuple[Path, bool]]:
    """Run directories named by `paths`, in order, each with whether it was named directly.

    A path is a run directory itself, or a folder searched recursively for run directories (sorted by name;
    a run directory is not searched further). Duplicates are dropped.
    """
    found: list[tuple[Path, bool]] = []
    seen: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path}: no such file or directory (give run directories or folders holding them)")
        if _is_run(path):
            candidates = [(path, True)]
        elif path.is_dir():
            runs = sorted({p.parent for p in path.rglob(METADATA)}, key=lambda p: (p.name, str(p)))
            # a run directory may hold files named metadata.json deeper down; keep the outermost run only
            runs = [r for r in runs if not any(parent in runs for parent in r.parents)]
            if not runs:
                raise UsageError(f"{path}: not a run directory (no {METADATA}) and contains none")
            candidates = [(r, False) for r in runs]
        else:
            raise UsageError(f"{path}: not a run directory (expected a folder holding {METADATA})")
        for run, direct in candidates:
            key = run.resolve()
            if key not in seen:
                seen.add(key)
                found.append((run, direct))
    return found


def load_run(path: Path) -> Run:
    """Metadata and master table of one run; a run with no complete step yet is a UsageError."""
    try:
        text = (path / METADATA).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {_short(path / METADATA)} ({exc.strerror or exc}); ask its owner to make "
                         "it readable") from None
    try:
        meta = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"corrupt metadata {_short(path / METADATA)}: {exc}") from None
    if not isinstance(meta, dict):
        raise UsageError(f"corrupt metadata {_short(path / METADATA)}: expected a JSON object")
    run = Run(path=path, meta=meta)
    if run.kind != "train":
        table = STUDIES[run.kind][0]
        if run.table(table).empty:
            raise UsageError(f"run {_short(path)} has no measurements yet ({TABLES[table][0]} has no complete row)")
        return run
    try:
        master = run.master
    except MissingTable:
        raise UsageError(f"run {_short(path)} has no steps yet (no {TABLES['master'][0]})") from None
    if master.empty:
        raise UsageError(f"run {_short(path)} has no steps yet ({TABLES['master'][0]} has no complete row)")
    return run


def load_runs(paths: list[Path], warn=None, kind: str | None = None) -> list[Run]:
    """Load every run under `paths`. A run found inside a folder that has no steps yet is skipped with a warning
    (a sweep just started should not stop the plot); one named directly, or all of them empty, is an error.

    `kind` is the figure type to draw: a study's figure (partitions, master_bandwidth) takes only that study's runs,
    any other figure only training runs. Runs of the other sort found inside folders are skipped with a warning;
    one named directly is an error saying which figure type draws it.
    """
    wanted = STUDY_FIGURES.get(kind or "", "train")
    runs: list[Run] = []
    skipped: list[str] = []
    for path, direct in find_runs(paths):
        try:
            run = load_run(path)
        except UsageError as exc:
            if direct or "no steps yet" not in str(exc) and "no measurements yet" not in str(exc):
                raise
            skipped.append(str(exc))
            continue
        if run.kind != wanted:
            if wanted == "train":
                message = (f"run {_short(path)} is a {run.kind} run, not a training run: draw it with "
                           f"--type {STUDIES[run.kind][1]}")
            else:
                message = (f"run {_short(path)} is a {run.kind} run; --type {kind} draws runs of "
                           f"`anytimectl {wanted}`")
            if direct:
                raise UsageError(message)
            skipped.append(message)
            continue
        runs.append(run)
    for message in skipped:
        if warn is not None:
            warn(f"skipped: {message}")
    if not runs:
        raise UsageError(skipped[0] if skipped else "no run directories given")
    return runs
