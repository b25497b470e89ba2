"""Asynchronous AMB and FMB (`--protocol async`): the original's Async-Timed design (JSAIT'21), on any backend.

Workers never wait for the master and the master never waits for a worker:
- A worker computes a contribution (FMB: its batch; AMB: micro-batches until the time limit), hands
  (sum of gradients, count, its row) to the master and goes straight on computing with the parameters it has.
  Whenever a newer model has arrived it takes it: FMB between contributions, AMB also between micro-batches (so a
  contribution may mix gradients of two models, as in the original). It always takes the newest model; models it
  did not get to in time are skipped, never queued (their number is `last_queued_update_count`).
- The master takes contributions as they arrive and adds them up. Once the rule is met, `--async-master batch`
  (at least `--async-batch-min` contributions) or `time` (`--async-time-limit` seconds since the last update and
  at least one contribution), it divides by the total count, applies the update and publishes the new parameters
  to every worker without waiting for any of them.
- `--async-delay-std S` simulates communication stragglers as the original did: each message is delivered
  |N(0, S)| seconds after it arrived (contributions at the master, models at the workers), drawn from a generator
  seeded by (--seed, worker, message number), and never before the same worker's previous message (a link
  delivers in order).

Per contribution the tables record `worker_step` (the worker's own count of contributions), `worker_master_step`
(the master step of the newest model the contribution used), `last_queued_update_count`, `staleness` (the updates
applied between the model the contribution was computed on and the one it is applied to: master step - 1 -
worker_master_step; synchronous SGD has 0) and `comm_delay` (the simulated delay of that message). Each master
step has one row per contribution it applied, so a worker may have several rows in a step, or none.

The channel is `protocols/async_channel.py`: shared memory with doorbells on one host, MPI point-to-point
across hosts. Everything else (launch, run directory, live view, stop and failure handling) is the run shell's.

Checkpoints: nobody waits for anybody, so a checkpoint is a consistent cut rather than one instant of every rank
(`CheckpointCuts`). After the update of every N-th step the master takes a copy of its state (engine, counters,
AMB's time limit and calibration sums, and its queue: the delayed contributions taken but not applied, with the
delay each has left) and marks the models it publishes with that step (the header's HEADER_CHECKPOINT slot); each
worker writes its state (engine, data position after the contributions it has handed over, its contribution count
k_w) at its next point between two contributions after it took such a model. The contributions a worker handed
over before its point that the master took after its copy were in flight: the master keeps a copy of each
contribution it takes while a cut is open, and once every worker's file exists (it reads k_w there) and it has
taken each worker's contribution k_w, it writes its file: its state at N and those in-flight contributions, which a
resumed master takes first, in the order it took them. It completes the checkpoint once that step's rows are in the
tables. Nothing handed over is lost or applied twice across a resume. At the end of a run the state is quiescent:
the master has taken everything handed over (`finish`), every rank saves after the stop, and the contributions
taken but not applied are in the master's queue, applied first when the run continues. A cut that a worker never
reached before the stop (it took no model between the mark and the stop) is removed.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from anytimectl.protocols.base import RunOutcome
from anytimectl.protocols.master_worker import (
    HEADER_RESYNC,
    HEADER_SIZE,
    HEADER_STEP,
    HEADER_STOP,
    HEADER_TIME_LIMIT,
    LAYOUT,
    ROW_FIELDS,
    STOP_FINISHED,
    STOP_NONE,
    Master,
    MasterWorkerProtocol,
    StepResult,
    Worker,
)
from anytimectl.runtime import checkpoints
from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.evaluation import Evaluator
from anytimectl.runtime.records import Columns, LiveColumn, RowLayout, StepRecord
from anytimectl.runtime.run_config import AsyncMasterWorkerConfig
from anytimectl.runtime.schedules import Schedule

ASYNC_FIELDS = ("worker_step", "worker_master_step", "last_queued_update_count", "staleness", "comm_delay")
ASYNC_LAYOUT = RowLayout((*ROW_FIELDS, *ASYNC_FIELDS))
#: Longest the master sleeps before it looks again on its own.
MASTER_NAP = 0.05
#: At most this many delayed models a worker holds back (the oldest is dropped beyond it).
MAX_HELD_MODELS = 4
#: The latest step whose checkpoint the workers are asked to write (the asynchronous protocol has no replicated
#: updates, so it uses that slot of the header).
HEADER_CHECKPOINT = HEADER_RESYNC


@dataclass
class AsyncConfig:
    master: str  # "batch" or "time"
    batch_min: int
    time_limit: float
    delay_std: float | None  # None: no simulated communication delay


def comm_delay(seed: int, worker: int, number: int, direction: int, std: float | None) -> float:
    """The simulated delay of message `number` of `worker` (direction 1: to the master, 2: to the worker)."""
    if not std:
        return 0.0
    return float(abs(np.random.default_rng([seed, worker, number, direction, 0xDE1A]).normal(0.0, std)))


# --- the worker ------------------------------------------------------------------------------------------------------
class ModelInbox:
    """The models a worker has been sent, each delivered after its simulated delay; `take` gives the newest
    delivered one (skipping older ones) and says how many arrived since the last take."""

    def __init__(self, channel: Any, rank: int, seed: int, delay_std: float | None, param_count: int):
        self.channel = channel
        self.rank, self.seed, self.delay_std = rank, seed, delay_std
        self.param_count = param_count
        self.held: list[tuple[float, int, np.ndarray, np.ndarray]] = []  # (due, version, header, params)
        self.version = 0
        self.arrived = 0  # models seen since the last take

    def take(self, header: np.ndarray, params: np.ndarray) -> int:
        """Copy the newest delivered model into header/params; returns how many models arrived since the last
        take (0: nothing new)."""
        if not self.delay_std:
            version = self.channel.newest(header, params)
            if not version:
                return 0
            queued, self.version = version - self.version, version
            return queued
        incoming_header, incoming = np.zeros(HEADER_SIZE), np.zeros(self.param_count, dtype=np.float32)
        version = self.channel.newest(incoming_header, incoming)
        if version:
            self.arrived += version - max(self.version, self.held[-1][1] if self.held else 0)
            due = time.time() + comm_delay(self.seed, self.rank, version, 2, self.delay_std)
            self.held.append((due, version, incoming_header, incoming))
            if len(self.held) > MAX_HELD_MODELS:
                self.held.pop(0)
        now = time.time()
        ready = [item for item in self.held if item[0] <= now]
        if not ready:
            return 0
        newest = max(ready, key=lambda item: item[1])
        self.held = [item for item in self.held if item[1] > newest[1]]
        np.copyto(header, newest[2])
        np.copyto(params, newest[3])
        self.version = newest[1]
        queued, self.arrived = self.arrived, 0
        return max(1, queued)

    @property
    def stopped(self) -> bool:
        return bool(self.channel.stopped)


def async_round(worker: Worker, step: int, time_limit: float | None, between: Any) -> np.ndarray:
    """One contribution: sleep the induced delay, then compute. AMB's engine calls `between()` before each
    micro-batch but the first (it may swap in a newer model), under the engines' deadline rule: a micro-batch
    starts only if, at the round's pace so far, it ends in time; at least one runs."""
    clock, engine = worker.clock, worker.engine
    clock.begin(step)
    x, y = worker.stream.peek(worker.config.batch_size)
    if worker.config.method != "amb":
        total, examples, done = engine.compute(x, y, 1, math.inf)
    else:
        deadline = clock.real_deadline(time_limit) if time_limit is not None else math.inf
        total, examples, done = engine.compute(x, y, worker.micro_batches, deadline, between=between)
    worker.stream.advance(examples)
    clock.computed(examples)
    worker.row[ASYNC_LAYOUT["partitions_done"]] = done
    return total


