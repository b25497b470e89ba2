"""Benchmark: CPU that a waiting rank burns, our waits against a blocking MPI call.

Run: python tests/bench/waiting_cost.py [--workers 4] [--seconds 2]
It starts an MPI job itself. Rank 0 waits for a step's contributions while every worker sleeps; it reports its
CPU time as a fraction of one core for three ways of waiting, measured in the same job: `Comm.collect` through
shared memory with doorbells (what training uses when every rank is on one host), `Comm.collect` over MPI
messages with sleep-polled waits (what it uses across hosts), and a blocking MPI Reduce. Each communicator makes
one untimed round first, so set-up is not counted. The workers' own wait (for the parameters) is measured the same
way, with rank 0 sleeping.
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
    ways = {"shared memory + doorbells (Comm.collect, one host)": Comm(world.Dup()),
            "MPI, sleep-polled (Comm.collect, across hosts)": Comm(world.Dup(), shared_memory=False),
            "blocking MPI Reduce": None}
    rank = world.Get_rank()
    buffer = np.ones(1 << 16, dtype=np.float32)
    result = np.zeros_like(buffer) if rank == 0 else None
    stats = np.zeros(15)
    all_stats = np.zeros((world.Get_size(), 15)) if rank == 0 else None
    header = np.zeros(5)
    for comm in ways.values():  # untimed first rounds: shared windows and doorbells are set up here
        if comm is not None:
            comm.collect(buffer, result, stats, all_stats)
            comm.distribute(header, buffer)
    master, workers = {}, {}
    for way, comm in ways.items():
        world.Barrier()
        if rank != 0:
            time.sleep(seconds)
        cpu, wall = time.process_time(), time.perf_counter()
        if comm is not None:
            comm.collect(buffer, result, stats, all_stats)
        else:
            world.Reduce(buffer, result, op=MPI.SUM, root=0)
        master[way] = (time.process_time() - cpu) / (time.perf_counter() - wall)
        # the workers' wait for the master's parameters
        world.Barrier()
        if rank == 0:
            time.sleep(seconds)
        cpu, wall = time.process_time(), time.perf_counter()
        if comm is not None:
            comm.distribute(header, buffer)
        else:
            world.Bcast(buffer, root=0)
        fraction = np.array([(time.process_time() - cpu) / (time.perf_counter() - wall)])
        everyone = np.zeros((world.Get_size(), 1)) if rank == 0 else None
        world.Gather(fraction, everyone, root=0)
        if rank == 0:
            workers[way] = float(everyone[1:].mean())
    if rank == 0:
        print(json.dumps({"master": master, "workers": workers}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.seconds)
        return
    from anytimectl.runtime.launch import find_mpiexec

    out = subprocess.run([find_mpiexec(), "-n", str(args.workers + 1), sys.executable, "-m", "mpi4py", __file__,
                          "--child", "--seconds", str(args.seconds)], capture_output=True, text=True, check=True)
    fractions = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"CPU while waiting {args.seconds:.1f} s, {args.workers} workers, share of one core "
          f"({time.strftime('%Y-%m-%d')}):")
    print(f"  {'':52s} {'rank 0 (collect)':>17s} {'workers (distribute)':>21s}")
    for way, fraction in fractions["master"].items():
        print(f"  {way:52s} {fraction:16.1%} {fractions['workers'][way]:20.1%}")


if __name__ == "__main__":
    main()
