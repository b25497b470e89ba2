"""The synchronous master-worker protocol (AMB and FMB), independent of the framework that computes gradients.

One step: every worker starts its round, sleeps its induced delay, computes (FMB: its whole batch; AMB:
micro-batches until the time limit), and hands the master the SUM of its per-example gradients with its example
count and its row. The master divides by the total count (an example-weighted average, so AMB's uneven batches
are weighted correctly), adds weight decay once, applies the optimizer and broadcasts the parameters.

Evaluation on the test subset runs on the master in a thread *while the workers compute the next step*, so it
never holds them back (the original evaluated between steps and stalled everyone).

Two ways to finish a step, with the same updates, tables and stop rules:
- *broadcast* (the original's): the master applies the update and sends the new parameters to every worker;
- *replicated*: the master sends the summed contributions (and the step's learning rate) instead, and every rank,
  the master included, applies the same update to its own copy at the same time, so neither the master's update
  nor a copy of the parameters in and out of the framework lies on the critical path. It is used when every rank
  is a CPU rank on one host (the same arithmetic in every process gives the same bits); every CHECK_EVERY steps
  the workers report a checksum of their parameters and the master re-sends its own if any copy ever differs.

Checkpoints (`--checkpoint-every N`, `--resume RUN_DIR`; anytimectl.runtime.checkpoints): after the update of every N-th
step, before the next round, every rank writes its state: the master its engine (model, optimizer, generators),
its counters (examples, best accuracy), AMB's time limit with the calibration's running sums and (replicated)
the checksum it will compare next; a worker its engine (replicated updates step its own optimizer; its generators
draw its dropout), its data position and its byte counts. A worker's contribution to the next step arrives only
after it wrote its file, so the master completes the checkpoint (the manifest) when it has collected that step,
after the rows of every step before are in the tables; the run's last step is saved by every rank after the stop
and completed after a barrier. Resuming loads the state at the end of `setup` (after the warm-up, which may draw
from the generators) and the step count, the straggler delays (drawn from (seed, worker, step)), the
learning-rate schedule (a function of step and epoch) and the tables' clock continue from the checkpoint.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from anytimectl.data import BatchStream
from anytimectl.protocols.args_json import ARGS_FILE, original_args
from anytimectl.protocols.base import RunOutcome, TrainingProtocol
from anytimectl.runtime.checkpoints import CheckpointingMixin
from anytimectl.runtime.engine import Engine
from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.evaluation import Evaluator
from anytimectl.runtime.records import Columns, RowLayout, StepRecord
from anytimectl.runtime.round_clock import RoundClock
from anytimectl.runtime.run_config import MasterWorkerConfig
from anytimectl.runtime.rundir import write_json_atomic
from anytimectl.runtime.schedules import Schedule

#: The method's own row fields: AMB's micro-batches done, the warm-up's seconds per micro-batch, and (replicated
#: updates) a checksum of the worker's parameters every CHECK_EVERY steps (-1 otherwise).
ROW_FIELDS = ("partitions_done", "calibration", "params_checksum")
LAYOUT = RowLayout(ROW_FIELDS)
#: Header sent with the parameters (or, replicated, the summed contributions): step, stop flag, the AMB time limit
#: the workers must use, the learning rate of the update, and whether the master's parameters follow.
HEADER_STEP, HEADER_STOP, HEADER_TIME_LIMIT, HEADER_RATE, HEADER_RESYNC = 0, 1, 2, 3, 4
HEADER_SIZE = 5
#: STOP_CHECKPOINT: the run ends and every rank saves its last step (--checkpoint-on-signal)
STOP_NONE, STOP_FINISHED, STOP_CHECKPOINT = 0.0, 1.0, 2.0
#: Replicated updates: steps between the workers' parameter checksums.
CHECK_EVERY = 25


def params_checksum(params: np.ndarray) -> float:
    """CRC-32 of the parameter bytes: equal copies give equal sums, and a float64 holds it exactly."""
    return float(zlib.crc32(memoryview(np.ascontiguousarray(params)).cast("B")))


def replicated_updates(hosts: list[str], devices: list[str]) -> bool:
    """Whether every rank may apply the updates itself: all on one host, all on the CPU (see the module notes).
    `ANYTIMECTL_REPLICATED=0` forces the broadcast of parameters."""
    import os

    if os.environ.get("ANYTIMECTL_REPLICATED", "1") in ("0", "false", "no", "off"):
        return False
    return len(set(hosts)) == 1 and all(device == "cpu" for device in devices)


@dataclass
class ProtocolConfig:
    method: str  # "amb" or "fmb"
    batch_size: int  # FMB: the batch. AMB: the most a worker can process in one round.
    partitions: int  # AMB micro-batches per full batch (1 for FMB)
    time_limit: float | None  # AMB seconds per round, None = calibrate (auto)
    match_batch: int | None  # AMB auto: the expected batch to match
    steps: int | None
    epochs: float | None
    target_accuracy: float | None
    log_every: int
    seed: int
    train_examples: int


class Worker:
    """One worker's state across rounds; the same code serves MPI ranks and the single-process mode."""

    def __init__(self, rank: int, engine: Engine, stream: BatchStream, config: ProtocolConfig,
                 delay: Any, slowdown: float):
        self.rank = rank
        self.engine = engine
        self.stream = stream
        self.config = config
        self.clock = RoundClock(LAYOUT, rank, config.seed, delay, slowdown)
        self.micro_batches = config.partitions if config.method == "amb" else 1
        self.examples_sent = 0  # the asynchronous protocol counts what it handed over
        #: the asynchronous protocol's AMB rounds pass `between` (a model may arrive mid-round): warm up and
        #: calibrate that compilation of the loop, not the other
        self.checks_between = False
        #: the master's step whose update this worker holds, and whether the master's stop asked every rank to
        #: checkpoint it (worker_loop)
        self.update_step = 0
        self.checkpoint_wished = False
        #: the asynchronous protocol: the data position after the contributions handed over, and their count
        self.handed_over: int | None = None
        self.contributions = 0

    @property
    def row(self) -> np.ndarray:
        return self.clock.row

    def warm_up(self, calibrate: bool) -> float:
        """Compile the gradient function (so step 1 is not a tracing step) and, for `--time-limit auto`,
        time full-batch rounds: returns seconds per micro-batch (0 when not calibrating)."""
        x, y = self.stream.peek(self.config.batch_size)
        options = {"between": lambda: None} if self.checks_between and self.micro_batches > 1 else {}
        self.engine.compute(x, y, self.micro_batches, math.inf, **options)
        if not calibrate:
            return 0.0
        times = []
        for _ in range(3):
            start = time.perf_counter()
            self.engine.compute(x, y, self.micro_batches, math.inf, **options)
            times.append(time.perf_counter() - start)
        return float(np.median(times)) * self.clock.slowdown / self.micro_batches

    def round(self, step: int, time_limit: float | None) -> np.ndarray:
        """Sleep, compute, and fill the row; returns the contribution buffer for the master."""
        clock = self.clock
        clock.begin(step)
        x, y = self.stream.peek(self.config.batch_size)
        deadline = clock.real_deadline(time_limit) if self.config.method == "amb" and time_limit is not None \
            else math.inf
        buffer, examples, done = self.engine.compute(x, y, self.micro_batches, deadline)
        self.stream.advance(examples)
        clock.computed(examples)
        self.row[LAYOUT["partitions_done"]] = done
        return buffer


