"""Run under `mpiexec -n 2 python -m mpi4py tests/mpi/cast_exchange_check.py OUT.npz` by
tests/torch/test_cast_exchange.py: anytimectl's gradient exchanges (none, fp16, bf16) over the real MPI comm,
driving the same model, data and SGD as the DDP side of that test (tests/torch/ddp_hooks_run.py), through the
exchange contract the protocols use: contribution = [summed gradient, n, loss sum] -> exchange -> sum / n -> SGD.

Rank 0 writes the parameters after every step for every exchange to OUT.npz.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "torch"))
from ddp_hooks_run import BATCH, LR, STEPS, batch, build  # noqa: E402

from anytimectl.exchange import ExchangeSpec, make_exchange  # noqa: E402
from anytimectl.exchange.options import ExchangeOptions  # noqa: E402
from anytimectl.runtime.launch import start_rank  # noqa: E402

rank_info = start_rank(1)
comm, rank = rank_info.comm, rank_info.rank
results: dict[str, np.ndarray] = {}
for kind in ("none", "fp16", "bf16"):
    model = build()
    parameters = list(model.parameters())
    sizes = [p.numel() for p in parameters]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    trainable = int(sum(sizes))
    spec = ExchangeSpec(layout=tuple(zip(offsets.tolist(), sizes, strict=True)), trainable=trainable,
                        length=trainable + 2, rank=rank, size=comm.size, seed=0)
    exchange = make_exchange(ExchangeOptions(compressor=kind), spec, comm)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    history = []
    for step in range(STEPS):
        x, y = batch(rank, step)
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")  # the engine's summed loss
        loss.backward()
        contribution = np.concatenate([np.concatenate([p.grad.reshape(-1).numpy() for p in parameters]),
                                       [float(BATCH), loss.item()]]).astype(np.float32)
        reduced = exchange.exchange(contribution, step + 1)
        mean = reduced[:trainable] / reduced[trainable]  # the engine: the sum over the total examples
        for p, o, n in zip(parameters, offsets, sizes, strict=True):
            p.grad = torch.from_numpy(mean[o:o + n].copy()).reshape(p.shape)
        optimizer.step()
        history.append(torch.cat([p.detach().reshape(-1) for p in parameters]).numpy().copy())
    everyone = comm.mpi.allgather(history[-1])
    assert all(np.array_equal(everyone[0], e) for e in everyone), f"{kind}: ranks disagree"
    results[kind] = np.stack(history)
if rank == 0:
    np.savez(sys.argv[1], **results)
