"""Benchmark: anytimectl's PowerSGD step (compress + communicate + decompress) against torch's own
`powerSGD_hook` inside DistributedDataParallel, both over gloo, for the same model (ResNet9), matrix rank and
number of ranks, in the same run; the issue's target is a ratio (anytimectl / torch) of at most 1.

Every rank (--world processes, torch.multiprocessing, one gloo process group) repeats, for --steps timed steps
after warm-up, three timed pieces on the same batch, each after a barrier so that no rank's wait for a slower one
is counted:
- plain: forward + backward of the model without DDP (no communication);
- anytimectl: `PowerSGD.step` on that flat gradient with `torch.distributed.all_reduce` as its all-reduce (error
  feedback and warm start on, as torch's defaults below) - what `compress train --compressor powersgd` does
  after the backward;
- ddp: forward + backward of a copy of the model in DDP with `powerSGD_hook` registered (`PowerSGDState`:
  same rank, min_compression_rate 2, error feedback, warm start, start_powerSGD_iter 2, which DDP requires, passed
  in warm-up; broadcast_buffers off, so DDP adds nothing but the hook). DDP runs the hook per bucket while the
  backward still runs, so its cost is what the hook adds to the backward: ddp - plain, paired per step.
The ratio printed is median(anytimectl) / median(ddp - plain), and beside it the whole step's,
median(plain + anytimectl) / median(ddp), and the same split in CPU time (each process, all of its threads), which
other processes on the cores do not inflate. Run under the shared lock:

    flock /tmp/anytimectl-bench.lock .venv/bin/python tests/bench/powersgd_vs_ddp_hook.py
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState, powerSGD_hook
from torch.nn import functional
from torch.nn.parallel import DistributedDataParallel


def _timed(action, cpu: list[float]) -> float:
    """Wall seconds of `action` after a barrier; its CPU seconds (this process, every thread: autograd's, gloo's)
    are appended to `cpu`."""
    dist.barrier()
    start, start_cpu = time.perf_counter(), time.process_time()
    action()
    cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


def _worker(rank: int, args: argparse.Namespace, store: str) -> None:
    from anytimectl.backends.torch.compression.powersgd import PowerSGD
    from anytimectl.backends.torch.models import build_model

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=args.world)
    torch.manual_seed(0)
    model = build_model(args.model, (32, 32, 3), 10)
    model.train()
    twin = copy.deepcopy(model)
    ddp = DistributedDataParallel(twin, broadcast_buffers=False)
    state = PowerSGDState(process_group=None, matrix_approximation_rank=args.rank, start_powerSGD_iter=2,
                          min_compression_rate=2, use_error_feedback=True, warm_start=True)
    ddp.register_comm_hook(state, powerSGD_hook)
    parameters = [p for p in model.parameters() if p.requires_grad]
    offset, layout = 0, []
    for p in parameters:
        layout.append({"offset": offset, "size": p.numel(), "shape": tuple(p.shape)})
        offset += p.numel()
    psgd = PowerSGD(layout, rank=args.rank, min_compression_rate=2, error_feedback=True, warm_start=True,
                    world=args.world)
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (args.batch_size,), generator=generator)

    def plain() -> None:
        model.zero_grad(set_to_none=False)
        functional.cross_entropy(model(x), y, reduction="sum").backward()

    def with_hook() -> None:
        ddp.zero_grad(set_to_none=False)
        functional.cross_entropy(ddp(x), y, reduction="sum").backward()

    def allreduce(tensor: torch.Tensor) -> None:
        dist.all_reduce(tensor)

    plain()
    flat = torch.cat([p.grad.reshape(-1) for p in parameters])  # the engine's gradient is flat already
    for _ in range(3):  # DDP: two plain all-reduces (start_powerSGD_iter 2), then PowerSGD's allocations
        with_hook()
    for step in range(2):
        psgd.step(flat, step, allreduce)
    times: dict[str, list[float]] = {k: [] for k in ("plain", "anytimectl", "ddp", "plain_cpu", "anytimectl_cpu",
                                                     "ddp_cpu")}
    for step in range(2, 2 + args.steps):
        times["plain"].append(_timed(plain, times["plain_cpu"]))
        flat = torch.cat([p.grad.reshape(-1) for p in parameters])
        times["anytimectl"].append(_timed(lambda step=step, flat=flat: psgd.step(flat, step, allreduce),
                                          times["anytimectl_cpu"]))
        times["ddp"].append(_timed(with_hook, times["ddp_cpu"]))
    everyone = [None] * args.world
    dist.all_gather_object(everyone, times)
    if rank == 0:
        hook = [d - p for t in everyone for d, p in zip(t["ddp"], t["plain"], strict=True)]
        ours = [v for t in everyone for v in t["anytimectl"]]
        plain_s = statistics.median(v for t in everyone for v in t["plain"])
        ddp_s = statistics.median(v for t in everyone for v in t["ddp"])
        full = [p + a for t in everyone for p, a in zip(t["plain"], t["anytimectl"], strict=True)]
        ours_s, hook_s = statistics.median(ours), statistics.median(hook)
        print(f"model {args.model}, batch {args.batch_size} per rank, {args.world} ranks (gloo), PowerSGD rank "
              f"{args.rank}, torch threads {torch.get_num_threads()} per rank, {args.steps} timed steps per rank; "
              f"{len(psgd.matrices)} matrices compressed, {psgd.compressed_floats:,} of {psgd.size:,} floats sent")
        print(f"medians over ranks and steps: plain forward+backward {plain_s * 1e3:.0f} ms; DDP+powerSGD_hook "
              f"forward+backward {ddp_s * 1e3:.0f} ms; the hook's share (ddp - plain) {hook_s * 1e3:.1f} ms; "
              f"anytimectl PowerSGD step {ours_s * 1e3:.1f} ms")
        ratio, full_ratio = ours_s / hook_s if hook_s > 0 else float("inf"), statistics.median(full) / ddp_s
        hook_cpu = statistics.median(d - p for t in everyone for d, p in zip(t["ddp_cpu"], t["plain_cpu"],
                                                                             strict=True))
        ours_cpu = statistics.median(v for t in everyone for v in t["anytimectl_cpu"])
        print(f"CPU time (each process, all its threads): the hook's share {hook_cpu * 1e3:.1f} ms, anytimectl's "
              f"step {ours_cpu * 1e3:.1f} ms: {ours_cpu / hook_cpu if hook_cpu > 0 else float('inf'):.2f}x")
        print(f"anytimectl / powerSGD_hook: {ratio:.2f}x (step alone), {full_ratio:.2f}x (forward + backward + "
              f"exchange) (target <= 1): {'PASS' if ratio <= 1 else 'FAIL'}; load average {os.getloadavg()[0]:.1f}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--rank", type=int, default=2, help="PowerSGD matrix rank")
    parser.add_argument("--model", default="resnet9")
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per rank")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(args, os.path.join(tmp, "store")), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
