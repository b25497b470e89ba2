"""Becoming an MPI job: detect one, or re-launch ourselves as one, and set up each rank.

The same command line works on a laptop (`anytimectl train amb --workers 4`: we start
`mpiexec -n 5 python -m mpi4py -m anytimectl ...` ourselves) and on a cluster (`mpirun -n 65 anytimectl ...`:
we are already rank r of 65). `-m mpi4py` matters: it turns an uncaught exception in any rank into
MPI_Abort, so one crashed rank ends the whole job instead of leaving the others waiting forever.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from anytimectl.runtime.errors import UsageError

#: Environment variables by which the common launchers tell a process that it is one rank of a job.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")
#: Set by our own re-launch so that the children never re-launch again.
RELAUNCHED = "ANYTIMECTL_RELAUNCHED"
#: Passed from the re-launching parent to rank 0: the run directory the parent already reserved.
RUN_DIR_VARIABLE = "ANYTIMECTL_RUN_DIR"
#: Passed from the re-launching parent to the ranks when the parent's stderr is a terminal: its width in columns.
#: Absent when the parent has no terminal. Rank 0's output goes through mpiexec's pipes, so it cannot tell itself.
TERMINAL_WIDTH_VARIABLE = "ANYTIMECTL_TERMINAL_WIDTH"

_BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


def in_mpi_job() -> bool:
    """True when a launcher started this process as a rank (checked without initialising MPI)."""
    if os.environ.get(RELAUNCHED):
        return True
    if "SLURM_PROCID" in os.environ and "PMI_RANK" not in os.environ and "PMIX_RANK" not in os.environ:
        # Inside an sbatch allocation but not started by srun: SLURM_NTASKS alone is not a job of ours.
        return "SLURM_STEP_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    return any(v in os.environ for v in _RANK_VARIABLES)


def find_mpiexec(override: str | None = None) -> str:
    """The mpiexec that belongs to this Python's MPI (pipx keeps it inside its venv, off PATH)."""
    if override:
        path = shutil.which(override) or override
        if not Path(path).is_file():
            raise UsageError(f"--mpiexec {override}: no such program; give the path of mpiexec or mpirun")
        return str(path)
    candidates = [Path(sysconfig.get_path("scripts")) / "mpiexec", Path(sys.executable).parent / "mpiexec"]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found:
        return found
    raise UsageError(
        "no mpiexec found next to this Python or on PATH; install the MPI runtime (pip install mpich) "
        "or pass --mpiexec PATH, or use --workers 0 to run in one process"
    )


@dataclass(frozen=True)
class JobEnd:
    """How a re-launched job ended, so the caller can tell a stop the user asked for from a failure.

    `code` is mpiexec's exit status as `subprocess` reports it (negative: killed by that signal). `signal` is the
    first SIGINT, SIGTERM or SIGHUP this process received while the job ran (and passed on to it), or None when
    the job ended by itself. A run with a forwarded signal is `interrupted` and its command exits 130, whatever
    `code` says; otherwise a non-zero `code` means `failed`.
    """

    code: int
    signal: int | None = None
    #: The ranks seen to end first, as (rank, pid) (several when they ended between two looks): read through
    #: pidfds on this host (and on emulated hosts, which share its processes); empty where none could be watched
    #: or none ended before mpiexec. After a failure, this names the rank that was killed or crashed: mpiexec's
    #: own report ("BAD TERMINATION ... PID") names any process of the job, often a survivor it killed itself.
    first_ended: tuple[tuple[int, int], ...] = ()

    @property
    def exit_code(self) -> int:
        """What the command should exit with: 130 after a forwarded signal, else the job's (128 + N if killed)."""
        if self.signal is not None:
            return 130
        return self.code if self.code >= 0 else 128 - self.code


def terminal_width() -> int | None:
    """Columns of the terminal on our stderr, or None when stderr is not a terminal (a pipe, a file, CI)."""
    try:
        if not os.isatty(sys.stderr.fileno()):
            return None
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (AttributeError, OSError, ValueError):  # no stderr, a closed one, or a pseudo-file without fileno
        return None


