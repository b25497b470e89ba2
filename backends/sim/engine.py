"""The simulated engine: the flat-buffer Engine contract with sleeps for compute and a synthetic loss curve.

Parameters: a float32 buffer of `params` values. The last two hold the model's progress, the examples it has
been trained on (`e`, split into a high and a low part, each an integer below 2^24 so float32 keeps it exactly);
the others are weights that take a real optimizer step every update, so that their bytes move and change like a
model's. A contribution is [sum of gradients (weights: n x (w - 0), progress: 0), n, sum of losses], additive
over micro-batches like every engine's.

compute(x, y, P, deadline) splits the batch into P micro-batches as the TensorFlow engine does and "computes"
each by sleeping `example_time` per example until an absolute time (so sleep overshoot does not pile up). A
micro-batch starts only if, at the round's pace so far, it ends before the deadline; at least one always runs.
The loss of each micro-batch follows `Curve` at the model's progress, with noise drawn from a generator seeded by
(seed, progress, the batch's first example number), so a run is reproducible.

apply() takes a plain SGD step with weight decay, whatever `--optimizer` names: the weights only stand for a
model's bytes (the curve does not read them), and the cheapest arithmetic keeps hundreds of simulated ranks on a
laptop's cores. Per step a sim rank spends well under a millisecond of CPU outside the run shell.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from anytimectl import __version__
from anytimectl.backends.sim import Curve
from anytimectl.runtime.errors import UsageError

#: progress is kept as hi * 2^24 + lo, both exact in float32
_SPLIT = float(1 << 24)
#: fewest floats: the two progress slots and one weight
MIN_PARAMS = 3
_STATE = {"seed": 0}


def configure(threads: int, seed: int) -> None:
    """No framework to configure: remember the seed for the noise generator."""
    del threads
    _STATE["seed"] = int(seed)


class SimEngine:
    """See the module notes. `example_time`: seconds per example; `params`: buffer length."""

    def __init__(self, params: int, example_time: float, learning_rate: float, weight_decay: float,
                 curve: Curve | None = None, seed: int = 0):
        if params < MIN_PARAMS:
            raise UsageError(f"--sim-params {params}: needs at least {MIN_PARAMS} floats")
        if not (example_time >= 0 and math.isfinite(example_time)):
            raise UsageError(f"--sim-example-time {example_time}: must be a number of seconds >= 0")
        self.param_count = params
        self.trainable_count = params  # the master averages nothing but gradients: no non-trainable values
        self.weights = params - 2
        self.example_time = example_time
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.curve = curve or Curve()
        self.seed = seed
        self._params = np.zeros(params, dtype=np.float32)
        init = np.random.default_rng([seed, 0x5111]).standard_normal(self.weights).astype(np.float32)
        self._params[: self.weights] = init * 0.05
        self._version = 0  # counts set_params calls
        self._segment_weights = self._params[: self.weights]

    # --- progress ----------------------------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """Examples this model has been trained on."""
        return float(self._params[-2]) * _SPLIT + float(self._params[-1])

    def _set_progress(self, examples: float) -> None:
        hi, lo = divmod(float(round(examples)), _SPLIT)
        self._params[-2] = hi
        self._params[-1] = lo

    # --- the Engine interface -------------------------------------------------------------------------------
    def get_params(self) -> np.ndarray:
        return self._params.copy()

    def set_params(self, flat: np.ndarray) -> None:
        np.copyto(self._params, flat[: self.param_count])
        self._version += 1

    def compute(self, x: np.ndarray, y: np.ndarray, micro_batches: int, deadline: float,
                between: Callable[[], None] | None = None) -> tuple[np.ndarray, int, int]:
        total = len(x)
        micro_batches = max(1, min(micro_batches, total)) if total else 1
        start = time.time()
        done = examples = segment = 0
        loss_sum = 0.0
        first = int(x[0, 0]) if total and x.ndim == 2 and x.shape[1] else 0
        key = _mix(_mix(_mix(self.seed) ^ int(self.progress)) ^ first)
        out = np.empty(self.param_count + 2, dtype=np.float32)
        out[:] = 0.0
        while done < micro_batches:
            begin = (done * total) // micro_batches
            end = ((done + 1) * total) // micro_batches
            if done > 0:
                now = time.time()
                pace = (now - start) / done
                if now + pace > deadline:
                    break
                if between is not None:
                    before = self._version
                    between()
                    if self._version != before:  # a new model: what was computed so far used the old one
                        out[: self.weights] += self._segment_weights * np.float32(segment)
                        segment = 0
            if segment == 0:
                self._segment_weights = self._params[: self.weights].copy() if between is not None \
                    else self._params[: self.weights]
            self._sleep_until(start + (examples + end - begin) * self.example_time)
            loss_sum += self._batch_loss(self.progress, end - begin, _normal(key, done))
            examples += end - begin
            segment += end - begin
            done += 1
        out[: self.weights] += self._segment_weights * np.float32(segment)
        out[-2] = examples
        out[-1] = loss_sum
        return out, examples, done

    def apply(self, reduced: np.ndarray, learning_rate: float) -> float:
        n = float(reduced[-2])
        if n <= 0:
            return math.nan
        weights = self._params[: self.weights]
        if self.weight_decay:  # w <- w - lr (g / n + wd w), in place
            weights *= np.float32(1.0 - learning_rate * self.weight_decay)
        weights -= reduced[: self.weights] * np.float32(learning_rate / n)
        self._set_progress(self.progress + n)
        return float(reduced[-1]) / n

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        n = max(1, len(x))
        e = self.progress
        rng = np.random.default_rng([self.seed, int(e), 0xE7A1])
        loss = self.curve.loss(e) * (1.0 + self.curve.noise * rng.standard_normal() / math.sqrt(n))
        accuracy = min(1.0, max(0.0, rng.binomial(n, self.curve.accuracy(e)) / n))
        return max(0.0, float(loss)), float(accuracy)

    def trace(self) -> None:
        """Nothing to compile."""

    # --- checkpoints ------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly: the buffer (weights and progress). The noise is
        drawn from (seed, progress, first example), so no generator state exists beyond it."""
        return {"params": self._params.copy()}

    def load_state(self, state: dict[str, Any]) -> None:
        params = np.asarray(state["params"])
        if params.shape != self._params.shape or params.dtype != self._params.dtype:
            raise ValueError(f"the checkpoint holds {params.size} simulated parameters ({params.dtype}); this run "
                             f"has {self.param_count} (float32): --sim-params differs")
        np.copyto(self._params, params)
        self._version += 1

    # --- helpers ----------------------------------------------------------------------------------------------
    def _batch_loss(self, progress: float, k: int, z: float) -> float:
        if k == 0:
            return 0.0
        mean = self.curve.loss(progress) * (1.0 + self.curve.noise * z / math.sqrt(k))
        return max(0.0, float(mean)) * k

    @staticmethod
    def _sleep_until(moment: float) -> None:
        remaining = moment - time.time()
        while remaining > 0:
            time.sleep(remaining)
            remaining = moment - time.time()


_MASK = (1 << 64) - 1


def _mix(value: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread hash of a 64-bit integer (NumPy's seeded generators cost
    about 0.1 ms to build, too much per micro-batch for hundreds of ranks on two cores)."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def _normal(key: int, index: int) -> float:
    """The index-th standard normal draw of stream `key` (Box-Muller on two hashed uniforms)."""
    a = _mix(key ^ (2 * index + 1))
    b = _mix(a ^ (2 * index + 2))
    u1 = ((a >> 11) + 1) / float(1 << 53)  # in (0, 1]
    u2 = (b >> 11) / float(1 << 53)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def create_engine(spec) -> SimEngine:
    """The registry's constructor (anytimectl.backends.create_engine); the sim's own options come in
    `spec.options`: params, example_time, half_examples."""
    options = dict(getattr(spec, "options", None) or {})
    curve = Curve(half=float(options.get("half_examples", Curve.half)))
    return SimEngine(int(options.get("params", 1 << 16)), float(options.get("example_time", 1e-3)),
                     spec.learning_rate, spec.weight_decay, curve, _STATE["seed"])


def framework_versions() -> dict[str, str]:
    return {"sim": __version__}