def async_worker_loop(worker: Worker, channel: Any, comm: Any, seed: int, delay_std: float | None,
                      first: int = 0, checkpoint: Any = None) -> int:
    """A worker until the master publishes the stop: contribute, take the newest model, repeat. Returns the
    contributions it sent (counting from `first`, a resumed run's count). `checkpoint(step)`: called between two
    contributions once a model asks for the checkpoint of `step` (see the module notes); `worker.handed_over` is
    the data position after the contributions handed over."""
    f = ASYNC_LAYOUT
    engine = worker.engine
    header = np.zeros(HEADER_SIZE)
    params = np.zeros(engine.param_count, dtype=np.float32)
    inbox = ModelInbox(channel, worker.rank, seed, delay_std, engine.param_count)
    inbox.version = channel.wait_model(header, params)
    engine.set_params(params)
    state = {"model_step": int(header[HEADER_STEP]), "queued": 0, "stop": header[HEADER_STOP] != STOP_NONE,
             "time_limit": float(header[HEADER_TIME_LIMIT]), "checkpoint": int(header[HEADER_CHECKPOINT])}
    saved = state["checkpoint"]  # asked for before this worker started: a resumed run's own, or none
    worker.handed_over = int(worker.stream.position)
    worker.clock.received()

    def take_newest() -> None:
        queued = inbox.take(header, params)
        if queued:
            engine.set_params(params)
            state["model_step"] = int(header[HEADER_STEP])
            state["queued"] = queued
            state["time_limit"] = float(header[HEADER_TIME_LIMIT])
            state["checkpoint"] = max(state["checkpoint"], int(header[HEADER_CHECKPOINT]))
            if header[HEADER_STOP] != STOP_NONE:
                state["stop"] = True

    sent = first
    while not state["stop"] and not inbox.stopped:
        limit = state["time_limit"]
        contribution = async_round(worker, sent + 1, limit if limit > 0 else None, take_newest)
        row = worker.row
        row[f["worker_step"]] = sent + 1
        row[f["worker_master_step"]] = state["model_step"]
        # the models found at the last take since the previous contribution (the one right after that send, or
        # one during this round); 0 when none arrived
        row[f["last_queued_update_count"]] = state["queued"]
        state["queued"] = 0
        worker.clock.bytes(comm.bytes.sent, comm.bytes.received)
        handed = time.time()
        if not channel.send(contribution, row):
            break
        worker.clock.sent(handed)
        sent += 1
        worker.examples_sent += int(row[f["num_samples"]])
        worker.handed_over = int(worker.stream.position)
        worker.contributions = sent
        take_newest()
        worker.clock.received()
        if checkpoint is not None and state["checkpoint"] > saved and not state["stop"]:
            saved = state["checkpoint"]
            checkpoint(saved)
    channel.leave()
    return sent


