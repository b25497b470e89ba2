"""What leaving through the C library's exit costs against os._exit, for a process that imported a framework.

MPI ranks leave with libc `exit` (launch.leave_process: MPICH needs its C atexit handler), which also runs the
C++ static destructors that `os._exit` skips. This times a whole process (import, one small operation, exit) both
ways, interleaved, and prints the medians and their ratio per framework:

    .venv/bin/python tests/bench/exit_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

WORK = {
    "tensorflow": "import tensorflow as tf\nx = tf.constant([1.0, 2.0]); (x * 2).numpy()\n",
    "torch": "import torch\nx = torch.ones(500, 500); (x @ x).sum().item()\n",
}
EXITS = {
    "os._exit": "import os\nos._exit(0)\n",
    "libc exit": "import ctypes, sys\nsys.stdout.flush()\nctypes.CDLL(None).exit(0)\n",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for framework, work in WORK.items():
        times: dict[str, list[float]] = {name: [] for name in EXITS}
        for _ in range(args.repeats):
            for name, leave in EXITS.items():
                started = time.perf_counter()
                subprocess.run([sys.executable, "-c", work + leave], check=True, capture_output=True)
                times[name].append(time.perf_counter() - started)
        medians = {name: statistics.median(values) for name, values in times.items()}
        print(f"{framework}: os._exit {medians['os._exit']:.2f} s, libc exit {medians['libc exit']:.2f} s "
              f"(median of {args.repeats}), libc / os {medians['libc exit'] / medians['os._exit']:.2f}")


if __name__ == "__main__":
    main()
