"""Launcher decisions that need no MPI job: detecting one, finding mpiexec, splitting cores."""

from __future__ import annotations

import os
import sys

import pytest

from anytimectl.runtime import launch
from anytimectl.runtime.errors import UsageError


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID", "SLURM_STEP_ID",
                 "SLURM_NTASKS", launch.RELAUNCHED):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_plain_process_is_not_an_mpi_job(clean_env):
    assert not launch.in_mpi_job()


@pytest.mark.parametrize("variable", ["PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", launch.RELAUNCHED])
def test_launcher_variables_mark_an_mpi_job(clean_env, variable):
    clean_env.setenv(variable, "1")
    assert launch.in_mpi_job()


def test_sbatch_allocation_alone_is_not_a_job_but_srun_is(clean_env):
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "4")
    assert not launch.in_mpi_job()
    clean_env.setenv("SLURM_STEP_ID", "0")
    assert launch.in_mpi_job()


def test_ranks_on_a_host_split_its_cores(monkeypatch):
    monkeypatch.setattr(launch, "cores_available", lambda: 8)
    assert launch.threads_per_rank(1, None) == 8
    assert launch.threads_per_rank(3, None) == 2
    assert launch.threads_per_rank(16, None) == 1
    assert launch.threads_per_rank(16, 4) == 4


def test_mpiexec_is_found_next_to_this_python():
    assert launch.find_mpiexec().endswith(("mpiexec", "mpirun"))


def test_missing_mpiexec_override_is_a_usage_error():
    with pytest.raises(UsageError, match="--mpiexec /no/such/mpiexec"):
        launch.find_mpiexec("/no/such/mpiexec")


def test_cpu_device_hides_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert launch.select_device("gpu-workers", 0, 0, None) == "cpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_gpu_request_without_gpus_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(launch, "count_gpus", lambda: 0)
    with pytest.raises(UsageError, match="no GPU"):
        launch.select_device("gpu", 1, 0, None)


def test_gpu_ranks_take_gpus_round_robin(monkeypatch):
    assert launch.select_device("gpu", 3, 3, 2) == "gpu:1"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"


def test_stop_signals_ignored_by_the_starter_are_not_heeded():
    import signal

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
    try:
        assert signal.SIGHUP not in launch.heeded_signals()
        assert signal.SIGTERM in launch.heeded_signals()
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert set(launch.heeded_signals()) >= {signal.SIGINT, signal.SIGTERM}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_tree_and_handlers_are_read_from_proc():
    import signal
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in launch._descendants(os.getpid())
        assert launch._catches(os.getpid(), signal.SIGINT)  # Python's KeyboardInterrupt handler
        assert not launch._catches(child.pid, signal.SIGUSR2)
    finally:
        child.kill()
        child.wait()
