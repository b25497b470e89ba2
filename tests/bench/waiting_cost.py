"""Benchmark: CPU that a waiting rank burns, our sleep-polling wait against a blocking MPI call.

Run: python tests/bench/waiting_cost.py [--workers 4] [--seconds 2]
It starts an MPI job itself. Rank 0 waits for a reduce while every worker sleeps; it reports its CPU time
as a fraction of one core for both ways of waiting, measured in the same job.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(seconds: float) -> None:
    import numpy as np
    from mpi4py import MPI

    from anytimectl.comm import Comm

    world = MPI.COMM_WORLD
    comm = Comm(world)
    buffer = np.ones(1 << 16, dtype=np.float32)
    result = np.zeros_like(buffer) if comm.rank == 0 else None
    fractions = {}
    stats = np.zeros(15)
    all_stats = np.zeros((comm.size, 15)) if comm.rank == 0 else None
    for way in ("anytimectl (Comm.collect, as training)", "blocking MPI Reduce"):
        world.Barrier()
        if comm.rank != 0:
            time.sleep(seconds)
        cpu, wall = time.process_time(), time.perf_counter()
        if way.startswith("anytimectl"):
            comm.collect(buffer, result, stats, all_stats)
        else:
            world.Reduce(buffer, result, op=MPI.SUM, root=0)
        fractions[way] = (time.process_time() - cpu) / (time.perf_counter() - wall)
    if comm.rank == 0:
        print(json.dumps(fractions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.seconds)
        return
    from anytimectl.launch import find_mpiexec

    out = subprocess.run([find_mpiexec(), "-n", str(args.workers + 1), sys.executable, "-m", "mpi4py", __file__,
                          "--child", "--seconds", str(args.seconds)], capture_output=True, text=True, check=True)
    fractions = json.loads(out.stdout.strip().splitlines()[-1])
    baseline = fractions["blocking MPI Reduce"]
    print(f"CPU of rank 0 while {args.workers} workers sleep {args.seconds:.1f} s before sending:")
    for way, fraction in fractions.items():
        print(f"  {way:36s} {fraction:6.1%} of a core   ({fraction / baseline:.3f}x the blocking wait)")


if __name__ == "__main__":
    main()
