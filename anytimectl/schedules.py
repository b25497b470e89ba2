"""Learning-rate schedules, framework-neutral: the master asks for the rate of each step and feeds it in.

These are the AMB system's four schedules (utilities.learningrate), with the same knob names, and the gossip
system's MultiStepLR (`milestones`: the rate times `anneal` for each milestone epoch passed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("const", "linear", "exponential", "epochs", "milestones")


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

    @classmethod
    def from_config(cls, config: dict, total_steps: int | None) -> Schedule:
        """The schedule of a run's resolved options (the `--lr-*` names of options.OptimizerOptions)."""
        return cls(kind=config["lr_schedule"], base=config["learning_rate"], linear_end=config["lr_linear_end"],
                   total_steps=total_steps or 0, decay_steps=config["lr_decay_steps"],
                   decay_rate=config["lr_decay_rate"], staircase=config["lr_staircase"],
                   epochs_every=config["lr_epochs_every"], epochs_frac=config["lr_epochs_frac"],
                   milestones=tuple(sorted(config.get("lr_milestones") or ())), anneal=config.get("lr_anneal", 0.1))

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
        raise ValueError(f"unknown schedule {self.kind}")
