"""The run shell: everything a training run needs that is not its protocol, written once for every method.

On every rank: become (or join) the MPI job, pin threads and devices, install the signal handlers, let the
protocol set itself up, agree that every rank did, open the run directory and the live view on rank 0, run the
protocol, and record how the run ended whatever happened.

The guarantees, for every method:
- An error found on any rank before the run starts (a missing GPU on the workers, too few examples for the
  ranks, a model that does not fit the data) ends the whole job within seconds, printed once, exit 2 for usage
  errors, and leaves no run directory behind: all ranks meet at one sleep-polled agreement after setup.
- After the start, the run is never left `running` by anything that still runs code: rank 0 records
  completed / interrupted / failed; any other rank that fails marks the run failed with its reason before the
  job is aborted; and the re-launching parent marks it when the job dies without a word (a rank killed hard).
- Ctrl-C, SIGTERM and SIGHUP stop at the end of the current step (`interrupted`, exit 130); a second one stops
  at once (still `interrupted`, 130).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import signal
import sys
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic

import numpy as np

if TYPE_CHECKING:
    from anytimectl.runtime.checkpoints import ResumePoint
    from anytimectl.runtime.live import LiveView
    from anytimectl.runtime.recorder import Recorder
    from anytimectl.runtime.stragglers import DelayModel

from anytimectl import __version__
from anytimectl.protocols.base import C, RunOutcome, RunRequest, TrainingProtocol
from anytimectl.runtime.checkpoints import checkpoint_signal
from anytimectl.runtime.errors import OutputError, UsageError
from anytimectl.runtime.launch import (
    RUN_DIR_VARIABLE,
    RankInfo,
    end_rank,
    heeded_signals,
    in_mpi_job,
    mpi_library_version,
    relaunch,
    select_device,
    start_rank,
)
from anytimectl.runtime.rundir import (
    EVALUATED_MASTER_VIEW,
    RunDirectory,
    mark_if_unfinished,
    release,
    reserve,
    trim_to_complete_step,
    update_metadata,
)

#: Bytes per rank in the start-up agreement: status, host, device and the first line of an error.
_AGREEMENT_BYTES = 1024
_OK, _USAGE, _ERROR = 0, 1, 2
_PATH_BYTES = 4096


class Stopper:
    """Turns Ctrl-C, SIGTERM and SIGHUP into a request to stop at the end of the current step; a second signal
    stops at once (KeyboardInterrupt, recorded as `interrupted`). With `at_once` (the studies, which have no
    steps to agree on: anytimectl.studies) every signal stops at once."""

    def __init__(self, at_once: bool = False, checkpoint_signal: int | None = None) -> None:
        self.reason: str | None = None
        #: --checkpoint-on-signal: this signal stops the run like the others and asks for a checkpoint of the
        #: last step (`checkpoint_requested`).
        self.checkpoint_signal = checkpoint_signal
        self.checkpoint_requested = False
        #: The last signal received (None: none yet).
        self.signum: int | None = None
        #: Before the run starts there is no step to finish: a signal then ends the start-up at once.
        self.running = False
        self.at_once = at_once
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Only the signals the starter did not ignore: `nohup` keeps a run going when the terminal closes.
        Signal handlers belong to the main thread; elsewhere (a test's thread) nothing is installed."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in heeded_signals(self.checkpoint_signal):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if signum == self.checkpoint_signal:
            self.checkpoint_requested = True
        if self.at_once:
            self.reason = f"interrupted by {signal_words(signum)}"
            raise KeyboardInterrupt(self.reason)
        if not self.running:
            raise KeyboardInterrupt(f"interrupted by {signal_words(signum)} during start-up")
        if self.reason is not None:
            raise KeyboardInterrupt(f"{self.reason}, then {signal_words(signum)} again")
        self.reason = f"interrupted by {signal_words(signum)}"


def signal_words(signum: int) -> str:
    """How a stop signal is named in a run's reason and on the terminal: "Ctrl-C", "SIGTERM", "SIGHUP"."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@dataclass
