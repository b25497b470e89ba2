"""Benchmark: DBS against a static split under a persistent straggler (`train dynamic`, issue 7).

Run: flock /tmp/anytimectl-bench.lock python tests/bench/dbs_vs_static.py [--workers 2 4] [--epochs 8]
Each worker count runs `train dynamic --policy static` and `--policy dbs` with `--slow 2:2` (worker 2 computes at
half speed), the same global batch and the same epochs, interleaved (static, dbs, static, dbs, ...) so that machine
noise hits both alike. Epoch time = median wall time of epochs 2..E (DBS measures epoch 1 before it re-balances;
the median, because other work on a shared machine comes in bursts that a mean of a few epochs takes in whole);
speed-up = static / DBS. With 2 workers the ideal is 1.5x (1 + 0.5 against 2 x 0.5); with 4, 1.75x (4 x 1 against
3 + 0.5). Accuracy: the final test accuracy on the whole test split. Both policies train on the same global batch of
the same examples at every step (only the split between workers differs), so their updates agree up to rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def epoch_times(run: Path) -> list[float]:
    """Wall time of each completed epoch, from master_stats (the step at which the epoch count reaches k)."""
    import pandas as pd

    master = pd.read_csv(run / "master_stats.csv")
    ends = [0.0]
    for k in range(1, int(master.epoch.max()) + 1):
        ends.append(float(master.time[master.epoch >= k].iloc[0]))
    return list(np.diff(ends))


def one_run(policy: str, workers: int, batch: int, epochs: int, slow: str, out: str, name: str,
            extra: list[str]) -> dict:
    subprocess.run([sys.executable, "-m", "anytimectl", "train", "dynamic", "--policy", policy, "--workers",
                    str(workers), "--batch-size", str(batch), "--epochs", str(epochs), "--slow", slow,
                    "--test-size", "-1", "--log-every", "100000", "--out", out, "--name", name, "--quiet", *extra],
                   check=True, capture_output=True, text=True)
    run = Path(out) / name
    meta = json.loads((run / "metadata.json").read_text())
    times = epoch_times(run)
    import pandas as pd

    workers_table = pd.read_csv(run / "worker_stats.csv")
    last = workers_table[workers_table.master_step > workers_table.master_step.max() - 5]
    return {"epoch_time": float(np.median(times[1:])), "accuracy": meta["summary"]["final_accuracy"],
            "batches": last.groupby("rank").batch_size.mean().round(1).tolist(), "epochs": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--batch-size", type=int, default=128, help="per worker at the start (global = x workers)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--slow", default="2:2")
    parser.add_argument("--extra", default="", help="more train dynamic options, e.g. '--model mlp'")
    args = parser.parse_args()
    extra = args.extra.split()
    ideal = {2: 1.5, 4: 1.75}
    print(f"train dynamic, digits, batch {args.batch_size} per worker at the start, --slow {args.slow}, "
          f"{args.epochs} epochs, median of {args.repeats}, {len(os.sched_getaffinity(0))} cores, "
          f"{time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as out:
        for workers in args.workers:
            results: dict[str, list[dict]] = {"static": [], "dbs": []}
            for repeat in range(args.repeats):
                for policy in ("static", "dbs"):
                    results[policy].append(one_run(policy, workers, args.batch_size, args.epochs, args.slow, out,
                                                   f"{policy}-w{workers}-{repeat}", extra))
            static = float(np.median([r["epoch_time"] for r in results["static"]]))
            dbs = float(np.median([r["epoch_time"] for r in results["dbs"]]))
            acc_static = float(np.median([r["accuracy"] for r in results["static"]]))
            acc_dbs = float(np.median([r["accuracy"] for r in results["dbs"]]))
            speedup = static / dbs
            target = 0.9 * ideal.get(workers, 1.5)
            print(f"  {workers} workers: epoch time static {static:.3f} s, dbs {dbs:.3f} s, speed-up {speedup:.2f}x "
                  f"(ideal {ideal.get(workers, float('nan')):.2f}x, target >= {target:.2f}x: "
                  f"{'met' if speedup >= target else 'NOT met'}); final accuracy static {acc_static:.4f}, "
                  f"dbs {acc_dbs:.4f} (difference {abs(acc_static - acc_dbs) * 100:.2f} points, target <= 1); "
                  f"dbs batches at the end {results['dbs'][-1]['batches']}")


if __name__ == "__main__":
    main()
