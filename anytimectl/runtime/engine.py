"""The contract every backend's engine meets (TensorFlow, torch, the simulated one): a model as flat float32
buffers and the arithmetic on it. The protocols program against it, never against a framework, which is what
lets one protocol run on every backend; `backends/` implements it, one engine per package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


class Engine(Protocol):
    """What a backend provides: a model as flat float32 buffers, and the arithmetic on it."""

    #: Length of the parameter buffer (trainable then non-trainable values).
    param_count: int

    def get_params(self) -> np.ndarray: ...

    def set_params(self, flat: np.ndarray) -> None: ...

    def compute(self, x: np.ndarray, y: np.ndarray, micro_batches: int, deadline: float,
                between: Callable[[], None] | None = None) -> tuple[np.ndarray, int, int]:
        """Gradients of the summed loss over micro-batches of (x, y).

        A micro-batch starts only when it is expected to end before `deadline` (time.time() seconds); at least
        one always runs. Returns the contribution buffer of length param_count + 2 =
        [Σ grads, n x non-trainable values, n, Σ loss], the examples used, and the micro-batches run.
        `between`, where given, is called before each micro-batch but the first and may call set_params: the
        asynchronous protocol hands over a newer model there."""
        ...

    def apply(self, reduced: np.ndarray, learning_rate: float) -> float:
        """Apply the summed contributions as one update; return the mean training loss they carry. `reduced` is
        read, never written: it may be a view of memory other ranks read too."""
        ...

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(mean loss, accuracy) on a held-out set, without changing the model."""
        ...

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly (model, optimizer, generators), as numpy arrays and
        JSON-able values: anytimectl.runtime.checkpoints writes it without pickle."""
        ...

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from `state()` of an engine built with the same options; a checkpoint of another model is
        refused with a ValueError that names the difference, before anything is changed."""
        ...
