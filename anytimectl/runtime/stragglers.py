"""Straggler delay models as plain data, so that every backend sleeps the same way and plots can reason about it.

A model is a mixture of folded normals, `delay = min(clip, |N(mean, std)|)` with the component picked by weight,
exactly as the original AMB code did. Delays are drawn from a generator seeded by (seed, rank, step), so a run can
be repeated delay for delay, and the analytic helpers (`mean`, `cdf`, `expected_max`) let benchmarks state what
a run *should* show without sampling.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from anytimectl.runtime.errors import UsageError

Component = tuple[float, float, float]

NAMED_MIXTURES: dict[str, tuple[Component, ...]] = {
    # The original's HEAD registry (and the hard-coded default of every older version): E ~ 1.0 s, clip 6.5 s.
    "niagara": ((0.0, 0.0, 0.4), (0.0, 0.4, 0.3), (2.0, 0.3, 0.2), (5.0, 0.3, 0.1)),
    # The original's milder cluster profile: E ~ 0.07 s, clip 0.40 s.
    "cedar": ((0.0, 0.0, 0.4), (0.05, 0.04, 0.3), (0.15, 0.03, 0.2), (0.25, 0.03, 0.1)),
}

MAX_CLIP = 1024.0
_GRID_POINTS = 100_000

_INDUCE_FORMS = (
    "use none, niagara, cedar, NAME:SCALE (e.g. niagara:0.1), mix:MEAN,STD,WEIGHT;... "
    "(e.g. mix:0,0,0.4;2,0.3,0.6) or @FILE.json"
)


@dataclass(frozen=True)
class DelayModel:
    """A scaled, normalised delay mixture; build one with `make_model` so that clip and weights stay consistent."""

    name: str
    components: tuple[Component, ...]
    clip: float
    scale: float = 1.0

    def sample(self, seed: int, rank: int, step: int) -> float:
        """Seeded by (seed, rank, step) rather than a running stream, so a delay never depends on call order."""
        rng = np.random.default_rng([seed, rank, step])
        weights = np.array([w for _, _, w in self.components])
        k = int(rng.choice(len(self.components), p=weights / weights.sum()))
        mean, std, _ = self.components[k]
        value = abs(mean) if std == 0 else abs(float(rng.normal(mean, std)))
        return min(self.clip, value)

    def cdf(self, x: np.ndarray | float) -> np.ndarray:
        """The exact distribution, so plots and bounds need not sample; std 0 components are point masses."""
        from scipy.special import ndtr  # here, not at the top: most processes that read --induce never need it

        x = np.asarray(x, dtype=float)
        total = np.zeros_like(x)
        for mean, std, weight in self.components:
            if std == 0:
                part = (x >= abs(mean)).astype(float)
            else:
                part = np.clip(ndtr((x - mean) / std) - ndtr((-x - mean) / std), 0.0, 1.0)
            total += weight * part
        total = np.where(x < 0, 0.0, total)
        return np.where(x >= self.clip, 1.0, np.minimum(total, 1.0))

    @cached_property
    def _cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell edges over [0, clip] and F at the cell midpoints, computed once per model so scans stay cheap."""
        edges = np.linspace(0.0, self.clip, _GRID_POINTS + 1)
        return edges, self.cdf(0.5 * (edges[:-1] + edges[1:]))

    def _tail_integral(self, start: float, power: int) -> float:
        """Integral of 1 - F(x)^power over [start, clip] by the midpoint rule (exact for point masses on nodes)."""
        if start >= self.clip:
            return 0.0
        edges, mid_cdf = self._cells
        k = max(0, int(np.searchsorted(edges, start, side="right")) - 1)
        survival = 1.0 - mid_cdf[k:] ** power
        widths = np.diff(edges[k:])
        widths[0] = edges[k + 1] - start
        return float(np.dot(survival, widths))

    def mean(self) -> float:
        """E[delay] including the clip, from the CDF, so it is exact up to the grid and free of sampling noise."""
        return self._tail_integral(0.0, 1)

    def expected_max(self, n: int, floor: float = 0.0) -> float:
        """E[max(floor, slowest of n workers)]: the cost a synchronous step pays for waiting on everyone."""
        if n < 1:
            raise ValueError(f"expected_max needs n >= 1, got {n}")
        floor = max(0.0, float(floor))
        return floor + self._tail_integral(floor, n)

    def to_dict(self) -> dict:
        """JSON-ready, so run metadata records the exact delays a run was asked for."""
        return {
            "name": self.name,
            "scale": self.scale,
            "components": [[m, s, w] for m, s, w in self.components],
            "clip": self.clip,
            "mean": self.mean(),
        }

    def describe(self) -> str:
        """One line for logs and the CLI, with the two numbers a user needs to size a run."""
        scale = "" if self.scale == 1.0 else f" x{self.scale:g}"
        return f"{self.name}{scale} (mean {self.mean():.3f} s, clip {self.clip:.2f} s)"


