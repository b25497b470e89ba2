"""The DDP side of tests/torch/test_cast_exchange.py: 2 processes, gloo, a real DistributedDataParallel model with
torch's own `fp16_compress_hook` / `bf16_compress_hook` (or none: DDP's float32 all-reduce average), plain SGD.

The model, the per-rank batches and the step are shared with the anytimectl side (tests/mpi/cast_exchange_check.py),
so only the gradient exchange differs. DDP's loss is the batch's summed cross-entropy and its rate LR / BATCH: with
a power-of-two batch this is the engine's step on the per-example mean bit for bit (scaling by 2^k is exact), so
the comparison isolates the cast and the sum.

Run: python tests/torch/ddp_hooks_run.py OUT.npz (writes rank 0's parameters after every step per hook).
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile

import numpy as np
import torch

BATCH, STEPS, LR = 8, 5, 0.5
WORLD = 2


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5))


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([7, rank, step])
    x = torch.from_numpy(rng.standard_normal((BATCH, 12)).astype(np.float32) * 3)
    y = torch.from_numpy(rng.integers(0, 5, BATCH))
    return x, y


def _worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    results = {}
    for kind, hook in (("none", None), ("fp16", default_hooks.fp16_compress_hook),
                       ("bf16", default_hooks.bf16_compress_hook)):
        model = DistributedDataParallel(build())
        if hook is not None:
            model.register_comm_hook(None, hook)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR / BATCH)
        history = []
        for step in range(STEPS):
            x, y = batch(rank, step)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
            optimizer.step()
            history.append(torch.cat([p.detach().reshape(-1) for p in model.module.parameters()]).numpy().copy())
        results[kind] = np.stack(history)
        del model, optimizer  # its reducer's gloo work must be gone before the group is
    if rank == 0:
        np.savez(out, **results)
    # Without the barrier and the collection, gloo's worker threads could still hold a DDP reducer's work when the
    # group was destroyed, and one process aborted at exit ("terminate called without an active exception"), about
    # one run in twelve.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_worker, args=(os.path.join(folder, "store"), sys.argv[1]), nprocs=WORLD, join=True)