class RunContext(Generic[C]):
    """What the shell gives a protocol on every rank; generic over the request's config class (`RunContext[
    GossipConfig]`: `context.config` is a `GossipConfig`)."""

    request: RunRequest[C]
    rank: RankInfo
    stopper: Stopper
    delay: DelayModel | None
    slow: dict[int, float]
    device: str = "cpu"
    hosts: list[str] = field(default_factory=list)  # per rank, after the start-up agreement
    devices: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # per rank (metadata.json): to match a process to its rank
    run_dir_reserved: Path | None = None  # rank 0: the folder the run directory will be
    run_dir_path: Path | None = None  # every rank, once the run starts (checkpoints are written there)
    resume: ResumePoint | None = None  # when the run continues one (config.resume)
    run_dir: RunDirectory | None = None  # rank 0
    recorder: Recorder | None = None  # rank 0
    view: LiveView | None = None  # rank 0

    @property
    def config(self) -> C:
        """The request's config: an instance of the protocol's `config_class` (run_config.py; the shell checked it
        before building the protocol)."""
        return self.request.config

    def log(self, msg: str, **fields: Any) -> None:
        """An event in events.jsonl (rank 0; a no-op elsewhere)."""
        if self.run_dir is not None:
            self.run_dir.events.log(msg, **fields)

    def note(self, message: str) -> None:
        if self.view is not None:
            self.view.note(message)


def load_protocol(name: str) -> type[TrainingProtocol]:
    module = importlib.import_module(f"anytimectl.protocols.{name}")
    return module.PROTOCOL


def ranks_for(workers: int, has_master: bool) -> int:
    return workers + 1 if has_master else workers


def run(request: RunRequest) -> int:
    """Entry point on every process of a run; returns the exit code."""
    protocol_class = load_protocol(request.protocol)
    if not isinstance(request.config, protocol_class.config_class):  # a command built the wrong class: a bug
        raise TypeError(f"{request.protocol} reads a {protocol_class.config_class.__name__}, "
                        f"not a {type(request.config).__name__}")
    config = request.config
    asked = [name for name, value in (("checkpoint_every", config.checkpoint_every), ("resume", config.resume))
             if value is not None]
    if asked and not protocol_class.supports_checkpoints:  # the contract: anytimectl/cli/commands/resume.py
        raise UsageError(f"--{asked[0].replace('_', '-')}: {request.command} {request.method} does not write "
                         "checkpoints yet")
    workers = request.launch.workers
    if not in_mpi_job() and workers:
        return _relaunch_as_job(request, ranks_for(workers, protocol_class.has_master), protocol_class.has_master)
    stopper = Stopper(checkpoint_signal=checkpoint_signal(request.config.checkpoint_on_signal))
    stopper.install()  # first: the re-launching parent holds a stop signal until every rank can take it
    rank = start_rank(request.launch.threads)
    _check_world(rank, workers, protocol_class.has_master)
    return _run_rank(request, protocol_class, rank, stopper)


def _check_world(rank: RankInfo, workers: int | None, has_master: bool) -> None:
    """Raised alike on every rank of a job: each leaves with 2 and only rank 0 speaks (cli.main)."""
    if rank.size == 1 and in_mpi_job() and has_master and workers != 0:
        raise UsageError("an MPI job of one rank has no workers; start it with -n 2 or more, "
                         "or run without mpiexec and use --workers N")
    if rank.size > 1 and workers is not None:
        expected = ranks_for(workers, has_master)
        if expected != rank.size:
            raise UsageError(f"--workers {workers} disagrees with this MPI job of {rank.size} ranks (it needs "
                             f"{expected}); drop --workers when starting with mpiexec")