def make_model(name: str, components: Iterable[Sequence[float]], scale: float = 1.0,
               source: str | None = None) -> DelayModel:
    """The one place that scales, validates and normalises, so a DelayModel always matches the original's rules.

    `source` names where the components came from in error messages (e.g. "--induce 'mix:...'"), so a user
    knows which flag to fix; by default the model's name.
    """
    where = source or f"straggler model '{name}'"
    rows = [tuple(float(v) for v in row) for row in components]
    if not rows:
        raise UsageError(f"{where} has no components; give at least one MEAN,STD,WEIGHT row")
    if not (math.isfinite(scale) and scale > 0):
        raise UsageError(f"straggler scale {scale:g} in {where} must be a number > 0, e.g. niagara:0.1")
    for row in rows:
        if len(row) != 3:
            raise UsageError(f"straggler component {list(row)} in {where} must be [MEAN, STD, WEIGHT]")
        mean, std, weight = row
        if not all(math.isfinite(v) for v in row) or mean < 0 or std < 0 or weight <= 0:
            raise UsageError(
                f"straggler component {list(row)} in {where} is invalid; need MEAN >= 0, STD >= 0, WEIGHT > 0"
            )
    total = sum(w for _, _, w in rows)
    scaled = tuple((m * scale, s * scale, w / total) for m, s, w in rows)
    for mean, std, _ in scaled:
        if mean > MAX_CLIP or std > MAX_CLIP:
            raise UsageError(f"straggler component with mean {mean:g} s, std {std:g} s in {where} exceeds the "
                             f"{MAX_CLIP:g} s that a delay is clipped to; give delays in seconds, at most {MAX_CLIP:g}")
    clip = min(MAX_CLIP, max(m + 5 * s for m, s, _ in scaled))
    return DelayModel(name=name, components=scaled, clip=clip, scale=float(scale))


def _parse_float(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"bad {what} '{text}' in --induce '{spec}'; {_INDUCE_FORMS}") from None
    if not math.isfinite(value):
        raise UsageError(f"bad {what} '{text}' in --induce '{spec}'; it must be a finite number")
    return value


def _parse_mix(spec: str, body: str) -> list[list[float]]:
    rows = []
    for chunk in body.split(";"):
        if not chunk.strip():
            continue
        parts = chunk.split(",")
        if len(parts) != 3:
            raise UsageError(f"bad component '{chunk}' in --induce '{spec}'; write each as MEAN,STD,WEIGHT")
        rows.append([_parse_float(p.strip(), "number", spec) for p in parts])
    return rows


def _load_file(spec: str, path: Path) -> DelayModel:
    if not path.is_file():
        raise UsageError(
            f"straggler file '{path}' for --induce not found; give @FILE.json with [[MEAN,STD,WEIGHT],...]"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            f"straggler file '{path}' is not valid JSON ({msg}); expected [[MEAN,STD,WEIGHT],...]"
        ) from None
    scale: object = 1.0
    if isinstance(data, dict):
        scale = data.get("scale", 1.0)
        data = data.get("components")

    def is_number(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    ok_rows = isinstance(data, list) and all(
        isinstance(r, list) and len(r) == 3 and all(is_number(v) for v in r) for r in data
    )
    if not ok_rows or not is_number(scale):
        raise UsageError(
            f"straggler file '{path}' must hold [[MEAN,STD,WEIGHT],...] or "
            '{"components": [[MEAN,STD,WEIGHT],...], "scale": S}'
        )
    return make_model(path.name, data, float(scale), source=f"straggler file '{path}' for --induce")


def parse_induce(spec: str | None) -> DelayModel | None:
    """Turn the --induce flag into a model; every mistake names the accepted forms, as they are easy to forget."""
    if spec is None:
        return None
    text = spec.strip()
    if text.lower() in ("", "none"):
        return None
    if text.startswith("@"):
        return _load_file(spec, Path(text[1:]).expanduser())
    head, sep, tail = text.partition(":")
    head = head.strip().lower()
    if head == "mix":
        return make_model("custom", _parse_mix(spec, tail), source=f"--induce '{spec}'")
    if head in NAMED_MIXTURES:
        scale = _parse_float(tail.strip(), "scale", spec) if sep else 1.0
        if scale <= 0:
            raise UsageError(f"scale '{tail.strip()}' in --induce '{spec}' must be > 0, e.g. niagara:0.1")
        return make_model(head, NAMED_MIXTURES[head], scale, source=f"--induce '{spec}'")
    raise UsageError(f"unknown straggler model '{spec}' for --induce; {_INDUCE_FORMS}")


def parse_slow(specs: list[str] | None) -> dict[int, float]:
    """Persistent slow workers (beyond the originals' i.i.d. delays): worker number (1..N) -> compute-time
    multiplier. For master-worker methods worker k is MPI rank k; for the peer methods it is rank k - 1."""
    slow: dict[int, float] = {}
    for spec in specs or []:
        rank_text, sep, factor_text = spec.strip().partition(":")
        try:
            rank = int(rank_text)
            factor = float(factor_text)
        except ValueError:
            rank, factor = -1, float("nan")
        if not sep or rank < 1 or not math.isfinite(factor) or factor < 1:
            raise UsageError(
                f"bad --slow '{spec}'; use WORKER:FACTOR with WORKER >= 1 (workers are numbered 1..N, as in "
                "the live table) and FACTOR >= 1, e.g. 2:3"
            )
        if rank in slow:
            raise UsageError(f"--slow gives worker {rank} twice ('{spec}'); give each worker once as WORKER:FACTOR")
        slow[rank] = factor
    return slow


def amb_fmb_bound(delay: DelayModel, compute_time: float, workers: int) -> dict[str, float]:
    """What AMB can gain over FMB at best: FMB waits for the slowest worker's compute plus delay, while AMB with a
    matched time limit T = c + E[s] only overruns T when some worker's delay alone exceeds it."""
    if not (math.isfinite(compute_time) and compute_time >= 0):
        raise UsageError(f"compute time {compute_time!r} must be a number >= 0 (seconds per FMB step)")
    if workers < 1:
        raise UsageError(f"workers {workers!r} must be >= 1")
    c = float(compute_time)
    limit = c + delay.mean()
    fmb = c + delay.expected_max(workers)
    amb = delay.expected_max(workers, floor=limit)
    return {
        "compute_time": c,
        "time_limit": limit,
        "fmb_step": fmb,
        "amb_step": amb,
        "ratio": fmb / amb if amb > 0 else 1.0,
    }