@dataclass
class StepResult:
    """What the master learned in one step."""

    step: int
    applied_at: float  # time.time() when the update was applied
    loss: float
    learning_rate: float
    epoch: float
    wait_time: float
    total_samples: int
    rows: np.ndarray  # (workers, len(LAYOUT))
    time_limit: float | None = None  # the AMB limit the workers used in this step
    ranks: list[int] | None = None  # the worker of each row (None: workers 1..N in order)
    test_loss: float | None = None
    accuracy: float | None = None
    spans: list[tuple[str, float, float, dict[str, Any]]] = field(default_factory=list)


class Master:
    """The master's loop, over any transport that can collect contributions and broadcast parameters."""

    def __init__(self, engine: Engine, config: ProtocolConfig, evaluator: Evaluator,
                 learning_rate: Callable[[int, float], float], stopper: Any,
                 on_step: Callable[[StepResult], None], on_event: Callable[..., None]):
        self.engine = engine
        self.config = config
        self.evaluator = evaluator
        self.learning_rate = learning_rate
        self.stopper = stopper
        self.on_step = on_step
        self.on_event = on_event
        self.examples = 0
        self.time_limit = config.time_limit
        self.origin = time.time()
        self.best_accuracy: float | None = None
        self.auto = False
        self.expected_delay = 0.0
        self._compute_seconds = 0.0
        self._micro_batches = 0.0
        self.rate = 0.0  # the learning rate of the update being made
        #: called with the step after each update (replicated transports keep their checksums here)
        self.after_apply: Callable[[int], None] | None = None
        #: replicated: called before the master's own update (to let the workers make theirs first)
        self.before_apply: Callable[[], None] | None = None
        #: a resumed run: the step it continues from and the seconds its tables had reached
        self.start_step = 0
        self.start_elapsed = 0.0
        #: called with the step once its contributions are in and every earlier step's rows are recorded
        self.after_collect: Callable[[int], None] | None = None
        #: called with the step after its update (and whether it is the last): checkpoints are written there
        self.after_step: Callable[[int, bool], None] | None = None
        #: the last broadcast asked every rank to checkpoint the last step (--checkpoint-on-signal)
        self.checkpoint_wished = False

    def state(self) -> dict[str, Any]:
        """The master's own counters for a checkpoint (the engine's state is saved beside them)."""
        return {"examples": self.examples, "time_limit": self.time_limit, "auto": self.auto,
                "expected_delay": self.expected_delay, "compute_seconds": self._compute_seconds,
                "micro_batches": self._micro_batches, "best_accuracy": self.best_accuracy}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue with the checkpoint's counters and AMB time limit (an --time-limit auto run goes on with the
        limit it had calibrated and the sums it recalibrates from, not a new warm-up's)."""
        self.examples = int(state["examples"])
        self.time_limit = None if state["time_limit"] is None else float(state["time_limit"])
        self.auto = bool(state["auto"])
        self.expected_delay = float(state["expected_delay"])
        self._compute_seconds = float(state["compute_seconds"])
        self._micro_batches = float(state["micro_batches"])
        self.best_accuracy = None if state["best_accuracy"] is None else float(state["best_accuracy"])

    def resolve_time_limit(self, per_micro_batch: np.ndarray, delay: Any) -> None:
        """`--time-limit auto`: T = time for match_batch examples + E[delay], so that AMB's expected batch
        equals the FMB batch it is compared with (the originals' convention for a fair comparison).

        The warm-up measurement starts it off; `recalibrate` then keeps it true to the micro-batch times
        measured in the run itself, because ranks that share cores compute faster while others sleep than
        in a warm-up where all of them compute at once.
        """
        if self.config.method != "amb" or self.time_limit is not None:
            return
        self.auto = True
        self.expected_delay = delay.mean() if delay else 0.0
        self._set_auto_limit(float(np.mean(per_micro_batch)))
        self.on_event("calibrated the AMB time limit", time_limit=self.time_limit,
                      expected_delay=self.expected_delay, per_micro_batch=[float(v) for v in per_micro_batch])

    def recalibrate(self, rows: np.ndarray) -> None:
        if not self.auto:
            return
        f = LAYOUT
        self._compute_seconds += float(np.sum(rows[:, f["compute_time"]] - rows[:, f["sleep_time"]]))
        self._micro_batches += float(np.sum(rows[:, f["partitions_done"]]))
        if self._micro_batches > 0:
            self._set_auto_limit(self._compute_seconds / self._micro_batches)

    def _set_auto_limit(self, per_micro_batch: float) -> None:
        micro_size = self.config.batch_size / self.config.partitions
        match = self.config.match_batch or self.config.batch_size
        # A micro-batch starts only if it can end before the deadline, which leaves on average half a
        # micro-batch of the limit unused: budget for it.
        self.time_limit = per_micro_batch * (match / micro_size + 0.5) + self.expected_delay

    def should_stop(self, step: int) -> str | None:
        c = self.config
        if self.stopper.reason:
            return self.stopper.reason
        if c.steps is not None and step >= c.steps:
            return "steps"
        if c.epochs is not None and self.examples / c.train_examples >= c.epochs:
            return "epochs"
        if c.target_accuracy is not None and self.best_accuracy is not None and self.best_accuracy >= c.target_accuracy:
            return "target accuracy"
        return None

    def run(self, collect: Callable[[int], tuple[np.ndarray, np.ndarray, float]],
            broadcast: Callable[[int, float], float], on_start: Callable[[float], None] | None = None,
            replicated: bool = False) -> tuple[int, str]:
        """Drive steps until a stop condition; returns (steps done, why it stopped).

        collect(step) waits for every worker's contribution and returns (reduced buffer, rows, wait time);
        broadcast(step, stop_flag) sends the parameters and returns the time it took. `replicated`: broadcast
        sends the summed contributions and `self.rate` instead, before the master applies them itself (the
        workers apply them at the same time); the stop decision is the same, as nothing it reads changes in
        the update.
        """
        pending: StepResult | None = None  # its evaluation is running during the current round
        broadcast(self.start_step, STOP_NONE)
        self.origin = time.time()
        if on_start is not None:
            on_start(self.origin - self.start_elapsed)  # a resumed run's tables go on from the checkpoint's time
        step = self.start_step
        reason = None
        while reason is None:
            step += 1
            if pending is not None:
                self.evaluator.start()
            collect_start = time.time()
            reduced, rows, wait_time = collect(step)
            collect_end = time.time()
            time_limit = self.time_limit
            self.recalibrate(rows)
            if pending is not None:  # before the update: the evaluation reads the parameters it changes
                self._finish_evaluation(pending, self.evaluator.join())
                pending = None
            if self.after_collect is not None:
                self.after_collect(step)
            total = int(round(reduced[-2]))
            self.examples += total
            epoch = self.examples / self.config.train_examples
            rate = self.rate = self.learning_rate(step, epoch)
            if replicated:
                reason = self.should_stop(step)
                broadcast(step, self._stop_flag(reason))
                broadcast_end = time.time()
                if self.before_apply is not None:
                    self.before_apply()
                loss = self.engine.apply(reduced, rate)
                apply_end = time.time()
                spans = [("collect", collect_start, collect_end, {}),
                         ("broadcast", collect_end, broadcast_end, {"sent": "summed contributions"}),
                         ("apply", broadcast_end, apply_end, {})]
            else:
                loss = self.engine.apply(reduced, rate)
                apply_end = time.time()
                reason = self.should_stop(step)
                broadcast(step, self._stop_flag(reason))
                spans = [("collect", collect_start, collect_end, {}), ("apply", collect_end, apply_end, {}),
                         ("broadcast", apply_end, time.time(), {})]
            result = StepResult(step=step, applied_at=apply_end, loss=loss, learning_rate=rate, epoch=epoch,
                                wait_time=wait_time, total_samples=total, rows=rows, time_limit=time_limit)
            result.spans += spans
            if self.after_apply is not None:
                self.after_apply(step)
            if reason is not None:
                self._finish_evaluation(result, self.evaluator.now())
            elif step % self.config.log_every == 0:
                pending = result
            else:
                self.on_step(result)
            if self.after_step is not None:
                self.after_step(step, reason is not None)
        return step, reason

    def _stop_flag(self, reason: str | None) -> float:
        """What the last broadcast says: go on, stop, or stop and checkpoint (a --checkpoint-on-signal signal
        arrived; decided here once, so that every rank agrees)."""
        if reason is None:
            return STOP_NONE
        self.checkpoint_wished = bool(getattr(self.stopper, "checkpoint_requested", False))
        return STOP_CHECKPOINT if self.checkpoint_wished else STOP_FINISHED

    def _finish_evaluation(self, result: StepResult, outcome: tuple[float, float]) -> None:
        result.test_loss, result.accuracy = outcome
        result.spans.append(("evaluate", self.evaluator.start_time, self.evaluator.end_time, {}))
        if result.accuracy is not None and (self.best_accuracy is None or result.accuracy > self.best_accuracy):
            self.best_accuracy = result.accuracy
        self.on_step(result)


