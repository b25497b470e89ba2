"""Benchmark: AMB against FMB at cluster scale on the simulated backend, beside the analytic bound.

Run: python tests/bench/amb_vs_fmb_sim.py --workers 10 --induce niagara:0.1 --compute 3
     python tests/bench/amb_vs_fmb_sim.py --workers 64 --induce niagara:0.1 --compute 5.5
     python tests/bench/amb_vs_fmb_sim.py --overhead 1,2,4,8,16,32,64 --compute 3

`--overhead N,...` instead runs FMB alone at each worker count and prints the protocol overhead per step (step time
minus the slowest worker's compute, mean and median over the steps after the first few) against the workers.

`--compute K` sets FMB's compute per step to c = K x the straggler scale (niagara:0.1 -> c = 0.1 K s): the FMB batch
is --batch-size examples of c / batch seconds each (`--sim-example-time`). AMB gets 1.5x the batch as capacity in
micro-batches of --micro-batch examples and `--time-limit auto` matched to the FMB batch, as in
tests/bench/amb_vs_fmb.py. Both runs use the same seed and delays. The bound
(`anytimectl.runtime.stragglers.amb_fmb_bound`): FMB's step is c + E[max_i s_i], AMB's E[max(T, max_i s_i)] with
T = c + E[s]; the script prints the measured step-time ratio FMB/AMB, its share of the bound, and the protocol
overhead of each run (mean step time minus the slowest worker's compute in that step).
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

from anytimectl.runtime.stragglers import amb_fmb_bound, parse_induce

SKIP = 3  # first steps, which include start-up effects


def run(method: str, args: argparse.Namespace, example_time: float, out: Path) -> Path:
    command = [sys.executable, "-m", "anytimectl", "train", method, "--backend", "sim", "--workers",
               str(args.workers), "--induce", args.induce, "--steps", str(args.steps), "--log-every", "10",
               "--seed", str(args.seed), "--sim-example-time", repr(example_time), "--sim-params",
               str(args.params), "--out", str(out), "--name", method, "--quiet", *args.extra]
    if method == "amb":
        capacity = int(round(args.batch_size * 1.5))
        command += ["--batch-size", str(capacity), "--partitions", str(max(1, capacity // args.micro_batch)),
                    "--match-batch", str(args.batch_size), "--time-limit", "auto"]
    else:
        command += ["--batch-size", str(args.batch_size)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return out / method


def figures(run_dir: Path) -> dict[str, float]:
    master = pd.read_csv(run_dir / "master_stats.csv")
    workers = pd.read_csv(run_dir / "worker_stats.csv")
    steady = workers[workers.master_step > SKIP]
    step_times = master.time.diff().iloc[SKIP:]
    slowest = workers.groupby("master_step").compute_time.max().reindex(master.step.iloc[SKIP:]).to_numpy()
    meta = json.loads((run_dir / "metadata.json").read_text())
    return {
        "step_time": float(step_times.mean()),
        "compute": float((steady.compute_time - steady.sleep_time).mean()),
        "mean_batch": float(steady.num_samples.mean()),
        "overhead": float(np.mean(step_times.to_numpy() - slowest)),
        "time_limit": float(meta["summary"].get("time_limit") or float("nan")),
        "examples_per_s": float(steady.num_samples.sum() / (master.time.iloc[-1] - master.time.iloc[SKIP])),
        "final_loss": float(master.loss.iloc[-1]),
    }


def sweep(args: argparse.Namespace, example_time: float, counts: list[int]) -> None:
    print(f"FMB on the sim backend, {args.induce}, batch {args.batch_size} x {example_time * 1e3:.3f} ms, "
          f"{args.params} parameters, {args.steps} steps, {time.strftime('%Y-%m-%d')}")
    print(f"{'workers':>8} {'step (s)':>9} {'slowest compute (s)':>20} {'overhead mean (ms)':>19} "
          f"{'median (ms)':>12}")
    for workers in counts:
        args.workers = workers
        with tempfile.TemporaryDirectory() as scratch:
            run_dir = run("fmb", args, example_time, Path(scratch))
            master = pd.read_csv(run_dir / "master_stats.csv")
            rows = pd.read_csv(run_dir / "worker_stats.csv")
        step_times = master.time.diff().iloc[SKIP:].to_numpy()
        slowest = rows.groupby("master_step").compute_time.max().reindex(master.step.iloc[SKIP:]).to_numpy()
        overhead = step_times - slowest
        print(f"{workers:>8} {step_times.mean():>9.3f} {slowest.mean():>20.3f} {overhead.mean() * 1e3:>19.1f} "
              f"{np.median(overhead) * 1e3:>12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--induce", default="niagara:0.1")
    parser.add_argument("--compute", type=float, default=3.0, help="FMB compute per step, in straggler scales")
    parser.add_argument("--batch-size", type=int, default=128, help="FMB batch = AMB matched batch")
    parser.add_argument("--micro-batch", type=int, default=4, help="AMB micro-batch size")
    parser.add_argument("--params", type=int, default=1 << 16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the two run directories here")
    parser.add_argument("--overhead", help="worker counts for the overhead sweep, e.g. 1,2,4,8,16,32,64")
    parser.add_argument("extra", nargs="*", help="more options for both runs (after --)")
    args = parser.parse_args()
    delay = parse_induce(args.induce)
    scale = float(args.induce.split(":")[1]) if ":" in args.induce else 1.0
    compute = args.compute * scale
    example_time = compute / args.batch_size
    if args.overhead:
        sweep(args, example_time, [int(n) for n in args.overhead.split(",")])
        return
    with tempfile.TemporaryDirectory() as scratch:
        out = args.keep or Path(scratch)
        fmb = figures(run("fmb", args, example_time, out))
        amb = figures(run("amb", args, example_time, out))
    bound = amb_fmb_bound(delay, compute, args.workers)
    measured = fmb["step_time"] / amb["step_time"]
    print(f"sim backend, {args.workers} workers, {delay.describe()}, c = {args.compute:g} x scale = {compute:.3f} s "
          f"({args.batch_size} examples of {example_time * 1e3:.3f} ms), AMB micro-batches of {args.micro_batch}, "
          f"{args.steps} steps, {time.strftime('%Y-%m-%d')}")
    print(f"{'':30s}{'FMB':>10s}{'AMB':>10s}")
    for key, label in (("step_time", "mean step time (s)"), ("compute", "compute - sleep (s)"),
                       ("mean_batch", "mean worker batch"), ("time_limit", "AMB time limit (s)"),
                       ("overhead", "step - slowest compute (s)"), ("examples_per_s", "examples per second")):
        print(f"{label:30s}{fmb[key]:10.3f}{amb[key]:10.3f}")
    print(f"analytic steps: FMB {bound['fmb_step']:.3f} s, AMB {bound['amb_step']:.3f} s")
    print(f"measured step-time ratio FMB/AMB  {measured:.3f}")
    print(f"analytic bound                    {bound['ratio']:.3f}   measured / bound {measured / bound['ratio']:.3f}")


if __name__ == "__main__":
    main()