def default_run_id(request: RunRequest, workers: int) -> str:
    return f"{request.method}-{request.dataset}-w{workers}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _relaunch_as_job(request: RunRequest, ranks: int, has_master: bool) -> int:
    workers = request.launch.workers
    run_dir = _resumed_dir(request) or reserve(Path(request.output.out), request.output.name,
                                               default_run_id(request, workers))
    from anytimectl.runtime import leftovers
    before = leftovers.snapshot()
    try:
        end = relaunch(ranks - 1, request.argv, request.launch.mpiexec, request.launch.hosts,
                       {RUN_DIR_VARIABLE: str(run_dir)},
                       checkpoint_signal=checkpoint_signal(request.config.checkpoint_on_signal))
    except BaseException:
        _release(run_dir)
        raise
    code, forwarded = _job_end(end)
    trimmed = None
    if code != 0:
        from anytimectl.runtime.checkpoints import remove_temporary

        remove_temporary(run_dir)  # a rank stopped while writing a checkpoint leaves no partial file
        leftovers.clean(before)  # killed ranks' MPICH segments and autograph files
        # rank 0 did not close its tables: it may have been mid-step
        if _recorded_metadata(run_dir).get("status") == "running":
            trimmed = trim_to_complete_step(run_dir)
    if forwarded is not None:
        # the ranks saw the SIGTERM we passed on; the run's reason names the signal the user sent
        words = f"interrupted by {signal_words(forwarded)}"
        if not mark_if_unfinished(run_dir, "interrupted", f"{words}: the job was stopped before rank 0 recorded "
                                                          "the end"):
            _correct_reason(run_dir, words)
        code = 130
    elif code != 0:
        _record_failure(run_dir, code, getattr(end, "first_ended", ()), has_master)
    if code != 0 and trimmed is not None:
        update_metadata(run_dir, tables_trimmed=trimmed)
    _release(run_dir)
    return code


def _record_failure(run_dir: Path, code: int, first_ended: Any, has_master: bool) -> None:
    """The job failed: mark the run, naming the rank that ended first (the launcher watched its ranks end).

    A killed rank (kill -9, the out-of-memory killer) records nothing itself, so whatever the run says then was
    recorded by a survivor that lost contact with it (rank 0 or another rank, whose own reason would name itself):
    the rank that ended first replaces it, and the survivor's words are kept as `survivor_reason`. A rank that
    failed by itself records its own error before it ends the job; that reason names it and stays."""
    ended = f"the MPI job ended with exit code {code} before rank 0 recorded the end"
    blamed = _blame(first_ended, has_master)
    if blamed is None:
        reason = f"{ended} (a rank crashed or was killed)"
    else:
        reason = f"{blamed[1]}; {ended}"
    if mark_if_unfinished(run_dir, "failed", reason):  # nobody said anything: the parent says it, once
        print(f"anytimectl: error: {reason}; the completed steps are kept in {run_dir}", file=sys.stderr, flush=True)
        return
    if blamed is None:
        return
    metadata = _recorded_metadata(run_dir)
    recorded = str(metadata.get("reason") or "")
    rank = blamed[0]
    by_itself = recorded.startswith(f"rank {rank}:") or (rank == 0 and not recorded.startswith("rank "))
    if metadata.get("status") == "failed" and not by_itself:
        update_metadata(run_dir, reason=reason, survivor_reason=metadata.get("reason"))
        print(f"anytimectl: error: {reason}; the completed steps are kept in {run_dir}", file=sys.stderr, flush=True)


def _blame(first_ended: Any, has_master: bool) -> tuple[int, str] | None:
    """(rank, how it is named) for the one rank seen to end first; None when none or several were seen at once."""
    if not first_ended or len(first_ended) != 1:
        return None
    rank, pid = first_ended[0]
    role = ("the master" if rank == 0 else f"worker {rank}") if has_master else f"worker {rank + 1}"
    return rank, f"rank {rank} ({role}, pid {pid}) ended first, killed or crashed"