# --- the master ------------------------------------------------------------------------------------------------------
class AsyncMaster(Master):
    """The master's loop: take contributions as they arrive, update when the rule is met, publish, repeat."""

    def __init__(self, *args: Any, channel: Any, settings: AsyncConfig, workers: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.channel = channel
        self.settings = settings
        self.workers = workers
        self.applied_counts = 0  # examples applied, as the contributions counted them
        self.taken_counts = 0  # examples in every contribution taken (applied, or left over at the stop)
        self.taken = 0  # contributions taken
        self.applied = 0  # contributions applied (rows in worker_stats)
        #: contributions taken but not applied: summed (and their rows, ranks), and delayed ones with the time
        #: they are due (as seconds left before `run_async` starts, for a resumed run's queue)
        self.accumulated: np.ndarray | None = None
        self.queue_rows: list[np.ndarray] = []
        self.queue_ranks: list[int] = []
        self.held: list[tuple[float, int, np.ndarray, np.ndarray]] = []
        self.checkpoint_step = 0  # the latest step whose checkpoint the workers are asked for
        #: called after the update of a step that is not the last, before its model is published
        self.before_publish: Any = None
        #: called on every turn of the loop (checkpoints are completed there)
        self.each_turn: Any = None
        #: called with (rank, data, stats) of every contribution as it is taken, before anything changes them
        self.on_taken: Any = None
        #: a resumed run's contributions in flight at its checkpoint (see `CheckpointCuts`): taken first
        self.in_flight: list[tuple[int, np.ndarray, np.ndarray]] = []

    def state(self) -> dict[str, Any]:
        """The master's counters and its queue (see the module notes), for a checkpoint."""
        now = time.time()
        accumulated = self.accumulated if self.accumulated is not None else np.zeros(0, dtype=np.float32)
        return {**super().state(), "applied_counts": self.applied_counts, "taken_counts": self.taken_counts,
                "taken": self.taken, "applied": self.applied,
                "queue": {"accumulated": accumulated.copy(), "rows": [np.array(r) for r in self.queue_rows],
                          "ranks": list(self.queue_ranks),
                          "held": [(max(0.0, due - now), rank, np.array(data), np.array(row))
                                   for due, rank, data, row in self.held]}}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.applied_counts, self.taken_counts = int(state["applied_counts"]), int(state["taken_counts"])
        self.taken, self.applied = int(state["taken"]), int(state["applied"])
        queue = state["queue"]
        accumulated = np.asarray(queue["accumulated"], dtype=np.float32)
        self.accumulated = accumulated.copy() if accumulated.size else None
        self.queue_rows = [np.asarray(r, dtype=np.float64) for r in queue["rows"]]
        self.queue_ranks = [int(r) for r in queue["ranks"]]
        self.held = [(float(left), int(rank), np.asarray(data, dtype=np.float32), np.asarray(row, dtype=np.float64))
                     for left, rank, data, row in queue["held"]]
        self.in_flight = [(int(rank), np.asarray(data, dtype=np.float32), np.asarray(stats, dtype=np.float64))
                          for rank, data, stats in state.get("in_flight", [])]
        self.checkpoint_step = self.start_step

    def run_async(self, param_count: int, on_start: Any = None) -> tuple[int, str]:
        s = self.settings
        header = np.zeros(HEADER_SIZE)
        if self.accumulated is None:
            self.accumulated = np.zeros(param_count + 2, dtype=np.float32)
        accumulated = self.accumulated
        rows, ranks = self.queue_rows, self.queue_ranks
        # delayed contributions: (due, rank, data, row); a resumed run's are due after the delay they had left
        started = time.time()
        held = self.held
        held[:] = [(started + left, rank, data, row) for left, rank, data, row in held]
        # A link delivers in order: a worker's message is never due before its previous one (else a short delay
        # drawn for message k+1 would let it overtake message k, which no FIFO link does).
        last_due: dict[int, float] = {}
        for due, rank, _, _ in held:
            last_due[rank] = max(due, last_due.get(rank, 0.0))
        f = ASYNC_LAYOUT
        update = self.start_step

        def publish(stop: bool) -> None:
            header[:] = 0.0
            header[HEADER_STEP] = update
            header[HEADER_STOP] = STOP_FINISHED if stop else STOP_NONE
            header[HEADER_TIME_LIMIT] = self.time_limit or 0.0
            header[HEADER_CHECKPOINT] = self.checkpoint_step
            self.channel.publish(header, self.engine.get_params(), stop=stop)

        def add(rank: int, data: np.ndarray, row: np.ndarray) -> None:
            np.add(accumulated, data, out=accumulated)
            row[f["staleness"]] = update - row[f["worker_master_step"]]
            rows.append(row)
            ranks.append(rank)

        def consume(rank: int, data: np.ndarray, stats: np.ndarray) -> None:
            if self.on_taken is not None:
                self.on_taken(rank, data, stats)
            row = np.array(stats, dtype=np.float64)
            self.taken_counts += int(round(data[-2]))
            self.taken += 1
            delay = comm_delay(self.config.seed, rank, int(row[f["worker_step"]]), 1, s.delay_std)
            row[f["comm_delay"]] = delay
            if delay > 0 or rank in held_ranks():
                due = max(time.time() + delay, last_due.get(rank, 0.0))
                last_due[rank] = due
                held.append((due, rank, np.array(data), row))
            else:
                add(rank, data, row)

        def held_ranks() -> set[int]:
            return {item[1] for item in held}

        # a resumed run: the contributions that were in flight at its checkpoint arrive first, in the order the
        # master of the run that wrote it took them
        for rank, data, stats in self.in_flight:
            consume(rank, data, stats)
        self.in_flight = []
        published_stop = False
        publish(False)
        self.origin = time.time()
        if on_start is not None:
            on_start(self.origin - self.start_elapsed)  # a resumed run's tables go on from the checkpoint's time
        last_update = self.origin
        waited = 0.0
        reason = None
        evaluating: StepResult | None = None
        while reason is None:
            self.channel.poll(consume)
            if self.each_turn is not None:
                self.each_turn()
            now = time.time()
            if held:
                due = [item for item in held if item[0] <= now]
                held[:] = [item for item in held if item[0] > now]
                for _, rank, data, row in sorted(due, key=lambda item: item[0]):
                    add(rank, data, row)
            ready = len(rows) >= s.batch_min if s.master == "batch" else (
                rows and now - last_update >= s.time_limit)
            if not ready:
                if self.stopper.reason:
                    reason = self.stopper.reason
                    break
                nap = MASTER_NAP
                if s.master == "time" and rows:
                    nap = min(nap, max(0.0, last_update + s.time_limit - now))
                if held:
                    nap = min(nap, max(0.0, min(item[0] for item in held) - now))
                wait_start = time.perf_counter()
                self.channel.wait_for_contributions(nap)
                waited += time.perf_counter() - wait_start
                continue
            update += 1
            collect_end = time.time()
            table = np.stack(rows)
            self.recalibrate(table)
            if evaluating is not None:  # the evaluation reads the parameters the update changes
                self._finish_evaluation(evaluating, self.evaluator.join())
                evaluating = None
            total = int(round(accumulated[-2]))
            self.examples += total
            self.applied_counts += total
            epoch = self.examples / self.config.train_examples
            rate = self.rate = self.learning_rate(update, epoch)
            loss = self.engine.apply(accumulated, rate)
            apply_end = time.time()
            applied_ranks = list(ranks)
            self.applied += len(rows)
            accumulated[:] = 0.0  # the queue now holds what was taken after this update only
            rows.clear()
            ranks.clear()
            reason = self.should_stop(update)
            if reason is None and self.before_publish is not None:
                self.before_publish(update)
            publish(reason is not None)
            published_stop = reason is not None
            result = StepResult(step=update, applied_at=apply_end, loss=loss, learning_rate=rate, epoch=epoch,
                                wait_time=waited, total_samples=total, rows=table, time_limit=self.time_limit,
                                ranks=applied_ranks)
            result.spans += [("collect", last_update, collect_end, {"contributions": len(rows)}),
                             ("apply", collect_end, apply_end, {}), ("broadcast", apply_end, time.time(), {})]
            last_update = time.time()
            waited = 0.0
            if reason is not None:
                self._finish_evaluation(result, self.evaluator.now())
            elif update % self.config.log_every == 0:
                evaluating = result
                self.evaluator.start()
            else:
                self.on_step(result)
        if evaluating is not None:
            self._finish_evaluation(evaluating, self.evaluator.join())
        if not published_stop:
            publish(True)
        self.channel.finish(consume)  # whatever was handed over after the last update is taken, not applied
        self.left_over = self.taken_counts - self.applied_counts
        return update, reason


# --- checkpoints on the master -------------------------------------------------------------------------------------
class CheckpointCuts:
    """The master's side of a checkpoint taken mid-run, a consistent cut of the master and every worker (the
    channel state of a Chandy-Lamport snapshot): the master's state right after the update of step N, and each
    worker's at the point between two contributions where it took a model marked N, after its contribution k_w.
    The contributions a worker handed over before its point that the master took after its own (k_w at most,
    in flight at the master's save) belong to neither rank's state: the master keeps a copy of each contribution
    it takes while a cut is open that may be one of them, and writes its file only once every worker's file exists
    (it reads k_w there) and it has taken each worker's k_w: its state at N plus those in-flight contributions,
    which a resumed master takes first. Nothing handed over is lost or counted twice.

    Which may be in flight: a worker's contributions before its point were computed on models older than N, but for
    the last one, k_w, which may have taken model N (or newer) between two micro-batches (AMB); the ones after its
    point all use a model of N or newer. So a contribution taken while the cut is open is kept if its
    `worker_master_step` is below N or it is that worker's first one of N or newer: a few per worker (what was
    on its way, at most one being computed), however long a worker takes to reach its point."""

    def __init__(self, checkpointer: Any, workers: int):
        self.checkpointer = checkpointer
        self.workers = workers
        #: step -> {"state", "info", "taken": [(rank, data, stats)], "fresh": ranks whose first contribution on a
        #: model of that step or newer was taken, "points": each worker's k_w, read once its file exists}
        self.open: dict[int, dict[str, Any]] = {}
        self.newest: dict[int, int] = {}  # rank -> the highest worker_step taken from it

    def start(self, step: int, state: dict[str, Any], info: dict[str, Any]) -> None:
        """The master's state after the update of `step`: detached from the live master and engine (Engine.state
        and Master.state return copies), so the steps made meanwhile do not change it."""
        self.open[step] = {"state": state, "info": dict(info), "taken": [], "fresh": set(), "points": {}}

    def taken(self, rank: int, data: np.ndarray, stats: np.ndarray) -> None:
        number = int(stats[ASYNC_LAYOUT["worker_step"]])
        self.newest[rank] = max(number, self.newest.get(rank, 0))
        model = int(stats[ASYNC_LAYOUT["worker_master_step"]])
        for step, cut in self.open.items():
            if model < step or rank not in cut["fresh"]:
                cut["taken"].append((rank, np.array(data, dtype=np.float32), np.array(stats, dtype=np.float64)))
            if model >= step:
                cut["fresh"].add(rank)

    def _points(self, step: int) -> dict[int, int] | None:
        """Each worker's k_w for the cut of `step`, or None while a worker's file is missing. Called on every turn
        of the master's loop while the cut is open: each file is read once, when it first exists."""
        run_dir = self.checkpointer.run_dir
        points = self.open[step]["points"]
        for rank in range(1, self.workers + 1):
            if rank not in points:
                path = checkpoints.rank_path(run_dir, step, rank)
                if path.is_file():
                    points[rank] = int(checkpoints.peek(path, "worker", "contributions"))
        return points if len(points) == self.workers else None

    def complete(self, final: bool = False) -> None:
        """Write the master's file of every open cut whose workers have all saved and whose in-flight
        contributions are all taken. `final` (after the stop, everything handed over taken): a cut that a worker
        never reached (the stop came first) cannot be completed; its folder is removed."""
        for step in sorted(self.open):
            points = self._points(step)
            if points is None:
                if final:
                    del self.open[step]
                    shutil.rmtree(checkpoints.step_dir(self.checkpointer.run_dir, step), ignore_errors=True)
                continue
            if not final and any(self.newest.get(rank, 0) < k for rank, k in points.items()):
                continue
            cut = self.open.pop(step)
            worker_step = ASYNC_LAYOUT["worker_step"]
            state = cut["state"]
            state["master"]["in_flight"] = [(rank, data, stats) for rank, data, stats in cut["taken"]
                                            if int(stats[worker_step]) <= points[rank]]
            self.checkpointer.save(step, state, cut["info"])


# --- the protocol in the run shell ---------------------------------------------------------------------------------
class AsyncMasterWorkerProtocol(MasterWorkerProtocol[AsyncMasterWorkerConfig]):
    """`train amb|fmb --protocol async`: rank 0 is the master, ranks 1..N the workers."""

    row_fields = (*ROW_FIELDS, *ASYNC_FIELDS)
    columns = Columns(worker=("partitions_done", *ASYNC_FIELDS), collect=("time_limit",))
    live_columns = (LiveColumn("stale", "staleness", "{:.0f}"),)

    def setup(self) -> None:
        if self.context.rank.size < 2:
            raise UsageError("--protocol async needs workers: use --workers 1 or more (or -n 2+ under mpiexec)")
        super().setup()
        c = self.context.config
        self.settings = AsyncConfig(master=c.async_master, batch_min=c.async_batch_min,
                                    time_limit=c.async_time_limit, delay_std=c.async_delay_std)

    def recorded_rows(self) -> int:
        """One row per contribution applied."""
        assert self.master is not None
        return int(self.master.applied)

    def _complete_open_checkpoints(self) -> None:
        cuts = getattr(self, "cuts", None)
        if cuts is not None:
            cuts.complete(final=True)

    def _make_worker(self, rank: int) -> Worker:
        worker = super()._make_worker(rank)
        worker.checks_between = True
        worker.clock.layout = ASYNC_LAYOUT
        worker.clock.row = ASYNC_LAYOUT.new()
        return worker

    def _channel(self) -> Any:
        from anytimectl.protocols.async_channel import open_async_channel

        return open_async_channel(self.context.rank.comm, self.engine.param_count + 2, len(ASYNC_LAYOUT),
                                  HEADER_SIZE, self.engine.param_count)

    def _run_worker(self) -> None:
        comm = self.context.rank.comm
        row = LAYOUT.new()
        row[LAYOUT["calibration"]] = self.calibration
        comm.gather(row, None).wait()
        channel = self._channel()
        checkpointer = self.make_checkpointer()

        def checkpoint(step: int) -> None:
            self.save_checkpoint(checkpointer, step, 0.0)

        sent = async_worker_loop(self.worker, channel, comm, self.config.seed, self.settings.delay_std,
                                 first=self.worker.contributions,
                                 checkpoint=checkpoint if checkpointer.enabled else None)
        last = np.zeros(2)  # the master's last step, and whether every rank saves it (--checkpoint-on-signal)
        comm.broadcast(last).wait()
        self._final_checkpoint(checkpointer, int(last[0]), 0.0, bool(last[1]))
        comm.gather(np.array([sent, self.worker.examples_sent], dtype=np.float64), None).wait()

    def _run_master(self) -> RunOutcome:
        context = self.context
        rank, recorder = context.rank, context.recorder
        calibration = np.zeros((rank.size, len(LAYOUT)))
        rank.comm.gather(LAYOUT.new(), calibration).wait()
        per_micro = calibration[1:, LAYOUT["calibration"]]
        schedule = Schedule.from_config(context.config, self.config.steps)
        f = ASYNC_LAYOUT
        recorded = {"step": 0}

        def on_step(result: StepResult) -> None:
            recorded["step"] = result.step
            result.rows[:, f["time"]] = result.applied_at
            result.rows[:, f["wait_time"]] = result.wait_time
            result.rows[:, f["step"]] = result.step
            recorder.step(StepRecord(
                step=result.step, time=result.applied_at, loss=result.loss, learning_rate=result.learning_rate,
                epoch=result.epoch, ranks=result.ranks or [], rows=result.rows,
                test_loss=result.test_loss, accuracy=result.accuracy, wait_time=result.wait_time,
                collect={"time_limit": result.time_limit}, spans=result.spans))

        channel = self._channel()
        master = AsyncMaster(self.engine, self.config, Evaluator(self.engine, self.x_test, self.y_test), schedule.at,
                             context.stopper, on_step, context.log, channel=channel, settings=self.settings,
                             workers=self.workers)
        master.resolve_time_limit(per_micro, context.delay)
        self.master = master
        self._resume_master(master, None, recorder)
        recorded["step"] = master.start_step
        self._record_time_limit(master.time_limit)
        checkpointer = self.make_checkpointer()
        self.master_step = master.start_step
        cuts = self.cuts = CheckpointCuts(checkpointer, self.workers)

        def before_publish(update: int) -> None:
            self.master_step = update
            if checkpointer.due(update):
                master.checkpoint_step = update
                epoch = master.examples / self.config.train_examples
                elapsed = time.time() - recorder.origin
                cuts.start(update, self.checkpoint_state(), {"examples": self.examples, "epoch": epoch,
                                                             "elapsed": elapsed})

        def each_turn() -> None:
            if cuts.open:  # the master's file, once every worker has saved and its in-flight contributions are in
                cuts.complete()
            if checkpointer.pending():  # the manifest, once that step's rows are in the tables too
                checkpointer.confirm_written(up_to=recorded["step"])

        master.before_publish, master.each_turn, master.on_taken = before_publish, each_turn, cuts.taken
        s = self.settings
        context.note(f"async master: {s.master} ("
                     + (f">= {s.batch_min} contributions" if s.master == "batch" else f"{s.time_limit:g} s")
                     + ")" + (f", simulated delay std {s.delay_std:g} s" if s.delay_std else ""))
        update, reason = master.run_async(self.engine.param_count, on_start=recorder.start_clock)
        wished = bool(getattr(context.stopper, "checkpoint_requested", False))  # decided once, here, for all
        rank.comm.broadcast(np.array([float(update), float(wished)])).wait()
        self.master_step = update
        self._final_checkpoint(checkpointer, update, master.examples / self.config.train_examples, wished)
        sent = np.zeros((rank.size, 2))
        rank.comm.gather(np.zeros(2), sent).wait()
        return RunOutcome(reason, {
            "time_limit": master.time_limit, "contributions_sent": int(sent[1:, 0].sum()),
            "contributions_taken": master.taken, "examples_sent": int(sent[1:, 1].sum()),
            "examples_applied": master.applied_counts, "examples_left_at_stop": master.left_over})


PROTOCOL = AsyncMasterWorkerProtocol