def host_options(hosts: str | None) -> list[str]:
    """mpiexec's options for `--hosts`: a list (`node1,node2:4` -> `-hosts`) or a hostfile (`@FILE` -> `-f`)."""
    if not hosts:
        return []
    if hosts.startswith("@"):
        path = Path(hosts[1:]).expanduser()
        if not path.is_file():
            raise UsageError(f"--hosts {hosts}: no such hostfile; give @FILE with one HOST[:RANKS] per line, or "
                             "HOST,HOST,...")
        return ["-f", str(path.resolve())]
    names = [name.strip() for name in hosts.split(",")]
    if any(not name or name.startswith(":") for name in names):
        raise UsageError(f"--hosts {hosts}: give HOST[:RANKS],HOST[:RANKS],... (no empty names) or @FILE")
    return ["-hosts", hosts]


def relaunch(workers: int, argv: list[str], mpiexec: str | None, hosts: str | None, env: dict[str, str],
             checkpoint_signal: int | None = None) -> JobEnd:
    """Run this same command as an MPI job of workers + 1 ranks, wait for it and say how it ended.

    The job never outlives this process and stops the way the README promises:
    - mpiexec runs in its own session, so a terminal's Ctrl-C (or SIGHUP when the terminal closes) reaches only
      this process, never the job directly;
    - the first SIGINT, SIGTERM or SIGHUP we receive is passed on as SIGTERM to mpiexec, which MPICH's hydra
      forwards quietly to every rank (SIGINT would make it print "Sending Ctrl-C ..." lines; SIGHUP kills it): the
      ranks stop at the end of their step and rank 0 records `interrupted`. A rank still starting up would die of
      a SIGTERM it does not handle yet (and hydra would print its "BAD TERMINATION" dump), so on one host we hold
      the signal until every rank catches SIGTERM (read from /proc), for at most READY_TIMEOUT seconds;
    - a second one kills the job at once: SIGKILL to mpiexec and to its processes on this host (hydra's proxies
      SIGKILL the ranks, remote ones included, when mpiexec disappears), and no dump is printed;
    - if this process is itself killed hard (kill -9), Linux's parent-death signal SIGKILLs mpiexec, and the
      ranks go with it.
    - the run's --checkpoint-on-signal (`checkpoint_signal`) is heeded too; when it is not one of the stop signals
      (SIGUSR1, SIGUSR2) it is passed on as itself (hydra forwards SIGUSR1/2 to every rank), so that the ranks
      know a checkpoint is asked for; they stop after their step and write it;
    When our stderr is a terminal its width is passed to the ranks as TERMINAL_WIDTH_VARIABLE, so rank 0 can
    draw the live table through mpiexec's output pipes.
    """
    command = [find_mpiexec(mpiexec), "-n", str(workers + 1), *host_options(hosts)]
    command += [*child_python(), "-m", "mpi4py", "-m", "anytimectl", *argv]
    child_env = {**os.environ, **env, RELAUNCHED: "1"}
    width = terminal_width()
    if width:
        child_env[TERMINAL_WIDTH_VARIABLE] = str(width)
    else:
        child_env.pop(TERMINAL_WIDTH_VARIABLE, None)
    forwarder = _Forwarder(local_ranks=None if hosts else workers + 1, ranks=workers + 1,
                           checkpoint_signal=checkpoint_signal)
    watcher = _LaunchWatcher() if hosts else None
    with forwarder.installed():
        process = subprocess.Popen(command, env=child_env, stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=_parent_death_signal(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE if watcher else None)
        pump = threading.Thread(target=_pump_stdout, args=(process.stdout,), name="anytimectl-stdout", daemon=True)
        pump.start()
        if watcher:
            watcher.start(process)
        code = forwarder.wait(process)
        pump.join(timeout=10)
        if watcher:
            watcher.finish()
    if watcher and watcher.proxy_failed and forwarder.first is None:
        raise UsageError(
            f"--hosts {hosts}: mpiexec could not start its proxy on every host (the launcher's message is above); "
            "check that each host is reachable without a password (ssh HOST true) under the name given, or set "
            "HYDRA_LAUNCHER / HYDRA_LAUNCHER_EXEC for your site's launcher")
    return JobEnd(code, forwarder.first, tuple(forwarder.watch.first_ended))


class _LaunchWatcher:
    """Passes mpiexec's stderr on unchanged, chunk by chunk (the live view's escape codes included), except
    Hydra's own error dump after a proxy could not be started on a host, which `relaunch` replaces by one line.
    An unfinished last line that may be one of Hydra's is held until it is whole, so that a message split between
    two reads is still recognised.

    Hydra's lines read `[mpiexec@HOST] function (file:line): message`; once one says the launch failed, such
    lines are left out.
    """

    _FAILED = b"Launch proxy failed"
    _PREFIX = b"[mpiexec@"

    def __init__(self) -> None:
        self.proxy_failed = False
        self._thread: threading.Thread | None = None

    def start(self, process: subprocess.Popen) -> None:
        self._thread = threading.Thread(target=self._pump, args=(process.stderr,), daemon=True)
        self._thread.start()

    def finish(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _pump(self, stream: Any) -> None:
        out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
        fd = stream.fileno()
        held = b""  # an unfinished last line that may be one of Hydra's: judged once it is whole
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            data = held + chunk
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            if tail.startswith(self._PREFIX) or self._PREFIX.startswith(tail):
                data, held = data[:cut], tail
            else:
                held = b""
            self._write(out, data)
        self._write(out, held)
        stream.close()

    def _write(self, out: Any, data: bytes) -> None:
        if self._FAILED in data:
            self.proxy_failed = True
        if self.proxy_failed:
            data = b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(self._PREFIX))
        if not data:
            return
        try:
            if out is not None:
                out.write(data)
                out.flush()
            else:
                sys.stderr.write(data.decode(errors="replace"))
                sys.stderr.flush()
        except (OSError, ValueError):
            pass


def _pump_stdout(stream: Any) -> None:
    """The job's stdout, line by line, to ours: stdout carries only the summary (the live view is on stderr), which
    scripts read. mpiexec's own report of a killed rank (hydra's "BAD TERMINATION" box, lines starting with "=",
    and what follows it) goes to stderr instead, where diagnostics belong."""
    def write(target: Any, line: bytes) -> None:
        binary = getattr(target, "buffer", None)
        if binary is not None:
            binary.write(line)
            binary.flush()
        else:  # a text stream without bytes underneath (a test's capture)
            target.write(line.decode(errors="replace"))
            target.flush()

    banner = False  # once mpiexec reports a killed rank, the rest is its report (the ranks are being killed)
    blank = b""  # blank lines wait for the next line: hydra's box starts with one
    try:
        for line in iter(stream.readline, b""):
            if not line.strip() and not banner:
                blank += line
                continue
            banner = banner or (line.startswith(b"=") and (b"====" in line or line.startswith(b"=   ")))
            try:
                write(sys.stderr if banner else sys.stdout, blank + line)
            except (OSError, ValueError):  # our stdout closed (a reader that left): keep draining the job's
                pass
            blank = b""
        if blank and not banner:
            with contextlib.suppress(OSError, ValueError):
                write(sys.stdout, blank)
    finally:
        stream.close()


#: The signals that stop a job: Ctrl-C, a polite kill (timeout, batch schedulers), a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
def heeded_signals(extra: int | None = None) -> list[int]:
    """The stop signals this process should act on: those its starter did not set to be ignored (`extra`: the
    run's --checkpoint-on-signal, heeded as well).

    `nohup` ignores SIGHUP, and a shell script's `command &` ignores SIGINT (and SIGQUIT): a run started that way
    must keep running when the terminal closes or Ctrl-C is pressed, as any other program would.
    """
    signals = [*STOP_SIGNALS, *([extra] if extra is not None and extra not in STOP_SIGNALS else [])]
    return [sig for sig in signals if signal.getsignal(sig) is not signal.SIG_IGN]


#: Longest wait, after a first stop signal, for starting ranks to install their SIGTERM handler.
READY_TIMEOUT = 30.0
_READY_POLL = 0.05


class _Wake(Exception):
    """Raised by the handler to leave a blocking wait when the main loop has work (a signal held back)."""


class _Forwarder:
    """The parent's signal handlers while a job runs: the first stop signal asks the job to stop after its step,
    the second kills it. Signals that arrive before mpiexec has started are acted on as soon as it has.

    `local_ranks` is how many ranks run on this host (None: unknown, as with --hosts), so that the first signal
    waits until they all handle SIGTERM.
    """

    def __init__(self, local_ranks: int | None, ranks: int = 0, checkpoint_signal: int | None = None) -> None:
        self.local_ranks = local_ranks
        self.watch = _RankWatch(ranks)
        self.checkpoint_signal = checkpoint_signal
        self.first: int | None = None
        self.count = 0
        self.process: subprocess.Popen | None = None
        self._forwarded = self._killed = self._waiting = False
        self._deadline = 0.0

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in heeded_signals(self.checkpoint_signal)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def wait(self, process: subprocess.Popen) -> int:
        """Wait for the job to end, acting on signals and watching its ranks; returns mpiexec's exit status."""
        self.process = process
        self.watch.start(process.pid)
        try:
            while True:
                self._act()
                timeout = _READY_POLL if self._held() else self.watch.next_look()
                try:
                    self._waiting = True
                    try:
                        if self.watch.wait(timeout):
                            return process.wait()
                        if not self.watch.active:
                            return process.wait(timeout)
                    finally:
                        self._waiting = False
                except (subprocess.TimeoutExpired, _Wake):
                    continue
        finally:
            self.watch.close()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.first is None:
            self.first = signum
            self._deadline = time.monotonic() + READY_TIMEOUT
        self.count += 1
        self._act()
        if self._waiting and self._held():
            raise _Wake

    def _held(self) -> bool:
        return self.count >= 1 and not self._forwarded and not self._killed

    def _act(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        if self.count >= 2 and not self._killed:
            self._killed = True
            kill_job(process.pid)
        elif self._held() and (time.monotonic() >= self._deadline or self._ranks_ready(process.pid)):
            self._forwarded = True
            _send(process.pid, self._passed_on)  # hydra passes SIGTERM (or SIGUSR1/2) on to every rank, quietly

    @property
    def _passed_on(self) -> int:
        """What the ranks get for our first signal: SIGTERM, or the checkpoint signal when it is not a stop one."""
        first = self.first
        return first if first is not None and first == self.checkpoint_signal and first not in STOP_SIGNALS \
            else signal.SIGTERM

    def _ranks_ready(self, mpiexec_pid: int) -> bool:
        """Whether every rank on this host exists and handles SIGTERM (always True when we cannot tell)."""
        if self.local_ranks is None or not os.path.isdir("/proc"):
            return True
        ranks = [pid for pid in _descendants(mpiexec_pid) if _is_rank(pid)]
        return len(ranks) >= self.local_ranks and all(_catches(pid, self._passed_on) for pid in ranks)


class _RankWatch:
    """Which rank of the job ends first, seen through pidfds (Linux 5.3+): the job's ranks are found below mpiexec
    in /proc (their rank from PMI_RANK in their environment), looked for again and again, less and less often,
    until all `ranks` are found; the wait for mpiexec then also wakes when a rank ends. A first end is only
    reported when every rank of the job was being watched (emulated hosts share this machine's processes; a real
    cluster's other nodes do not). Where pidfds or /proc are missing it does nothing (`active` is False) and the
    caller waits for mpiexec alone. mpiexec's own report names the wrong process (docs/platform-facts.md,
    "mpiexec's report names any process of the job")."""

    _FIRST_LOOK, _LAST_LOOK = 0.25, 5.0

    def __init__(self, ranks: int) -> None:
        self.ranks = ranks
        self.first_ended: list[tuple[int, int]] = []
        self.active = False
        self._root = 0
        self._mpiexec: int | None = None  # a pidfd of mpiexec
        self._fds: dict[int, tuple[int, int]] = {}  # pidfd -> (rank, pid)
        self._found: set[int] = set()  # pids looked at already
        self._seen_end = False
        self._interval = self._FIRST_LOOK
        self._next = 0.0

    def start(self, mpiexec_pid: int) -> None:
        if self.ranks < 1 or not hasattr(os, "pidfd_open") or not os.path.isdir("/proc"):
            return
        try:
            self._mpiexec = os.pidfd_open(mpiexec_pid)
        except OSError:
            return
        self._root, self.active = mpiexec_pid, True

    def next_look(self) -> float | None:
        """Seconds until the next look for ranks (None: every rank is found, or there is nothing to watch)."""
        if not self.active or len(self._found) >= self.ranks:
            return None
        return max(0.0, self._next - time.monotonic())

    def wait(self, timeout: float | None) -> bool:
        """Wait up to `timeout` seconds (None: for ever); True once mpiexec has ended."""
        if not self.active:
            return False
        import select

        if self.next_look() == 0.0:
            self._look()
        poller = select.poll()  # not select.select: a pidfd may be numbered beyond FD_SETSIZE
        for fd in (self._mpiexec, *self._fds):
            poller.register(fd, select.POLLIN)
        ready = [fd for fd, _ in poller.poll(None if timeout is None else timeout * 1000)]
        ended = [fd for fd in ready if fd in self._fds]
        if ended and not self.first_ended and not self._seen_end:
            self._seen_end = True
            # Only when every rank is watched: a rank on a host whose processes we cannot see (a real cluster's
            # other node) may have ended first, and the first of ours would then be a survivor killed after it.
            if len(self._found) >= self.ranks:
                self.first_ended = sorted(self._fds[fd] for fd in ended)
        for fd in ended:
            del self._fds[fd]
            os.close(fd)
        return self._mpiexec in ready

    def _look(self) -> None:
        for pid in _descendants(self._root):
            if pid in self._found or not _is_rank(pid):
                continue
            rank = _rank_of(pid)
            if rank is None:
                continue
            try:
                fd = os.pidfd_open(pid)
            except OSError:  # it ended already: the next look finds the others
                continue
            self._found.add(pid)
            self._fds[fd] = (rank, pid)
        self._next = time.monotonic() + self._interval
        self._interval = min(self._LAST_LOOK, self._interval * 2)

    def close(self) -> None:
        for fd in [*self._fds, *([self._mpiexec] if self._mpiexec is not None else [])]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._mpiexec = None
        self.active = False


def _rank_of(pid: int) -> int | None:
    """The MPI rank of a process that a Hydra proxy started (PMI_RANK in its environment)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as stream:
            for item in stream.read().split(b"\0"):
                if item.startswith(b"PMI_RANK="):
                    return int(item[9:])
    except (OSError, ValueError):
        pass
    return None


def _is_rank(pid: int) -> bool:
    """Below mpiexec, one of our re-launched ranks: `python -P -m mpi4py -m anytimectl ...` (mpiexec's own
    command line says as much, so it must not be asked about mpiexec itself)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            words = stream.read().split(b"\0")
    except OSError:
        return False
    return b"mpi4py" in words and b"anytimectl" in words


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (the SigCgt mask of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as stream:
            for line in stream:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def kill_job(mpiexec_pid: int) -> None:
    """Stop a job now: SIGKILL mpiexec and every process it started on this host (proxies and ranks).

    The descendants are listed before mpiexec dies, while they are still its children. Remote ranks go down
    when their proxy loses mpiexec.
    """
    descendants = _descendants(mpiexec_pid)
    _send(mpiexec_pid, signal.SIGKILL)
    for pid in descendants:
        _send(pid, signal.SIGKILL)


def _descendants(root: int) -> list[int]:
    """Processes below `root`, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stream:
                stat = stream.read()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: the fields after the last ')' are unambiguous
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec function that makes the kernel SIGKILL the child when this process dies (Linux prctl).

    Everything is looked up before the fork: the child only makes the call, then checks that its parent did
    not die in the meantime (the signal is only armed for future deaths).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arm


_PR_SET_PDEATHSIG = 1


def child_python() -> list[str]:
    """The interpreter command for the child processes we start (MPI ranks, isolated measurements).

    `-P` keeps the working directory off sys.path: run from a source checkout, `python -m` would otherwise import
    the checkout's `anytimectl/` (which lacks the installed `anytimectl.plots` and `anytimectl.backends`)
    instead of the installed package.
    """
    return [sys.executable, "-P"]


@dataclass
class RankInfo:
    """Who this process is in the job, and what it may use on its host."""

    rank: int
    size: int
    host: str
    local_rank: int
    ranks_on_host: int
    threads: int
    comm: Any  # an anytimectl.comm.Comm, or None in a single process


def cores_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def threads_per_rank(ranks_on_host: int, requested: int | None) -> int:
    """Ranks sharing a host split its cores: oversubscribed threads cost 4x throughput (docs/platform-facts.md)."""
    if requested:
        return requested
    return max(1, cores_available() // max(1, ranks_on_host))


def limit_threads(threads: int) -> None:
    """Cap BLAS/OpenMP pools now; frameworks read the same number when they start (see backends)."""
    for variable in _BLAS_THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass


def start_rank(requested_threads: int | None) -> RankInfo:
    """Initialise MPI (inside a job) and describe this rank; outside a job describe the single process."""
    host = socket.gethostname()
    if not in_mpi_job():
        threads = threads_per_rank(1, requested_threads)
        limit_threads(threads)
        return RankInfo(0, 1, host, 0, 1, threads, None)
    from mpi4py import MPI

    from anytimectl.comm import Comm

    world = MPI.COMM_WORLD
    local = world.Split_type(MPI.COMM_TYPE_SHARED)
    info = RankInfo(
        rank=world.Get_rank(),
        size=world.Get_size(),
        host=host,
        local_rank=local.Get_rank(),
        ranks_on_host=local.Get_size(),
        threads=0,
        comm=Comm(world),
    )
    local.Free()
    info.threads = threads_per_rank(info.ranks_on_host, requested_threads)
    limit_threads(info.threads)
    return info


def mpi_library_version() -> str:
    try:
        from mpi4py import MPI

        return MPI.Get_library_version().splitlines()[0].strip()
    except Exception:  # noqa: BLE001 - only informational
        return "unknown"


def select_device(device: str, rank: int, local_rank: int, gpus_per_node: int | None) -> str:
    """Pin this rank to a GPU or hide all GPUs, before any framework starts.

    `gpu` puts every rank on GPU local_rank % gpus; `gpu-workers` keeps the master on the CPU (the original's
    cpu_master); `gpu-master` puts only the master on a GPU. Returns what this rank uses, for metadata.
    """
    wants_gpu = device == "gpu" or (device == "gpu-workers" and rank > 0) or (device == "gpu-master" and rank == 0)
    if not wants_gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return "cpu"
    gpus = gpus_per_node or count_gpus()
    if gpus < 1:
        raise UsageError(f"--device {device}: no GPU found on {socket.gethostname()}; use --device cpu")
    index = local_rank % gpus
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    return f"gpu:{index}"


def count_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return len([v for v in visible.split(",") if v.strip()])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def is_rank_zero() -> bool:
    """Whether this process should speak for the job (rank 0, or a process outside any job)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return True
    return mpi.COMM_WORLD.Get_rank() == 0


def end_rank() -> None:
    """Finalize MPI before a deliberate non-zero exit that every rank takes together.

    Under `python -m mpi4py` any non-zero exit triggers MPI_Abort and its alarming banner; after a collective
    finalize the exit code passes through quietly. Never call this when other ranks are still waiting.
    """
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()


def leave_process(code: int) -> NoReturn:
    """End this process with `code` as soon as its work is recorded, skipping the interpreter's slow teardown.

    The process flushes its output, runs the atexit handlers, finalizes MPI (with code 0 every rank of a job
    arrives here together, after its last collective; a non-zero code must come after `end_rank`, or the process
    exits normally) and leaves without tearing down its modules, which took 1-2.4 s on a busy 2-core machine for
    the launching process (when its data checks still imported scikit-learn, scipy and pandas) and about 1 s for a
    simulated rank (docs/platform-facts.md, "A process's exit is a teardown too"; README, "How runs end":
    tests/bench/teardown.py). A process that is not an MPI rank leaves with `os._exit`, which also skips
    TensorFlow's and torch's C++ teardown (seconds); an MPI rank leaves with the C library's `exit`, because MPICH
    completes a rank's exit in a C atexit handler, and the C++ destructors then run too. A job ends only when its
    last process has.
    """
    if code and _mpi_running():
        # A non-zero exit with MPI still running is one rank leaving alone: the normal exit (MPI_Abort under
        # `python -m mpi4py`) must end the job.
        sys.exit(code)
    import atexit

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    atexit._run_exitfuncs()
    mpi = sys.modules.get("mpi4py.MPI")
    was_rank = mpi is not None and mpi.Is_initialized()  # finalized here or before (end_rank): a rank all the same
    end_rank()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    if was_rank:
        # MPICH completes a rank's exit in a C atexit handler that os._exit skips: Hydra then takes the exit for a
        # crash and SIGKILLs every rank still finalizing (a completed 8-rank job ended with exit code 9;
        # docs/platform-facts.md). The C library's exit runs those handlers and still skips Python's teardown.
        import ctypes

        ctypes.CDLL(None).exit(code)
    os._exit(code)


def _mpi_running() -> bool:
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized()


def abort_job_if_ranked() -> None:
    """After an unexpected error in one rank of a multi-rank job, end every rank now.

    `python -m mpi4py` (our re-launch) does this itself; a user's plain `mpiexec -n 5 anytimectl ...` does not,
    and without it the other ranks would wait in their next collective forever.
    """
    import traceback

    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized() or mpi.COMM_WORLD.Get_size() < 2:
        return
    traceback.print_exc()
    sys.stderr.flush()
    mpi.COMM_WORLD.Abort(1)
