"""Benchmark: plain PyTorch DDP (gloo) against `train dynamic --policy static`, same model, data and global batch.

Run: flock /tmp/anytimectl-bench.lock python tests/bench/ddp_vs_dynamic_static.py
     [--data-dir /usr/share/datasets/fashion-mnist] [--workers 2] [--batch-size 128] [--epochs 1] [--repeats 2]

What a user would otherwise write: DistributedDataParallel over gloo, env:// initialisation (MASTER_ADDR,
MASTER_PORT, RANK, WORLD_SIZE), W processes started by torch.multiprocessing, one thread each (what anytimectl gives
each of W ranks on W cores or fewer), every rank taking its slice of one shared per-epoch shuffle of the training
set, `--batch-size` examples per rank per step, torch's RMSprop with anytimectl's settings (rho 0.9, epsilon 1e-7,
L2 decay 5e-4 added to the gradient once per update, learning rate 0.003), the small CNN of
tests/bench/fmnist_cnn.py. Against it `anytimectl train dynamic --policy static` with the same workers, model, batch,
optimizer and epochs. Both are timed from their first training step to their last (DDP: rank 0's clock around its
training loop; anytimectl: the `runs` table's examples/s, first step to last); start-up (imports, MPI launch, DDP
construction) is left out of both. Accuracy: each run's final model on the whole 10,000-image test split. The two
alternate (DDP, anytimectl, DDP, ...) so machine load hits both alike; the ratio is of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
MODEL = f"{BENCH / 'fmnist_cnn.py'}:build"
LEARNING_RATE, WEIGHT_DECAY = 0.003, 5e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_rank(rank: int, world: int, port: int, data_dir: str, batch: int, epochs: int, seed: int,
             result: str) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    sys.path.insert(0, str(BENCH))
    from fmnist_cnn import build

    from anytimectl.data import load_dataset

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method="env://")
    data = load_dataset("fashion-mnist", data_dir)
    # NCHW and contiguous once, as torchvision's datasets give images (a channels-last view would make DDP's
    # gradient buckets and the first convolution's gradient disagree in layout, which DDP warns slows it down)
    x, y = torch.from_numpy(data.x_train).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(data.y_train).long()
    torch.manual_seed(seed)
    model = DistributedDataParallel(build(data.input_shape, data.num_classes))  # broadcasts rank 0's parameters
    optimizer = torch.optim.RMSprop(model.parameters(), lr=LEARNING_RATE, alpha=0.9, eps=1e-7,
                                    weight_decay=WEIGHT_DECAY)
    global_batch = batch * world
    steps_per_epoch = len(x) // global_batch
    dist.barrier()
    started = time.perf_counter()
    steps = 0
    for epoch in range(epochs):
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(x)))
        for step in range(steps_per_epoch):
            mine = order[step * global_batch + rank * batch:][:batch]
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x[mine]), y[mine])
            loss.backward()  # DDP all-reduces (averages) the gradients here
            optimizer.step()
            steps += 1
    dist.barrier()
    elapsed = time.perf_counter() - started
    if rank == 0:
        model.eval()
        with torch.no_grad():
            xt = torch.from_numpy(data.x_test).permute(0, 3, 1, 2).contiguous()
            correct = sum(int((model.module(xt[i:i + 1000]).argmax(1) == torch.from_numpy(data.y_test[i:i + 1000]))
                              .sum()) for i in range(0, len(xt), 1000))
        Path(result).write_text(json.dumps({"seconds": elapsed, "steps": steps, "examples": steps * global_batch,
                                            "accuracy": correct / len(data.x_test)}))
    dist.destroy_process_group()


def run_ddp(world: int, data_dir: str, batch: int, epochs: int, seed: int, out: Path, name: str) -> dict:
    import torch.multiprocessing as mp

    result = out / f"{name}.json"
    mp.spawn(ddp_rank, args=(world, free_port(), data_dir, batch, epochs, seed, str(result)), nprocs=world)
    found = json.loads(result.read_text())
    found["examples_per_s"] = found["examples"] / found["seconds"]
    return found


def run_anytimectl(world: int, data_dir: str, batch: int, epochs: int, seed: int, out: Path, name: str) -> dict:
    anytimectl = [sys.executable, "-m", "anytimectl"]
    subprocess.run([*anytimectl, "train", "dynamic", "--policy", "static", "--workers", str(world),
                    "--batch-size", str(batch), "--epochs", str(epochs), "--model", MODEL, "--dataset",
                    "fashion-mnist", "--data-dir", data_dir, "--optimizer", "rms", "--learning-rate",
                    str(LEARNING_RATE), "--weight-decay", str(WEIGHT_DECAY), "--seed", str(seed), "--test-size", "-1",
                    "--log-every", "1000000", "--out", str(out), "--name", name, "--quiet", "--live", "off"],
                   check=True, capture_output=True, text=True)
    table = subprocess.run([*anytimectl, "runs", str(out / name), "--format", "json"], check=True,
                           capture_output=True, text=True)
    row = json.loads(table.stdout)[0]
    return {"seconds": row["wall_s"], "steps": row["steps"], "examples_per_s": row["examples_per_s"],
            "accuracy": row["final_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="per worker; global = x workers")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir}: no such folder (apt-get install dataset-fashion-mnist)")
    print(f"fashion-mnist, {args.workers} workers x batch {args.batch_size} (global {args.workers * args.batch_size}),"
          f" {args.epochs} epoch(s), RMSprop lr {LEARNING_RATE}, {args.repeats} repeats, "
          f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    results: dict[str, list[dict]] = {"ddp": [], "anytimectl": []}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        for repeat in range(args.repeats):
            for kind, runner in (("ddp", run_ddp), ("anytimectl", run_anytimectl)):
                found = runner(args.workers, args.data_dir, args.batch_size, args.epochs, repeat, out,
                               f"{kind}-{repeat}")
                results[kind].append(found)
                print(f"  {kind} seed {repeat}: {found['steps']} steps, {found['examples_per_s']:.0f} examples/s, "
                      f"test accuracy {found['accuracy']:.4f}  [load {os.getloadavg()[0]:.1f}]", flush=True)
    ddp = statistics.median(r["examples_per_s"] for r in results["ddp"])
    ours = statistics.median(r["examples_per_s"] for r in results["anytimectl"])
    acc_ddp = statistics.median(r["accuracy"] for r in results["ddp"])
    acc_ours = statistics.median(r["accuracy"] for r in results["anytimectl"])
    print(f"examples/s: DDP {ddp:.0f}, anytimectl {ours:.0f}, ratio anytimectl/DDP {ours / ddp:.2f} "
          f"(target >= 1: {'met' if ours >= ddp else 'NOT met'}); test accuracy DDP {acc_ddp:.4f}, anytimectl "
          f"{acc_ours:.4f} ({(acc_ours - acc_ddp) * 100:+.2f} points); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
