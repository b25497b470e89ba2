"""`train amb|fmb` on every rank: launch, set up, run the master-worker protocol, record, and end cleanly.

Rank 0 owns the run directory and the live view; workers only compute. However the run ends, rank 0 records
it: completed, interrupted (Ctrl-C, SIGTERM) or failed with the reason. If rank 0 itself is killed, the
re-launching parent marks the run failed when the MPI job exits.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from anytimectl import __version__
from anytimectl.errors import UsageError
from anytimectl.launch import (
    RUN_DIR_VARIABLE,
    RankInfo,
    in_mpi_job,
    mpi_library_version,
    relaunch,
    select_device,
    start_rank,
)
from anytimectl.master_worker import (
    HEADER_SIZE,
    STAT,
    STAT_FIELDS,
    Evaluator,
    LocalTransport,
    Master,
    MpiMasterTransport,
    ProtocolConfig,
    StepResult,
    Stopper,
    Worker,
    worker_loop,
)
from anytimectl.rundir import (
    COLLECT_COLUMNS,
    MASTER_COLUMNS,
    WORKER_COLUMNS,
    RunDirectory,
    mark_if_unfinished,
    reserve,
)
from anytimectl.schedules import Schedule

HOST_BYTES = 64


@dataclass
class TrainOptions:
    """Every resolved option of `train amb|fmb`; stored whole in metadata.json."""

    method: str
    dataset: str = "digits"
    data_dir: str | None = None
    model: str | None = None
    workers: int | None = None
    batch_size: int = 128
    partitions: int = 1
    time_limit: float | None = None
    time_limit_requested: str | None = None
    match_batch: int | None = None
    optimizer: str = "rms"
    learning_rate: float = 1e-3
    lr_schedule: str = "const"
    lr_linear_end: float = 1e-4
    lr_decay_steps: int = 50
    lr_decay_rate: float = 0.9
    lr_staircase: bool = True
    lr_epochs_every: float = 10.0
    lr_epochs_frac: float = 0.5
    weight_decay: float = 5e-4
    steps: int | None = 60
    epochs: float | None = None
    target_accuracy: float | None = None
    test_size: int = 500
    log_every: int = 1
    seed: int = 0
    induce: str | None = None
    slow: dict[int, float] = field(default_factory=dict)
    threads: int | None = None
    device: str = "cpu"
    gpus_per_node: int | None = None
    out: str = "runs"
    name: str | None = None
    mpiexec: str | None = None
    hosts: str | None = None
    output: str = "auto"  # auto | quiet | json

    def schedule(self) -> Schedule:
        return Schedule(kind=self.lr_schedule, base=self.learning_rate, linear_end=self.lr_linear_end,
                        total_steps=self.steps or 0, decay_steps=self.lr_decay_steps, decay_rate=self.lr_decay_rate,
                        staircase=self.lr_staircase, epochs_every=self.lr_epochs_every,
                        epochs_frac=self.lr_epochs_frac)

    def default_run_id(self, workers: int) -> str:
        return f"{self.method}-{self.dataset}-w{workers}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def train(options: TrainOptions, argv: list[str]) -> int:
    """Entry point on every process; returns the exit code."""
    if not in_mpi_job() and options.workers:
        return _relaunch_as_job(options, argv)
    rank = start_rank(options.threads)
    if rank.size > 1 and options.workers is not None and options.workers != rank.size - 1:
        # every rank sees this alike: each leaves with 2 and only rank 0 speaks (cli.main)
        raise UsageError(f"--workers {options.workers} disagrees with this MPI job of {rank.size} ranks "
                         f"({rank.size - 1} workers); drop --workers when starting with mpiexec")
    if rank.size == 1 and in_mpi_job() and options.workers:
        raise UsageError("an MPI job of one rank has no workers; start it with -n 2 or more, "
                         "or run without mpiexec and use --workers N")
    return _run_rank(options, rank)


def _relaunch_as_job(options: TrainOptions, argv: list[str]) -> int:
    assert options.workers
    run_dir = reserve(Path(options.out), options.name, options.default_run_id(options.workers))
    code = relaunch(options.workers, argv, options.mpiexec, options.hosts, {RUN_DIR_VARIABLE: str(run_dir)})
    if code != 0:
        status = "interrupted" if code in (130, -signal.SIGINT) else "failed"
        mark_if_unfinished(run_dir, status, f"the MPI job ended with exit code {code} before rank 0 recorded "
                                            "the end (a rank crashed or was killed)")
        if not (run_dir / "metadata.json").exists():
            _remove_if_empty(run_dir)
    return code


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _run_rank(options: TrainOptions, rank: RankInfo) -> int:
    from anytimectl.data import load_dataset, test_subset
    from anytimectl.stragglers import parse_induce

    device = select_device(options.device, rank.rank, rank.local_rank, options.gpus_per_node)
    delay = parse_induce(options.induce)
    run_dir = _open_run_dir_or_abort(options, rank) if rank.is_master else None
    stopper = Stopper()
    if rank.is_master:
        stopper.install()
    else:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when to stop; workers follow
    try:
        from anytimectl.backends.tensorflow.engine import TensorFlowEngine, configure

        configure(rank.threads, options.seed)
        dataset = load_dataset(options.dataset, options.data_dir, options.seed)
        engine = TensorFlowEngine(options.model, dataset.input_shape, dataset.num_classes, options.optimizer,
                                  options.learning_rate, options.weight_decay)
        protocol = ProtocolConfig(
            method=options.method, batch_size=options.batch_size, partitions=options.partitions,
            time_limit=options.time_limit, match_batch=options.match_batch, steps=options.steps,
            epochs=options.epochs, target_accuracy=options.target_accuracy, log_every=options.log_every,
            seed=options.seed, train_examples=len(dataset.x_train))
        if rank.is_master:
            x_test, y_test = test_subset(dataset, options.test_size, options.seed)
            return _master(options, rank, engine, protocol, Evaluator(engine, x_test, y_test), run_dir, stopper,
                           delay, dataset, device)
        worker = _make_worker(rank.rank, rank.workers, engine, dataset, protocol, delay, options)
        _worker(worker, rank, device)
        return 0
    except BaseException as error:
        if run_dir is not None:
            status, reason = _describe_failure(error, stopper)
            run_dir.finish(status, reason, summary=run_dir.metadata.get("summary") or None)
        raise


def _describe_failure(error: BaseException, stopper: Stopper) -> tuple[str, str]:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", "interrupted by Ctrl-C (twice)"
    if isinstance(error, UsageError):
        return "failed", str(error)
    if isinstance(error, SystemExit):
        return ("interrupted" if stopper.reason else "failed"), stopper.reason or f"exit {error.code}"
    return "failed", f"{type(error).__name__}: {error}".splitlines()[0]


def _make_worker(rank: int, workers: int, engine: Any, dataset: Any, protocol: ProtocolConfig, delay: Any,
                 options: TrainOptions) -> Worker:
    from anytimectl.data import BatchStream, shard_indices

    shard = shard_indices(len(dataset.x_train), workers, rank - 1, options.seed)
    stream = BatchStream(dataset.x_train[shard], dataset.y_train[shard], options.seed, rank)
    return Worker(rank, engine, stream, protocol, delay, options.slow.get(rank, 1.0))


def _worker(worker: Worker, rank: RankInfo, device: str) -> None:
    comm = rank.comm
    calibration = worker.warm_up(calibrate=_needs_calibration(worker.config))
    worker.stats[:] = -1
    worker.stats[STAT["calibration"]] = calibration
    comm.gather(_encode_host(rank.host, device), None).wait()
    comm.gather(worker.stats, None).wait()
    params = np.zeros(worker.engine.param_count, dtype=np.float32)
    header = np.zeros(HEADER_SIZE)
    worker_loop(worker, comm, params, header)


def _needs_calibration(config: ProtocolConfig) -> bool:
    return config.method == "amb" and config.time_limit is None


def _encode_host(host: str, device: str) -> np.ndarray:
    raw = f"{host}|{device}".encode()[:HOST_BYTES]
    return np.frombuffer(raw.ljust(HOST_BYTES, b"\0"), dtype=np.uint8).copy()


def _decode_hosts(rows: np.ndarray) -> list[tuple[str, str]]:
    decoded = [bytes(row).rstrip(b"\0").decode(errors="replace").split("|", 1) for row in rows]
    return [(parts[0], parts[1] if len(parts) > 1 else "") for parts in decoded]


def _open_run_dir_or_abort(options: TrainOptions, rank: RankInfo) -> RunDirectory:
    """Only rank 0 can find the run directory taken; its workers are already waiting, so end the job at once."""
    try:
        return _open_run_dir(options, rank)
    except UsageError as error:
        if rank.size == 1:
            raise
        print(f"anytimectl: error: {error}", file=sys.stderr, flush=True)
        rank.comm.abort(2)
        raise


def _open_run_dir(options: TrainOptions, rank: RankInfo) -> RunDirectory:
    reserved = os.environ.get(RUN_DIR_VARIABLE)
    if reserved:
        path = Path(reserved)
    else:
        path = reserve(Path(options.out), options.name, options.default_run_id(rank.workers))
    config = asdict(options)
    config["workers"] = rank.workers if rank.size > 1 else 0
    for key in ("mpiexec", "hosts", "output", "out", "name"):
        config.pop(key)
    config["slow"] = {str(k): v for k, v in options.slow.items()}
    metadata = {
        "run_id": path.name, "command": "train", "method": options.method, "config": config,
        "straggler": None, "versions": _versions(rank), "hosts": [rank.host], "world_size": rank.size,
        "argv": sys.argv[1:], "summary": {},
    }
    return RunDirectory(path, metadata, {"master_stats": MASTER_COLUMNS, "worker_stats": WORKER_COLUMNS,
                                         "collect_stats": COLLECT_COLUMNS})


def _versions(rank: RankInfo) -> dict[str, str]:
    versions = {"anytimectl": __version__, "python": platform.python_version(), "numpy": np.__version__}
    if rank.size > 1:
        import mpi4py

        versions["mpi4py"] = mpi4py.__version__
        versions["mpi_library"] = mpi_library_version()
    return versions


def _master(options: TrainOptions, rank: RankInfo, engine: Any, protocol: ProtocolConfig, evaluator: Evaluator,
            run_dir: RunDirectory, stopper: Stopper, delay: Any, dataset: Any, device: str) -> int:
    import tensorflow as tf

    from anytimectl.live import LiveView

    run_dir.metadata["versions"]["tensorflow"] = tf.__version__
    engine.trace()  # compile before the clock starts
    schedule = options.schedule()
    events = run_dir.events
    local_worker = None
    if rank.size > 1:
        hosts_raw = np.zeros((rank.size, HOST_BYTES), dtype=np.uint8)
        rank.comm.gather(_encode_host(rank.host, device), hosts_raw).wait()
        calibration = np.zeros((rank.size, len(STAT_FIELDS)))
        rank.comm.gather(np.zeros(len(STAT_FIELDS)), calibration).wait()
        hosts = _decode_hosts(hosts_raw)
        per_micro = calibration[1:, STAT["calibration"]]
    else:
        local_worker = _make_worker(1, 1, engine, dataset, protocol, delay, options)
        per_micro = np.array([local_worker.warm_up(calibrate=_needs_calibration(protocol))])
        hosts = [(rank.host, device), (rank.host, device)]
    worker_hosts = [h for h, _ in hosts[1:]]
    run_dir.metadata.update(hosts=[h for h, _ in hosts], devices=[d for _, d in hosts],
                            straggler=delay.to_dict() if delay else None)
    view = LiveView(_title(options, rank), worker_hosts,
                    mode={"auto": "auto", "quiet": "off", "json": "off"}[options.output])

    def on_event(msg: str, **fields: Any) -> None:
        events.log(msg, **fields)

    recorder = _Recorder(run_dir, worker_hosts, view)
    master = Master(engine, protocol, evaluator, schedule.at, stopper, recorder.record, on_event)
    master.resolve_time_limit(per_micro, delay)
    run_dir.metadata["config"]["time_limit"] = master.time_limit
    run_dir.save_metadata()
    events.log("run started", workers=len(worker_hosts), method=options.method, time_limit=master.time_limit,
               straggler=delay.describe() if delay else None)
    if protocol.method == "amb":
        view.note(f"AMB time limit {master.time_limit:.3f} s"
                  + (" (calibrated: --time-limit auto)" if options.time_limit is None else ""))
    transport: Any = (MpiMasterTransport(master, rank.comm, engine.param_count) if local_worker is None
                      else LocalTransport(master, local_worker))
    recorder.master = master
    recorder.cpu_start = time.process_time()
    try:
        with view:
            steps, reason = master.run(transport.collect, transport.broadcast)
    except BaseException:
        run_dir.metadata["summary"] = recorder.summary(master, None)
        raise
    status = "interrupted" if stopper.reason else "completed"
    summary = recorder.summary(master, reason)
    if rank.comm is not None:
        summary.update(master_bytes_sent=rank.comm.bytes.sent, master_bytes_received=rank.comm.bytes.received)
    run_dir.finish(status, stopper.reason, summary)
    stopper.restore()
    _report(options, run_dir, summary, status)
    return 130 if status == "interrupted" else 0


def _title(options: TrainOptions, rank: RankInfo) -> str:
    workers = rank.workers if rank.size > 1 else 1
    return f"anytimectl train {options.method}  {options.dataset}/{options.model}  {workers} worker(s)"


class _Recorder:
    """Turns each StepResult into CSV rows, trace spans and the live view, and keeps the summary figures."""

    def __init__(self, run_dir: RunDirectory, hosts: list[str], view: Any):
        self.run_dir = run_dir
        self.hosts = hosts
        self.view = view
        self.master: Master | None = None
        self.last: StepResult | None = None
        self.last_accuracy: float | None = None
        self.last_test_loss: float | None = None
        self.samples_per_worker = np.zeros(len(hosts))
        self.steps = 0
        self.cpu_start = 0.0
        trace = run_dir.trace
        trace.name_process(0, "master")
        for rank, host in enumerate(hosts, start=1):
            trace.name_process(rank, f"worker {rank} ({host})")

    def record(self, r: StepResult) -> None:
        assert self.master is not None
        origin = self.master.origin
        tables = self.run_dir.tables
        trace = self.run_dir.trace
        trace.origin = origin
        tables["master_stats"].write([(r.time, r.step, r.loss, r.learning_rate, r.test_loss, r.accuracy, r.epoch)])
        rows = []
        for rank, s in enumerate(r.worker_stats, start=1):
            start = s[STAT["round_start"]]
            rows.append((r.time, r.step, rank, int(s[STAT["num_samples"]]), s[STAT["last_send"]],
                         s[STAT["last_recv"]], s[STAT["last_exit"]], s[STAT["sleep_time"]], s[STAT["compute_time"]],
                         r.wait_time, self.hosts[rank - 1], start - origin, int(s[STAT["partitions_done"]]),
                         int(s[STAT["bytes_sent"]]), int(s[STAT["bytes_recv"]])))
            end = start + s[STAT["compute_time"]]
            padding = s[STAT["slow_padding"]]
            trace.span("compute", rank, start, end, step=r.step, examples=int(s[STAT["num_samples"]]))
            induced = s[STAT["sleep_time"]] - padding
            if induced > 0:
                trace.span("sleep", rank, start, start + induced, step=r.step)
            if padding > 0:
                trace.span("sleep", rank, end - padding, end, step=r.step, slow_rank=True)
            if s[STAT["prev_send_start"]] > 0:
                trace.span("recv", rank, s[STAT["prev_compute_end"]], s[STAT["prev_send_start"]], step=r.step - 1,
                           waiting_for="the slowest worker")
                trace.span("send", rank, s[STAT["prev_send_start"]], s[STAT["prev_recv_start"]], step=r.step - 1)
                trace.span("recv", rank, s[STAT["prev_recv_start"]], s[STAT["prev_exit_start"]], step=r.step - 1)
                trace.span("exit", rank, s[STAT["prev_exit_start"]], start, step=r.step - 1)
        tables["worker_stats"].write(rows)
        tables["collect_stats"].write([(r.step, len(r.worker_stats), r.wait_time, r.total_samples, r.time_limit)])
        extra = r.extra
        if "collect_start" in extra:
            trace.span("collect", 0, extra["collect_start"], extra["collect_end"], step=r.step)
            trace.span("apply", 0, extra["collect_end"], extra["apply_end"], step=r.step)
            trace.span("broadcast", 0, extra["apply_end"], extra["broadcast_end"], step=r.step)
        if "evaluate_start" in extra:
            trace.span("evaluate", 0, extra["evaluate_start"], extra["evaluate_end"], step=r.step)
        trace.flush()
        if r.accuracy is not None:
            self.last_accuracy, self.last_test_loss = r.accuracy, r.test_loss
            self.run_dir.events.log("evaluated", step=r.step, accuracy=r.accuracy, test_loss=r.test_loss)
        self.samples_per_worker += r.worker_stats[:, STAT["num_samples"]]
        self.steps = max(self.steps, r.step)
        self.last = r
        self.view.update(r)

    def summary(self, master: Master, reason: str | None) -> dict[str, Any]:
        wall = self.last.time if self.last else 0.0
        steps = self.steps
        return {
            "steps": steps,
            "stopped_by": reason,
            "wall_time_s": wall,
            "mean_step_time_s": wall / steps if steps else None,
            "final_loss": self.last.loss if self.last else None,
            "final_accuracy": self.last_accuracy,
            "final_test_loss": self.last_test_loss,
            "examples": int(master.examples),
            "epochs": self.last.epoch if self.last else 0.0,
            "mean_worker_batch": float(self.samples_per_worker.mean() / steps) if steps else None,
            "time_limit": master.time_limit,
            # Rank 0's CPU time over the run, evaluation thread included: shows what waiting costs it.
            "master_cpu_fraction": (time.process_time() - self.cpu_start) / wall if wall > 0 else None,
        }


def _report(options: TrainOptions, run_dir: RunDirectory, summary: dict[str, Any], status: str) -> None:
    if options.output == "json":
        print(json.dumps({"run_dir": str(run_dir.path), "status": status, **summary}, default=float))
        return
    if options.output == "quiet":
        print(run_dir.path)
        return
    accuracy = summary["final_accuracy"]
    accuracy_text = "-" if accuracy is None else f"{accuracy:.4f}"
    step_time = summary["mean_step_time_s"]
    print(f"{status}: {summary['steps']} steps in {summary['wall_time_s']:.1f} s "
          f"({(step_time or math.nan):.3f} s/step, mean worker batch {summary['mean_worker_batch'] or 0:.1f}), "
          f"test accuracy {accuracy_text}")
    print(f"run directory: {run_dir.path}")