def worker_loop(worker: Worker, comm: Any, param_buffer: np.ndarray, header: np.ndarray,
                replicated: bool = False, after_update: Callable[[int], None] | None = None) -> int:
    """An MPI worker: receive parameters, run a round, send, until the master says stop. Returns steps run;
    `worker.update_step` is then the master's last step.

    `replicated`: after the first step the master sends the summed contributions (param_count + 2 floats)
    instead of the parameters, and the worker applies them itself with the learning rate in the header.
    `after_update(step)`: called once the worker holds the model after the update of `step`, before its next
    round (checkpoints are written there), except after the first parameters and the last update."""
    steps = 0
    reduced = np.zeros(worker.engine.param_count + 2, dtype=np.float32) if replicated else None
    comm.distribute(header, param_buffer)  # the initial parameters
    header_buffer = header
    header_in, reduced_in = header, reduced  # replicated: views of what arrived (on one host, no copy)
    while True:
        worker.clock.received()
        header = header_in
        stop = header[HEADER_STOP] != STOP_NONE
        worker.update_step = int(header[HEADER_STEP])
        worker.checkpoint_wished = bool(header[HEADER_STOP] == STOP_CHECKPOINT)
        if stop and reduced is None:
            return steps
        if reduced is None or steps == 0 or header[HEADER_RESYNC]:
            worker.engine.set_params(param_buffer)
        step = int(header[HEADER_STEP]) + 1
        time_limit = float(header[HEADER_TIME_LIMIT])
        if reduced is not None and steps > 0:  # also the last update: every copy ends as the master's
            worker.engine.apply(reduced_in, float(header[HEADER_RATE]))
            comm.acknowledge()  # the master makes its own update only now, off the workers' critical path
        if stop:
            return steps
        if after_update is not None and steps > 0:
            after_update(step - 1)
        worker.row[LAYOUT["params_checksum"]] = (params_checksum(worker.engine.get_params())
                                                 if reduced is not None and step % CHECK_EVERY == 0 else -1.0)
        contribution = worker.round(step, time_limit if time_limit > 0 else None)
        worker.clock.bytes(comm.bytes.sent, comm.bytes.received)
        comm.collect(contribution, None, worker.row, None)
        worker.clock.sent(comm.ready_at)
        steps += 1
        if reduced is None:
            comm.distribute(header, param_buffer)
            continue
        header_in, reduced_in = comm.receive_view(header_buffer, reduced)
        if header_in[HEADER_RESYNC]:
            comm.distribute(header_buffer, param_buffer)


