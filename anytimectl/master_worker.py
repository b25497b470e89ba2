"""The synchronous master-worker protocol (AMB and FMB), independent of the framework that computes gradients.

One step: every worker starts its round, sleeps its induced delay, computes (FMB: its whole batch; AMB:
micro-batches until the time limit), and hands the master the SUM of its per-example gradients with its example
count and timing stats. The master divides by the total count (an example-weighted average, so AMB's uneven
batches are weighted correctly), adds weight decay once, applies the optimizer and broadcasts the parameters.

Evaluation on the test subset runs on the master in a thread *while the workers compute the next step*, so it
never holds them back (the original evaluated between steps and stalled everyone).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from anytimectl.data import BatchStream
from anytimectl.stragglers import DelayModel

#: Layout of the per-worker stats vector gathered by the master every step.
STAT_FIELDS = (
    "num_samples", "last_send", "last_recv", "last_exit", "sleep_time", "compute_time", "round_start",
    "partitions_done", "bytes_sent", "bytes_recv", "prev_send_start", "prev_recv_start", "prev_exit_start",
    "slow_padding", "calibration", "prev_compute_end",
)
STAT = {name: index for index, name in enumerate(STAT_FIELDS)}
#: Header broadcast with the parameters: step, stop flag, the AMB time limit the workers must use.
HEADER_STEP, HEADER_STOP, HEADER_TIME_LIMIT = 0, 1, 2
HEADER_SIZE = 3

STOP_NONE, STOP_FINISHED = 0.0, 1.0


class Engine(Protocol):
    """What a backend provides: a model as flat float32 buffers, and the arithmetic on it."""

    #: Length of the parameter buffer (trainable then non-trainable values).
    param_count: int

    def get_params(self) -> np.ndarray: ...

    def set_params(self, flat: np.ndarray) -> None: ...

    def compute(self, x: np.ndarray, y: np.ndarray, micro_batches: int, deadline: float) -> tuple[np.ndarray, int, int]:
        """Gradients of the summed loss over micro-batches of (x, y).

        A micro-batch starts only when it is expected to end before `deadline` (time.time() seconds); at least
        one always runs. Returns the contribution buffer of length param_count + 2 =
        [Σ grads, n x non-trainable values, n, Σ loss], the examples used, and the micro-batches run."""
        ...

    def apply(self, reduced: np.ndarray, learning_rate: float) -> float:
        """Apply the summed contributions as one update; return the mean training loss they carry."""
        ...

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(mean loss, accuracy) on a held-out set, without changing the model."""
        ...


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


@dataclass
class WorkerStats:
    """The phases of one worker round, absolute time.time() seconds."""

    round_start: float = 0.0
    compute_end: float = 0.0
    send_start: float = 0.0  # every worker is done and the transfer starts (waiting before it is idle time)
    recv_start: float = 0.0
    exit_start: float = 0.0


