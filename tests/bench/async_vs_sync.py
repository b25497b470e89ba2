"""Benchmark: asynchronous AMB (`--protocol async`) against synchronous AMB, in one run each, same seed and delays.

Run: python tests/bench/async_vs_sync.py sim --workers 10 --induce niagara:0.1 --compute 3
     python tests/bench/async_vs_sync.py digits --workers 4 --induce niagara:0.1 --batch-size 96

`sim`: the simulated backend, FMB-equivalent compute c = --compute x the straggler scale (the AMB limit is
`--time-limit auto` matched to --batch-size, as in amb_vs_fmb_sim.py, unless --time-limit gives seconds). Prints
examples per second of both (after the first steps), their ratio, the expected ratio from the delay model (sync:
E[max(T, max_i s_i)] per step; async: E[max(T, s)] per contribution, each computing until T) at the run's T and at
other T, and the staleness distribution of the async run. Asynchrony gains only the rounds in which a straggler's
delay outlasts T, so the ratio falls as T grows.

`digits`: the TensorFlow digits model, --repeats times with seeds --seed, --seed + 1, ... (one run's time to a
plateau accuracy is mostly noise: which evaluation happens to touch the plateau's best value). Each repeat: sync AMB
runs --steps steps and its best test accuracy is the target; async AMB then runs until it reaches that accuracy
(`--target-accuracy`), or for at most 10 x --steps updates. Prints, per repeat and as the median over repeats, both
times to the target (evaluated every step on the whole test split), their ratio, both throughputs, the times to
two lower accuracies that every run passes, and the async staleness distribution.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from anytimectl.runtime.stragglers import parse_induce

SKIP = 3


def train(args: argparse.Namespace, protocol: str, out: Path, extra: list[str]) -> Path:
    capacity = int(round(args.batch_size * 1.5))
    command = [sys.executable, "-m", "anytimectl", "train", "amb", "--workers", str(args.workers), "--induce",
               args.induce, "--seed", str(args.seed), "--batch-size", str(capacity), "--partitions",
               str(max(1, capacity // args.micro_batch)), "--match-batch", str(args.batch_size), "--time-limit",
               args.time_limit, "--protocol", protocol, "--out", str(out), "--name", protocol, "--quiet", *extra]
    if protocol == "async":
        command += ["--async-master", args.async_master, "--async-batch-min", str(args.async_batch_min),
                    "--async-time-limit", str(args.async_time_limit)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)}\nfailed with exit code {result.returncode}:\n{result.stderr[-3000:]}")
    return out / protocol


def throughput(run: Path) -> float:
    master = pd.read_csv(run / "master_stats.csv")
    workers = pd.read_csv(run / "worker_stats.csv")
    after = master.time.iloc[SKIP - 1]
    examples = workers[workers.master_step > SKIP].num_samples.sum()
    return float(examples / (master.time.iloc[-1] - after))


def staleness(run: Path) -> str:
    workers = pd.read_csv(run / "worker_stats.csv")
    counts = workers.staleness.value_counts(normalize=True).sort_index()
    text = ", ".join(f"{int(k)}: {v:.1%}" for k, v in counts.items())
    return f"mean {workers.staleness.mean():.2f}, max {int(workers.staleness.max())} ({text})"


def expected_ratio(args: argparse.Namespace, limit: float, example_time: float) -> float:
    """E[sync step] / E[async contribution time], both at limit T, by sampling the delay model."""
    delay = parse_induce(args.induce)
    draws = np.array([delay.sample(args.seed, 1 + i % args.workers, 1 + i // args.workers)
                      for i in range(args.workers * 4000)]).reshape(-1, args.workers)
    micro = args.micro_batch * example_time
    sync_step = np.maximum(limit, draws.max(axis=1) + micro).mean()
    async_round = np.maximum(limit, draws + micro).mean()
    return float(sync_step / async_round)


def sim(args: argparse.Namespace, out: Path) -> None:
    scale = float(args.induce.split(":")[1]) if ":" in args.induce else 1.0
    example_time = args.compute * scale / args.batch_size
    extra = ["--backend", "sim", "--sim-example-time", repr(example_time), "--steps", str(args.steps),
             "--log-every", "10"]
    runs = {protocol: train(args, protocol, out, extra) for protocol in ("sync", "async")}
    rates = {protocol: throughput(run) for protocol, run in runs.items()}
    limit = json.loads((runs["sync"] / "metadata.json").read_text())["summary"]["time_limit"]
    print(f"sim backend, AMB, {args.workers} workers, {args.induce}, c = {args.compute:g} x scale "
          f"({args.batch_size} x {example_time * 1e3:.3f} ms), T = {limit:.3f} s ({args.time_limit}), async master "
          f"{args.async_master}, {time.strftime('%Y-%m-%d')}")
    for protocol, rate in rates.items():
        print(f"  {protocol:6s} {rate:9.1f} examples/s")
    print(f"  async / sync {rates['async'] / rates['sync']:.3f}   (expected from the delay model at T: "
          f"{expected_ratio(args, limit, example_time):.3f})")
    curve = ", ".join(f"T = {t:.3f} s: {expected_ratio(args, t, example_time):.3f}"
                      for t in (0.6 * limit, 0.75 * limit, 0.9 * limit, limit, 1.1 * limit))
    print(f"  the delay model's async / sync at other T: {curve}")
    print(f"  async staleness: {staleness(runs['async'])}")


def time_to(run: Path, accuracy: float) -> float:
    master = pd.read_csv(run / "master_stats.csv")
    reached = master[master.accuracy >= accuracy - 1e-9]
    return float(reached.time.iloc[0]) if len(reached) else float("nan")


#: accuracies below the plateau that every run reaches, timed as a steadier second view
MILESTONES = (0.95, 0.97)


def digits(args: argparse.Namespace, out: Path) -> None:
    common = ["--steps", str(args.steps), "--log-every", "1", "--test-size", "-1"]
    base_seed = args.seed
    print(f"digits-cnn (TensorFlow), AMB, {args.workers} workers, {args.induce}, matched batch {args.batch_size}, "
          f"sync {args.steps} steps, async master {args.async_master} (>= {args.async_batch_min}), "
          f"{args.repeats} repeats, {time.strftime('%Y-%m-%d')}")
    ratios, rates, milestone_ratios = [], [], {m: [] for m in MILESTONES}
    for repeat in range(args.repeats):
        args.seed = base_seed + repeat
        where = out / f"seed{args.seed}"
        sync_run = train(args, "sync", where, common)
        target = float(pd.read_csv(sync_run / "master_stats.csv").accuracy.max())
        async_extra = ["--target-accuracy", repr(target), "--steps", str(args.steps * 10), "--log-every", "1",
                       "--test-size", "-1"]
        async_run = train(args, "async", where, async_extra)
        a, s = time_to(async_run, target), time_to(sync_run, target)
        rate = throughput(async_run) / throughput(sync_run)
        ratios.append(s / a)
        rates.append(rate)
        steps = []
        for m in MILESTONES:
            ms, ma = time_to(sync_run, m), time_to(async_run, m)
            milestone_ratios[m].append(ms / ma)
            steps.append(f"{m:.2f}: {ms:.1f} / {ma:.1f} s")
        print(f"  seed {args.seed}: target {target:.4f}, time to it sync {s:.1f} s, async {a:.1f} s "
              f"(sync / async {s / a:.3f}); examples/s async / sync {rate:.3f}; sync / async to "
              + ", ".join(steps))
        print(f"    async staleness: {staleness(async_run)}")
    print(f"  median over {args.repeats}: time to sync's best accuracy, sync / async {np.median(ratios):.3f} "
          f"(>= 1: async no later); examples/s async / sync {np.median(rates):.3f}; "
          + ", ".join(f"to {m:.2f} sync / async {np.median(v):.3f}" for m, v in milestone_ratios.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=("sim", "digits"))
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--induce", default="niagara:0.1")
    parser.add_argument("--compute", type=float, default=3.0, help="sim: FMB-equivalent compute, in scales")
    parser.add_argument("--batch-size", type=int, default=128, help="the matched AMB batch")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--time-limit", default="auto",
                        help="AMB's T: auto (matched to --batch-size, the default) or seconds")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--async-master", default="batch", choices=("batch", "time"))
    parser.add_argument("--async-batch-min", type=int, default=None, help="default: the number of workers")
    parser.add_argument("--async-time-limit", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="digits: runs per protocol (seeds seed, seed + 1, ...)")
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    if args.async_batch_min is None:
        args.async_batch_min = args.workers
    with tempfile.TemporaryDirectory() as scratch:
        out = args.keep or Path(scratch)
        (sim if args.case == "sim" else digits)(args, out)


if __name__ == "__main__":
    main()
