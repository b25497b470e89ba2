"""Learning-rate schedules, framework-neutral: the master asks for the rate of each step and feeds it in.

These are the original system's four schedules (utilities.learningrate), with the same knob names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("const", "linear", "exponential", "epochs")


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
        raise ValueError(f"unknown schedule {self.kind}")
