"""Benchmark: AMB against FMB under induced stragglers, beside the analytic bound for the same setting.

Run: python tests/bench/amb_vs_fmb.py --workers 4 --induce niagara:0.1 --batch-size 384
     python tests/bench/amb_vs_fmb.py --workers 10 --induce niagara:0.1 --batch-size 128

Both runs use the built-in digits data, the same seed and the same straggler model. AMB gets 1.5x the FMB
batch as capacity and `--time-limit auto` with `--match-batch` = the FMB batch, so both expect the same number
of examples per step. The bound (see README): with FMB compute time c per step (measured in the FMB run as
compute - sleep) and matched limit T = c + E[s], FMB's step is c + E[max_i s_i] and AMB's is
E[max(T, max_i s_i)]. Communication and the master's update come on top of both in a real run; the script
also prints the bound with that measured per-step overhead added to both sides.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from anytimectl.runtime.stragglers import amb_fmb_bound, parse_induce

SKIP = 3  # first steps, which include warm-up effects


def batch_options(method: str, batch_size: int, micro_batch: int) -> list[str]:
    """FMB's batch, or AMB's: a capacity of 1.5x in micro-batches, its time limit matched to FMB's batch."""
    if method != "amb":
        return ["--batch-size", str(batch_size)]
    capacity = int(round(batch_size * 1.5))
    return ["--batch-size", str(capacity), "--partitions", str(max(1, capacity // micro_batch)),
            "--match-batch", str(batch_size), "--time-limit", "auto"]


def run(method: str, args: argparse.Namespace, out: Path) -> Path:
    command = [sys.executable, "-m", "anytimectl", "train", method, "--workers", str(args.workers),
               "--induce", args.induce, "--steps", str(args.steps), "--log-every", str(args.log_every),
               "--test-size", "-1", "--seed", str(args.seed), "--out", str(out), "--name", method, "--quiet",
               *batch_options(method, args.batch_size, args.micro_batch)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return out / method


def figures(run_dir: Path, target: float) -> dict[str, float]:
    master = pd.read_csv(run_dir / "master_stats.csv")
    workers = pd.read_csv(run_dir / "worker_stats.csv")
    collect = pd.read_csv(run_dir / "collect_stats.csv")
    steady = workers[workers.master_step > SKIP]
    reached = master[master.accuracy >= target]
    meta = json.loads((run_dir / "metadata.json").read_text())
    step_times = master.time.diff().iloc[SKIP:]
    round_max = steady.groupby("master_step").compute_time.max()
    return {
        "step_time": float(step_times.mean()),
        "compute": float((steady.compute_time - steady.sleep_time).mean()),
        "mean_batch": float(steady.num_samples.mean()),
        "time_to_target": float(reached.time.iloc[0]) if len(reached) else float("nan"),
        "final_accuracy": float(master.accuracy.dropna().iloc[-1]),
        # what a step costs beyond the slowest worker's compute: communication, update, broadcast
        "overhead": float((step_times.to_numpy() - round_max.reindex(master.step.iloc[SKIP:]).to_numpy()).mean()),
        "time_limit": float(collect.time_limit.iloc[SKIP:].mean()) if meta["method"] == "amb" else float("nan"),
        "master_wait": float(collect.wait_time.iloc[SKIP:].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--induce", default="niagara:0.1")
    parser.add_argument("--batch-size", type=int, default=384, help="FMB batch = AMB matched batch")
    parser.add_argument("--micro-batch", type=int, default=32, help="AMB micro-batch size")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--target-accuracy", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the two run directories here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.keep or Path(scratch)
        fmb = figures(run("fmb", args, out), args.target_accuracy)
        amb = figures(run("amb", args, out), args.target_accuracy)
    delay = parse_induce(args.induce)
    bound = amb_fmb_bound(delay, fmb["compute"], args.workers)
    overhead = (fmb["overhead"] + amb["overhead"]) / 2
    bound_with_overhead = (bound["fmb_step"] + overhead) / (bound["amb_step"] + overhead)
    measured = fmb["step_time"] / amb["step_time"]
    print(f"{args.workers} workers, {delay.describe()}, FMB batch {args.batch_size}, AMB capacity "
          f"{int(round(args.batch_size * 1.5))} in micro-batches of {args.micro_batch}, {args.steps} steps")
    print(f"{'':24s}{'FMB':>10s}{'AMB':>10s}")
    rows = (("step_time", "mean step time (s)"), ("compute", "compute - sleep (s)"),
            ("mean_batch", "mean worker batch"), ("time_limit", "mean AMB time limit (s)"),
            ("overhead", "step - slowest compute"), ("time_to_target", f"time to acc {args.target_accuracy}"),
            ("final_accuracy", "final test accuracy"))
    for key, label in rows:
        print(f"{label:24s}{fmb[key]:10.3f}{amb[key]:10.3f}")
    print(f"measured step-time ratio FMB/AMB      {measured:.3f}")
    print(f"analytic bound (c = {fmb['compute']:.3f} s)       {bound['ratio']:.3f}   measured/bound "
          f"{measured / bound['ratio']:.3f}")
    print(f"bound with measured overhead {overhead:.3f} s  {bound_with_overhead:.3f}   measured/bound "
          f"{measured / bound_with_overhead:.3f}")
    ttt = fmb["time_to_target"] / amb["time_to_target"]
    if np.isfinite(ttt):
        print(f"time-to-accuracy speedup FMB/AMB      {ttt:.3f}")


if __name__ == "__main__":
    main()