class Worker:
    """One worker's state across rounds; the same code serves MPI ranks and the single-process mode."""

    def __init__(self, rank: int, engine: Engine, stream: BatchStream, config: ProtocolConfig,
                 delay: DelayModel | None, slowdown: float):
        self.rank = rank
        self.engine = engine
        self.stream = stream
        self.config = config
        self.delay = delay
        self.slowdown = slowdown
        self.stats = np.full(len(STAT_FIELDS), -1.0)
        self.previous = WorkerStats()
        self.micro_batches = config.partitions if config.method == "amb" else 1

    def warm_up(self, calibrate: bool) -> float:
        """Compile the gradient function (so step 1 is not a tracing step) and, for `--time-limit auto`,
        time full-batch rounds: returns seconds per micro-batch (0 when not calibrating)."""
        x, y = self.stream.peek(self.config.batch_size)
        self.engine.compute(x, y, self.micro_batches, math.inf)
        if not calibrate:
            return 0.0
        times = []
        for _ in range(3):
            start = time.perf_counter()
            self.engine.compute(x, y, self.micro_batches, math.inf)
            times.append(time.perf_counter() - start)
        return float(np.median(times)) * self.slowdown / self.micro_batches

    def round(self, step: int, time_limit: float | None) -> np.ndarray:
        """Sleep, compute, and fill self.stats; returns the contribution buffer for the master."""
        round_start = time.time()
        delay = self.delay.sample(self.config.seed, self.rank, step) if self.delay else 0.0
        if delay > 0:
            time.sleep(delay)
        x, y = self.stream.peek(self.config.batch_size)
        compute_start = time.time()
        if self.config.method == "amb" and time_limit is not None:
            # A k-times slower rank gets 1/k of the remaining budget for real work and sleeps the rest.
            deadline = compute_start + (round_start + time_limit - compute_start) / self.slowdown
        else:
            deadline = math.inf
        buffer, examples, done = self.engine.compute(x, y, self.micro_batches, deadline)
        padding = 0.0
        if self.slowdown > 1:
            padding = (self.slowdown - 1) * (time.time() - compute_start)
            time.sleep(padding)
        self.stream.advance(examples)
        compute_end = time.time()
        s = self.stats
        s[STAT["num_samples"]] = examples
        s[STAT["sleep_time"]] = delay + padding
        s[STAT["compute_time"]] = compute_end - round_start
        s[STAT["round_start"]] = round_start
        s[STAT["partitions_done"]] = done
        s[STAT["slow_padding"]] = padding
        prev = self.previous
        if prev.round_start > 0:
            # Waiting for the slowest worker before the transfer is idle time, like waiting for the model.
            s[STAT["last_send"]] = prev.recv_start - prev.send_start
            s[STAT["last_recv"]] = (prev.send_start - prev.compute_end) + (prev.exit_start - prev.recv_start)
            s[STAT["last_exit"]] = round_start - prev.exit_start
            s[STAT["prev_compute_end"]] = prev.compute_end
            s[STAT["prev_send_start"]] = prev.send_start
            s[STAT["prev_recv_start"]] = prev.recv_start
            s[STAT["prev_exit_start"]] = prev.exit_start
        self.previous = WorkerStats(round_start=round_start, compute_end=compute_end)
        return buffer

    def sent(self, transfer_start: float | None = None) -> None:
        """The result is with the master; `transfer_start`: when every worker was ready and it began to move."""
        self.previous.send_start = transfer_start or self.previous.compute_end
        self.previous.recv_start = time.time()

    def received(self) -> None:
        self.previous.exit_start = time.time()


@dataclass
class StepResult:
    """What the master learned in one step, for the run directory and the live view."""

    step: int
    time: float  # seconds since the run started, when the update was applied
    loss: float
    learning_rate: float
    epoch: float
    wait_time: float
    total_samples: int
    worker_stats: np.ndarray  # (workers, len(STAT_FIELDS))
    time_limit: float | None = None  # the AMB limit the workers used in this step
    test_loss: float | None = None
    accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Stopper:
    """Turns Ctrl-C / SIGTERM into a request to stop at the end of the current step (a second Ctrl-C aborts)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = "interrupted by Ctrl-C" if signum == signal.SIGINT else f"stopped by signal {signum}"


class Evaluator:
    """Runs the master's test evaluation in a thread so the next round proceeds meanwhile."""

    def __init__(self, engine: Engine, x: np.ndarray, y: np.ndarray):
        self.engine, self.x, self.y = engine, x, y
        self._thread: threading.Thread | None = None
        self._result: tuple[float, float] | None = None
        self._error: BaseException | None = None
        self.start_time = self.end_time = 0.0

    def start(self) -> None:
        def run() -> None:
            self.start_time = time.time()
            try:
                self._result = self.engine.evaluate(self.x, self.y)
            except BaseException as error:  # noqa: BLE001 - re-raised in join
                self._error = error
            self.end_time = time.time()

        self._result = self._error = None
        self._thread = threading.Thread(target=run, name="evaluate", daemon=True)
        self._thread.start()

    def join(self) -> tuple[float, float]:
        assert self._thread is not None
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def now(self) -> tuple[float, float]:
        self.start()
        return self.join()


