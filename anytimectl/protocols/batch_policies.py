"""Batch-size policies of `train dynamic`: pure objects that turn what every rank measured in a period (an epoch,
or for DBS a window of steps) into the per-worker batches of the next one.

A policy never talks to MPI or a framework. The protocol (`anytimectl.protocols.dynamic`) gathers each rank's
figures of the period with one small all-gather, so that every rank hands its policy the identical
`PeriodStats`, and every rank's policy then makes the identical decision: no rank has to broadcast it.

The rules, exactly (b is the per-worker batch, B the global batch = the sum over workers):
- static: b never changes.
- increasing / decreasing: every `every` epochs b doubles / halves, within [min_batch, max_batch].
- loss: the original's score rule, score = loss_weight * mean epoch loss + time_weight * mean epoch time;
  halve if score > previous + tolerance, double if score < previous - tolerance, within the bounds. Fixed against
  the original: the previous score is updated every epoch (it stayed at its initial 1000, so the batch doubled
  every epoch), the first epoch only sets it (the original's 1000 was a stand-in for "no previous score"), the
  world size is what it is (not 4), and the loss and the rank are not swapped.
- progress: Prechelt's training progress over the last k epochs' mean losses E,
  P_k = 1000 * (sum(E) / (k * min(E)) - 1) (the original lost the 1/k, so P_k >= 1000 and it always halved);
  fewer than k epochs so far use those there are. Double if P_k < threshold (training has stalled) or the mean
  epoch time exceeds target_epoch_time (the time cap); else halve. b stays an integer (the original's `/= 2`
  made a float that the DataLoader rejected).
- probe: the notebooks' schedule: b, 2b, 4b, ... (`sizes` sizes within the bounds), each for `every` epochs,
  recording the mean epoch time of each; then the size with the shortest epoch, kept for the rest of the run.
- dbs: DBS (Ye et al., arXiv 2007.11831): after each period every worker's batch is set proportional to its
  throughput in that period (examples per second of compute, the induced delays included), keeping B fixed and
  each worker at least min_batch; rounding by largest remainder, ties to the lower worker number.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, ClassVar, Literal, get_args

import typer

from anytimectl.cli.options import option
from anytimectl.runtime.errors import UsageError

POLICIES = ("static", "increasing", "decreasing", "loss", "progress", "probe", "dbs")


@dataclass(frozen=True)
class PeriodStats:
    """One period (epoch or window) as every rank sees it after the all-gather, worker order."""

    index: int  # periods completed so far (1 after the first epoch)
    loss: float  # mean training loss per example over the period, all workers together
    times: tuple[float, ...]  # each worker's wall time of the period, seconds
    examples: tuple[float, ...]  # each worker's examples in the period
    compute: tuple[float, ...]  # each worker's compute seconds in the period (induced sleep included)

    @property
    def time(self) -> float:
        """Mean over workers of the period's wall time (the original all-gathered and averaged it)."""
        return sum(self.times) / len(self.times)

    @property
    def throughputs(self) -> tuple[float, ...]:
        """Examples per second of compute, per worker (0 where a worker computed nothing)."""
        return tuple(n / t if t > 0 else 0.0 for n, t in zip(self.examples, self.compute, strict=True))


@dataclass(frozen=True)
class Decision:
    batches: tuple[int, ...]
    reason: str


class BatchPolicy:
    """Base: holds the per-worker batches; `decide` returns the next period's (maybe unchanged)."""

    name: ClassVar[str] = ""
    #: None: decide at every epoch end; N: every N steps (DBS with --window)
    window: int | None = None

    def __init__(self, workers: int, batch: int):
        if workers < 1 or batch < 1:
            raise ValueError(f"workers {workers} and batch {batch} must be >= 1")
        self.workers = workers
        self.batches: tuple[int, ...] = (batch,) * workers

    @property
    def global_batch(self) -> int:
        return sum(self.batches)

    def decide(self, stats: PeriodStats) -> Decision:
        raise NotImplementedError

    def _uniform(self, batch: int, reason: str) -> Decision:
        self.batches = (batch,) * self.workers
        return Decision(self.batches, reason)


