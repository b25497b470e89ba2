"""`compress train` across emulated hosts on shaped links: step time of dense all-reduce against every
compressor, with each step's time split into the timing words.

    sudo .venv/bin/python tests/bench/cluster_compress.py [--hosts 4] [--rates 100mbit,1gbit] [--steps 20]
        [--methods all | none,topk,...] [--model digits-cnn | --model resnet9 --batch-size 16]

One rank per emulated host (tests/cluster/emulated.py), `--threads cores // all ranks` (1 on 2 cores), the same
seed for every method; each rate is its own cluster (`unshaped` for no tc limit). `--model resnet9` trains on
generated CIFAR-10-format files (random pixels and labels, 1000 training images: a timing run, not a learning
one). Per method it prints the median step time (worker 1, from one round's start to the next, steps after the
first 3), its compute and send (transfer) parts from the rows, the smallest share of a step the timing words
account for, the bytes all links carried per step, the step against dense (`none`) at the same rate, and
step / compute: the limit is 1 (communication wholly hidden behind compute); top-k's target is <= 1.2. Needs
root.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.emulated import EmulatedCluster, missing_requirements  # noqa: E402
from cluster.jobs import run_across, threads_for  # noqa: E402

ALL = ["none", "topk", "randomk", "threshold", "adaptive-threshold", "terngrad", "qsgd", "fp16", "bf16",
       "signsgd", "ef-signsgd", "powersgd"]
METHOD_ARGS = {"topk": ["--ratio", "0.01", "--error-feedback"],
               "randomk": ["--ratio", "0.01", "--error-feedback"],
               "powersgd": ["--rank", "2"]}
SKIP = 3  # start-up steps left out of the medians


def step_parts(path: Path) -> dict[str, float]:
    """Medians over worker 1's rounds: step (round start to next round start), compute, send, accounted share."""
    rows = pd.read_csv(path / "worker_stats.csv")
    rows = rows[rows["rank"] == rows["rank"].min()].sort_values("master_step").reset_index(drop=True)
    wall = rows.round_start.diff().shift(-1)  # round n's length: the next round's start minus its own
    words = (rows.compute_time + rows.last_send.shift(-1) + rows.last_recv.shift(-1) + rows.last_exit.shift(-1))
    keep = slice(SKIP, len(rows) - 1)
    return {"step_s": float(np.median(wall[keep])), "compute_s": float(np.median(rows.compute_time[keep])),
            "send_s": float(np.median(rows.last_send.shift(-1)[keep])),
            "exit_s": float(np.median(rows.last_exit.shift(-1)[keep])),
            "accounted": float(np.min((words / wall)[keep]))}


def write_cifar(folder: Path, train: int = 1000, test: int = 100) -> None:
    """CIFAR-10 python batches of random pixels and labels (the format `--dataset cifar10` reads)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else train // 5
        blob = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(blob, protocol=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--rates", default="100mbit,1gbit", help="tc rates, comma-separated; unshaped: no limit")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--model", default=None, help="digits-cnn (default) or resnet9 (generated CIFAR-10 data)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--csv", default=None, help="also write the table to this file")
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        raise SystemExit(reason)
    methods = ALL if args.methods == "all" else args.methods.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="cluster-compress-") as out:
        data: list[str] = []
        if args.model == "resnet9":
            write_cifar(Path(out) / "cifar")
            data = ["--dataset", "cifar10", "--data-dir", str(Path(out) / "cifar")]
        for rate in args.rates.split(","):
            with EmulatedCluster(args.hosts, rate=None if rate == "unshaped" else rate) as cluster:
                for method in methods:
                    command = ["compress", "train", "--compressor", method, *METHOD_ARGS.get(method, []),
                               "--steps", str(args.steps), "--test-size", "100", "--log-every", str(args.steps),
                               "--seed", "1", *data]
                    if args.model:
                        command += ["--model", args.model]
                    if args.batch_size:
                        command += ["--batch-size", str(args.batch_size)]
                    name = f"{method}-{rate}"
                    job = run_across(cluster, 1, command, Path(out), name, timeout=1800)
                    if job.returncode != 0:
                        raise SystemExit(f"{name} failed ({job.returncode}):\n{job.stderr[-3000:]}")
                    sent = sum(link[0] for link in job.link_bytes)
                    results.append({"rate": rate, "method": method, **step_parts(job.path),
                                    "links_MB_per_step": sent / args.steps / 1e6})
                    print(results[-1], flush=True)
    table = pd.DataFrame(results)
    dense = table[table.method == "none"].set_index("rate").step_s
    table["dense/this"] = [dense.get(rate, np.nan) / step for rate, step in zip(table.rate, table.step_s, strict=True)]
    table["step/compute"] = table.step_s / table.compute_s
    pd.set_option("display.width", 220)
    print(f"{args.hosts} hosts, one rank per host, --threads {threads_for(args.hosts)}, model "
          f"{args.model or 'digits-cnn'}, {args.steps} steps")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
