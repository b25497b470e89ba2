"""What every protocol without a master shares: every rank trains, and the steps are driven the same way.

A peer method (dynamic batching's all-reduce, gossip, compressed all-reduce) subclasses `PeerProtocol` and writes
only `step`: what one update does on one rank, between the round's start (the shell's `RoundClock` has begun it
and slept the induced delay) and the row it reports. Everything else is here, once: the identical start
(rank 0's parameters broadcast to all), a disjoint shard per rank, the learning-rate schedule, the stop
conditions (steps and epochs are known to every rank alike; a signal or rank 0 reaching the target accuracy is a
stop wish that `StepReports` turns into one agreed last step), the rows of every rank reaching rank 0 and the run
directory, and rank 0's evaluation in a thread on a snapshot of its parameters, so it never holds the others back.

Checkpoints (`--checkpoint-every N`, `--resume RUN_DIR`; anytimectl.runtime.checkpoints): after every N-th step,
and after the last, each rank writes `checkpoint_state()` (engine, data position, counters) before it posts the step's
report, so once rank 0 has that step's reports from every rank it knows every file is written and completes the
checkpoint with a manifest; no extra synchronisation. Resuming restores the state at the end of `setup` and the
loop continues from the checkpoint's step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from anytimectl.protocols.base import RunOutcome, TrainingProtocol
from anytimectl.runtime.checkpoints import CheckpointingMixin
from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.evaluation import Evaluator
from anytimectl.runtime.records import StepRecord
from anytimectl.runtime.round_clock import RoundClock
from anytimectl.runtime.run_config import PeerConfig
from anytimectl.runtime.schedules import Schedule
from anytimectl.runtime.step_reports import StepReports

#: keeps the augmentation's random stream apart from every other one seeded by (seed, rank, step)
_AUGMENT_STREAM = 0xA06
#: `augment` values: cifar10-fast's recipe (the compression study) and plain crop + flip (the gossip study); runs of
#: earlier versions recorded the first as "cifar"
AUGMENTATIONS = ("crop-flip-cutout", "crop-flip")
_AUGMENT_ALIASES = {"cifar": "crop-flip-cutout"}


def augmentation(name: str | None, input_shape: tuple[int, ...]) -> Any:
    """The training-batch augmentation a run's `augment` option names (None or "none": none)."""
    if not name or name == "none":
        return None
    from anytimectl.data.input_transform import Augmentation

    name = _AUGMENT_ALIASES.get(name, name)
    if name not in AUGMENTATIONS:
        raise UsageError(f"unknown augmentation {name!r}; use one of {', '.join(AUGMENTATIONS)} or none")
    chosen = Augmentation() if name == "crop-flip-cutout" else Augmentation(cutout=0)
    chosen.check(input_shape)
    return chosen


@dataclass
class PeerStep:
    """What one rank's step produced, for the schedule, the stop conditions and rank 0's master_stats row."""

    loss: float  # the training loss the master_stats row shows (e.g. the global mean after an all-reduce)
    examples: float  # examples this step adds to the run's epoch count (all ranks together)
    master: dict[str, Any] | None = None  # values of the method's Columns.master


P = TypeVar("P", bound=PeerConfig)