class _Bounded(BatchPolicy):
    def __init__(self, workers: int, batch: int, min_batch: int, max_batch: int):
        check_bounds(batch, min_batch, max_batch)
        super().__init__(workers, batch)
        self.min_batch, self.max_batch = min_batch, max_batch

    @property
    def batch(self) -> int:
        return self.batches[0]

    def doubled(self) -> int:
        return min(self.max_batch, self.batch * 2)

    def halved(self) -> int:
        return max(self.min_batch, self.batch // 2)


def check_bounds(batch: int, min_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= max_batch:
        raise UsageError(f"--min-batch {min_batch} and --max-batch {max_batch}: need 1 <= min <= max")
    if not min_batch <= batch <= max_batch:
        raise UsageError(f"--batch-size {batch} is outside --min-batch {min_batch} .. --max-batch {max_batch}")


class Static(BatchPolicy):
    name = "static"

    def decide(self, stats: PeriodStats) -> Decision:
        return Decision(self.batches, "static")


class Increasing(_Bounded):
    name = "increasing"

    def __init__(self, workers: int, batch: int, min_batch: int, max_batch: int, every: int = 1):
        super().__init__(workers, batch, min_batch, max_batch)
        if every < 1:
            raise UsageError(f"--every {every}: must be at least 1 epoch")
        self.every = every

    def decide(self, stats: PeriodStats) -> Decision:
        if stats.index % self.every:
            return Decision(self.batches, f"epoch {stats.index}: not a multiple of --every {self.every}")
        return self._uniform(self._next(), f"epoch {stats.index}: every {self.every} epoch(s)")

    def _next(self) -> int:
        return self.doubled()


class Decreasing(Increasing):
    name = "decreasing"

    def _next(self) -> int:
        return self.halved()


class LossScore(_Bounded):
    name = "loss"

    def __init__(self, workers: int, batch: int, min_batch: int, max_batch: int, loss_weight: float = 0.8,
                 time_weight: float = 0.2, tolerance: float = 0.05):
        super().__init__(workers, batch, min_batch, max_batch)
        if tolerance < 0:
            raise UsageError(f"--tolerance {tolerance}: must be 0 or more")
        self.loss_weight, self.time_weight, self.tolerance = loss_weight, time_weight, tolerance
        self.previous: float | None = None

    def score(self, stats: PeriodStats) -> float:
        return self.loss_weight * stats.loss + self.time_weight * stats.time

    def decide(self, stats: PeriodStats) -> Decision:
        score, previous = self.score(stats), self.previous
        self.previous = score  # the original never updated it
        if previous is None:
            return Decision(self.batches, f"score {score:.4g}: the first, kept as the reference")
        words = f"score {score:.4g} against previous {previous:.4g} +- {self.tolerance:g}"
        if score > previous + self.tolerance:
            return self._uniform(self.halved(), f"{words}: worse, halve")
        if score < previous - self.tolerance:
            return self._uniform(self.doubled(), f"{words}: better, double")
        return Decision(self.batches, f"{words}: within tolerance")


def training_progress(losses: Sequence[float]) -> float:
    """Prechelt's P_k over a strip of k epoch losses: 1000 * (mean / min - 1), in per mille."""
    k = len(losses)
    smallest = min(losses)
    if smallest <= 0:
        return 0.0 if max(losses) <= 0 else math.inf
    return 1000.0 * (sum(losses) / (k * smallest) - 1.0)


class Progress(_Bounded):
    name = "progress"

    def __init__(self, workers: int, batch: int, min_batch: int, max_batch: int, k: int = 5,
                 threshold: float = 10.0, target_epoch_time: float = 60.0):
        super().__init__(workers, batch, min_batch, max_batch)
        if k < 1:
            raise UsageError(f"--progress-k {k}: must be at least 1")
        if target_epoch_time <= 0:
            raise UsageError(f"--target-epoch-time {target_epoch_time}: must be positive")
        self.k, self.threshold, self.target_epoch_time = k, threshold, target_epoch_time
        self.losses: deque[float] = deque(maxlen=k)

    def decide(self, stats: PeriodStats) -> Decision:
        self.losses.append(stats.loss)
        progress = training_progress(list(self.losses))
        words = f"P_{len(self.losses)} = {progress:.4g} (threshold {self.threshold:g}), epoch time {stats.time:.3g} s"
        if progress < self.threshold:
            return self._uniform(self.doubled(), f"{words}: progress stalled, double")
        if stats.time > self.target_epoch_time:
            return self._uniform(self.doubled(), f"{words}: over the {self.target_epoch_time:g} s cap, double")
        return self._uniform(self.halved(), f"{words}: progressing, halve")


class Probe(_Bounded):
    name = "probe"

    def __init__(self, workers: int, batch: int, min_batch: int, max_batch: int, sizes: int = 4, every: int = 1):
        super().__init__(workers, batch, min_batch, max_batch)
        if sizes < 1 or every < 1:
            raise UsageError(f"--probe-sizes {sizes} and --every {every}: must be at least 1")
        candidates = []
        for i in range(sizes):
            size = min(max_batch, batch * 2**i)
            if size not in candidates:
                candidates.append(size)
        self.candidates = tuple(candidates)
        self.every = every
        self.times: dict[int, list[float]] = {}
        self.chosen: int | None = None

    def decide(self, stats: PeriodStats) -> Decision:
        if self.chosen is not None:
            return Decision(self.batches, f"keeping the fastest probed size {self.chosen}")
        self.times.setdefault(self.batch, []).append(stats.time)
        if len(self.times[self.batch]) < self.every:
            return Decision(self.batches, f"probing {self.batch}")
        position = self.candidates.index(self.batch)
        if position + 1 < len(self.candidates):
            return self._uniform(self.candidates[position + 1],
                                 f"probed {self.batch}: {self._mean(self.batch):.3g} s per epoch; next size")
        self.chosen = min(self.candidates, key=lambda size: (self._mean(size), size))
        summary = ", ".join(f"{size}: {self._mean(size):.3g} s" for size in self.candidates)
        return self._uniform(self.chosen, f"epoch times {summary}; keep the fastest")

    def _mean(self, size: int) -> float:
        values = self.times[size]
        return sum(values) / len(values)


def proportional(total: int, weights: Sequence[float], floor: int = 1) -> tuple[int, ...]:
    """Integers summing to `total`, proportional to `weights`, each at least `floor` (lowered to total // n if
    the floors alone would exceed the total). Largest remainder; ties go to the lower index. Deterministic, so
    every rank computes the same split from the same weights."""
    n = len(weights)
    if n == 0:
        return ()
    floor = max(0, min(floor, total // n))
    if not all(math.isfinite(w) and w > 0 for w in weights):
        weights = [1.0] * n  # nothing measured for some rank: split evenly
    fixed: dict[int, int] = {}
    while True:
        free = [i for i in range(n) if i not in fixed]
        rest = total - sum(fixed.values())
        weight = sum(weights[i] for i in free)
        ideal = {i: rest * weights[i] / weight for i in free}
        low = [i for i in free if ideal[i] < floor]
        if not low:
            break
        for i in low:
            fixed[i] = floor
    out = [0] * n
    for i, value in fixed.items():
        out[i] = value
    for i, value in ideal.items():
        out[i] = int(math.floor(value))
    leftover = total - sum(out)
    order = sorted(ideal, key=lambda i: (-(ideal[i] - math.floor(ideal[i])), i))
    for i in order[:leftover]:
        out[i] += 1
    return tuple(out)


class DynamicBatchSizing(BatchPolicy):
    name = "dbs"

    def __init__(self, workers: int, batch: int, min_batch: int = 1, window: int | None = None):
        super().__init__(workers, batch)
        if min_batch < 1 or min_batch > batch:
            raise UsageError(f"--min-batch {min_batch}: dbs needs 1 <= --min-batch <= --batch-size {batch}")
        if window is not None and window < 1:
            raise UsageError(f"--window {window}: must be at least 1 step")
        self.min_batch = min_batch
        self.window = window
        self.total = batch * workers

    def decide(self, stats: PeriodStats) -> Decision:
        throughputs = stats.throughputs
        batches = proportional(self.total, throughputs, self.min_batch)
        words = ", ".join(f"{t:.4g}" for t in throughputs)
        self.batches = batches
        return Decision(batches, f"throughputs {words} examples/s; global batch {self.total}")


PANEL_POLICY = "Batch policy"
Policy = Literal["static", "increasing", "decreasing", "loss", "progress", "probe", "dbs"]
assert get_args(Policy) == POLICIES


_knob = partial(option, metavar="N", panel=PANEL_POLICY)


@dataclass(frozen=True)
class PolicyOptions:
    """The policy and every knob of every policy, declared once: the option group of `train dynamic`
    (`anytimectl.cli.options.with_option_groups`), stored whole in the run's config; each policy reads its knobs."""

    policy: Annotated[Policy, typer.Option(
        rich_help_panel=PANEL_POLICY,
        help="How the batches change: static, increasing, decreasing, loss, progress, probe or dbs "
             "(the rules are above).")] = "dbs"
    min_batch: Annotated[int, _knob("Smallest per-worker batch a policy may choose.", min=1)] = 4
    max_batch: Annotated[int, _knob("Largest per-worker batch (not for dbs, whose global batch is fixed).",
                                    min=1)] = 128
    every: Annotated[int, _knob("increasing, decreasing: epochs between changes; probe: epochs per size.", metavar="E",
                                min=1)] = 1
    loss_weight: Annotated[float, _knob("loss: weight of the mean epoch loss in the score.", metavar="W")] = 0.8
    time_weight: Annotated[float, _knob("loss: weight of the mean epoch time (s) in the score.", metavar="W")] = 0.2
    tolerance: Annotated[float, _knob("loss: score change that counts (the original's 10 was for summed losses "
                                      "and 500 s epochs).", metavar="T", min=0)] = 0.05
    progress_k: Annotated[int, _knob("progress: epochs in Prechelt's strip.", metavar="K", min=1)] = 5
    progress_threshold: Annotated[float, _knob("progress: double when P_k (per mille) is below this.", metavar="P",
                                               min=0)] = 10.0
    target_epoch_time: Annotated[float, _knob("progress: double when an epoch takes longer (s).", metavar="S",
                                              above=0)] = 60.0
    probe_sizes: Annotated[int, _knob("probe: sizes to try (b, 2b, 4b, ...).", min=1)] = 4
    window: Annotated[int | None, _knob("dbs: re-balance every N steps (default: every epoch).", min=1,
                                        show_default=False)] = None

    def make(self, workers: int, batch: int) -> BatchPolicy:
        """This policy for `workers` workers starting at per-worker batch `batch` (refuses a bad combination)."""
        return make_policy(self.policy, workers, batch, self)


#: policy name -> how to build it from (workers, starting per-worker batch, options)
REGISTRY = {
    "static": lambda w, b, o: Static(w, b),
    "increasing": lambda w, b, o: Increasing(w, b, o.min_batch, o.max_batch, o.every),
    "decreasing": lambda w, b, o: Decreasing(w, b, o.min_batch, o.max_batch, o.every),
    "loss": lambda w, b, o: LossScore(w, b, o.min_batch, o.max_batch, o.loss_weight, o.time_weight, o.tolerance),
    "progress": lambda w, b, o: Progress(w, b, o.min_batch, o.max_batch, o.progress_k, o.progress_threshold,
                                         o.target_epoch_time),
    "probe": lambda w, b, o: Probe(w, b, o.min_batch, o.max_batch, o.probe_sizes, o.every),
    "dbs": lambda w, b, o: DynamicBatchSizing(w, b, min(o.min_batch, b), o.window),
}
assert tuple(REGISTRY) == POLICIES


def make_policy(name: str, workers: int, batch: int, options: PolicyOptions | None = None) -> BatchPolicy:
    """The policy `name` for `workers` workers starting at per-worker batch `batch`."""
    if name not in REGISTRY:
        raise UsageError(f"--policy {name!r} is not one of {', '.join(POLICIES)}")
    return REGISTRY[name](workers, batch, options or PolicyOptions())
