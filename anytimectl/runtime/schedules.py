"""Learning-rate schedules, framework-neutral: the master asks for the rate of each step and feeds it in.

These are the AMB system's four schedules (utilities.learningrate), with the same knob names, the gossip
system's MultiStepLR (`milestones`: the rate times `anneal` for each milestone epoch passed), and cifar10-fast's
PiecewiseLinear (`piecewise`: the rate interpolated linearly in the epoch between `knots` (epoch, rate), constant
beyond the first and the last; the compression study's 0 -> 0.4 at epoch 5 -> 0 at epoch 24).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anytimectl.runtime.run_config import RunConfig

SCHEDULES = ("const", "linear", "exponential", "epochs", "milestones", "piecewise")


@dataclass(frozen=True)
class Schedule:
    kind: str = "const"
    base: float = 1e-3
    linear_end: float = 1e-4
    total_steps: int = 0
    decay_steps: int = 50
    decay_rate: float = 0.9
    staircase: bool = True
    epochs_every: float = 10.0
    epochs_frac: float = 0.5
    milestones: tuple[float, ...] = ()
    anneal: float = 0.1
    knots: tuple[tuple[float, float], ...] = ()

    @classmethod
    def from_config(cls, config: RunConfig, total_steps: int | None,
                    knots: Iterable[Iterable[float]] = ()) -> Schedule:
        """The schedule of a run's resolved options (the `--lr-*` names of options.OptimizerOptions); `knots`: the
        piecewise schedule's (epoch, rate) points (compress train's recipe)."""
        return cls(kind=config.lr_schedule, base=config.learning_rate, linear_end=config.lr_linear_end,
                   total_steps=total_steps or 0, decay_steps=config.lr_decay_steps,
                   decay_rate=config.lr_decay_rate, staircase=config.lr_staircase,
                   epochs_every=config.lr_epochs_every, epochs_frac=config.lr_epochs_frac,
                   milestones=tuple(sorted(config.lr_milestones or ())), anneal=config.lr_anneal,
                   knots=tuple((float(e), float(r)) for e, r in knots))

    def at(self, step: int, epoch: float) -> float:
        """The rate for update number `step` (1-based), `epoch` = examples seen / training examples."""
        if self.kind == "const":
            return self.base
        if self.kind == "linear":
            if self.total_steps <= 1:
                return self.base
            progress = min(1.0, (step - 1) / (self.total_steps - 1))
            return self.base + (self.linear_end - self.base) * progress
        if self.kind == "exponential":
            exponent = (step - 1) / self.decay_steps
            if self.staircase:
                exponent = math.floor(exponent)
            return self.base * self.decay_rate**exponent
        if self.kind == "epochs":
            return self.base * self.epochs_frac ** math.floor(epoch / self.epochs_every)
        if self.kind == "milestones":
            return self.base * self.anneal ** sum(1 for milestone in self.milestones if epoch >= milestone)
        if self.kind == "piecewise":
            return piecewise_linear(self.knots, epoch)
        raise ValueError(f"unknown schedule {self.kind}")


def piecewise_linear(knots: tuple[tuple[float, float], ...], x: float) -> float:
    """The value at `x` of the polyline through `knots` ((x, value) pairs, x non-decreasing), held constant before
    the first knot and after the last (numpy.interp's rule; a repeated x is a jump, the later value wins)."""
    if not knots:
        raise ValueError("a piecewise schedule needs at least one (epoch, rate) knot")
    if x <= knots[0][0]:
        return knots[0][1]
    for (x0, y0), (x1, y1) in zip(knots, knots[1:], strict=False):
        if x < x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return knots[-1][1]
