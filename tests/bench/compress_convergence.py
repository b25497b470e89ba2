"""Benchmark: do the compressors reach the test accuracy of uncompressed training in the same epochs? Targets: top-k
at K = 0.01 with error feedback, EF-SignSGD and PowerSGD rank 2 with error feedback within 1 point; fp16 within 0.2
points (bf16, SignSGD's majority vote and top-k without error feedback are run for comparison, with no target).

Real `anytimectl compress train` runs on the built-in digits (2 workers, the command's defaults: the digits CNN,
32 examples per worker, 8 epochs, the piecewise rate 0 -> 0.4 -> 0, the whole 360-image test set every epoch), one
per (configuration, seed), run one after the other. The figure is the final test accuracy, the mean over the seeds
(one point = 3.6 test images), and the difference of the means against `none`; each run's bytes per worker per
step (its payload, what its exchange sends) come from its worker_stats, beside the dense float32 gradient's. Run
under the shared lock; wall times depend on the machine's load, the accuracies do not:

    flock /tmp/anytimectl-bench.lock .venv/bin/python tests/bench/compress_convergence.py --seeds 3
    .venv/bin/python tests/bench/compress_convergence.py --seeds 2 --configs "none,powersgd r=2 EF"
    .venv/bin/python tests/bench/compress_convergence.py --seeds 2 --configs all --out runs/convergence
    .venv/bin/anytimectl plot runs/convergence --type compress_accuracy_vs_step_bytes

`--configs all` runs every configuration below; `--out` keeps the run directories for the figures.
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

import pandas as pd

CONFIGS = {
    "none": ["--method", "none"],
    "topk K=0.01 EF": ["--method", "topk", "--ratio", "0.01", "--error-feedback"],
    "topk K=0.01": ["--method", "topk", "--ratio", "0.01"],
    # not run by default (--configs NAME,... or all):
    "fp16": ["--compressor", "fp16"],
    "bf16": ["--compressor", "bf16"],
    "ef-signsgd": ["--compressor", "ef-signsgd"],  # error feedback always on
    "signsgd": ["--compressor", "signsgd"],  # majority vote, no error feedback
    "powersgd r=2 EF": ["--compressor", "powersgd", "--rank", "2"],  # error feedback and warm start: the defaults
}
DEFAULT_CONFIGS = ("none", "topk K=0.01 EF", "topk K=0.01")
# the largest drop below uncompressed (points) each target allows; the other configurations have none
TARGETS = {"topk K=0.01 EF": 1.0, "fp16": 0.2, "ef-signsgd": 1.0, "powersgd r=2 EF": 1.0}


def run(out: Path, name: str, args: list[str], seed: int, workers: int, epochs: float | None) -> dict:
    length = ["--epochs", str(epochs)] if epochs is not None else []
    command = [sys.executable, "-m", "anytimectl", "compress", "train", "--workers", str(workers), *args, *length,
               "--seed", str(seed), "--json", "--out", str(out), "--name", name]
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    master = pd.read_csv(out / name / "master_stats.csv")
    evaluated = master.dropna(subset=["accuracy"])
    workers = pd.read_csv(out / name / "worker_stats.csv")
    return {"seed": seed, "final_accuracy": summary["final_accuracy"], "best_accuracy": evaluated.accuracy.max(),
            "epochs": summary["epochs"], "steps": summary["steps"], "compression_ratio": summary["compression_ratio"],
            "payload_bytes": summary["payload_bytes"], "wall_s": time.time() - start,
            "step_bytes": float(workers.payload_bytes.mean()), "dense_step_bytes": float(workers.dense_bytes.mean()),
            "curve": evaluated[["epoch", "accuracy"]].round(4).values.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=None, help="default: the command's (digits: 8)")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"comma-separated, from: {', '.join(CONFIGS)} (none is always run); or all")
    args = parser.parse_args()
    names = list(CONFIGS) if args.configs.strip() == "all" else [c.strip() for c in args.configs.split(",")]
    chosen = ["none", *(c for c in names if c and c != "none")]
    unknown = [c for c in chosen if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs {', '.join(unknown)}: choose from {', '.join(CONFIGS)}")
    out = args.out or Path(tempfile.mkdtemp(prefix="compress-convergence-"))
    print(f"runs in {out}; load average {os.getloadavg()[0]:.1f}", flush=True)
    results: dict[str, list[dict]] = {}
    for seed in range(args.seeds):  # seeds outermost: a partial run still compares every configuration
        for label in chosen:
            extra = CONFIGS[label]
            name = f"{label.replace(' ', '_').replace('=', '')}-s{seed}"
            row = run(out, name, extra, seed, args.workers, args.epochs)
            results.setdefault(label, []).append(row)
            print(f"{label:<16} seed {seed}: final accuracy {row['final_accuracy']:.4f} "
                  f"(best {row['best_accuracy']:.4f}) after {row['epochs']:.2f} epochs, "
                  f"{row['step_bytes']:,.0f} of {row['dense_step_bytes']:,.0f} dense bytes per worker per step "
                  f"({row['compression_ratio']:.1f}x fewer), {row['wall_s']:.0f} s; load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    base = sum(r["final_accuracy"] for r in results["none"]) / len(results["none"])
    print(f"\n{'configuration':<16}{'final accuracy (mean)':>23}{'vs none':>10}{'per seed':>28}"
          f"{'bytes/step':>12}{'dense':>10}{'ratio':>9}")
    for label, rows in results.items():
        mean = sum(r["final_accuracy"] for r in rows) / len(rows)
        seeds = " ".join(f"{r['final_accuracy']:.4f}" for r in rows)
        print(f"{label:<16}{mean:>23.4f}{(mean - base) * 100:>+9.2f}pt{seeds:>28}"
              f"{rows[0]['step_bytes']:>12,.0f}{rows[0]['dense_step_bytes']:>10,.0f}"
              f"{rows[0]['compression_ratio']:>8.1f}x")
    for label, allowed in TARGETS.items():
        if label not in results:
            continue
        mean = sum(r["final_accuracy"] for r in results[label]) / len(results[label])
        difference = (mean - base) * 100
        print(f"{label} {mean:.4f} against uncompressed {base:.4f}: {difference:+.2f} points (target: at most "
              f"{allowed:g} point(s) below): {'PASS' if difference >= -allowed else 'FAIL'}")
    print(f"load average now {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
