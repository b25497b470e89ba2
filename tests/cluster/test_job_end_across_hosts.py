"""A finished or stopped job across 2 emulated hosts is gone within seconds of the end rank 0 records: the
launching process, mpiexec, both hosts' Hydra proxies and every rank (tests/job_end.py). anytimectl's own launch
across hosts (`--workers 2 --hosts H0:2,H1:1`), started inside the first host with the site's launcher given
through MPICH's environment, as in test_failures_across_hosts.py; the simulated backend, since the run shell's end
is under test, not a framework."""

from __future__ import annotations

import signal

import pytest
from job_end import watch_job

from cluster.emulated import EmulatedCluster, missing_requirements, venv_bin
from cluster.test_failures_across_hosts import launcher_env

pytestmark = [
    pytest.mark.cluster, pytest.mark.mpi, pytest.mark.slow,
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
    pytest.mark.timeout(600),
]

#: Seconds from the recorded end to the moment no process of the job is left, on any host.
GONE_WITHIN = 10.0

CASES = {"sync-finished": ("sync", None), "sync-SIGTERM": ("sync", signal.SIGTERM),
         "async-Ctrl-C": ("async", signal.SIGINT)}


@pytest.fixture(scope="module")
def cluster():
    with EmulatedCluster(2) as made:
        yield made


@pytest.mark.parametrize("case", list(CASES))
def test_the_job_across_hosts_is_gone_within_seconds_of_the_recorded_end(cluster, tmp_path, case):
    protocol, stop = CASES[case]
    hosts = f"{cluster.hosts[0]}:2,{cluster.hosts[1]}:1"
    command = cluster.in_host(0, [venv_bin("anytimectl"), "train", "amb", "--backend", "sim", "--protocol", protocol,
                                  "--workers", "2", "--hosts", hosts, "--steps", "8" if stop is None else "100000",
                                  "--out", str(tmp_path), "--name", case, "--quiet"])
    times = watch_job(command, tmp_path / case, stop, rows_before_stop=3, env=launcher_env(cluster), timeout=300)
    assert times.status == ("completed" if stop is None else "interrupted"), times.stderr[-2000:]
    assert times.returncode == (0 if stop is None else 130)
    assert len(set(times.metadata["hosts"])) == 2  # the ranks really were on both hosts
    assert times.step_to_recorded < GONE_WITHIN
    assert times.recorded_to_all_gone < GONE_WITHIN, times.line()
    assert not cluster.pids_in(1), "a process was left on the second host"