class MpiMasterTransport:
    """The master's side of worker_loop (`replicated` as there; run the master with `replicated` too)."""

    def __init__(self, master: Master, comm: Any, param_count: int, replicated: bool = False):
        self.master = master
        self.comm = comm
        self.replicated = replicated
        self.header = np.zeros(HEADER_SIZE)
        self.params = np.zeros(param_count, dtype=np.float32)
        self.reduced = np.zeros(param_count + 2, dtype=np.float32)
        self._last_reduced = self.reduced
        self.row = LAYOUT.new()
        self.rows = np.zeros((comm.size, len(LAYOUT)))
        self.checksums: dict[int, float] = {}  # replicated: step -> the master's checksum after that update
        self.resyncs = 0
        self._resync = False
        self._out_header = self.header
        self._params_sent = False
        if replicated:
            master.after_apply = self._after_apply
            master.before_apply = self._before_apply

    def collect(self, step: int) -> tuple[np.ndarray, np.ndarray, float]:
        reduced = self.reduced
        if self.replicated:  # sum straight into the buffer the broadcast sends (on one host: shared memory)
            self._out_header, reduced = self.comm.outgoing(self.header, self.reduced)
        wait = self.comm.collect(None, reduced, self.row, self.rows)  # the master adds nothing of its own
        self._last_reduced = reduced
        if self.replicated:
            self._check(step)
        return reduced, self.rows[1:].copy(), wait

    def broadcast(self, step: int, stop: float) -> float:
        start = time.perf_counter()
        values = (step, stop, self.master.time_limit or 0.0, self.master.rate, 0.0)
        if not self.replicated or not self._params_sent:  # the first broadcast sends the (initial) parameters
            self._params_sent = True
            self._send_params(values)
            return time.perf_counter() - start
        resync, self._resync = self._resync, False
        header = self._out_header
        header[:] = values
        header[HEADER_RESYNC] = 1.0 if resync else 0.0
        self.comm.distribute(header, self._last_reduced)
        if resync:  # the master has not applied this step yet: its parameters are those the workers should have
            self._send_params(header)
        return time.perf_counter() - start

    def state(self) -> dict[str, Any]:
        """Replicated updates: the master's checksums still to compare and the re-sends so far."""
        return {"checksums": dict(self.checksums), "resyncs": self.resyncs}

    def load_state(self, state: dict[str, Any]) -> None:
        self.checksums = {int(k): float(v) for k, v in state["checksums"].items()}
        self.resyncs = int(state["resyncs"])

    def _send_params(self, values: Any) -> None:
        header, params = self.comm.outgoing(self.header, self.params)
        header[:] = values
        params[:] = self.master.engine.get_params()
        self.comm.distribute(header, params)

    def _before_apply(self) -> None:
        """Let the workers make their update first: two updates at once on shared cores slow the workers' one,
        which is on the critical path, and the master has nothing else to do until they are back."""
        self.comm.wait_acknowledged(timeout=1.0)

    def _after_apply(self, step: int) -> None:
        if (step + 1) % CHECK_EVERY == 0:
            self.checksums[step] = params_checksum(self.master.engine.get_params())

    def _check(self, step: int) -> None:
        """The workers' checksums of the parameters they started `step` with against the master's."""
        if step % CHECK_EVERY:
            return
        expected = self.checksums.pop(step - 1, None)
        reported = self.rows[1:, LAYOUT["params_checksum"]]
        if expected is None or bool(np.all(reported == expected)):
            return
        self.resyncs += 1
        self._resync = True
        differing = [int(r) for r in np.flatnonzero(reported != expected) + 1]
        self.master.on_event("worker parameters differed from the master's; re-sending them", step=step,
                             workers=differing)


