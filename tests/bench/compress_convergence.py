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

Across hosts: `--emulated-hosts N [--rate 1gbit]` (root, `ip` and `tc`: tests/cluster/emulated.py) runs every
configuration on an emulated cluster of N hosts, the workers spread evenly over them (no shared memory between
hosts, each rank `cores / all ranks` threads, as the cluster benchmarks). `--same-as FILE` compares each run's
accuracy after every epoch with the same configuration and seed in an earlier `--json` FILE (one host, say) and
prints whether they are identical, which a deterministic method must be:

    sudo .venv/bin/python tests/bench/compress_convergence.py --model resnet9 --momentum 0.9 --epochs 10 \
        --seeds 1 --configs "none,powersgd r=2 EF" --emulated-hosts 2 --rate 1gbit \
        --same-as docs/results/compress-resnet9-digits.json

The ResNet9 recipe (cifar10-fast's network, rate schedule, weight decay and Nesterov momentum 0.9) on the same
digits: `--model resnet9 --momentum 0.9`; every run of the sweep gets the same model and training options
(`--batch-size`, `--momentum`, `--augment`, `--learning-rate`: left out, the command's defaults). `--markdown`
prints the README's table:

    flock /tmp/anytimectl-bench.lock .venv/bin/python tests/bench/compress_convergence.py --model resnet9 \
        --momentum 0.9 --epochs 10 --seeds 2 --configs "none,fp16,ef-signsgd,powersgd r=2 EF,topk K=0.01 EF" --markdown
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the emulated cluster

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


def run(out: Path, name: str, args: list[str], seed: int, workers: int, epochs: float | None,
        train_args: Sequence[str] = (), cluster: Any = None) -> dict:
    """One `compress train` run: the configuration's `args`, then `train_args` (model and training options that
    every configuration of a sweep shares); on `cluster` (an EmulatedCluster) across its hosts."""
    length = ["--epochs", str(epochs)] if epochs is not None else []
    options = [*args, *length, *train_args, "--seed", str(seed), "--json"]
    start = time.time()
    if cluster is None:
        command = [sys.executable, "-m", "anytimectl", "compress", "train", "--workers", str(workers), *options,
                   "--out", str(out), "--name", name]
        result = subprocess.run(command, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    else:
        from cluster.jobs import run_across, threads_for

        hosts = len(cluster.hosts)
        counts = [workers // hosts + (1 if h < workers % hosts else 0) for h in range(hosts)]
        # threads=0: run_across adds no --quiet (which --json excludes); the threads are set here instead
        command = ["compress", "train", *options, "--threads", str(threads_for(workers))]
        job = run_across(cluster, counts, command, out, name, timeout=3600, threads=0)
        code, stdout, stderr = job.returncode, job.stdout, job.stderr
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed ({code}):\n{stderr[-2000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    master = pd.read_csv(out / name / "master_stats.csv")
    evaluated = master.dropna(subset=["accuracy"])
    workers = pd.read_csv(out / name / "worker_stats.csv")
    return {"seed": seed, "final_accuracy": summary["final_accuracy"], "best_accuracy": evaluated.accuracy.max(),
            "epochs": summary["epochs"], "steps": summary["steps"], "compression_ratio": summary["compression_ratio"],
            "payload_bytes": summary["payload_bytes"], "wall_s": time.time() - start,
            "step_bytes": float(workers.payload_bytes.mean()), "dense_step_bytes": float(workers.dense_bytes.mean()),
            "curve": evaluated[["epoch", "accuracy"]].round(4).values.tolist()}


def markdown(results: dict[str, list[dict]], base: float) -> str:
    """The README's table: each configuration's mean final accuracy, its difference from `none`, the seeds, its
    bytes per worker per step against the dense float32 gradient, and its target if it has one."""
    lines = [f"| configuration | final accuracy (mean of {len(results['none'])}) | against none | per seed | "
             "bytes per worker per step | fewer bytes | target |", "|---|---|---|---|---|---|---|"]
    for label, rows in results.items():
        mean = sum(r["final_accuracy"] for r in rows) / len(rows)
        difference = (mean - base) * 100
        target = ""
        if label in TARGETS:
            met = "met" if difference >= -TARGETS[label] else "**not met**"
            target = f"at most {TARGETS[label]:g} below: {met}"
        step_bytes = rows[0]["step_bytes"]
        seeds = ", ".join(f"{r['final_accuracy']:.4f}" for r in rows)
        lines.append(f"| {label} | {mean:.4f} | {difference:+.2f} points | {seeds} | {step_bytes:,.0f} | "
                     f"{rows[0]['dense_step_bytes'] / step_bytes:.1f}x | {target} |")
    return "\n".join(lines)


def same_as(earlier: dict, label: str, row: dict) -> str:
    """Whether `row`'s accuracy after every epoch is the earlier file's for the same configuration and seed."""
    before = next((r for r in earlier.get(label, []) if r["seed"] == row["seed"]), None)
    if before is None:
        return f"--same-as: no run of {label} with seed {row['seed']} in the earlier file"
    if before["curve"] == row["curve"]:
        return f"identical to the earlier run at all {len(row['curve'])} evaluations (accuracy after every epoch)"
    differing = [i for i, (a, b) in enumerate(zip(before["curve"], row["curve"], strict=False)) if a != b]
    first = differing[0] if differing else min(len(before["curve"]), len(row["curve"]))
    return (f"DIFFERS from the earlier run: {len(differing)} of {len(row['curve'])} evaluations, first at "
            f"evaluation {first + 1}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=None, help="default: the command's (digits: 8)")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"comma-separated, from: {', '.join(CONFIGS)} (none is always run); or all")
    parser.add_argument("--model", default=None, help="compress train --model (default: the dataset's, digits-cnn)")
    parser.add_argument("--batch-size", type=int, default=None, help="per worker (default: the command's, 32)")
    parser.add_argument("--momentum", type=float, default=None, help="Nesterov momentum (default: the command's, 0)")
    parser.add_argument("--learning-rate", type=float, default=None, help="peak rate (default: the command's, 0.4)")
    parser.add_argument("--augment", default=None, help="compress train --augment (default: auto, none on digits)")
    parser.add_argument("--markdown", action="store_true", help="also print the results as a markdown table")
    parser.add_argument("--emulated-hosts", type=int, default=0,
                        help="run across an emulated cluster of this many hosts (root; default: one host)")
    parser.add_argument("--rate", default=None, help="with --emulated-hosts: each host's link rate (default: unshaped)")
    parser.add_argument("--same-as", type=Path, default=None,
                        help="an earlier --json file: say whether each run's per-epoch accuracy is identical to it")
    args = parser.parse_args()
    earlier = json.loads(args.same_as.read_text()) if args.same_as else None
    with contextlib.ExitStack() as stack:
        cluster = None
        if args.emulated_hosts:
            from cluster.emulated import EmulatedCluster, missing_requirements

            reason = missing_requirements()
            if reason:
                raise SystemExit(reason)
            cluster = stack.enter_context(EmulatedCluster(args.emulated_hosts, rate=args.rate))
        sweep(args, earlier, cluster)


def sweep(args: argparse.Namespace, earlier: dict | None, cluster: Any) -> None:
    train_args = [item for option, value in (("--model", args.model), ("--batch-size", args.batch_size),
                                             ("--momentum", args.momentum), ("--learning-rate", args.learning_rate),
                                             ("--augment", args.augment))
                  if value is not None for item in (option, str(value))]
    names = list(CONFIGS) if args.configs.strip() == "all" else [c.strip() for c in args.configs.split(",")]
    chosen = ["none", *(c for c in names if c and c != "none")]
    unknown = [c for c in chosen if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs {', '.join(unknown)}: choose from {', '.join(CONFIGS)}")
    out = args.out or Path(tempfile.mkdtemp(prefix="compress-convergence-"))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"runs in {out}; load average {os.getloadavg()[0]:.1f}; started {started}; "
          f"every run: --workers {args.workers} {' '.join(train_args) or '(the command defaults)'}"
          f"{f' --epochs {args.epochs:g}' if args.epochs is not None else ''}"
          + (f"; across {args.emulated_hosts} emulated hosts at {args.rate or 'an unshaped link'}" if cluster else ""),
          flush=True)
    loads = [os.getloadavg()[0]]
    results: dict[str, list[dict]] = {}
    for seed in range(args.seeds):  # seeds outermost: a partial run still compares every configuration
        for label in chosen:
            extra = CONFIGS[label]
            name = f"{label.replace(' ', '_').replace('=', '')}-s{seed}"
            row = run(out, name, extra, seed, args.workers, args.epochs, train_args, cluster)
            loads.append(os.getloadavg()[0])
            results.setdefault(label, []).append(row)
            print(f"{label:<16} seed {seed}: final accuracy {row['final_accuracy']:.4f} "
                  f"(best {row['best_accuracy']:.4f}) after {row['epochs']:.2f} epochs, "
                  f"{row['step_bytes']:,.0f} of {row['dense_step_bytes']:,.0f} dense bytes per worker per step "
                  f"({row['compression_ratio']:.1f}x fewer), {row['wall_s']:.0f} s; load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
            if earlier is not None:
                print(f"{'':<16} {same_as(earlier, label, row)}", flush=True)
    base = sum(r["final_accuracy"] for r in results["none"]) / len(results["none"])
    print(f"\n{'configuration':<16}{'final accuracy (mean)':>23}{'vs none':>10}{'per seed':>28}"
          f"{'bytes/step':>13}{'dense':>13}{'ratio':>9}")
    for label, rows in results.items():
        mean = sum(r["final_accuracy"] for r in rows) / len(rows)
        seeds = " ".join(f"{r['final_accuracy']:.4f}" for r in rows)
        print(f"{label:<16}{mean:>23.4f}{(mean - base) * 100:>+9.2f}pt{seeds:>28}"
              f"{rows[0]['step_bytes']:>13,.0f}{rows[0]['dense_step_bytes']:>13,.0f}"
              f"{rows[0]['compression_ratio']:>8.1f}x")
    for label, allowed in TARGETS.items():
        if label not in results:
            continue
        mean = sum(r["final_accuracy"] for r in results[label]) / len(results[label])
        difference = (mean - base) * 100
        print(f"{label} {mean:.4f} against uncompressed {base:.4f}: {difference:+.2f} points (target: at most "
              f"{allowed:g} point(s) below): {'PASS' if difference >= -allowed else 'FAIL'}")
    print(f"load average now {os.getloadavg()[0]:.1f} (over the runs: {min(loads):.1f}-{max(loads):.1f}); ended "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if args.markdown:
        print()
        print(markdown(results, base))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
