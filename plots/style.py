"""The look shared by every figure: colours per method, run labels, smoothing, time units, fonts, file names.

Each idea lives here once so that AMB is the same blue and FMB the same red in every figure, and a label means
the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from .rundir import Run

# One colour family per method; a single run of a method gets the family's base colour, several get shades.
METHOD_COLORS: dict[str, tuple[str, str]] = {
    "amb": ("#1f77b4", "Blues"),
    "fmb": ("#d62728", "Reds"),
    "dynamic": ("#2ca02c", "Greens"),
    "gossip": ("#9467bd", "Purples"),
    "compress": ("#ff7f0e", "Oranges"),
}
OTHER_COLORS = [("#8c564b", "copper"), ("#7f7f7f", "Greys"), ("#17becf", "GnBu"), ("#e377c2", "RdPu")]
LINESTYLES = ["-", "--", ":", "-."]

# The phases of a worker round, in the timing words of the design; the same colours in every worker figure.
PHASE_COLORS = {
    "compute": "#4c72b0",  # compute without the induced sleep: useful work
    "sleep": "#f2b134",  # induced straggler delay
    "send": "#55a868",
    "recv": "#c44e52",  # idle: waiting for and receiving the next model
    "exit": "#8c8c8c",
    "master": "#6a6a6a",
}

AX_SIZE = (6.4, 4.2)  # inches per axis
DPI = 150
RC = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",
    "pdf.fonttype": 42,
}


def assign_colors(runs: Sequence[Run]) -> None:
    """Colour each run by its method family; runs sharing a method get distinct shades and line styles."""
    from matplotlib import colormaps

    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    others = iter(OTHER_COLORS * 4)
    for method, group in by_method.items():
        base, cmap = METHOD_COLORS.get(method) or next(others)
        if len(group) == 1:
            shades = [base]
        else:
            cm = colormaps[cmap]
            shades = [cm(x) for x in np.linspace(0.9, 0.5, len(group))]
        for i, run in enumerate(group):
            run.color = shades[i]
            run.linestyle = LINESTYLES[i % len(LINESTYLES)] if len(group) > 1 else "-"


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _slow(value) -> dict[int, float]:
    """`slow` as recorded: {"2": 3.0} (train amb|fmb), or the command line's ["2:3"] (the other commands)."""
    if not value:
        return {}
    if isinstance(value, dict):
        return {int(k): float(v) for k, v in value.items()}
    from anytimectl.runtime.stragglers import parse_slow

    try:
        return parse_slow(list(value))
    except Exception:  # noqa: BLE001 - a label must never stop a figure
        return {}


#: protocol (metadata's `protocol`) -> what tells its runs apart ("elastic p=1/8", "topk layerwise K=0.01 EF"):
#: each method's figure module registers its own, so the generic labels need no method knowledge.
VARIANT_LABELS: dict[str, Callable[[Run], str]] = {}


def variant_label(*protocols: str) -> Callable[[Callable[[Run], str]], Callable[[Run], str]]:
    def register(function: Callable[[Run], str]) -> Callable[[Run], str]:
        for protocol in protocols:
            VARIANT_LABELS[protocol] = function
        return function

    return register


def _variant(run: Run) -> str:
    function = VARIANT_LABELS.get(str(run.meta.get("protocol") or ""))
    if function is None:
        return ""
    try:
        return function(run)
    except Exception:  # noqa: BLE001 - a label must never stop a figure
        return ""


def label_fields(run: Run) -> list[tuple[str, str]]:
    """(field, text) pairs describing a run, most important first; empty text for fields that do not apply."""
    cfg = run.config
    straggler = run.straggler
    if straggler:
        scale = straggler.get("scale", 1)
        sname = str(straggler.get("name") or "custom")
        stext = sname if scale in (None, 1, 1.0) else f"{sname}×{_num(scale)}"
    else:
        stext = "no stragglers"
    slow = _slow(cfg.get("slow"))
    slow_text = ", ".join(f"worker {r} ×{_num(k)}" for r, k in sorted(slow.items())) if slow else ""
    time_limit = cfg.get("time_limit")
    return [
        ("method", run.method.upper()),
        ("variant", _variant(run)),
        ("backend", str(run.meta.get("backend") or "")),
        ("dataset", str(cfg.get("dataset") or "")),
        ("model", str(cfg.get("model") or "")),
        ("batch", f"B={_num(cfg['batch_size'])}" if cfg.get("batch_size") is not None else ""),
        # an auto limit follows the run (collect_stats.csv has each step's): name the rule and what it matched
        ("time_limit", f"T=auto (batch {_num(cfg.get('match_batch'))})" if cfg.get("time_limit_requested") == "auto"
         and time_limit else f"T={time_limit:.3g} s" if isinstance(time_limit, (int, float)) else ""),
        # partitions only mean something with a time limit (AMB); FMB runs may record 1
        ("partitions", f"P={_num(cfg['partitions'])}" if cfg.get("partitions") and time_limit else ""),
        ("workers", f"W={_num(cfg['workers'])}" if cfg.get("workers") is not None else ""),
        ("straggler", stext),
        ("slow", f"slow {slow_text}" if slow_text else ""),
        ("optimizer", str(cfg.get("optimizer") or "")),
        ("learning_rate", f"lr={_num(cfg['learning_rate'])}" if cfg.get("learning_rate") is not None else ""),
        ("seed", f"seed {cfg['seed']}" if cfg.get("seed") is not None else ""),
    ]


