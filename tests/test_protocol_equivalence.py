"""FMB with W workers of batch B is the same update as one process on the W*B examples, through real MPI;
AMB with an unreachable time limit is the same as FMB. On each backend (each run is its own MPI job, so
TensorFlow and torch never meet in one process), and for both ways of finishing a step: the master broadcasting
its parameters, or every rank applying the summed contributions itself (replicated), through shared memory or
MPI messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anytimectl.runtime.launch import find_mpiexec

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

SCRIPT = Path(__file__).parent / "mpi" / "protocol_equivalence.py"


def _job(backend: str, cases: list[str], shared_memory: bool) -> dict[str, dict]:
    """One MPI job of 3 ranks that runs `cases` (METHOD:MODE) one after another: each rank starts its framework
    once for all of them. Returns each case's report."""
    env = {**os.environ, "ANYTIMECTL_SHARED_MEMORY": "1" if shared_memory else "0"}
    result = subprocess.run([find_mpiexec(), "-n", "3", sys.executable, "-m", "mpi4py", str(SCRIPT), backend, *cases],
                            capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"case"')]
    assert [r["case"] for r in reports] == cases, result.stdout[-2000:]
    return {r["case"]: r for r in reports}


#: each test's job (backend, shared memory) and case, from its parameters
CASE_OF = {
    "test_distributed_steps_equal_single_process_steps_on_the_same_examples":
        lambda method, backend: ((backend, True), f"{method}:broadcast"),
    "test_replicated_updates_leave_every_rank_with_the_master_model":
        lambda method: (("tensorflow", True), f"{method}:replicated"),
    "test_both_transports_give_the_same_steps": lambda mode, shared_memory: (("sim", shared_memory), f"fmb:{mode}"),
}


@pytest.fixture(scope="module")
def reports(request) -> dict[tuple[str, bool, str], dict]:
    """The selected tests' cases, one MPI job per backend and transport (4 TensorFlow jobs of 3 ranks were one
    each before; now one in all)."""
    jobs: dict[tuple[str, bool], list[str]] = {}
    for item in request.session.items:
        if item.module is request.module and getattr(item, "originalname", None) in CASE_OF:
            job, case = CASE_OF[item.originalname](**item.callspec.params)
            jobs.setdefault(job, [])
            if case not in jobs[job]:
                jobs[job].append(case)
    return {(*job, case): report for job, cases in jobs.items() for case, report in _job(job[0], cases, job[1]).items()}


def _run(reports, method: str, backend: str, mode: str = "broadcast", shared_memory: bool = True) -> dict:
    report = reports[(backend, shared_memory, f"{method}:{mode}")]
    assert report["max_update"] > 1e-4  # the parameters really moved
    assert report["max_difference"] < 1e-5 + 1e-3 * report["max_update"]
    assert report["shared_memory"] is shared_memory
    return report


@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("torch", marks=pytest.mark.torch)])
@pytest.mark.parametrize("method", ["fmb", "amb"])
def test_distributed_steps_equal_single_process_steps_on_the_same_examples(reports, method, backend):
    _run(reports, method, backend)


@pytest.mark.parametrize("method", ["fmb", "amb"])
def test_replicated_updates_leave_every_rank_with_the_master_model(reports, method):
    report = _run(reports, method, "tensorflow", "replicated")
    assert report["workers_equal_master"]  # bit for bit: the same update on the same parameters


@pytest.mark.parametrize("mode", ["broadcast", "replicated"])
@pytest.mark.parametrize("shared_memory", [True, False], ids=["shared-memory", "mpi-messages"])
def test_both_transports_give_the_same_steps(reports, mode, shared_memory):
    report = _run(reports, "fmb", "sim", mode, shared_memory)
    if mode == "replicated":
        assert report["workers_equal_master"]
