"""How long a job takes to end: `train amb` with 2 workers, finished, stopped by SIGTERM and by Ctrl-C (SIGINT to
the launching process, which is what a terminal's Ctrl-C reaches), on one host and across 2 emulated hosts.

    .venv/bin/python tests/bench/teardown.py [--backend sim] [--protocols sync,async] [--stops finish,SIGTERM,SIGINT]
        [--where one-host,2-hosts] [--repeats 1] [--baseline DIR]

`--baseline DIR` runs every case first with an earlier version of anytimectl (PYTHONPATH=DIR, a folder holding an
`anytimectl` package with its `backends` and `plots` inside, as made by
`git archive REV anytimectl | tar -x -C DIR && git archive REV backends plots | tar -x -C DIR/anytimectl`), then
with this one, so the two are compared under the same load.

Each line: the stop signal to the last step, the last step to the end rank 0 records (events.jsonl), and the
recorded end to the launching process's exit and to the moment no process of the job is left (mpiexec, Hydra's
proxies, every rank; tests/job_end.py says how each instant is taken). Across hosts, the command is anytimectl's own
launch (`--workers 2 --hosts H0:2,H1:1`) run inside the first emulated host with the launcher stand-in (needs
root; skipped with the reason otherwise).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from itertools import product
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.emulated import IFACE, NETWORK_ENV, EmulatedCluster, missing_requirements, venv_bin  # noqa: E402
from job_end import watch_job  # noqa: E402

STOPS = {"finish": None, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


def command(backend: str, protocol: str, stop: str, out: Path, name: str, hosts: str | None) -> list[str]:
    steps = "12" if stop == "finish" else "100000"
    args = [venv_bin("anytimectl"), "train", "amb", "--backend", backend, "--protocol", protocol, "--workers", "2",
            "--steps", steps, "--test-size", "50", "--out", str(out), "--name", name, "--quiet"]
    if backend != "sim":
        args += ["--batch-size", "16", "--threads", "1"]
    if hosts:
        args += ["--hosts", hosts]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="sim")
    parser.add_argument("--protocols", default="sync,async")
    parser.add_argument("--stops", default="finish,SIGTERM,SIGINT")
    parser.add_argument("--where", default="one-host,2-hosts")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--baseline", default=None, help="PYTHONPATH of an earlier anytimectl to compare with")
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.1f}", flush=True)
    versions = ["before", "after"] if args.baseline else ["this"]
    with tempfile.TemporaryDirectory(prefix="teardown-") as folder:
        out = Path(folder)
        for where in args.where.split(","):
            if where == "2-hosts" and missing_requirements():
                print(f"2-hosts: skipped ({missing_requirements()})")
                continue
            cluster = EmulatedCluster(2) if where == "2-hosts" else None
            try:
                if cluster is not None:
                    cluster.__enter__()
                for protocol in args.protocols.split(","):
                    for stop in args.stops.split(","):
                        for repeat, version in product(range(args.repeats), versions):
                            name = f"{where}-{protocol}-{stop}-{repeat}-{version}"
                            hosts = f"{cluster.hosts[0]}:2,{cluster.hosts[1]}:1" if cluster else None
                            run = command(args.backend, protocol, stop, out, name, hosts)
                            env = dict(os.environ)
                            if version == "before":
                                env["PYTHONPATH"] = str(Path(args.baseline).resolve())
                            if cluster is not None:
                                run = cluster.in_host(0, run)
                                env.update({"HYDRA_LAUNCHER": "ssh", "HYDRA_LAUNCHER_EXEC": cluster.launcher,
                                            "HYDRA_IFACE": IFACE, **NETWORK_ENV})
                            times = watch_job(run, out / name, STOPS[stop], rows_before_stop=4, env=env)
                            label = f" {version:6s}" if args.baseline else ""
                            print(f"{where:8s} {args.backend} {protocol:5s} {stop:7s}{label} {times.line()}",
                                  flush=True)
            finally:
                if cluster is not None:
                    cluster.close()
    print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
