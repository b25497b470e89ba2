"""`compress train` across emulated hosts on a shaped link: step time of dense all-reduce against compressed
methods, with each step's time split into the timing words.

    sudo .venv/bin/python tests/bench/cluster_compress.py [--hosts 4] [--rate 100mbit] [--steps 30]
        [--methods none,topk] [--model digits-cnn]

One rank per emulated host (tests/cluster/emulated.py), `--threads cores // all ranks`, the same seed for every
method. Per method it prints the median step time (from one round's start to the next, worker 1, steps after the
first 3), its compute and send (transfer) parts from the rows, the share of the step the timing words account for,
and the step time against dense (`none`) in the same run. top-k runs at 1% with error feedback. Needs root.
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
from cluster.jobs import run_across, threads_for  # noqa: E402

METHOD_ARGS = {"topk": ["--ratio", "0.01", "--error-feedback"], "randomk": ["--ratio", "0.01", "--error-feedback"]}
SKIP = 3  # start-up steps left out of the medians


def step_parts(path: Path) -> dict[str, float]:
    """Medians over worker 1's rounds: step (round start to next round start), compute, send, accounted share."""
    rows = pd.read_csv(path / "worker_stats.csv")
    rows = rows[rows["rank"] == rows["rank"].min()].sort_values("master_step").reset_index(drop=True)
    wall = rows.round_start.diff().shift(-1)  # round n's length: the next round's start minus its own
    words = (rows.compute_time + rows.last_send.shift(-1) + rows.last_recv.shift(-1) + rows.last_exit.shift(-1))
    keep = slice(SKIP, len(rows) - 1)
    return {"step_s": float(np.median(wall[keep])), "compute_s": float(np.median(rows.compute_time[keep])),
            "send_s": float(np.median(rows.last_send.shift(-1)[keep])),
            "accounted": float(np.min((words / wall)[keep]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--rate", default="100mbit")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--methods", default="none,topk")
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        raise SystemExit(reason)
    results = []
    with tempfile.TemporaryDirectory(prefix="cluster-compress-") as out, \
            EmulatedCluster(args.hosts, rate=args.rate) as cluster:
        for method in args.methods.split(","):
            command = ["compress", "train", "--method", method, *METHOD_ARGS.get(method, []), "--steps",
                       str(args.steps), "--test-size", "100", "--log-every", str(args.steps), "--seed", "1"]
            if args.model:
                command += ["--model", args.model]
            job = run_across(cluster, 1, command, Path(out), method, timeout=1800)
            if job.returncode != 0:
                raise SystemExit(f"{method} failed ({job.returncode}):\n{job.stderr[-3000:]}")
            sent = sum(link[0] for link in job.link_bytes)
            results.append({"method": method, **step_parts(job.path), "link_MB_per_step": sent / args.steps / 1e6})
    table = pd.DataFrame(results)
    dense = table.loc[table.method == "none", "step_s"]
    if len(dense):
        table["dense/this"] = float(dense.iloc[0]) / table.step_s
    table["step/compute"] = table.step_s / table.compute_s
    print(f"{args.hosts} hosts at {args.rate}, one rank per host, --threads {threads_for(args.hosts)}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