class PeerProtocol(CheckpointingMixin, TrainingProtocol[P]):
    has_master = False
    supports_checkpoints = True
    #: How many steps a rank may run ahead of the slowest (see step_reports): 1 for lock-step methods.
    lag: ClassVar[int] = 1

    # --- set-up --------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        from anytimectl.backends import configure
        from anytimectl.data import load_dataset, test_subset

        context = self.context
        c = context.config
        rank = context.rank
        self.comm = rank.comm
        self.rank, self.size = rank.rank, rank.size
        self.seed = c.seed
        configure(context.request.backend, rank.threads, self.seed)
        self.dataset = load_dataset(c.dataset, c.data_dir)
        if len(self.dataset.x_train) < self.size:
            raise UsageError(f"--dataset {c.dataset} has {len(self.dataset.x_train)} training examples, fewer "
                             f"than the {self.size} workers; use fewer workers")
        self.engine = self.make_engine()
        self._share_initial_parameters()
        self.stream = self.make_stream()
        # Users number workers 1..N in every method (tables, live view, --slow, delays seeded by worker number),
        # so a peer method's worker k is MPI rank k - 1, and draws the same delays as train fmb's worker k.
        self.worker = self.rank + 1
        self.clock = RoundClock(self.layout, self.worker, self.seed, context.delay,
                                context.slow.get(self.worker, 1.0))
        self.clock.stopped = lambda: context.stopper.reason is not None
        self.schedule = Schedule.from_config(c, c.steps)
        self.augment = augmentation(self.augment_name(), self.dataset.input_shape)
        if self.rank == 0:
            self.x_test, self.y_test = test_subset(self.dataset, c.test_size, self.seed)
            self.evaluator = Evaluator(self.make_engine(), self.x_test, self.y_test, snapshot_of=self.engine)
        self.prepare()
        self.warm_up()
        self.start_step, self.start_examples, self.start_elapsed = 0, 0.0, 0.0
        resume = getattr(context, "resume", None)
        if resume is not None:  # after the warm-up, whose compute may touch RNG or batch-norm state
            self.restore_checkpoint(resume)

    def warm_up(self) -> None:
        """Compile the framework's functions now, so that the first step's compute time is a real one."""
        import math

        x, y = self.stream.peek(int(self.context.config.batch_size or 32))
        self.engine.compute(x, y, 1, math.inf)
        trace = getattr(self.engine, "trace", None)
        if trace is not None:
            trace()
        if self.rank == 0:
            self.evaluator.engine.evaluate(self.x_test[:8], self.y_test[:8])

    def make_engine(self) -> Any:
        from anytimectl.backends import EngineSpec, create_engine

        c, d = self.context.config, self.dataset
        return create_engine(self.context.request.backend, EngineSpec(
            model=c.model, input_shape=d.input_shape, num_classes=d.num_classes, optimizer=c.optimizer,
            learning_rate=c.learning_rate, weight_decay=c.weight_decay, momentum=c.momentum,
            nesterov=bool(c.nesterov), device=self.context.device))

    def augment_name(self) -> str | None:
        """The training batches' augmentation (--augment, resolved), or None: the methods with the option say."""
        return None

    def log_every_steps(self) -> int:
        """Steps between evaluations (--log-every; a method may resolve its own, compress train's once an epoch)."""
        return self.context.config.log_every or 1

    def make_stream(self) -> Any:
        """This rank's disjoint shard of the training set, reshuffled each epoch with its own seed."""
        from anytimectl.data import BatchStream, shard_indices

        shard = shard_indices(len(self.dataset.x_train), self.size, self.rank, self.seed)
        return BatchStream(self.dataset.x_train[shard], self.dataset.y_train[shard], self.seed, self.rank)

    def training_batch(self, step: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `count` examples of this rank's shard (not consumed: the caller advances the stream by what it
        used), augmented when the run augments, from a generator seeded by (seed, rank, step), so that ranks draw
        differently and a run repeats exactly."""
        x, y = self.stream.peek(count)
        if self.augment is not None:
            x = self.augment(x, np.random.default_rng([_AUGMENT_STREAM, self.seed, self.rank, step]))
        return x, y

    def _share_initial_parameters(self) -> None:
        """Every rank starts from rank 0's parameters (the originals relied on equal default seeds)."""
        if self.comm is None:
            return
        params = np.ascontiguousarray(self.engine.get_params(), dtype=np.float32)
        self.comm.broadcast(params).wait()
        self.engine.set_params(params)

    def prepare(self) -> None:
        """A method's own set-up, after the engine, the shard and the clock exist (every rank)."""

    # --- the method's step ---------------------------------------------------------------------------------------
    def step(self, step: int, learning_rate: float) -> PeerStep:
        """One update on this rank. The clock has begun the round (and slept the induced delay); the step calls
        `self.clock.computed(examples)`, then `sent()` / `received()` around its communication."""
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        """After the last step, on every rank (all reach it): e.g. a final exchange. Returns summary extras."""
        return {}

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """This rank's state after the current step: everything not derived from (--seed, step). A method with
        state of its own extends it (and `load_checkpoint_state`)."""
        counted = (self.comm.bytes.sent, self.comm.bytes.received) if self.comm is not None else (0, 0)
        return {"engine": self.engine.state(), "stream_consumed": _stream_position(self.stream),
                "examples": self.examples, "size": self.size, "bytes": counted}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.engine.load_state(state["engine"])
        self.stream.advance(int(state["stream_consumed"]) - _stream_position(self.stream))
        if self.comm is not None:  # the byte columns are cumulative over the whole run, resumes included
            self.comm.bytes.sent, self.comm.bytes.received = (int(n) for n in state["bytes"])

    # --- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> RunOutcome:
        context = self.context
        c = context.config
        steps, epochs, target = c.steps, c.epochs, c.target_accuracy
        log_every = self.log_every_steps()
        reports = StepReports(self.comm, len(self.layout), self.lag)
        reporter = self.rank == 0
        recorder = context.recorder
        ranks = list(range(1, self.size + 1))
        checkpointer = self.make_checkpointer()
        step = self.start_step
        self.examples = self.start_examples
        epoch = self.examples / len(self.dataset.x_train)
        if reporter:
            # a resumed run's clock goes on from the checkpoint's time, so its tables continue without the gap
            recorder.start_clock(time.time() - self.start_elapsed)
            if step:
                recorder.steps, recorder.examples = step, self.examples
                recorder.row_count = step * self.size
        pending: StepRecord | None = None
        best = None
        stopped_by: str | None = None
        while True:
            if steps is not None and step >= steps:
                stopped_by = "steps"
                break
            if epochs is not None and epoch >= epochs:
                stopped_by = "epochs"
                break
            if not reports.before(step + 1):
                stopped_by = context.stopper.reason or "target accuracy"
                break
            step += 1
            rate = self.schedule.at(step, epoch)
            self.clock.begin(step)
            result = self.step(step, rate)
            self.examples += result.examples
            epoch = self.examples / len(self.dataset.x_train)
            row = self.clock.row
            row[self.layout["time"]] = time.time()
            row[self.layout["loss"]] = result.loss
            if self.comm is not None:
                self.clock.bytes(self.comm.bytes.sent, self.comm.bytes.received)
            if reporter:
                record = StepRecord(step=step, time=row[self.layout["time"]], loss=result.loss, learning_rate=rate,
                                    epoch=epoch, master=result.master or {})
                if pending is not None:
                    self._evaluated(pending)
                    best = _best(best, pending.accuracy)
                    pending = None
                last = (steps is not None and step >= steps) or (epochs is not None and epoch >= epochs)
                if last:
                    self.evaluator.start()
                    self._evaluated(record)
                    best = _best(best, record.accuracy)
                elif step % log_every == 0:
                    self.evaluator.start()
                    pending = record
                else:
                    recorder.step(record)
            wish = context.stopper.reason is not None or (target is not None and best is not None and best >= target)
            if wish and getattr(context.stopper, "checkpoint_requested", False) and hasattr(self.engine, "state"):
                wish = 2  # --checkpoint-on-signal: every rank checkpoints the agreed last step
            if checkpointer.due(step):  # before the report: a completed report of this step means every file is written
                self.save_checkpoint(checkpointer, step, epoch)
            reports.post(step, self.clock.snapshot(), wish)
            if reporter:
                for done, rows in reports.completed():
                    recorder.rows(ranks, rows)
                    checkpointer.confirmed(done)
        wanted = checkpointer.enabled or (reports.checkpoint_wished and checkpointer.can_write)
        if wanted and checkpointer.last_saved != step and step > self.start_step:
            self.save_checkpoint(checkpointer, step, epoch)  # the last step: a stopped run resumes where it stopped
            if self.comm is not None:
                self.comm.barrier()  # sleep-polled: every rank's file is written
        extra = self.finish()
        for done, rows in reports.finish():
            recorder.rows(ranks, rows)
            checkpointer.confirmed(done)
        if reporter:
            checkpointer.confirmed(step)
        if reporter and pending is not None:
            self._evaluated(pending)
        return RunOutcome(stopped_by, extra)

    def _evaluated(self, record: StepRecord) -> None:
        record.test_loss, record.accuracy = self.evaluator.join()
        record.spans.append(("evaluate", self.evaluator.start_time, self.evaluator.end_time, {}))
        self.context.recorder.step(record)


def _stream_position(stream: Any) -> int:
    """Examples a BatchStream has consumed (its orders are derived from (seed, rank, epoch), so this is its state)."""
    return int(stream.position)


def _best(best: float | None, accuracy: float | None) -> float | None:
    if accuracy is None:
        return best
    return accuracy if best is None else max(best, accuracy)
