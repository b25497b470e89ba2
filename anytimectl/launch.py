"""Becoming an MPI job: detect one, or re-launch ourselves as one, and set up each rank.

The same command line works on a laptop (`anytimectl train amb --workers 4`: we start
`mpiexec -n 5 python -m mpi4py -m anytimectl ...` ourselves) and on a cluster (`mpirun -n 65 anytimectl ...`:
we are already rank r of 65). `-m mpi4py` matters: it turns an uncaught exception in any rank into
MPI_Abort, so one crashed rank ends the whole job instead of leaving the others waiting forever.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anytimectl.errors import UsageError

#: Environment variables by which the common launchers tell a process that it is one rank of a job.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")
#: Set by our own re-launch so that the children never re-launch again.
RELAUNCHED = "ANYTIMECTL_RELAUNCHED"
#: Passed from the re-launching parent to rank 0: the run directory the parent already reserved.
RUN_DIR_VARIABLE = "ANYTIMECTL_RUN_DIR"

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


def relaunch(workers: int, argv: list[str], mpiexec: str | None, hosts: str | None, env: dict[str, str]) -> int:
    """Run this same command as an MPI job of workers + 1 ranks and return its exit code.

    The parent ignores Ctrl-C while the job runs: the terminal delivers it to every rank, and rank 0 turns it
    into a clean stop of the run. We only wait and pass the exit code on.
    """
    command = [find_mpiexec(mpiexec), "-n", str(workers + 1)]
    if hosts:
        command += ["-hosts", hosts]
    command += [*child_python(), "-m", "mpi4py", "-m", "anytimectl", *argv]
    child_env = {**os.environ, **env, RELAUNCHED: "1"}
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process = subprocess.Popen(command, env=child_env)
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:  # pragma: no cover - SIG_IGN makes this rare
                continue
    finally:
        signal.signal(signal.SIGINT, previous)


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

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def workers(self) -> int:
        return max(1, self.size - 1)


def cores_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def threads_per_rank(ranks_on_host: int, requested: int | None) -> int:
    """Ranks sharing a host split its cores: oversubscribed threads cost 4x throughput (environment.md)."""
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
