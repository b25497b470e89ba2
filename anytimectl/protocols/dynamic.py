"""`train dynamic`: synchronous all-reduce SGD (protocols/allreduce.py) whose per-worker batches a policy
(anytimectl/protocols/batch_policies.py) changes after every epoch, or for DBS every `--window` steps.

What an epoch is. Every rank holds the whole training set and walks one shared sequence of it: the set reshuffled
for each epoch with the run's seed, identical on every rank. A step takes the next B examples of that sequence
(B = the global batch, the sum of the per-worker batches), and worker k trains on the slice of them that starts at
the sum of the batches of workers 1..k-1 and is as long as its own batch. So each worker's data share follows its
batch at every step, every example is used exactly once per epoch, and an epoch is one pass over the whole training
set by all workers together: N / B steps for every worker, whatever the split (a step may straddle two epochs;
the epoch ends after the step that reaches it). With DBS the shares are re-split in proportion to the new batches
at each window, so fast workers take more of the data and nobody waits for a slow one.

How every rank agrees on the batches. At a period's end (epoch or window), each rank contributes five numbers (its
loss sum and example count as the all-reduce gave them, its wall time of the period, its examples and its compute
seconds) to one small all-gather; every rank then hands the identical `PeriodStats` to its own copy of the policy,
which decides identically, so no decision is broadcast. The loss comes from rank 0's contribution, so that a last-bit
difference between ranks' reductions could never split a decision.

The learning rate follows the global batch: the schedule's rate times B / B0 (`--lr-scaling linear`), sqrt(B / B0)
(`sqrt`) or 1 (`none`), B0 the starting global batch. It is the rate passed to the engine's optimizer and the one in
master_stats.csv. Every change of the batches and of the rate is an event in events.jsonl (rank 0 logs what every
rank decided alike).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from anytimectl.data import check_whole_batches
from anytimectl.data.input_transform import InputTransform, TransformedEngine
from anytimectl.protocols.allreduce import AllReduceProtocol
from anytimectl.protocols.batch_policies import BatchPolicy, PeriodStats
from anytimectl.protocols.peer import PeerStep
from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.records import Columns
from anytimectl.runtime.run_config import DynamicConfig

LR_SCALINGS = ("linear", "sqrt", "none")
#: the figures each rank contributes at a period's end
_PERIOD_FIELDS = ("loss_sum", "loss_examples", "wall_time", "examples", "compute_time")


def lr_factor(scaling: str, global_batch: int, start: int) -> float:
    """How much the schedule's rate is multiplied by at global batch `global_batch` (started at `start`)."""
    if scaling == "linear":
        return global_batch / start
    if scaling == "sqrt":
        return math.sqrt(global_batch / start)
    if scaling == "none":
        return 1.0
    raise UsageError(f"--lr-scaling {scaling!r}: choose one of {', '.join(LR_SCALINGS)}")


