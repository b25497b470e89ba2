"""Benchmark: what `--resume`'s check of the newest checkpoint costs (`checkpoints.check_contents`: every rank's
file read through, CRCs and arrays, in each process that resumes). It writes a checkpoint of RANKS files of about
the size of a rank's ResNet9 checkpoint in the checkpoint-cost bench (6.6 M float32 parameters: 26 MB; --params
to change), then times the check (median of --repeats, the files in the page cache as right after a run) beside the
time one rank takes to read its own file (`load_rank`, what resuming costs anyway).

    .venv/bin/python tests/bench/resume_check_cost.py [--ranks 4] [--params 6_600_000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from anytimectl.runtime import checkpoints  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--params", type=int, default=6_600_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.1f}", flush=True)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="resume-check-") as folder:
        run = Path(folder)
        (run / "metadata.json").write_text("{}")
        for rank in range(args.ranks):
            state = {"engine": {"model": rng.standard_normal(args.params, dtype=np.float32)}}
            checkpoints.save_rank(run, 1, rank, state)
        checkpoints.write_manifest(run, 1, args.ranks, {})
        point = checkpoints.latest(run)
        size = sum(point.rank_file(r).stat().st_size for r in range(args.ranks)) / 1e6

        def timed(work) -> float:
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                work()
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        check = timed(lambda: checkpoints.check_contents(run, 1, point.manifest))
        own = timed(lambda: checkpoints.load_rank(point, 0, tensors=False))
    print(f"{args.ranks} ranks, {size:.1f} MB in all: check {check:.3f} s (median of {args.repeats}), one rank's "
          f"own file read {own:.3f} s; the check is {check / own:.1f}x a rank's own read")
    print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
