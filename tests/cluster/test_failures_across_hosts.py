"""Failures across hosts: a rank killed on the second host, and a host whose proxy cannot start.

These runs use anytimectl's own launch across hosts (`--workers N --hosts h0:2,h1:2`), with the site's launcher
given through MPICH's environment (HYDRA_LAUNCHER, HYDRA_LAUNCHER_EXEC, HYDRA_IFACE), as a user of a cluster
without a scheduler would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from cluster.emulated import IFACE, NETWORK_ENV, EmulatedCluster, missing_requirements, venv_bin
from cluster.jobs import threads_for

pytestmark = [
    pytest.mark.cluster, pytest.mark.mpi, pytest.mark.slow,
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
    pytest.mark.timeout(400),
]


def launcher_env(cluster: EmulatedCluster) -> dict[str, str]:
    """What a user sets so that `anytimectl --hosts` starts its proxies through the cluster's launcher."""
    return {**os.environ, "HYDRA_LAUNCHER": "ssh", "HYDRA_LAUNCHER_EXEC": cluster.launcher, "HYDRA_IFACE": IFACE,
            **NETWORK_ENV}


def _rank_pids(cluster: EmulatedCluster, host: int) -> list[int]:
    """The anytimectl ranks running in a host (not its Hydra proxy or the shell that started it)."""
    found = []
    for pid in cluster.pids_in(host):
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mpi4py" in words and b"anytimectl" in words:
            found.append(pid)
    return found


def _pmi_rank(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(int(item[9:]) for item in environ if item.startswith(b"PMI_RANK="))


def _wait_for_rows(csv: Path, rows: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the job ended early ({process.returncode}): {process.stderr.read()[-3000:]}")
        try:
            if len(pd.read_csv(csv)) >= rows:
                return
        except (OSError, ValueError, pd.errors.EmptyDataError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"{csv} did not reach {rows} rows within {timeout} s")


def test_kill_9_of_a_rank_on_the_second_host_fails_the_run_within_seconds(tmp_path):
    with EmulatedCluster(2) as cluster:
        hosts = ",".join(f"{host}:2" for host in cluster.hosts)
        command = cluster.in_host(0, [venv_bin("anytimectl"), "train", "fmb", "--workers", "3", "--hosts", hosts,
                                      "--threads", str(threads_for(4)), "--steps", "100000", "--batch-size", "16",
                                      "--test-size", "50", "--out", str(tmp_path), "--name", "victim", "--quiet"])
        process = subprocess.Popen(command, env=launcher_env(cluster), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            run = tmp_path / "victim"
            _wait_for_rows(run / "master_stats.csv", 3, process)
            victims = _rank_pids(cluster, 1)
            assert len(victims) == 2, victims
            victim_rank = _pmi_rank(victims[0])
            os.kill(victims[0], signal.SIGKILL)
            killed_at = time.monotonic()
            _, stderr = process.communicate(timeout=120)
            ended_in = time.monotonic() - killed_at
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
        assert ended_in < 60, f"the job took {ended_in:.0f} s to end after the kill"  # a hang detector
        assert process.returncode != 0
        assert not _rank_pids(cluster, 0) and not _rank_pids(cluster, 1), "a rank outlived the job"
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["status"] == "failed", meta
    assert "exit code" in meta["reason"]
    # the killed rank is named, never a survivor (mpiexec's own report may name any of them)
    assert meta["reason"].startswith(f"rank {victim_rank} (worker {victim_rank}, pid {victims[0]}) ended first"), \
        meta["reason"]
    master = pd.read_csv(run / "master_stats.csv")
    assert len(master) >= 2 and list(master.step) == list(range(1, len(master) + 1))
    workers = pd.read_csv(run / "worker_stats.csv")
    collect = pd.read_csv(run / "collect_stats.csv")
    assert workers.master_step.max() == master.step.max() == collect.step.max()  # the last complete step


def test_a_host_whose_proxy_cannot_start_gives_one_clear_error(tmp_path):
    with EmulatedCluster(1) as cluster:
        hosts = f"{cluster.hosts[0]}:1,{cluster.hosts[0]}x:1"  # the second host does not exist
        command = cluster.in_host(0, [venv_bin("anytimectl"), "train", "fmb", "--workers", "1", "--hosts", hosts,
                                      "--steps", "2", "--out", str(tmp_path), "--name", "unreachable"])
        result = subprocess.run(command, env=launcher_env(cluster), capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("anytimectl: error: --hosts")]
    assert len(errors) == 1 and "could not start" in errors[0], result.stderr
    assert not any(line.startswith("[mpiexec@") for line in lines), result.stderr  # Hydra's dump is left out
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "unreachable").exists()  # the reserved run directory was released
