"""Benchmark: `train fmb --workers 1` throughput against a plain single-process TensorFlow loop.

Run: python tests/bench/harness_overhead.py [--steps 150] [--batch-size 128] [--bind]
Both train the same model (digits-cnn), batch and optimizer (RMSprop, weight decay 5e-4 added to the gradients
as the engine does) on the built-in digits data, measured in the same run. The plain loop runs with the thread
count the worker rank gets (cores // 2 ranks) and, for reference, with TensorFlow's default threads. Throughput =
examples per second after the first 10 steps. `--bind` also runs the harness with one core per rank.
It also prints where a step of the harness goes, from the run's own trace (medians over the steps after the
first 10): the worker's compute, hand-over (send), wait (recv) and the rest of its round (exit: its own update in
the replicated mode), and the master's collect, apply and broadcast.
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
    """A textbook Keras training loop, run in a subprocess so its thread setting is its own."""
    code = f"""
import os, time, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf, keras
threads = {threads!r}
if threads:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
from anytimectl.backends.tensorflow.models import build_model
from anytimectl.data import load_dataset, BatchStream
keras.utils.set_random_seed(0)
data = load_dataset("digits")
model = build_model("digits-cnn", data.input_shape, data.num_classes)
optimizer = keras.optimizers.RMSprop(1e-3)
stream = BatchStream(data.x_train, data.y_train, 0, 1)
@tf.function
def step(x, y):
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    grads = tape.gradient(loss, model.trainable_variables)
    grads = [g + 5e-4 * v for g, v in zip(grads, model.trainable_variables)]  # anytimectl's default weight decay
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss
for i in range({steps}):
    if i == {WARMUP}:
        start = time.time()
    x, y = stream.peek({batch_size}); stream.advance({batch_size})
    float(step(tf.constant(x), tf.constant(y)))
print(json.dumps({{"examples_per_s": ({steps} - {WARMUP}) * {batch_size} / (time.time() - start)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["examples_per_s"]


PHASES: list[dict[str, float]] = []


def harness(steps: int, batch_size: int, bind: bool = False) -> tuple[float, int]:
    """bind: one core per rank (MPICH's HYDRA_BINDING=core), which keeps Linux from waking the master on the
    worker's core (README, "Harness overhead")."""
    env = {**os.environ, "HYDRA_BINDING": "core"} if bind else None
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "anytimectl", "train", "fmb", "--workers", "1", "--steps", str(steps),
                        "--batch-size", str(batch_size), "--log-every", str(steps), "--test-size", "100",
                        "--out", out, "--name", "bench", "--quiet"], check=True, capture_output=True, env=env)
        import pandas as pd

        master = pd.read_csv(Path(out) / "bench" / "master_stats.csv")
        meta = json.loads((Path(out) / "bench" / "metadata.json").read_text())
        PHASES.append(phases(Path(out) / "bench" / "trace.json"))
    times = master.time.to_numpy()
    examples_per_s = (len(times) - WARMUP) * batch_size / (times[-1] - times[WARMUP - 1])
    return examples_per_s, meta["world_size"]


def phases(trace: Path) -> dict[str, float]:
    """Median milliseconds per step of each phase, worker (w) and master (m), after the warm-up steps."""
    from anytimectl.runtime.rundir import read_trace

    spans: dict[str, dict[int, float]] = {}
    for event in read_trace(trace):
        step = event.get("args", {}).get("step", 0)
        if event.get("ph") != "X" or step <= WARMUP:
            continue
        key = ("m " if event["pid"] == 0 else "w ") + event["name"]
        per_step = spans.setdefault(key, {})
        per_step[step] = per_step.get(step, 0.0) + event["dur"] / 1e3
    return {key: float(np.median(list(values.values()))) for key, values in sorted(spans.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bind", action="store_true", help="also run the harness with one core per rank")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    worker_threads = max(1, cores // 2)
    results: dict[str, list[float]] = {"anytimectl train fmb --workers 1": []}
    if args.bind:
        results["  same, ranks bound to cores"] = []
    results.update({f"plain loop, {worker_threads} thread(s)": [], "plain loop, TF default threads": []})
    for _ in range(args.repeats):  # interleaved so that machine noise hits every variant alike
        results["anytimectl train fmb --workers 1"].append(harness(args.steps, args.batch_size)[0])
        if args.bind:
            results["  same, ranks bound to cores"].append(harness(args.steps, args.batch_size, bind=True)[0])
        results[f"plain loop, {worker_threads} thread(s)"].append(plain_loop(args.steps, args.batch_size,
                                                                             worker_threads))
        results["plain loop, TF default threads"].append(plain_loop(args.steps, args.batch_size, None))
    ours = float(np.median(results["anytimectl train fmb --workers 1"]))
    print(f"digits-cnn, batch {args.batch_size}, RMSprop, {args.steps} steps, median of {args.repeats}, "
          f"{cores} cores, {time.strftime('%Y-%m-%d')}")
    plain = float(np.median(results[f"plain loop, {worker_threads} thread(s)"]))
    for name, values in results.items():
        median = float(np.median(values))
        print(f"  {name:38s} {median:8.0f} examples/s   anytimectl / this = {ours / median:.3f}   "
              f"this / plain 1-thread = {median / plain:.3f}")
    keys = [k for k in PHASES[0] if k != "m evaluate"]
    runs = {"default": PHASES[0::2] if args.bind else PHASES, "bound": PHASES[1::2] if args.bind else []}
    for label, phases_of in runs.items():
        if phases_of:
            print(f"  a harness step ({label}), median ms (w = worker, m = master): "
                  + ", ".join(f"{k} {np.median([p.get(k, np.nan) for p in phases_of]):.2f}" for k in keys))


if __name__ == "__main__":
    main()