class LocalTransport:
    """`--workers 0`: the master and one worker in one process, no MPI."""

    def __init__(self, master: Master, worker: Worker):
        self.master = master
        self.worker = worker

    def collect(self, step: int) -> tuple[np.ndarray, np.ndarray, float]:
        self.worker.clock.received()  # the worker shares the master's engine, so it already holds the parameters
        contribution = self.worker.round(step, self.master.time_limit)
        self.worker.clock.sent()
        return contribution, self.worker.row[None, :].copy(), 0.0

    def broadcast(self, step: int, stop: float) -> float:
        return 0.0

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


# --- the protocol in the run shell ---------------------------------------------------------------------------------
M = TypeVar("M", bound=MasterWorkerConfig)


class MasterWorkerProtocol(CheckpointingMixin, TrainingProtocol[M]):
    """`train amb|fmb` on any backend: rank 0 is the master, ranks 1..N the workers."""

    has_master = True
    supports_checkpoints = True
    row_fields = ROW_FIELDS
    columns = Columns(worker=("partitions_done",), collect=("time_limit",))

    def setup(self) -> None:
        from anytimectl.backends import EngineSpec, configure, create_engine
        from anytimectl.data import load_dataset, test_subset

        context = self.context
        c = context.config
        rank = context.rank
        self.workers = rank.size - 1 if rank.size > 1 else 1
        configure(context.request.backend, rank.threads, c.seed)
        dataset = backend_dataset(context.request.backend, c) or load_dataset(c.dataset, c.data_dir)
        if len(dataset.x_train) < self.workers:
            raise UsageError(f"--dataset {c.dataset} has {len(dataset.x_train)} training examples, fewer than "
                             f"the {self.workers} workers; use fewer workers")
        self.dataset = dataset
        self.engine = create_engine(context.request.backend, EngineSpec(
            model=c.model, input_shape=dataset.input_shape, num_classes=dataset.num_classes,
            optimizer=c.optimizer, learning_rate=c.learning_rate, weight_decay=c.weight_decay,
            device=context.device, options=c.backend_options or {}))
        self.config = ProtocolConfig(
            method=context.request.method, batch_size=c.batch_size, partitions=c.partitions,
            time_limit=c.time_limit, match_batch=c.match_batch, steps=c.steps, epochs=c.epochs,
            target_accuracy=c.target_accuracy, log_every=c.log_every or 1, seed=c.seed,
            train_examples=len(dataset.x_train))
        self.calibration = 0.0
        if rank.rank == 0:
            self.x_test, self.y_test = test_subset(dataset, c.test_size, c.seed)
            if rank.size == 1:
                self.local_worker = self._make_worker(1)
                self.calibration = self.local_worker.warm_up(calibrate=self._needs_calibration)
            trace = getattr(self.engine, "trace", None)
            if trace is not None:
                trace()  # compile the master's graphs before the clock starts
        else:
            self.worker = self._make_worker(rank.rank)
            self.calibration = self.worker.warm_up(calibrate=self._needs_calibration)
        self.rank, self.size = rank.rank, rank.size
        self.master: Master | None = None  # rank 0, once it runs
        self.transport: Any = None
        self.resumed: dict[str, Any] | None = None  # this rank's checkpoint state when the run continues one
        if context.resume is not None:  # after the warm-up, whose compute may draw from the generators
            self.resumed = self.restore_checkpoint(context.resume)

    # --- checkpoints ---------------------------------------------------------------------------------------------
    @property
    def _own_worker(self) -> Worker | None:
        """The worker this process computes for: its rank's, or the master's own without MPI (--workers 0)."""
        return getattr(self, "worker", None) or getattr(self, "local_worker", None)

    @property
    def examples(self) -> float:
        """Rank 0: the examples applied; a worker: the examples it has taken from its shard."""
        if self.master is not None:
            return float(self.master.examples)
        worker = self._own_worker
        return float(worker.stream.position) if worker is not None else 0.0

    def checkpoint_state(self) -> dict[str, Any]:
        """This rank's state after an update, before the next round (see the module notes)."""
        comm = self.context.rank.comm if self.size > 1 else None
        state: dict[str, Any] = {"protocol": self.context.request.protocol, "engine": self.engine.state(),
                                 "examples": self.examples,
                                 "bytes": (comm.bytes.sent, comm.bytes.received) if comm is not None else (0, 0)}
        worker = self._own_worker
        if worker is not None:
            position = worker.handed_over if worker.handed_over is not None else worker.stream.position
            state["worker"] = {"stream_consumed": int(position), "examples_sent": worker.examples_sent,
                               "contributions": worker.contributions}
        if self.master is not None:
            state["master"] = self.master.state()
            state["transport"] = self.transport.state() if self.transport is not None else {}
            state["rows"] = self.recorded_rows()
        return state

    def recorded_rows(self) -> int:
        """Rows in worker_stats after the steps done (one per worker and step)."""
        assert self.master is not None
        return int(self.master_step) * self.workers

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        protocol = state.get("protocol")
        if protocol != self.context.request.protocol:
            raise UsageError(f"--resume: the checkpoint was written by the {protocol} protocol; this run is "
                             f"{self.context.request.protocol} (--protocol cannot change on resume)")
        self.engine.load_state(state["engine"])
        worker = self._own_worker
        if worker is not None:
            saved = state["worker"]
            worker.stream.advance(int(saved["stream_consumed"]) - int(worker.stream.position))
            worker.examples_sent = int(saved["examples_sent"])
            worker.contributions = int(saved["contributions"])
        if self.size > 1:  # the byte columns are cumulative over the whole run, resumes included
            comm = self.context.rank.comm
            comm.bytes.sent, comm.bytes.received = (int(n) for n in state["bytes"])

    def _resume_master(self, master: Master, transport: Any, recorder: Any) -> None:
        """Rank 0 of a resumed run: the master's counters and AMB limit, the transport's, the tables' counts."""
        if self.resumed is None:
            return
        master.start_step, master.start_elapsed = self.start_step, self.start_elapsed
        master.load_state(self.resumed["master"])
        if transport is not None:
            transport.load_state(self.resumed["transport"])
        recorder.steps, recorder.examples = self.start_step, float(master.examples)
        recorder.row_count = int(self.resumed["rows"])

    def _final_checkpoint(self, checkpointer: Any, step: int, epoch: float, wished: bool) -> None:
        """Every rank after the stop: save the last step where not saved yet; rank 0 then completes every
        checkpoint still open, once a barrier says that every file is written. `wished`: the master's stop asked
        for a checkpoint (--checkpoint-on-signal), which every rank learnt from it, so all agree."""
        if not (checkpointer.enabled or wished and checkpointer.can_write):
            return
        if checkpointer.last_saved != step and step > self.start_step:
            self.save_checkpoint(checkpointer, step, epoch)
        if self.size > 1:
            self.context.rank.comm.barrier()
        if self.rank == 0:
            self._complete_open_checkpoints()
            for done in checkpointer.pending():
                checkpointer.confirmed(done)

    def _complete_open_checkpoints(self) -> None:
        """Rank 0 after the stop, every rank's files written: write what it still owes to a checkpoint taken
        mid-run (the asynchronous master's file waits for its workers')."""

    @property
    def _needs_calibration(self) -> bool:
        return self.config.method == "amb" and self.config.time_limit is None

    def _make_worker(self, rank: int) -> Worker:
        from anytimectl.data import shard_indices

        dataset, seed = self.dataset, self.config.seed
        shard = shard_indices(len(dataset.x_train), self.workers, rank - 1, seed)
        stream = BatchStream(dataset.x_train[shard], dataset.y_train[shard], seed, rank)
        worker = Worker(rank, self.engine, stream, self.config, self.context.delay, self.context.slow.get(rank, 1.0))
        worker.clock.stopped = lambda: self.context.stopper.reason is not None
        return worker

    def metadata(self) -> dict[str, Any]:
        return {"test_examples": len(self.x_test)}

    def run(self) -> RunOutcome:
        rank = self.context.rank
        if rank.rank != 0:
            self._run_worker()
            return RunOutcome(None)
        return self._run_master()

    def _record_time_limit(self, time_limit: float | None) -> None:
        """Once the AMB limit is known (calibrated for --time-limit auto), metadata and the original's args.json
        say the limit the workers use, and the user is told."""
        context = self.context
        run_dir = context.run_dir
        run_dir.metadata["config"]["time_limit"] = time_limit
        run_dir.save_metadata()
        write_json_atomic(run_dir.path / ARGS_FILE,
                          original_args({**run_dir.metadata["config"], "method": self.config.method},
                                        run_dir.metadata.get("straggler"), self.workers, time_limit=time_limit))
        if self.config.method == "amb":
            context.note(f"AMB time limit {time_limit:.3f} s"
                         + (" (calibrated: --time-limit auto)" if self.config.time_limit is None else ""))

    @property
    def replicated(self) -> bool:
        return self.context.rank.size > 1 and replicated_updates(self.context.hosts, self.context.devices)

    def _run_worker(self) -> None:
        comm = self.context.rank.comm
        row = LAYOUT.new()
        row[LAYOUT["calibration"]] = self.calibration
        comm.gather(row, None).wait()
        params = np.zeros(self.engine.param_count, dtype=np.float32)
        checkpointer = self.make_checkpointer()

        def after_update(step: int) -> None:
            if checkpointer.due(step):
                self.save_checkpoint(checkpointer, step, 0.0)

        worker_loop(self.worker, comm, params, np.zeros(HEADER_SIZE), replicated=self.replicated,
                    after_update=after_update)
        self._final_checkpoint(checkpointer, self.worker.update_step, 0.0, self.worker.checkpoint_wished)

    def _run_master(self) -> RunOutcome:
        context = self.context
        rank, recorder = context.rank, context.recorder
        if rank.size > 1:
            calibration = np.zeros((rank.size, len(LAYOUT)))
            rank.comm.gather(LAYOUT.new(), calibration).wait()
            per_micro = calibration[1:, LAYOUT["calibration"]]
        else:
            per_micro = np.array([self.calibration])
        schedule = Schedule.from_config(context.config, self.config.steps)
        ranks = list(range(1, self.workers + 1))

        def on_step(result: StepResult) -> None:
            f = LAYOUT
            result.rows[:, f["time"]] = result.applied_at
            result.rows[:, f["wait_time"]] = result.wait_time
            result.rows[:, f["step"]] = result.step
            recorder.step(StepRecord(
                step=result.step, time=result.applied_at, loss=result.loss, learning_rate=result.learning_rate,
                epoch=result.epoch, ranks=result.ranks or ranks, rows=result.rows, test_loss=result.test_loss,
                accuracy=result.accuracy, wait_time=result.wait_time, collect={"time_limit": result.time_limit},
                spans=result.spans))

        master = Master(self.engine, self.config, Evaluator(self.engine, self.x_test, self.y_test), schedule.at,
                        context.stopper, on_step, context.log)
        master.resolve_time_limit(per_micro, context.delay)
        replicated = self.replicated
        transport: Any = (MpiMasterTransport(master, rank.comm, self.engine.param_count, replicated)
                          if rank.size > 1 else LocalTransport(master, self.local_worker))
        self.master, self.transport = master, transport
        self._resume_master(master, transport, recorder)
        self._record_time_limit(master.time_limit)
        checkpointer = self.make_checkpointer()
        self.master_step = master.start_step

        def after_step(step: int, last: bool) -> None:
            self.master_step = step
            if checkpointer.due(step) and not last:  # the last step is saved after the stop, by every rank
                self.save_checkpoint(checkpointer, step, master.examples / self.config.train_examples)

        def after_collect(step: int) -> None:
            # every worker wrote its file of an earlier step before it sent this step's contribution
            for done in checkpointer.pending():
                if done < step:
                    checkpointer.confirmed(done)

        master.after_step, master.after_collect = after_step, after_collect
        step, reason = master.run(transport.collect, transport.broadcast, on_start=recorder.start_clock,
                                  replicated=replicated)
        self.master_step = step
        self._final_checkpoint(checkpointer, step, master.examples / self.config.train_examples,
                               master.checkpoint_wished)
        summary: dict[str, Any] = {"time_limit": master.time_limit, "replicated_updates": replicated,
                                   "shared_memory": rank.size > 1 and rank.comm.uses_shared_memory is True}
        if replicated:
            summary["replica_resyncs"] = transport.resyncs
        return RunOutcome(reason, summary)


def backend_dataset(backend: str, config: MasterWorkerConfig) -> Any:
    """The data a backend brings itself (the simulated backend's example numbers), or None: load the dataset."""
    import importlib

    make = getattr(importlib.import_module(f"anytimectl.backends.{backend}"), "make_dataset", None)
    return make(config) if make is not None else None


PROTOCOL = MasterWorkerProtocol
