"""Benchmark: the thesis' MNIST table (4 workers), reproduced with `train gossip` (issue 8).

With the MNIST files (the original's settings: the 784-1024-1024-1024-10 MLP with dropout, SGD lr 0.001,
momentum 0.99, Nesterov, aggregate batch 128, 100 epochs, 8800 validation examples held out):
    flock /tmp/anytimectl-bench.lock python tests/bench/gossip_mnist_table.py --dataset mnist \\
        --data-dir ~/data/mnist
(--epochs 100 is the default for mnist; pass a smaller --epochs for a shorter comparison.)

Without MNIST (this machine has no downloads), the same four runs on the built-in digits data, with the digits
defaults (the digits CNN, lr 0.05, momentum 0.9, Nesterov, batch 64, 10 epochs), clearly labelled as digits:
    flock /tmp/anytimectl-bench.lock python tests/bench/gossip_mnist_table.py

Printed: each method's test accuracy of worker 1's model and of the averaged model (AggTestAcc), beside the
thesis' MNIST figures (rank 0 / averaged, where the thesis gives them) and the bytes each worker sent per update.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

#: (label, method options, the thesis' MNIST accuracy with 4 workers)
ROWS = (
    ("allreduce", ("--method", "allreduce"), 0.9861),
    ("elastic p=1/8", ("--method", "elastic", "--agg-prob", "0.125"), 0.9862),
    ("gossip p=1/8", ("--method", "gossip", "--agg-prob", "0.125"), 0.9855),
    ("nocomm", ("--method", "nocomm"), 0.9723),
)


def run(options: tuple[str, ...], seed: int, args: argparse.Namespace, out: Path, name: str) -> dict:
    command = [sys.executable, "-m", "anytimectl", "train", "gossip", "--workers", "4", *options,
               "--dataset", args.dataset, "--seed", str(seed), "--out", str(out), "--name", name, "--json"]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    if args.epochs is not None:
        command += ["--epochs", str(args.epochs)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=float, default=None, help="default: the dataset's (mnist 100, digits 10)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=None, help="keep the run directories here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(args.out or folder)
        results = {label: [] for label, _, _ in ROWS}
        for seed in range(args.seeds):
            for label, options, _ in ROWS:
                results[label].append(run(options, seed, args, out, f"{label.replace(' ', '-').replace('/', '_')}"
                                                                     f"-s{seed}"))
    epochs = results[ROWS[0][0]][0]["epochs"]
    print(f"{args.dataset}: 4 workers, {epochs:.3g} epochs, {args.seeds} seed(s) each (mean ± std)")
    if args.dataset != "mnist":
        print(f"NOTE: {args.dataset}, not MNIST: the thesis column is MNIST's, for reference only")
    print(f"{'method':<16}{'worker 1':>16}{'averaged':>16}{'thesis MNIST':>14}{'bytes/update':>14}")
    for label, _, thesis in ROWS:
        rows = results[label]
        own = np.array([r["test_accuracy_per_worker"]["1"] for r in rows])
        agg = np.array([r["agg_test_accuracy"] for r in rows])
        traffic = np.mean([r["bytes_sent_per_update"] for r in rows])
        print(f"{label:<16}{own.mean():>10.4f}±{own.std():.4f}{agg.mean():>10.4f}±{agg.std():.4f}{thesis:>14.4f}"
              f"{traffic:>14,.0f}")


if __name__ == "__main__":
    main()
