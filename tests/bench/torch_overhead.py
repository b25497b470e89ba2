"""Benchmark: `train fmb --backend torch --workers 1` throughput against a plain single-process PyTorch loop.

Run: flock /tmp/anytimectl-bench.lock python tests/bench/torch_overhead.py [--steps 150] [--batch-size 128]
Both train the same model (digits-cnn), batch and optimizer (RMSprop with Keras' rho 0.9 and epsilon 1e-7, weight
decay 5e-4: what `--optimizer rms` gives) on the built-in digits data, measured in the same run, interleaved. The
plain loop is the textbook one (zero_grad, mean cross-entropy, backward, step) with the thread count the worker
rank gets (cores // 2 ranks) and, for reference, torch's default threads. Throughput = examples per second after
the first 10 steps. Target: anytimectl / plain loop >= 0.9 (the issue).
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

WARMUP = 10


def plain_loop(steps: int, batch_size: int, threads: int | None) -> float:
    """A textbook PyTorch training loop, run in a subprocess so that its thread setting is its own."""
    code = f"""
import time, json
import torch
from torch.nn import functional
threads = {threads!r}
if threads:
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
torch.manual_seed(0)
from anytimectl.backends.torch.models import build_model, to_model_input
from anytimectl.data import load_dataset, BatchStream
data = load_dataset("digits")
model = build_model("digits-cnn", data.input_shape, data.num_classes)
optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7, weight_decay=5e-4)
stream = BatchStream(data.x_train, data.y_train, 0, 1)
for i in range({steps}):
    if i == {WARMUP}:
        start = time.time()
    x, y = stream.peek({batch_size}); stream.advance({batch_size})
    logits = model(to_model_input(torch.from_numpy(x)))
    loss = functional.cross_entropy(logits, torch.from_numpy(y))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    float(loss)
print(json.dumps({{"examples_per_s": ({steps} - {WARMUP}) * {batch_size} / (time.time() - start)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["examples_per_s"]


def harness(steps: int, batch_size: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "anytimectl", "train", "fmb", "--backend", "torch", "--workers", "1",
                        "--steps", str(steps), "--batch-size", str(batch_size), "--log-every", str(steps),
                        "--test-size", "100", "--out", out, "--name", "bench", "--quiet"],
                       check=True, capture_output=True)
        import pandas as pd

        master = pd.read_csv(Path(out) / "bench" / "master_stats.csv")
    times = master.time.to_numpy()
    return (len(times) - WARMUP) * batch_size / (times[-1] - times[WARMUP - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    worker_threads = max(1, cores // 2)
    ours_name = "anytimectl train fmb --backend torch --workers 1"
    results: dict[str, list[float]] = {ours_name: [], f"plain loop, {worker_threads} thread(s)": [],
                                       "plain loop, torch default threads": []}
    for _ in range(args.repeats):  # interleaved so that machine noise hits every variant alike
        results[ours_name].append(harness(args.steps, args.batch_size))
        results[f"plain loop, {worker_threads} thread(s)"].append(plain_loop(args.steps, args.batch_size,
                                                                             worker_threads))
        results["plain loop, torch default threads"].append(plain_loop(args.steps, args.batch_size, None))
    ours = float(np.median(results[ours_name]))
    print(f"digits-cnn, batch {args.batch_size}, RMSprop, {args.steps} steps, median of {args.repeats}, "
          f"{cores} cores, {time.strftime('%Y-%m-%d')}")
    for name, values in results.items():
        median = float(np.median(values))
        print(f"  {name:48s} {median:8.0f} examples/s   anytimectl / this = {ours / median:.3f}")


if __name__ == "__main__":
    main()
