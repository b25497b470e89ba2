"""What the master's host link carries in `train amb` across emulated hosts, against what a step needs and what the
run directory counts: the host chain (`anytimectl.comm.host_chain`) against MPICH's own Reduce and Bcast, in the
same run.

    sudo .venv/bin/python tests/bench/cluster_master_link.py [--hosts 2,4] [--ranks-per-host 2] [--steps 6]
        [--backend torch] [--rate 1gbit]

The master (rank 0) shares the first host with `ranks-per-host - 1` workers; the other hosts hold
`ranks-per-host` workers each. Per step the master's host needs at least one model's worth in (the sum of the
other hosts' contributions, if reduced on their side first) and one out (the parameters, if relayed onward by the
other hosts). Printed per run, in models per step: the first host's link (in, out), what rank 0 counted as moved
between hosts (summary `master_bytes_*_across_hosts`, the chain only) and its payload counts (`master_bytes_*`:
every worker's contribution, whatever crossed a link); and worker 1's median step time. `mpich` runs with
`ANYTIMECTL_HOST_CHAIN=0`. Needs root.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.emulated import EmulatedCluster, missing_requirements  # noqa: E402
from cluster.jobs import run_across  # noqa: E402

LAYERS = {"mpich": {"ANYTIMECTL_HOST_CHAIN": "0"}, "chain": {}}


def measure(cluster: EmulatedCluster, per_host: int, steps: int, backend: str, layer: str, out: Path) -> dict:
    hosts = len(cluster.hosts)
    name = f"amb-{hosts}h{per_host}-{layer}"
    command = ["train", "amb", "--backend", backend, "--partitions", "4", "--steps", str(steps),
               "--test-size", "60", "--seed", "3", "--batch-size", "32", "--log-every", str(steps)]
    job = run_across(cluster, per_host, command, out, name, timeout=900, env=LAYERS[layer])
    if job.returncode != 0:
        raise SystemExit(f"{name} failed ({job.returncode}):\n{job.stderr[-3000:]}")
    summary = job.metadata["summary"]
    workers = hosts * per_host - 1
    model = summary["master_bytes_received"] / workers / steps  # each worker's counted contribution per step
    sent, received = job.link_bytes[0]
    rows = pd.read_csv(job.path / "worker_stats.csv")
    first = rows[rows["rank"] == rows["rank"].min()].sort_values("master_step")
    per_step = model * steps
    return {"hosts": hosts, "ranks/host": per_host, "layer": layer, "model_MB": model / 1e6,
            "link_in": received / per_step, "link_out": sent / per_step,
            "across_in": summary.get("master_bytes_received_across_hosts", np.nan) / per_step,
            "across_out": summary.get("master_bytes_sent_across_hosts", np.nan) / per_step,
            "counted_in": summary["master_bytes_received"] / per_step,
            "counted_out": summary["master_bytes_sent"] / per_step,
            "step_s": float(np.median(np.diff(first.round_start.to_numpy())[1:]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="2,4")
    parser.add_argument("--ranks-per-host", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--rate", default=None, help="tc rate of every link (default: unshaped)")
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        raise SystemExit(reason)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cluster-master-link-") as out:
        for hosts in (int(h) for h in args.hosts.split(",")):
            with EmulatedCluster(hosts, rate=args.rate) as cluster:
                for layer in LAYERS:
                    rows.append(measure(cluster, args.ranks_per_host, args.steps, args.backend, layer, Path(out)))
    pd.set_option("display.width", 200)
    print(f"models per step (the initial parameters are one more model out); rate {args.rate or 'unshaped'}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
