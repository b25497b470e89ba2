"""Benchmark: elastic gossip against allreduce under i.i.d. stragglers (issue 8).

Run (under the shared lock, so that benchmarks never overlap):
    flock /tmp/anytimectl-bench.lock python tests/bench/gossip_vs_allreduce.py
    flock /tmp/anytimectl-bench.lock python tests/bench/gossip_vs_allreduce.py --dataset mnist \\
        --data-dir ~/data/mnist --epochs 1 --induce niagara:0.05

Both methods train the same model on the same data for the same number of epochs, with 4 workers, the same seeds
and the same straggler model (delays drawn per worker per update from (--seed, worker, update), so both methods
see the same delays). An allreduce step waits for the slowest of the 4 delays; an elastic gossip step with
--agg-prob 0.125 waits only for its partners, when it has any, and runs up to 16 updates ahead of the slowest.
Printed per method (mean over --seeds runs): updates per second, final test accuracy of worker 1's model and of
the averaged model, bytes sent per update per worker; then the ratios in this run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

METHODS = (("allreduce", ()), ("elastic", ("--agg-prob", "0.125")))


def run(method: str, extra: tuple[str, ...], seed: int, args: argparse.Namespace, out: Path) -> dict:
    name = f"{method}-s{seed}"
    command = [sys.executable, "-m", "anytimectl", "train", "gossip", "--workers", str(args.workers),
               "--method", method, *extra, "--induce", args.induce, "--epochs", str(args.epochs),
               "--dataset", args.dataset, "--seed", str(seed), "--log-every", str(args.log_every),
               "--out", str(out), "--name", name, "--json"]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "updates_per_s": summary["steps"] / summary["wall_time_s"],
        "accuracy": summary["test_accuracy_per_worker"]["1"],
        "agg_accuracy": summary["agg_test_accuracy"],
        "bytes_per_update": summary["bytes_sent_per_update"],
        "steps": summary["steps"],
        "wall": summary["wall_time_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--induce", default="niagara:0.05")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {method: [] for method, _ in METHODS}
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.seeds):  # interleaved, so that drifts of the machine hit both methods alike
            for method, extra in METHODS:
                results[method].append(run(method, extra, seed, args, Path(folder)))
    print(f"{args.dataset}, {args.workers} workers, --induce {args.induce}, {args.epochs:g} epochs, "
          f"{args.seeds} seed(s) each")
    print(f"{'method':<22}{'updates/s':>10}{'acc (w1)':>10}{'acc (avg)':>10}{'bytes/update':>14}")
    means = {}
    for method, extra in METHODS:
        rows = results[method]
        mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
        means[method] = mean
        label = method + (" p=1/8" if extra else "")
        print(f"{label:<22}{mean['updates_per_s']:>10.2f}{mean['accuracy']:>10.4f}{mean['agg_accuracy']:>10.4f}"
              f"{mean['bytes_per_update']:>14,.0f}")
    speedup = means["elastic"]["updates_per_s"] / means["allreduce"]["updates_per_s"]
    gap = means["elastic"]["accuracy"] - means["allreduce"]["accuracy"]
    agg_gap = means["elastic"]["agg_accuracy"] - means["allreduce"]["agg_accuracy"]
    traffic = means["elastic"]["bytes_per_update"] / means["allreduce"]["bytes_per_update"]
    print(f"elastic/allreduce updates per second: {speedup:.2f}x (target >= 1.5x)")
    print(f"accuracy difference (elastic - allreduce): worker 1 {gap * 100:+.2f} points, averaged model "
          f"{agg_gap * 100:+.2f} points (target within 1 point)")
    print(f"bytes per update, elastic/allreduce: {traffic:.3f}")
    per_seed = [e["updates_per_s"] / a["updates_per_s"] for e, a in zip(results["elastic"], results["allreduce"],
                                                                           strict=True)]
    print("speedup per seed: " + ", ".join(f"{s:.2f}x" for s in per_seed))


if __name__ == "__main__":
    main()
