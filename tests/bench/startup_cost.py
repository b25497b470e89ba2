"""What a process pays to start: the CPU of the imports a launcher or a rank makes, each in a fresh interpreter,
with and without what anytimectl does to avoid part of it.

    .venv/bin/python tests/bench/startup_cost.py [--repeats 3]

Each line is the median CPU (user + system, from the child's resource usage) of `python -c CODE` over the repeats,
minus that of `python -c pass`. The pairs: scikit-learn's `load_digits` against anytimectl's reader of the same
file; `import tensorflow` against anytimectl's TensorFlow import (Keras's optional integrations kept out); torch's
optimizer `step()` as torch wraps it against the engine's `optimizer_step` (torch's compiler not imported). Run it on
a quiet machine: CPU time grows with the load (caches, frequency).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys

STEP = ("import torch\n"
        "from anytimectl.backends.torch.engine import make_optimizer, optimizer_step\n"
        "w = torch.zeros(10); o = make_optimizer('momentum', [w], 0.1); w.grad = torch.ones(10)\n")
CASES = [
    ("digits through scikit-learn's load_digits", "from sklearn.datasets import load_digits; load_digits()"),
    ("digits through anytimectl's reader", "from anytimectl.data import load_dataset; load_dataset('digits')"),
    ("import tensorflow", "import tensorflow"),
    ("anytimectl's TensorFlow import", "from anytimectl.backends.tensorflow.quiet_import import tf"),
    ("import torch", "import torch"),
    ("torch optimizer, step() as torch wraps it", STEP + "o.step()"),
    ("torch optimizer, the engine's optimizer_step", STEP + "optimizer_step(o)"),
]


def cpu_of(code: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = statistics.median(cpu_of("pass") for _ in range(args.repeats))
    print(f"python -c pass: {base:.2f} s of CPU (subtracted below); median of {args.repeats}")
    for label, code in CASES:
        cost = statistics.median(cpu_of(code) for _ in range(args.repeats)) - base
        print(f"{label:48s} {cost:6.2f} s")


if __name__ == "__main__":
    main()
