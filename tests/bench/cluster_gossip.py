"""Elastic gossip (p = 1/8) against all-reduce across emulated hosts on shaped links, with and without niagara
stragglers: updates per second and final accuracy, in the same run.

    sudo .venv/bin/python tests/bench/cluster_gossip.py [--hosts 4] [--rate 100mbit] [--epochs 5]
        [--induce niagara:0.05] [--seeds 1]

One rank (worker) per emulated host (tests/cluster/emulated.py), `--threads cores // all ranks`, the built-in
digits with `train gossip`'s defaults (digits CNN, SGD, aggregate batch 64), the same seed and delays for both
methods, interleaved. Each worker's link is shaped with `tc tbf`; an all-reduce step moves 2 (N - 1) / N models
through every link, an elastic step only the parameters to a round's partners, when it has any. Printed per
setting: updates per second (steps / wall time), test accuracy of worker 1's model and of the averaged model,
bytes all links carried per update; then elastic / all-reduce. Targets (issue 15): >= 2x the updates per second,
final accuracy within 1 point. Needs root.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.emulated import EmulatedCluster, missing_requirements  # noqa: E402
from cluster.jobs import run_across, threads_for  # noqa: E402

METHODS = {"allreduce": [], "elastic": ["--agg-prob", "0.125"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--rate", default="100mbit")
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--induce", default="niagara:0.05", help="the straggler setting beside no stragglers")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        raise SystemExit(reason)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cluster-gossip-") as out, \
            EmulatedCluster(args.hosts, rate=args.rate) as cluster:
        for seed in range(args.seeds):
            for induce in ("none", args.induce):
                for method, extra in METHODS.items():
                    name = f"{method}-{induce.replace(':', '')}-s{seed}"
                    command = ["train", "gossip", "--method", method, *extra, "--epochs", str(args.epochs),
                               "--seed", str(seed), "--log-every", "1000000"]
                    if induce != "none":
                        command += ["--induce", induce]
                    job = run_across(cluster, 1, command, Path(out), name, timeout=1800)
                    if job.returncode != 0:
                        raise SystemExit(f"{name} failed ({job.returncode}):\n{job.stderr[-3000:]}")
                    summary = job.metadata["summary"]
                    sent = sum(link[0] for link in job.link_bytes)
                    rows.append({"stragglers": induce, "method": method, "seed": seed, "steps": summary["steps"],
                                 "wall_s": summary["wall_time_s"],
                                 "updates_per_s": summary["steps"] / summary["wall_time_s"],
                                 "acc_w1": summary["test_accuracy_per_worker"]["1"],
                                 "acc_avg": summary["agg_test_accuracy"],
                                 "links_MB_per_update": sent / summary["steps"] / 1e6})
                    print(rows[-1], flush=True)
    table = pd.DataFrame(rows).groupby(["stragglers", "method"], sort=False).mean(numeric_only=True).reset_index()
    pd.set_option("display.width", 200)
    print(f"{args.hosts} hosts at {args.rate}, one worker per host, --threads {threads_for(args.hosts)}, "
          f"{args.epochs:g} epochs, {args.seeds} seed(s)")
    print(table.drop(columns="seed").to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for induce in table.stragglers.unique():
        part = table[table.stragglers == induce].set_index("method")
        speed = part.updates_per_s["elastic"] / part.updates_per_s["allreduce"]
        gap = (part.acc_w1["elastic"] - part.acc_w1["allreduce"]) * 100
        gap_avg = (part.acc_avg["elastic"] - part.acc_avg["allreduce"]) * 100
        print(f"stragglers {induce}: elastic/allreduce updates per second {speed:.2f}x (target >= 2x); accuracy "
              f"worker 1 {gap:+.2f} points, averaged model {gap_avg:+.2f} points (target within 1)")


if __name__ == "__main__":
    main()
