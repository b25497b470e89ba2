"""Drives torch's own `powerSGD_hook` and anytimectl's PowerSGD side by side in a real gloo process group of
--world processes (torch.multiprocessing), on the same gradients, and saves what both produced at every step.

The hook is called exactly as DDP calls it, with one bucket that holds every tensor of the layout (an object with
DDP's GradBucket methods: buffer, gradients as views of it, index, is_last), so that its P and Q memories are laid
out as anytimectl's. Both sides use the same seed, so they start from the same Q. Each rank saves
OUT.rank<r>.npz with torch_grad<step>, torch_p<step>, torch_q<step>, torch_error<step> (the hook's result and
its state's P, Q and error memories) and ours_sum<step>, ours_p<step>, ours_q<step>, ours_error<step>
(anytimectl's). Run by test_powersgd.py:

    python tests/torch/powersgd_hook_worker.py OUT --world 2 --rank 2 --steps 5 --start 2 ...
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState, powerSGD_hook

#: Shapes interleaved so that torch's grouping by shape reorders them: two convs, vectors, a linear layer, a
#: matrix too small to gain (uncompressed), a wide matrix.
SHAPES = ((16, 8, 3, 3), (16,), (10, 16), (16, 8, 3, 3), (16,), (4, 2), (24, 1, 5, 5), (6, 40), (10,))


class KeptDict(dict):
    """The hook clears its P and Q memories after every step when warm start is off; this keeps the last ones."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: dict = {}

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.kept[key] = value


class Bucket:
    """What powerSGD_hook reads of DDP's GradBucket."""

    def __init__(self, buffer: torch.Tensor, shapes: tuple[tuple[int, ...], ...]) -> None:
        self._buffer, self._grads, offset = buffer, [], 0
        for shape in shapes:
            n = int(np.prod(shape))
            self._grads.append(buffer[offset:offset + n].view(shape))
            offset += n

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def gradients(self) -> list[torch.Tensor]:
        return self._grads

    def index(self) -> int:
        return 0

    def is_last(self) -> bool:
        return True


def layout() -> list[dict]:
    entries, offset = [], 0
    for shape in SHAPES:
        n = int(np.prod(shape))
        entries.append({"offset": offset, "size": n, "shape": shape})
        offset += n
    return entries


def gradients(steps: int, world: int, seed: int) -> np.ndarray:
    """(steps, world, size) float32: a different gradient per step and rank, with a decaying spectrum per tensor
    so that low-rank approximation has something to find."""
    rng = np.random.default_rng(seed)
    size = sum(int(np.prod(s)) for s in SHAPES)
    return (rng.standard_normal((steps, world, size)) * rng.uniform(0.5, 2.0, (steps, world, 1))).astype(np.float32)


def _worker(rank: int, args: argparse.Namespace, store: str) -> None:
    from anytimectl.backends.torch.compression.powersgd import PowerSGD

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=args.world)
    grads = gradients(args.steps, args.world, args.data_seed)
    state = PowerSGDState(process_group=None, matrix_approximation_rank=args.rank, start_powerSGD_iter=args.start,
                          min_compression_rate=args.min_rate, use_error_feedback=args.error_feedback,
                          warm_start=args.warm_start, orthogonalization_epsilon=0, random_seed=args.seed)
    state.p_memory_dict, state.q_memory_dict = KeptDict(), KeptDict()
    ours = PowerSGD(layout(), rank=args.rank, start_iter=args.start, min_compression_rate=args.min_rate,
                    error_feedback=args.error_feedback, warm_start=args.warm_start, seed=args.seed,
                    residual=args.residual, world=args.world)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("torch_grad", "torch_p", "torch_q", "torch_error",
                                                         "ours_sum", "ours_p", "ours_q", "ours_error")}
    empty = np.zeros(0, np.float32)
    for step in range(args.steps):
        buffer = torch.from_numpy(grads[step, rank].copy())
        result = powerSGD_hook(state, Bucket(buffer, SHAPES)).wait()
        result = result[0] if isinstance(result, list) else result
        out["torch_grad"].append(result.numpy().copy())
        out["torch_p"].append(state.p_memory_dict.kept[0].numpy().copy() if step >= args.start else empty)
        out["torch_q"].append(state.q_memory_dict.kept[0].numpy().copy() if step >= args.start else empty)
        out["torch_error"].append(state.error_dict[0].numpy().copy() if 0 in state.error_dict else empty)
        summed = ours.step(grads[step, rank], step, allreduce=lambda t: dist.all_reduce(t))
        out["ours_sum"].append(summed.copy())
        out["ours_p"].append(ours.last_p.numpy().copy() if step >= args.start else empty)
        out["ours_q"].append(ours.q.numpy().copy() if step >= args.start else empty)
        out["ours_error"].append(ours.residual.numpy().copy() if ours.residual is not None else empty)
    np.savez(f"{args.out}.rank{rank}.npz", **{f"{k}{step}": a for k, v in out.items() for step, a in enumerate(v)})
    # As in ddp_hooks_run.py: the hook's futures and state must be gone, and every rank done, before the group is
    # destroyed, or gloo's worker threads can abort a process at exit ("terminate called without an active
    # exception"; seen once in a whole-suite run with two pytest workers beside it).
    del state, ours
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--rank", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--start", type=int, default=2)
    parser.add_argument("--min-rate", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=1)
    parser.add_argument("--no-error-feedback", dest="error_feedback", action="store_false")
    parser.add_argument("--no-warm-start", dest="warm_start", action="store_false")
    parser.add_argument("--residual", default="aggregate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        mp.spawn(_worker, args=(args, store), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