class SharedEpochStream:
    """The whole training set as one endless sequence, reshuffled per epoch, the same on every rank; each step
    takes the next global batch and each rank its slice of it (see the module docstring)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, seed: int):
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need as many labels as examples, and some: {len(x)} and {len(y)}")
        self._x, self._y = x, y
        self.size = len(x)
        self._seed = seed
        self.position = 0  # examples of the sequence consumed by all ranks together
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self._seed, epoch]).permutation(self.size)
        return self._orders[epoch]

    def indices(self, start: int, count: int) -> np.ndarray:
        """Training-set indices at positions start .. start + count - 1 of the sequence."""
        pieces = []
        while count > 0:
            epoch, offset = divmod(start, self.size)
            chunk = self._order(epoch)[offset:offset + count]
            pieces.append(chunk)
            start += len(chunk)
            count -= len(chunk)
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)

    def peek(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `count` examples, not consumed (the warm-up's batch)."""
        index = self.indices(self.position, count)
        return self._x[index], self._y[index]

    def take(self, batches: tuple[int, ...], rank: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's slice of the next global batch; the whole global batch is consumed."""
        index = self.indices(self.position + sum(batches[:rank]), batches[rank])
        self.position += sum(batches)
        for epoch in [e for e in self._orders if e < self.position // self.size]:
            del self._orders[epoch]
        return self._x[index], self._y[index]

    @property
    def epochs(self) -> float:
        return self.position / self.size

    # the checkpoint interface of a BatchStream (PeerProtocol.checkpoint_state): the position is the whole state
    @property
    def _consumed(self) -> int:
        return self.position

    def advance(self, count: int) -> None:
        self.position += count


class _ScaledSchedule:
    """The run's learning-rate schedule times the batch scaling: what `PeerProtocol.run` asks for each step."""

    def __init__(self, schedule: Any, protocol: DynamicProtocol):
        self.schedule = schedule
        self.protocol = protocol

    def at(self, step: int, epoch: float) -> float:
        p = self.protocol
        return self.schedule.at(step, epoch) * lr_factor(p.lr_scaling, p.policy.global_batch, p.start_global_batch)


class DynamicProtocol(AllReduceProtocol[DynamicConfig]):
    row_fields = ("batch_size",)
    columns = Columns(worker=("batch_size",), master=("global_batch",))

    # --- set-up ------------------------------------------------------------------------------------------------
    def make_engine(self) -> Any:
        from anytimectl.backends import EngineSpec, create_engine

        c, d = self.context.config, self.dataset
        self.transform = InputTransform(c.resize, c.channels, c.normalize or "none")
        self.transform.check(d.input_shape)
        engine = create_engine(self.context.request.backend, EngineSpec(
            model=c.model, input_shape=self.transform.output_shape(d.input_shape), num_classes=d.num_classes,
            optimizer=c.optimizer, learning_rate=c.learning_rate, weight_decay=c.weight_decay,
            momentum=None, nesterov=False, device=self.context.device))
        return engine if self.transform.identity else TransformedEngine(engine, self.transform)

    def transport_name(self) -> str:
        return self.context.config.transport or "mpi"

    def make_stream(self) -> SharedEpochStream:
        return SharedEpochStream(self.dataset.x_train, self.dataset.y_train, self.seed)

    def prepare(self) -> None:
        super().prepare()
        c = self.context.config
        self.policy: BatchPolicy = c.policy_options().make(self.size, int(c.batch_size))
        # under the user's mpiexec the command did not know the workers: the check `prepare` makes, made here
        check_whole_batches(int(c.batch_size), self.size, len(self.dataset.x_train), c.dataset)
        self.start_global_batch = self.policy.global_batch
        self.lr_scaling = c.lr_scaling or "linear"
        lr_factor(self.lr_scaling, 1, 1)  # checks the name
        self.schedule = _ScaledSchedule(self.schedule, self)
        self.periods = 0
        self._period_step = 0
        self._epochs_done = 0
        self._last_rate: float | None = None
        self._new_period(time.time())

    def metadata(self) -> dict[str, Any]:
        c = self.context.config
        return {**super().metadata(),
                "batch_policy": {"policy": self.policy.name, "start_batches": list(self.policy.batches),
                                 "start_global_batch": self.start_global_batch, "lr_scaling": self.lr_scaling,
                                 "window": self.policy.window, "input_transform": self.transform.describe(),
                                 "transport": c.transport or "mpi"}}

    # --- the hooks ---------------------------------------------------------------------------------------------
    def batch_for(self, step: int) -> int:
        return self.policy.batches[self.rank]

    def examples_for(self, step: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        return self.stream.take(self.policy.batches, self.rank)

    def step(self, step: int, learning_rate: float) -> PeerStep:
        if step == 1:
            self._period_start = self.clock.current.round_start
            self.context.log("batch sizes", step=1, policy=self.policy.name, batches=list(self.policy.batches),
                             global_batch=self.policy.global_batch, learning_rate=learning_rate,
                             lr_scaling=self.lr_scaling, window=self.policy.window)
        elif learning_rate != self._last_rate:
            self.context.log("learning rate changed", step=step, learning_rate=learning_rate,
                             previous=self._last_rate, global_batch=self.policy.global_batch)
        self._last_rate = learning_rate
        return super().step(step, learning_rate)

    def stepped(self, step: int, learning_rate: float, result: PeerStep) -> None:
        result.master = {**(result.master or {}), "global_batch": self.policy.global_batch}
        self._loss_sum += result.loss * result.examples
        self._loss_examples += result.examples
        self._examples += self.clock.row[self.layout["num_samples"]]
        self._compute += self.clock.row[self.layout["compute_time"]]
        if self._period_ends(step) and not self._last_step(step):
            self._decide(step)

    # --- checkpoints ---------------------------------------------------------------------------------------------
    _CHECKPOINTED = ("periods", "_period_step", "_epochs_done", "_last_rate", "_loss_sum", "_loss_examples",
                     "_examples", "_compute")

    def checkpoint_state(self) -> dict[str, Any]:
        """The base's (engine, stream position, counters) and the policy with its history (the loss score, the
        progress strip, the probe's times), so a resumed run decides as the uninterrupted one would."""
        state = super().checkpoint_state()
        state["policy"] = dict(vars(self.policy))  # data only: the policy object is rebuilt from the options
        state["dynamic"] = {name: getattr(self, name) for name in self._CHECKPOINTED}
        return state

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_checkpoint_state(state)
        vars(self.policy).update(state["policy"])
        for name, value in state["dynamic"].items():
            setattr(self, name, value)
        self._period_start = time.time()

    # --- periods and decisions ---------------------------------------------------------------------------------
    def _new_period(self, start: float) -> None:
        self._period_start = start
        self._loss_sum = self._loss_examples = self._examples = self._compute = 0.0

    def _period_ends(self, step: int) -> bool:
        window = self.policy.window
        if window is not None:
            return step - self._period_step >= window
        epochs = self.stream.position // self.stream.size
        if epochs > self._epochs_done:
            self._epochs_done = epochs
            return True
        return False

    def _last_step(self, step: int) -> bool:
        """The run ends after this step by its length (every rank knows it alike): nothing left to decide for."""
        c = self.context.config
        steps, epochs = c.steps, c.epochs
        return (steps is not None and step >= steps) or (epochs is not None and self.stream.epochs >= epochs)

    def _gather(self, mine: np.ndarray) -> list[np.ndarray]:
        if self.transport is None:
            return [mine]
        payloads = self.transport.allgather_bytes(mine.view(np.uint8))
        return [np.frombuffer(bytes(p), dtype=np.float64) for p in payloads]

    def _decide(self, step: int) -> None:
        now = time.time()
        mine = np.array([self._loss_sum, self._loss_examples, now - self._period_start, self._examples,
                         self._compute], dtype=np.float64)
        rows = np.stack(self._gather(mine))
        self.periods += 1
        self._period_step = step
        column = {name: i for i, name in enumerate(_PERIOD_FIELDS)}
        stats = PeriodStats(
            index=self.periods,
            loss=float(rows[0, column["loss_sum"]] / max(rows[0, column["loss_examples"]], 1.0)),
            times=tuple(float(v) for v in rows[:, column["wall_time"]]),
            examples=tuple(float(v) for v in rows[:, column["examples"]]),
            compute=tuple(float(v) for v in rows[:, column["compute_time"]]))
        before = self.policy.batches
        decision = self.policy.decide(stats)
        changed = decision.batches != before
        epoch = self.stream.epochs
        self.context.log("batch sizes changed" if changed else "batch sizes kept", step=step + 1,
                         after_step=step, epoch=epoch, period=self.periods, policy=self.policy.name,
                         batches=list(decision.batches), previous=list(before),
                         global_batch=sum(decision.batches), reason=decision.reason, loss=stats.loss,
                         epoch_time=stats.time, throughputs=list(stats.throughputs),
                         learning_rate=self.schedule.at(step + 1, epoch) if changed else None)
        self._new_period(time.time())


PROTOCOL = DynamicProtocol