def _recorded_metadata(run_dir: Path) -> dict[str, Any]:
    """What the run's metadata.json says now ({} where it is missing or unreadable: nothing to correct)."""
    try:
        metadata = json.loads((run_dir / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}
    return metadata if isinstance(metadata, dict) else {}


def _job_end(end: Any) -> tuple[int, int | None]:
    """The launcher's result: an exit code, or an object with `code` and the `signal` it forwarded."""
    if isinstance(end, int):
        return end, None
    return int(end.code), getattr(end, "signal", None)


def _release(run_dir: Path) -> None:
    """A reserved run directory that never received a file goes away, so a corrected retry may reuse its name."""
    release(run_dir)


def _correct_reason(run_dir: Path, words: str) -> None:
    """Rank 0 recorded the SIGTERM we passed on: name the signal the user sent instead."""
    metadata = _recorded_metadata(run_dir)
    reason = metadata.get("reason")
    if metadata.get("status") == "interrupted" and isinstance(reason, str):
        update_metadata(run_dir, reason=reason.replace("interrupted by SIGTERM", words))


# --- one rank ---------------------------------------------------------------------------------------------------------
def _run_rank(request: RunRequest, protocol_class: type[TrainingProtocol], rank: RankInfo, stopper: Stopper) -> int:
    from anytimectl.runtime.stragglers import parse_induce, parse_slow

    context = RunContext(request=request, rank=rank, stopper=stopper, delay=parse_induce(request.config.induce),
                         slow=parse_slow(request.config.slow))
    protocol = protocol_class(context)
    try:
        return _start_and_run(request, protocol, context, rank)
    except KeyboardInterrupt as interrupt:
        if not stopper.running:  # interrupted during start-up: nothing ran, nothing to keep
            _release_own(context.run_dir_reserved)
            _abort_job(rank, interrupt)
        raise


def _start_and_run(request: RunRequest, protocol: TrainingProtocol, context: RunContext, rank: RankInfo) -> int:
    stopper = context.stopper
    failure: tuple[int, str] | None = None
    try:
        context.device = select_device(_device_choice(request.launch.device, protocol.has_master), rank.rank,
                                       rank.local_rank, request.launch.gpus_per_node)
        if rank.rank == 0:
            context.run_dir_reserved = _reserve_run_dir(request, rank, protocol.has_master)
        if request.config.resume:
            from anytimectl.runtime.checkpoints import resume_point

            context.resume = resume_point(Path(request.config.resume), warn=False)  # the command warned
        protocol.setup()
    except UsageError as error:
        failure = (_USAGE, str(error))
    except Exception as error:  # noqa: BLE001 - reported to every rank, then ends the job cleanly
        traceback.print_exc()
        failure = (_ERROR, f"rank {rank.rank}: {type(error).__name__}: {error}".splitlines()[0])
    outcome = _agree(rank, failure, context)
    if outcome is not None:
        stopper.restore()
        _release_own(context.run_dir_reserved)
        code, message = outcome
        if rank.size == 1:
            if code == 2:
                raise UsageError(message)
            raise RuntimeError(message)
        if rank.rank == 0:
            print(f"anytimectl: error: {message}", file=sys.stderr, flush=True)
        end_rank()
        return code
    return _run_protocol(request, protocol, context, context.run_dir_reserved)


def _release_own(reserved: Path | None) -> None:
    """Give back a run directory this rank reserved (the re-launching parent releases the one it reserved)."""
    if reserved is not None and not os.environ.get(RUN_DIR_VARIABLE):
        _release(reserved)


def _abort_job(rank: RankInfo, error: BaseException) -> None:
    """End every rank of the job now, after this one recorded what it could: the others may be waiting for it.
    A usage error is one line, an interrupt a short note, anything else its traceback."""
    if rank.size == 1:
        return
    if isinstance(error, KeyboardInterrupt):
        code = 130
        if rank.rank == 0:
            print(f"anytimectl: {error or 'interrupted'}", file=sys.stderr)
    elif isinstance(error, UsageError):
        code = 2
        print(f"anytimectl: error: {error}", file=sys.stderr)
    elif isinstance(error, OutputError):  # a full disk or a removed folder: one line naming the file
        code = 1
        print(f"anytimectl: error: {error}", file=sys.stderr)
        error.reported = True  # cli.main must not say it again if the abort returns before the job is gone
    else:
        code = 1
        traceback.print_exception(error)
    sys.stderr.flush()
    sys.stdout.flush()
    rank.comm.abort(code)


def _device_choice(device: str, has_master: bool) -> str:
    """Without a master every rank is a worker: gpu-workers means every rank on a GPU, gpu-master means nothing."""
    if not has_master and device == "gpu-workers":
        return "gpu"
    if not has_master and device == "gpu-master":
        raise UsageError("--device gpu-master: this method has no master (every rank is a worker); "
                         "use --device gpu or cpu")
    return device


def _resumed_dir(request: RunRequest) -> Path | None:
    """A resumed run continues in its own directory (non-empty, so releasing it never removes it)."""
    resume = request.config.resume
    return Path(resume) if resume else None


def _reserve_run_dir(request: RunRequest, rank: RankInfo, has_master: bool) -> Path:
    reserved = os.environ.get(RUN_DIR_VARIABLE)
    if reserved:
        return Path(reserved)
    resumed = _resumed_dir(request)
    if resumed is not None:
        return resumed
    return reserve(Path(request.output.out), request.output.name, default_run_id(request, _workers(rank, has_master)))


def _workers(rank: RankInfo, has_master: bool) -> int:
    """How many ranks compute: the workers under a master, every rank otherwise (1 in a single process)."""
    if rank.size == 1:
        return 1
    return rank.size - 1 if has_master else rank.size


def _agree(rank: RankInfo, failure: tuple[int, str] | None, context: RunContext) -> tuple[int, str] | None:
    """Every rank reports its set-up (sleep-polled, so ranks still importing a framework cost nobody a core).
    Returns None when all succeeded, else (exit code, the message rank 0 prints)."""
    status, message = failure or (_OK, "")
    if rank.size == 1:
        context.hosts, context.devices, context.pids = [rank.host], [context.device], [os.getpid()]
        return None if failure is None else (2 if status == _USAGE else 1, message)
    from anytimectl.comm import Pending

    record = f"{status}|{rank.host}|{context.device}|{os.getpid()}|{message}".encode()[:_AGREEMENT_BYTES]
    mine = np.frombuffer(record.ljust(_AGREEMENT_BYTES, b"\0"), dtype=np.uint8).copy()
    everyone = np.zeros((rank.size, _AGREEMENT_BYTES), dtype=np.uint8)
    Pending().add(rank.comm.mpi.Iallgather(mine, everyone)).wait()
    parsed = [bytes(row).rstrip(b"\0").decode(errors="replace").split("|", 4) for row in everyone]
    context.hosts = [p[1] for p in parsed]
    context.devices = [p[2] for p in parsed]
    context.pids = [int(p[3]) for p in parsed]
    failures = [(int(p[0]), p[4]) for p in parsed if int(p[0]) != _OK]
    if not failures:
        return None
    usage = [m for s, m in failures if s == _USAGE]
    if usage:
        return 2, usage[0]
    return 1, failures[0][1]


def _run_protocol(request: RunRequest, protocol: TrainingProtocol, context: RunContext, reserved: Path | None) -> int:
    rank = context.rank
    stopper = context.stopper
    run_dir_path = context.run_dir_path = _share_run_dir(rank, reserved)
    try:
        if rank.rank == 0:
            _open_run_dir(request, protocol, context, run_dir_path)
            stopper.running = True
            with context.view:
                outcome = protocol.run()
        else:
            stopper.running = True
            outcome = protocol.run()
    except BaseException as error:
        status, reason = _describe_failure(error, stopper, rank)
        try:
            if context.run_dir is not None:
                summary = context.recorder.summary(None) if context.recorder is not None else None
                context.run_dir.finish(status, reason, summary=summary)
            elif run_dir_path is not None and not isinstance(error, SystemExit | KeyboardInterrupt):
                mark_if_unfinished(run_dir_path, status, reason)
        except OSError:  # the folder is gone or the disk stays full: the error itself is what to report
            pass
        _abort_job(rank, error)
        raise
    stopper.restore()
    if rank.rank != 0:
        return 0
    return _finish(request, context, outcome)


def _share_run_dir(rank: RankInfo, reserved: Path | None) -> Path | None:
    """Every rank learns where the run directory is, so that any rank that fails can mark the run failed."""
    if rank.size == 1:
        return reserved
    from anytimectl.comm import Pending

    raw = np.zeros(_PATH_BYTES, dtype=np.uint8)
    if rank.rank == 0 and reserved is not None:
        encoded = str(reserved.resolve()).encode()[:_PATH_BYTES]
        raw[:len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
    Pending().add(rank.comm.mpi.Ibcast(raw, root=0)).wait()
    text = bytes(raw).rstrip(b"\0").decode(errors="replace")
    return Path(text) if text else None


def _describe_failure(error: BaseException, stopper: Stopper, rank: RankInfo) -> tuple[str, str]:
    where = f"rank {rank.rank}: " if rank.rank != 0 else ""
    if _is_mpi_error(error):  # a peer that died (kill -9, a lost node) shows up here: this rank is not the cause
        return "failed", (f"rank {rank.rank} lost contact with the job, probably because another rank ended "
                          f"(an MPI call failed: {error})").splitlines()[0]
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", str(error) or stopper.reason or "interrupted by Ctrl-C (twice)"
    if isinstance(error, UsageError | OutputError):
        return "failed", f"{where}{error}"
    if isinstance(error, SystemExit):
        return ("interrupted" if stopper.reason else "failed"), stopper.reason or f"{where}exit {error.code}"
    return "failed", f"{where}{type(error).__name__}: {error}".splitlines()[0]


def _is_mpi_error(error: BaseException) -> bool:
    """An error raised by MPI itself (mpi4py's MPI.Exception), such as a failed send to a rank that died."""
    kind = type(error)
    return kind.__module__ == "mpi4py.MPI" and kind.__name__ == "Exception"


def _open_run_dir(request: RunRequest, protocol: TrainingProtocol, context: RunContext, path: Path) -> None:
    from anytimectl.runtime.live import LiveView
    from anytimectl.runtime.recorder import Recorder

    rank = context.rank
    has_master = protocol.has_master
    config = request.config.record()
    config["workers"] = _workers(rank, has_master) if rank.size > 1 else 0
    metadata = {
        "run_id": path.name, "command": request.command, "method": request.method, "protocol": request.protocol,
        "backend": request.backend, "config": config, "straggler": context.delay.to_dict() if context.delay else None,
        "versions": _versions(rank, request.backend), "hosts": context.hosts, "devices": context.devices,
        "pids": context.pids, "world_size": rank.size, "argv": request.argv, "summary": {},
    }
    for key, value in protocol.metadata().items():
        if key == "versions":
            metadata["versions"].update(value)
        else:
            metadata[key] = value
    resumed_from = context.resume.step if context.resume is not None else None
    context.run_dir = run_dir = RunDirectory(path, metadata, protocol.columns.tables(), views=EVALUATED_MASTER_VIEW,
                                             resumed_from=resumed_from)
    reporting = _reporting_workers(rank.size, has_master)
    hosts = {worker: context.hosts[mpi_rank] for worker, mpi_rank in reporting.items()}
    context.view = LiveView(_title(request, len(reporting)), hosts, protocol.layout,
                            mode=request.output.view_mode, columns=protocol.live_columns)
    context.recorder = Recorder(run_dir, hosts, protocol.layout, protocol.columns, context.view, has_master,
                                protocol.formatters(), tensorboard=getattr(request.output, "tensorboard", None))
    if resumed_from is not None:
        run_dir.events.log("resumed", from_step=resumed_from, checkpoint=str(context.resume.directory),
                           ranks=rank.size)
    run_dir.events.log("run started", method=request.method, protocol=request.protocol, backend=request.backend,
                       ranks=rank.size, straggler=context.delay.describe() if context.delay else None)


def _reporting_workers(size: int, has_master: bool) -> dict[int, int]:
    """Worker number -> MPI rank of the ranks whose rows fill worker_stats. Workers are numbered 1..N in every
    method: under a master they are ranks 1..N; without one, worker k is rank k - 1."""
    if has_master:
        return {worker: worker for worker in range(1, size)} if size > 1 else {1: 0}
    return {worker: worker - 1 for worker in range(1, size + 1)}


def _title(request: RunRequest, workers: int) -> str:
    command = request.command if request.command == request.method else f"{request.command} {request.method}"
    return f"anytimectl {command}  {request.dataset}/{request.model}  {workers} worker(s)"


def _versions(rank: RankInfo, backend: str) -> dict[str, str]:
    """What produced the numbers: every method records its framework's versions here, none by itself."""
    from anytimectl.backends import framework_versions

    versions = {"anytimectl": __version__, "python": platform.python_version(), "numpy": np.__version__,
                **framework_versions(backend)}
    if rank.size > 1:
        import mpi4py

        versions["mpi4py"] = mpi4py.__version__
        versions["mpi_library"] = mpi_library_version()
    return versions


def _finish(request: RunRequest, context: RunContext, outcome: RunOutcome) -> int:
    stopper = context.stopper
    status = "interrupted" if stopper.reason else "completed"
    summary = context.recorder.summary(stopper.reason or outcome.stopped_by, **outcome.summary)
    diverged = context.recorder.first_nonfinite_step
    if diverged is not None:  # the run went on to its end, but what it trained is not a model: say so
        warning = (f"the training loss became NaN or infinite at step {diverged} (the model diverged); lower "
                   "--learning-rate or check the model and data")
        summary["warnings"] = [*summary.get("warnings", []), warning]
        summary["diverged_at_step"] = diverged
        context.run_dir.events.log("loss not finite", level="warn", step=diverged)
        print(f"anytimectl: warning: {warning}", file=sys.stderr, flush=True)
    if context.rank.comm is not None:
        rank0 = context.recorder.rank0_name
        summary.update({f"{rank0}_bytes_sent": context.rank.comm.bytes.sent,
                        f"{rank0}_bytes_received": context.rank.comm.bytes.received})
        if getattr(context.rank.comm, "spans_hosts", False):  # what rank 0's host link carried for the steps
            summary.update({f"{rank0}_bytes_sent_across_hosts": context.rank.comm.bytes.across_sent,
                            f"{rank0}_bytes_received_across_hosts": context.rank.comm.bytes.across_received})
    context.run_dir.finish(status, stopper.reason, summary)
    _report(request, context.run_dir, summary, status)
    return 130 if status == "interrupted" else 0


def _report(request: RunRequest, run_dir: RunDirectory, summary: dict[str, Any], status: str) -> None:
    mode = request.output.report
    if mode == "json":
        print(json.dumps({"run_dir": str(run_dir.path), "status": status, **summary}, default=float))
        return
    if mode == "quiet":
        print(run_dir.path)
        return
    accuracy = summary["final_accuracy"]
    accuracy_text = "-" if accuracy is None else f"{accuracy:.4f}"
    step_time = summary["mean_step_time_s"]
    print(f"{status}: {summary['steps']} steps in {summary['wall_time_s']:.1f} s "
          f"({(step_time or math.nan):.3f} s/step, mean worker batch {summary['mean_worker_batch'] or 0:.1f}), "
          f"test accuracy {accuracy_text}")
    print(f"run directory: {run_dir.path}")

