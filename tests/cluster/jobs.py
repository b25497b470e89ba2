"""Running anytimectl across an emulated cluster from tests and benchmarks, the way a cluster user starts it.

The job is started by the user's own mpiexec (the one next to this Python) with the cluster's Hydra options and
the plain `anytimectl` entry point on every rank, as `mpiexec -n 4 -hosts node1,node2 anytimectl ...` would be on
a real cluster. Each rank gets `--threads cores // all ranks`: emulated hosts share this machine's cores, and the
default (`cores // ranks on the host`) would oversubscribe them (README, "Emulating a cluster on one machine").
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from anytimectl.runtime.launch import cores_available
from cluster.emulated import EmulatedCluster, venv_bin

#: Seconds a whole test job may take before it counts as hung (start-up of 4 ranks on 2 busy cores included).
JOB_TIMEOUT = 300.0


def threads_for(total_ranks: int) -> int:
    """Threads per rank when `total_ranks` ranks of all emulated hosts share this machine's cores."""
    return max(1, cores_available() // total_ranks)


@dataclass
class Job:
    """A finished job across the cluster: its run directory, its output, and what its links carried."""

    path: Path
    returncode: int
    stdout: str
    stderr: str
    #: time.time() when mpiexec had exited
    exited_at: float
    #: per host: (bytes sent, bytes received) through its link during the job
    link_bytes: list[tuple[int, int]]

    @property
    def metadata(self) -> dict:
        return json.loads((self.path / "metadata.json").read_text())


def run_across(cluster: EmulatedCluster, ranks_per_host: int | list[int], args: list[str], out: Path, name: str,
               timeout: float = JOB_TIMEOUT, threads: int | None = None,
               env: dict[str, str] | None = None) -> Job:
    """`anytimectl ARGS --out OUT --name NAME --quiet --threads T` on `ranks_per_host` ranks of every host
    (`threads=0`: no --threads, for commands without it, such as `bandwidth`)."""
    counts = [ranks_per_host] * len(cluster.hosts) if isinstance(ranks_per_host, int) else ranks_per_host
    total = sum(counts)
    program = [venv_bin("anytimectl"), *args, "--out", str(out), "--name", name]
    if threads != 0:
        program += ["--quiet", "--threads", str(threads or threads_for(total))]
    before = cluster.counters()
    with cluster.started(counts, program, env=env) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name}: the job did not end within {timeout:.0f} s") from None
        exited_at = time.time()
    after = cluster.counters()
    link_bytes = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)]
    return Job(out / name, process.returncode, stdout, stderr, exited_at, link_bytes)


def metadata_written_at(job: Job) -> float:
    """When the run's final metadata was written (its file's modification time)."""
    return os.stat(job.path / "metadata.json").st_mtime