class Master:
    """The master's loop, over any transport that can collect contributions and broadcast parameters."""

    def __init__(self, engine: Engine, config: ProtocolConfig, evaluator: Evaluator,
                 learning_rate: Callable[[int, float], float], stopper: Stopper,
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

    def resolve_time_limit(self, per_micro_batch: np.ndarray, delay: DelayModel | None) -> None:
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

    def recalibrate(self, stats: np.ndarray) -> None:
        if not self.auto:
            return
        self._compute_seconds += float(np.sum(stats[:, STAT["compute_time"]] - stats[:, STAT["sleep_time"]]))
        self._micro_batches += float(np.sum(stats[:, STAT["partitions_done"]]))
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
            broadcast: Callable[[int, float], float]) -> tuple[int, str]:
        """Drive steps until a stop condition; returns (steps done, why it stopped).

        collect(step) waits for every worker's contribution and returns (reduced buffer, stats rows, wait time);
        broadcast(step, stop_flag) sends the parameters and returns the time it took.
        """
        pending: StepResult | None = None  # its evaluation is running during the current round
        broadcast(0, STOP_NONE)
        self.origin = time.time()
        step = 0
        reason = None
        while reason is None:
            step += 1
            if pending is not None:
                self.evaluator.start()
            collect_start = time.time()
            reduced, stats, wait_time = collect(step)
            collect_end = time.time()
            time_limit = self.time_limit
            self.recalibrate(stats)
            if pending is not None:
                self._finish_evaluation(pending, self.evaluator.join())
                pending = None
            total = int(round(reduced[-2]))
            self.examples += total
            epoch = self.examples / self.config.train_examples
            rate = self.learning_rate(step, epoch)
            loss = self.engine.apply(reduced, rate)
            apply_end = time.time()
            result = StepResult(step=step, time=apply_end - self.origin, loss=loss, learning_rate=rate,
                                epoch=epoch, wait_time=wait_time, total_samples=total, worker_stats=stats,
                                time_limit=time_limit)
            reason = self.should_stop(step)
            broadcast(step, STOP_FINISHED if reason else STOP_NONE)
            result.extra.update(collect_start=collect_start, collect_end=collect_end, apply_end=apply_end,
                                broadcast_end=time.time())
            if reason is not None:
                self._finish_evaluation(result, self.evaluator.now())
            elif step % self.config.log_every == 0:
                pending = result
            else:
                self.on_step(result)
        return step, reason

    def _finish_evaluation(self, result: StepResult, outcome: tuple[float, float]) -> None:
        result.test_loss, result.accuracy = outcome
        result.extra.update(evaluate_start=self.evaluator.start_time, evaluate_end=self.evaluator.end_time)
        self._account_accuracy(result.accuracy)
        self.on_step(result)

    def _account_accuracy(self, accuracy: float | None) -> None:
        if accuracy is not None and (self.best_accuracy is None or accuracy > self.best_accuracy):
            self.best_accuracy = accuracy


def worker_loop(worker: Worker, comm: Any, param_buffer: np.ndarray, header: np.ndarray) -> int:
    """An MPI worker: receive parameters, run a round, send, until the master says stop. Returns steps run."""
    steps = 0
    while True:
        comm.distribute(header, param_buffer)
        worker.received()
        if header[HEADER_STOP] != STOP_NONE:
            return steps
        worker.engine.set_params(param_buffer)
        step = int(header[HEADER_STEP]) + 1
        time_limit = float(header[HEADER_TIME_LIMIT])
        contribution = worker.round(step, time_limit if time_limit > 0 else None)
        worker.stats[STAT["bytes_sent"]] = comm.bytes.sent
        worker.stats[STAT["bytes_recv"]] = comm.bytes.received
        comm.collect(contribution, None, worker.stats, None)
        worker.sent(comm.ready_at)
        steps += 1


class MpiMasterTransport:
    """The master's side of worker_loop."""

    def __init__(self, master: Master, comm: Any, param_count: int):
        self.master = master
        self.comm = comm
        self.header = np.zeros(HEADER_SIZE)
        self.params = np.zeros(param_count, dtype=np.float32)
        self.contribution = np.zeros(param_count + 2, dtype=np.float32)
        self.reduced = np.zeros(param_count + 2, dtype=np.float32)
        self.stats = np.zeros(len(STAT_FIELDS))
        self.all_stats = np.zeros((comm.size, len(STAT_FIELDS)))

    def collect(self, step: int) -> tuple[np.ndarray, np.ndarray, float]:
        wait = self.comm.collect(self.contribution, self.reduced, self.stats, self.all_stats)
        return self.reduced, self.all_stats[1:].copy(), wait

    def broadcast(self, step: int, stop: float) -> float:
        start = time.perf_counter()
        self.header[:] = (step, stop, self.master.time_limit or 0.0)
        self.params[:] = self.master.engine.get_params()
        self.comm.distribute(self.header, self.params)
        return time.perf_counter() - start


class LocalTransport:
    """`--workers 0`: the master and one worker in one process, no MPI."""

    def __init__(self, master: Master, worker: Worker):
        self.master = master
        self.worker = worker

    def collect(self, step: int) -> tuple[np.ndarray, np.ndarray, float]:
        self.worker.received()  # the worker shares the master's engine, so it already holds the parameters
        contribution = self.worker.round(step, self.master.time_limit)
        self.worker.sent()
        return contribution, self.worker.stats[None, :].copy(), 0.0

    def broadcast(self, step: int, stop: float) -> float:
        return 0.0

