"""The figure registry: every figure type `plot --type` knows, and how one is drawn and saved.

Two kinds of entry:
- an *axis* (`@axis("loss_vs_step", ...)`): draws one matplotlib Axes from the runs. Every axis is also a figure
  type of its own, can be named in `--subset`, and is what `--separate` saves one by one.
- a *figure* (`@figure("worker_timeline", ...)` or `panel(...)`): builds a whole matplotlib Figure, e.g. a grid of
  axes or a Gantt chart per run.

A new figure type is one module `plots/fig_<name>.py` that registers itself with these decorators; `load_all`
imports every such module, so nothing else needs editing.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from anytimectl.runtime.errors import UsageError

from . import style
from .rundir import MissingTable, Run


@dataclass
class Options:
    """What the user asked for, passed to every drawing function."""

    smooth: float = 0.0
    xlog: bool = False
    ylog: bool = False
    steps: tuple[int, int] | None = None
    target_accuracy: float | None = None
    target_loss: float | None = None
    baseline: str | None = None


@dataclass
class Context:
    runs: list[Run]
    opts: Options = field(default_factory=Options)
    show: bool = False
    notes: list[str] = field(default_factory=list)
    _missing: list[str] = field(default_factory=list)

    def new_figure(self, width: float, height: float):
        """A figure with constrained layout; through pyplot only when it is to be shown in a window."""
        if self.show:
            import matplotlib.pyplot as plt

            return plt.figure(figsize=(width, height), layout="constrained")
        from matplotlib.figure import Figure

        return Figure(figsize=(width, height), layout="constrained")

    def data(self, run: Run, table: str):
        """The run's table, or None when the run has no such file (noted, so the axis can say so)."""
        try:
            return run.table(table)
        except MissingTable as exc:
            self._missing.append(str(exc))
            return None

    def note(self, line: str) -> None:
        """A line for stdout as well as the figure (e.g. speedups)."""
        self.notes.append(line)


DrawAxis = Callable[["object", Context], bool | None]


@dataclass(frozen=True)
class AxisSpec:
    name: str
    draw: DrawAxis  # returns False when it drew nothing at all (no run had the data)
    description: str
    in_panel_all: bool = True


@dataclass(frozen=True)
class FigureSpec:
    name: str
    make: Callable[[Context], object]
    description: str
    axes: tuple[str, ...] = ()  # the axes it is made of, for --separate


AXES: dict[str, AxisSpec] = {}
FIGURES: dict[str, FigureSpec] = {}


def axis(name: str, description: str, in_panel_all: bool = True):
    """Register `draw(ax, ctx)` as an axis and as a single-axis figure type."""

    def register(draw: DrawAxis) -> DrawAxis:
        AXES[name] = AxisSpec(name, draw, description, in_panel_all)
        FIGURES[name] = FigureSpec(name, lambda ctx: draw_panel(ctx, [name]), description, (name,))
        return draw

    return register


def figure(name: str, description: str, axes: Sequence[str] = ()):
    """Register `make(ctx) -> Figure` as a figure type."""

    def register(make: Callable[[Context], object]):
        FIGURES[name] = FigureSpec(name, make, description, tuple(axes))
        return make

    return register


def panel(name: str, description: str, names: Sequence[str] | Callable[[], Sequence[str]], ncols: int = 3):
    """Register a grid of axes; `names` may be a callable, resolved when drawn (e.g. 'every axis')."""

    def make(ctx: Context):
        return draw_panel(ctx, list(names() if callable(names) else names), ncols=ncols)

    axes = tuple(names) if not callable(names) else ()
    FIGURES[name] = FigureSpec(name, make, description, axes)
    if callable(names):
        _LAZY_AXES[name] = names


_LAZY_AXES: dict[str, Callable[[], Sequence[str]]] = {}
_loaded = False


def load_all() -> None:
    """Import every `fig_*` module of this package, which registers its figure types."""
    global _loaded
    if _loaded:
        return
    package = importlib.import_module(__package__)
    for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
        if module.startswith("fig_"):
            importlib.import_module(f"{__package__}.{module}")
    _loaded = True


def axes_of(kind: str) -> list[str]:
    if kind in _LAZY_AXES:
        return list(_LAZY_AXES[kind]())
    return list(FIGURES[kind].axes)


def check_figure_type(kind: str) -> None:
    load_all()
    if kind not in FIGURES:
        raise UsageError(f"unknown figure type {kind!r}; valid types: {', '.join(sorted(FIGURES))}")


def check_axes(names: Sequence[str]) -> None:
    load_all()
    bad = [n for n in names if n not in AXES]
    if bad:
        raise UsageError(f"unknown axis {bad[0]!r} in --subset; valid axes: {', '.join(AXES)}")


def draw_axis(ctx: Context, ax, name: str, standalone: bool) -> None:
    """Draw one registered axis; when no run has the data it needs, say so (or fail, if it is all we draw)."""
    spec = AXES[name]
    ctx._missing.clear()
    drew = spec.draw(ax, ctx)
    if drew is False:
        reason = ctx._missing[0] if ctx._missing else f"no run has data for {name}"
        if standalone:
            raise UsageError(f"cannot draw {name}: {reason}")
        ax.text(0.5, 0.5, reason, ha="center", va="center", wrap=True, transform=ax.transAxes, color="0.4")
        ax.set_title(name.replace("_", " "))


def run_legend_handles(runs: Sequence[Run]):
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=r.color, linestyle=r.linestyle, linewidth=2, label=r.label) for r in runs]


def legend_columns(runs: Sequence[Run], width: float) -> int:
    """As many legend entries side by side as fit the figure's width (about 13 characters an inch)."""
    entry = (max(len(r.label) for r in runs) + 6) / 13.0
    return max(1, min(len(runs), int(width // entry)))


def draw_panel(ctx: Context, names: Sequence[str], ncols: int = 3):
    """A grid of registered axes with one legend of the runs above it (or on the axis, when there is one)."""
    n = len(names)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    width = style.AX_SIZE[0] * ncols
    legend_cols = legend_columns(ctx.runs, width)
    legend_rows = 0 if n == 1 else math.ceil(len(ctx.runs) / legend_cols)
    height = style.AX_SIZE[1] * nrows + 0.25 * legend_rows
    fig = ctx.new_figure(width, height)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        draw_axis(ctx, ax, name, standalone=(n == 1))
    for ax in axes[n:]:
        ax.remove()
    if n == 1:
        ax = axes[0]
        handles, labels = ax.get_legend_handles_labels()
        if handles and ax.get_legend() is None:
            ax.legend(loc="best")
    else:
        fig.legend(
            handles=run_legend_handles(ctx.runs),
            loc="outside upper center",
            ncols=legend_cols,
            frameon=False,
        )
    return fig
