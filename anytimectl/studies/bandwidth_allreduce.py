"""The all-reduce pattern of `anytimectl bandwidth`: what the peer methods' gradient all-reduce costs through the
communication layer (`Comm.allreduce_sum`: a sleep-polled wait for the slowest rank, then MPI's blocking
Allreduce) against raw blocking mpi4py `Allreduce` of the same buffers, interleaved round by round in one job.

Rows have the columns of `anytimectl.studies.bandwidth.COLUMNS`, so the run directory, the ratio table and the
master_bandwidth figure read them unchanged: `workers` is the number of ranks taking part (every rank is a worker:
there is no master), `reduce_time` the all-reduce, `bcast_time` 0, `round_time` the all-reduce. A round's time is
the slowest rank's (from the common start after a barrier until every rank has the sum), and `gbps` is the
all-reduce's bus bandwidth, 2 (n - 1) / n x bytes / time (what each rank must at least send and receive).

Run it inside a job: `mpiexec -n 4 python -m anytimectl.studies.bandwidth_allreduce --sizes 2^18,2^20,2^22`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from anytimectl.studies.bandwidth import COLUMNS, _agree_to_stop, _stats, format_rows, ratio_table

__all__ = ["COLUMNS", "measure_allreduce_job", "main"]


def _round(comm: Any, layer: str, buffer: np.ndarray, out: np.ndarray) -> float:
    """One all-reduce of `buffer` into `out`, through the layer training uses or through raw blocking MPI."""
    from mpi4py import MPI

    start = time.perf_counter()
    if layer == "ours":
        comm.allreduce_sum(buffer, out)
    else:
        comm.mpi.Allreduce(buffer, out, op=MPI.SUM)
    return time.perf_counter() - start


def measure_allreduce_job(comm: Any, sizes: list[int], rounds: int, warmup: int,
                          model_sizes: dict[int, str] | None = None, stop: Any = None) -> tuple[list[dict], bool]:
    """Every rank calls this; rank 0 gets the rows (the others an empty list), every rank whether it stopped early.

    For each size: `warmup` untimed rounds, then `rounds` rounds alternating which layer goes first, each one
    preceded by a barrier so that every rank starts together. The sums are checked against the expected ones.
    """
    from mpi4py import MPI

    model_sizes = model_sizes or {}
    rows: list[dict] = []
    n = comm.size
    for elements in sizes:
        buffer = np.full(elements, float(comm.rank + 1), dtype=np.float32)
        out = np.zeros(elements, dtype=np.float32)
        times: dict[str, list[float]] = {"ours": [], "raw": []}
        for index in range(warmup + rounds):
            if _agree_to_stop(comm, stop):
                return rows, True
            for layer in ("ours", "raw") if index % 2 == 0 else ("raw", "ours"):
                comm.barrier()
                elapsed = _round(comm, layer, buffer, out)
                if index >= warmup:
                    times[layer].append(elapsed)
        expected = float(n * (n + 1) // 2)
        if not (out[0] == expected and out[-1] == expected):  # pragma: no cover - an MPI bug
            raise RuntimeError(f"all-reduce of {elements} elements gave {out[0]}, expected {expected}")
        slowest = {}
        for layer in ("ours", "raw"):
            mine = np.asarray(times[layer], dtype=np.float64)
            worst = np.zeros_like(mine)
            comm.mpi.Allreduce(mine, worst, op=MPI.MAX)
            slowest[layer] = worst
        if comm.rank != 0:
            continue
        medians = {}
        for layer in ("ours", "raw"):
            median, spread = _stats(list(slowest[layer]))
            medians[layer] = median
            moved = 2 * (n - 1) / n * elements * 4
            rows.append({
                "workers": n, "elements": elements, "bytes": elements * 4, "layer": layer,
                "reduce_time": median, "reduce_spread": spread, "bcast_time": 0.0, "bcast_spread": 0.0,
                "round_time": median, "round_spread": spread,
                "gbps": moved / median / 1e9 if median > 0 and n > 1 else None, "ratio": None, "rounds": rounds,
                "model": model_sizes.get(elements, ""),
            })
        for row in rows[-2:]:
            row["ratio"] = medians["raw"] / medians[row["layer"]] if medians[row["layer"]] > 0 else None
    return rows, False


def main(argv: list[str] | None = None) -> int:
    """Measure inside an existing MPI job and print the ratio table on rank 0 (no run directory)."""
    import json

    from anytimectl.cli.ranges import parse_counts
    from anytimectl.runtime.launch import start_rank

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2^10..2^22", help="float32 elements: 2^10..2^22, 1024,2^20, ...")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line")
    args = parser.parse_args(argv)
    sizes = parse_counts(args.sizes, "--sizes", maximum=2**28)
    rank = start_rank(1)
    if rank.comm is None:
        raise SystemExit("run it under mpiexec -n N (N >= 2)")
    rows, _ = measure_allreduce_job(rank.comm, sizes, args.rounds, args.warmup)
    if rank.rank == 0:
        if args.json:
            print(json.dumps(rows))
        else:
            print(format_rows(rows))
            large = [r["ratio"] for r in ratio_table(rows) if r["bytes"] >= 2**20]
            if large:
                print(f"all-reduce through Comm reaches {min(large):.2f} of raw MPI at 1 MiB or more (target 0.9)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
