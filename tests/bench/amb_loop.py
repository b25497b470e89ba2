"""Benchmark: the AMB micro-batch loop of the TensorFlow engine against the strict loop it replaced.

Both loops run in one process on the same model and data, interleaved repetition by repetition, so machine noise
hits both alike. Prints, per loop, the median time per step for 1 and P micro-batches and their ratio (per-sample
cost of splitting). The `partitions eval` command measures the engine's loop alone; this script is the evidence
for the choice of loop (see the README, "Micro-batch cost").

    .venv/bin/python tests/bench/amb_loop.py --model cifar10 --batch-size 512 --partitions 16 --threads 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np


def strict_engine_class():
    """The loop before issue 4: clock read after every micro-batch, parallel_iterations=1."""
    import tensorflow as tf

    from anytimectl.backends.tensorflow.engine import TensorFlowEngine

    class Strict(TensorFlowEngine):
        def _compute_graph(self, x, y, micro_batches, deadline):
            total = tf.shape(x)[0]
            loop_start = tf.timestamp()

            def keep_going(i, count, loss_sum, now, *sums):
                pace = (now - loop_start) / tf.cast(tf.maximum(i, 1), tf.float64)
                return tf.logical_and(i < micro_batches, tf.logical_or(tf.equal(i, 0), now + pace <= deadline))

            def micro_batch(i, count, loss_sum, now, *sums):
                start = (i * total) // micro_batches
                end = ((i + 1) * total) // micro_batches
                with tf.GradientTape() as tape:
                    loss, _ = self._loss_sum(x[start:end], y[start:end], training=True)
                grads = tape.gradient(loss, self.trainable)
                sums = [s + g for s, g in zip(sums, grads, strict=True)]
                with tf.control_dependencies([*sums, loss]):
                    now = tf.timestamp()
                return (i + 1, count + (end - start), loss_sum + loss, now, *sums)

            state = (tf.constant(0), tf.constant(0), tf.constant(0.0), loop_start,
                     *[tf.zeros(v.shape, tf.float32) for v in self.trainable])
            done, count, loss_sum, _, *sums = tf.while_loop(keep_going, micro_batch, state, parallel_iterations=1)
            n = tf.cast(count, tf.float32)
            parts = [tf.reshape(s, [-1]) for s in sums]
            parts += [tf.reshape(tf.convert_to_tensor(v), [-1]) * n for v in self.statistics]
            parts += [tf.reshape(n, [1]), tf.reshape(loss_sum, [1])]
            return tf.concat(parts, 0), count, done

    return Strict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar10")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="0: TensorFlow's own defaults")
    parser.add_argument("--inter-threads", type=int, default=None, help="inter-op threads [default: --threads]")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from anytimectl.runtime.launch import limit_threads

    if args.threads:
        limit_threads(args.threads)
    import tensorflow as tf

    from anytimectl.backends.tensorflow.engine import TensorFlowEngine, configure
    from anytimectl.studies.partitions import MODEL_INPUT

    configure(args.threads, 0)
    if args.inter_threads is not None:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_threads)
    shape = MODEL_INPUT[args.model]
    engines = {"engine": TensorFlowEngine(args.model, shape, 10, "adam", 1e-4, 0.0),
               "strict": strict_engine_class()(args.model, shape, 10, "adam", 1e-4, 0.0)}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, *shape), dtype=np.float32)
    y = rng.integers(0, 10, args.batch_size).astype(np.int64)
    counts = (1, args.partitions)
    for engine in engines.values():
        for p in counts:
            for _ in range(2):
                engine.compute(x, y, p, math.inf)
    wall = {(name, p): [] for name in engines for p in counts}
    cpu = {(name, p): [] for name in engines for p in counts}
    for repeat in range(args.repeats):
        order = [(n, p) for n in engines for p in counts]
        for name, p in order if repeat % 2 == 0 else order[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                engines[name].compute(x, y, p, math.inf)
            wall[name, p].append((time.perf_counter() - start) / args.steps)
            cpu[name, p].append((time.process_time() - cpu_start) / args.steps)
        ratios = {n: wall[n, args.partitions][-1] / wall[n, 1][-1] for n in engines}
        print(f"repeat {repeat + 1}: " + ", ".join(f"{n} P1 {wall[n, 1][-1]:.3f}s P{args.partitions} "
                                                   f"{wall[n, args.partitions][-1]:.3f}s x{ratios[n]:.3f}"
                                                   for n in engines), flush=True)
    print(f"model {args.model} batch {args.batch_size} P {args.partitions} threads {args.threads}, "
          f"medians over {args.repeats} x {args.steps} steps:")
    for name in engines:
        ratio = statistics.median(a / b for a, b in zip(wall[name, args.partitions], wall[name, 1], strict=True))
        print(f"  {name:>6}: P=1 {statistics.median(wall[name, 1]):.3f} s/step "
              f"(cpu {statistics.median(cpu[name, 1]):.3f}), P={args.partitions} "
              f"{statistics.median(wall[name, args.partitions]):.3f} s/step "
              f"(cpu {statistics.median(cpu[name, args.partitions]):.3f}); per-sample ratio x{ratio:.3f}")


if __name__ == "__main__":
    main()
