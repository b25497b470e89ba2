"""From run paths and options to matplotlib figures and saved files; the Python API behind `anytimectl plot`.

from anytimectl.plots.render import build_figures, save_figures
figures, ctx = build_figures([Path("runs")], kind="panel_main")
save_figures(figures, Path("figures"), ["png", "pdf"])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from anytimectl.runtime.errors import UsageError

from . import registry, style
from .rundir import Run, load_runs

EXTENSIONS = ("png", "pdf", "svg")
DEFAULT_TYPE = "panel_main"


@dataclass
class Rendered:
    kind: str  # figure type or axis name
    stem: str  # file name without extension
    figure: object  # matplotlib Figure


def check_extensions(exts: Sequence[str]) -> list[str]:
    out = []
    for ext in exts:
        for part in str(ext).split(","):
            e = part.strip().lower().lstrip(".")
            if not e:
                continue
            if e not in EXTENSIONS:
                raise UsageError(f"--ext {part!r}: unknown format; valid formats: {', '.join(EXTENSIONS)}")
            if e not in out:
                out.append(e)
    return out or ["png"]


def split_names(values: Sequence[str] | None) -> list[str]:
    """Repeated and comma-separated values alike: ['a,b', 'c'] -> ['a', 'b', 'c']."""
    return [p.strip() for v in (values or []) for p in str(v).split(",") if p.strip()]


def subset_kind(names: Sequence[str]) -> str:
    joined = "subset-" + "-".join(names)
    return joined if len(joined) <= 80 else "panel_subset"


def subset_columns(n: int) -> int:
    return 1 if n == 1 else 2 if n in (2, 4) else 3


def prepare(
    paths: Sequence[Path],
    labels: Sequence[str] = (),
    warn: Callable[[str], None] | None = None,
    kind: str | None = None,
) -> list[Run]:
    """Load the runs that figure type `kind` draws, then give each its colour and label."""
    runs = load_runs(list(paths), warn=warn, kind=kind)
    if len(labels) > len(runs):
        raise UsageError(f"{len(labels)} --label values for {len(runs)} run(s): {', '.join(r.name for r in runs)}")
    style.assign_colors(runs)
    style.assign_labels(runs, labels)
    return runs


def build_figures(
    paths: Sequence[Path] | None = None,
    kind: str = DEFAULT_TYPE,
    subset: Sequence[str] = (),
    separate: bool = False,
    options: registry.Options | None = None,
    labels: Sequence[str] = (),
    show: bool = False,
    runs: list[Run] | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[list[Rendered], registry.Context]:
    """Every figure asked for, drawn but not saved. Names are checked before any run is read."""
    registry.load_all()
    subset = split_names(subset)
    if subset:
        registry.check_axes(subset)
        kind = subset_kind(subset)
    else:
        registry.check_figure_type(kind)
    if runs is None:
        runs = prepare(paths or [], labels, warn, kind=kind)
    ctx = registry.Context(runs=runs, opts=options or registry.Options(), show=show)
    with _style():
        out: list[Rendered] = []
        if subset:
            fig = registry.draw_panel(ctx, subset, ncols=subset_columns(len(subset)))
            out.append(Rendered(kind, style.file_stem(kind, runs), fig))
            axes = subset
        else:
            fig = registry.FIGURES[kind].make(ctx)
            out.append(Rendered(kind, style.file_stem(kind, runs), fig))
            axes = registry.axes_of(kind)
        if separate and len(axes) > 1:
            for name in axes:
                fig = registry.draw_panel(ctx, [name])
                out.append(Rendered(name, style.file_stem(name, runs), fig))
    return out, ctx


def _style():
    import matplotlib

    return matplotlib.rc_context(style.RC)


def save_figures(figures: Sequence[Rendered], out: Path, exts: Sequence[str], dpi: int = style.DPI) -> list[Path]:
    """Write every figure in every format; returns the paths written."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {out}: cannot create it ({error.strerror}); choose a writable folder") from None
    written = []
    with _style():
        for item in figures:
            for ext in exts:
                path = out / f"{item.stem}.{ext}"
                try:
                    item.figure.savefig(path, dpi=dpi, metadata=_metadata(ext))
                except OSError as error:
                    with contextlib.suppress(OSError):  # a read-only file system refuses the unlink too
                        path.unlink(missing_ok=True)  # no half-written figure left behind
                    raise UsageError(f"--out {out}: cannot write {path.name} ({error.strerror or error}); choose a "
                                     "writable folder") from None
                written.append(path)
    return written


def _metadata(ext: str) -> dict:
    # no creation dates, so re-plotting the same runs gives byte-identical PDFs and SVGs
    if ext == "pdf":
        return {"Creator": "anytimectl plot", "CreationDate": None}
    if ext == "svg":
        return {"Creator": "anytimectl plot", "Date": None}
    return {"Software": "anytimectl plot"}
