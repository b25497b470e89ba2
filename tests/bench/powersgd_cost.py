"""Benchmark: anytimectl's PowerSGD (compress + decompress, the whole step without the collectives) on a real
ResNet9 gradient, against ResNet9's backward pass at batch 512 on this CPU, in the same process: the issue's
target is rank 2 at most 10% of the backward.

The model, its layout and the backward timing are compression_codecs.py's (the torch engine's ResNet9, summed
cross-entropy of a random batch, backward alone, median of --backward-repeats). PowerSGD runs in one process with
the all-reduce a no-op, so what is timed is exactly its arithmetic: error feedback, P = M Q, orthogonalisation,
Q = M^T P, P Q^T and the residual. Each rank is warmed for two steps (warm start on, so the timed steps are the
steady state), then timed over --repeats steps on the same gradient (median). Run under the shared lock:

    flock /tmp/anytimectl-bench.lock .venv/bin/python tests/bench/powersgd_cost.py --threads 1
    flock /tmp/anytimectl-bench.lock .venv/bin/python tests/bench/powersgd_cost.py            # default threads
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from compression_codecs import resnet9_gradient  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--ranks", default="1,2,4", help="PowerSGD matrix ranks to time (the target is for 2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed PowerSGD steps per rank (median)")
    parser.add_argument("--backward-repeats", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from anytimectl.backends.torch.compression.powersgd import PowerSGD

    layout, source, grad, backward_s, backward_cpu_s = resnet9_gradient(args.batch_size, args.backward_repeats)
    print(f"{'rank':>4}{'compressed':>11}{'floats/step':>13}{'ratio':>8}{'rel.err':>9}{'step ms':>9}{'cpu ms':>8}"
          f"{'/bwd':>7}{'cpu/bwd':>8}")
    verdict = None
    for rank in (int(r) for r in args.ranks.split(",")):
        psgd = PowerSGD(layout, rank=rank, seed=0)
        one = PowerSGD(layout, rank=rank, seed=0, error_feedback=False)
        error = float(torch.linalg.vector_norm(torch.from_numpy(one.step(grad, 0)) - grad)
                      / torch.linalg.vector_norm(grad))
        for step in range(2):
            psgd.step(grad, step)
        wall, cpu = [], []
        for step in range(2, 2 + max(1, args.repeats)):
            start, start_cpu = time.perf_counter(), time.process_time()
            psgd.step(grad, step)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        step_s, step_cpu_s = statistics.median(wall), statistics.median(cpu)
        share, cpu_share = step_s / backward_s, step_cpu_s / backward_cpu_s
        ratio = grad.numel() / psgd.compressed_floats
        print(f"{rank:>4}{len(psgd.matrices):>11}{psgd.compressed_floats:>13,}{ratio:>8.1f}{error:>9.3f}"
              f"{step_s * 1e3:>9.1f}{step_cpu_s * 1e3:>8.1f}{share:>7.1%}{cpu_share:>8.1%}")
        if rank == 2:
            verdict = (share, cpu_share)
    if verdict is not None:
        print(f"PowerSGD rank 2 (compress + decompress)/backward: {verdict[0]:.1%} wall, {verdict[1]:.1%} CPU "
              f"(target <= 10%): {'PASS' if verdict[0] <= 0.10 else 'FAIL'}; load average now "
              f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