PRIMARY = ("method", "variant", "batch", "time_limit", "partitions", "workers", "straggler", "slow")
STATUS_SUFFIX = {"running": " (running)", "interrupted": " (interrupted)", "failed": " (failed)"}


def status_suffix(status: str) -> str:
    """" (failed)" and the like; a dead run recorded as running (rundir.run_liveness) reads " (dead: ...)"."""
    if status.startswith("running (") and status.endswith(")"):
        return f" ({status.removeprefix('running (')}"
    return STATUS_SUFFIX.get(status, "")


def assign_labels(runs: Sequence[Run], overrides: Sequence[str] = ()) -> None:
    """Labels from metadata, keeping only the fields that differ between the runs shown.

    One run gets its full primary description. `overrides` replace labels in order (fewer is fine).
    A run not completed says so, e.g. "(running)".
    """
    fields = [label_fields(r) for r in runs]
    if len(runs) == 1:
        keep = [name for name, text in fields[0] if name in PRIMARY and text]
    else:
        names = [name for name, _ in fields[0]]
        keep = [n for i, n in enumerate(names) if len({f[i][1] for f in fields}) > 1]
    labels = []
    for run, f in zip(runs, fields, strict=True):
        parts = [text for name, text in f if name in keep and text]
        labels.append(" ".join(parts) if parts else run.name)
    # still ambiguous (e.g. repeats of one configuration): say which run
    full = [lab + status_suffix(r.status) for lab, r in zip(labels, runs, strict=True)]
    repeated = {lab for lab in full if full.count(lab) > 1}
    for i, run in enumerate(runs):
        if full[i] in repeated and labels[i] != run.name:
            labels[i] = f"{labels[i]} [{run.name}]"
        run.label = (overrides[i] if i < len(overrides) else labels[i]) + status_suffix(run.status)


def smooth(values: pd.Series, span: float) -> pd.Series:
    """Exponentially weighted moving average with the given span (the original's --filter_sigma); 0 = off."""
    if not span or span <= 1:
        return values
    return values.ewm(span=span, adjust=True).mean()


TIME_UNITS = (("ms", 1e-3), ("s", 1.0), ("min", 60.0), ("h", 3600.0))


def time_unit(max_seconds: float, allow_ms: bool = False) -> tuple[str, float]:
    """A readable unit for a time axis whose largest value is `max_seconds`: (name, seconds per unit)."""
    m = float(max_seconds) if max_seconds is not None and np.isfinite(max_seconds) else 0.0
    if allow_ms and 0 < m < 1.0:
        return "ms", 1e-3
    if m < 180:
        return "s", 1.0
    if m < 3 * 3600:
        return "min", 60.0
    return "h", 3600.0


def format_duration(seconds: float) -> str:
    """A duration as a short readable string: 850 ms, 42.1 s, 3.5 min, 2.1 h."""
    if seconds is None or not np.isfinite(seconds):
        return "—"
    unit, scale = time_unit(seconds, allow_ms=True)
    value = seconds / scale
    return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"


def slug(text: str, limit: int = 60) -> str:
    out = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-")
    return out[:limit].rstrip("-") or "run"


def file_stem(kind: str, runs: Sequence[Run]) -> str:
    """`<figure type>__<run names>`: the run names joined when short, else the first plus a count and a hash."""
    names = [slug(r.name, 80) for r in runs]
    joined = "__".join(names)
    if len(joined) <= 120:
        return f"{kind}__{joined}"
    digest = hashlib.sha1("\n".join(str(r.path.resolve()) for r in runs).encode()).hexdigest()[:8]
    return f"{kind}__{names[0][:60]}+{len(runs) - 1}more-{digest}"
