"""Benchmark: the TensorFlow engine's AMB micro-batch loop, as synchronous rounds run it and as asynchronous rounds
run it (checking for a newer model before each micro-batch, one micro-batch at a time), and as async rounds were
driven before (one engine call per micro-batch), in 1..K processes at once.

Why: on a 2-core machine the asynchronous protocol keeps every worker computing all the time, where synchronous
workers idle while they wait for the slowest. How much throughput the cores give at each number of busy
processes decides what asynchrony can gain here (see the README, "Asynchronous AMB against synchronous AMB").

    python tests/bench/async_loop_cost.py --processes 4 --seconds 10

Prints, per number of concurrent processes and per loop, the mean time per micro-batch in one process and the
micro-batches per second of all of them together; the ratio of the two loops is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import numpy as np


def child(loop: str, seconds: float, model: str, batch: int, micro_batch: int) -> None:
    from anytimectl.backends.tensorflow import engine as tf_engine

    tf_engine.configure(threads=1, seed=0)
    engine = tf_engine.TensorFlowEngine(model, (8, 8, 1), 10, "rms", 1e-3, 0.0)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)
    parts = batch // micro_batch
    options = {"between": lambda: None} if loop == "async" else {}

    def round_() -> None:
        if loop != "per-call":
            engine.compute(x, y, parts, math.inf, **options)
            return
        total = None  # what async rounds did before the engines took `between`: one engine call per micro-batch
        for i in range(parts):
            part, _, _ = engine.compute(x[i * micro_batch:(i + 1) * micro_batch],
                                        y[i * micro_batch:(i + 1) * micro_batch], 1, math.inf)
            total = part.copy() if total is None else np.add(total, part, out=total)

    for _ in range(2):
        round_()
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        round_()
        done += parts
    print(json.dumps({"ms": (time.perf_counter() - start) / done * 1e3}))


def concurrent(loop: str, count: int, args: argparse.Namespace) -> list[float]:
    command = [sys.executable, __file__, "--child", loop, "--seconds", str(args.seconds), "--model", args.model,
               "--batch-size", str(args.batch_size), "--micro-batch", str(args.micro_batch)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for _ in range(count)]
    results = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode != 0:
            sys.exit(f"{' '.join(command)} failed with exit code {process.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1])["ms"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4, help="up to this many at once")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed per process")
    parser.add_argument("--model", default="digits-cnn")
    parser.add_argument("--batch-size", type=int, default=144)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--child", choices=("sync", "async", "per-call"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds, args.model, args.batch_size, args.micro_batch)
        return
    print(f"{args.model}, batch {args.batch_size} in micro-batches of {args.micro_batch}, one thread per process, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| processes | ms/micro-batch: sync loop | async loop | one call per micro-batch | async / sync | "
          "per call / sync | micro-batches/s of all processes: sync | async |")
    print("|---|---|---|---|---|---|---|---|")
    for count in range(1, args.processes + 1):
        sync_ms, async_ms, call_ms = (float(np.mean(concurrent(loop, count, args)))
                                      for loop in ("sync", "async", "per-call"))
        print(f"| {count} | {sync_ms:.2f} | {async_ms:.2f} | {call_ms:.2f} | {async_ms / sync_ms:.3f} | "
              f"{call_ms / sync_ms:.3f} | {count * 1e3 / sync_ms:.0f} | {count * 1e3 / async_ms:.0f} |")


if __name__ == "__main__":
    main()
