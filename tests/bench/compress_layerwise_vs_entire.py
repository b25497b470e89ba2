"""Benchmark: the AAAI'20 paper's comparison (layer-wise against entire-model compression; its six methods and the
five newer ones) at a size this machine runs: the built-in digits, 2 workers, the command's defaults (digits CNN, 32
per worker, 8 epochs, piecewise rate 0 -> 0.4 -> 0), each method's own error-feedback default (off for the six, as
in the original, and for signsgd; always on for ef-signsgd; on for powersgd), one real `anytimectl compress train`
run per (method, mode, seed) plus the uncompressed baseline. Printed: each method's final test accuracy in both
modes (mean over the seeds), the difference, and each mode's compression ratio (dense float32 over payload bytes).
fp16 and bf16 cast element by element (both modes send the same: one run, `--mode` left out) and powersgd has no
entire mode (one layerwise run).

Each method keeps the option the original gave it, except where the original's default sends more than dense
float32 would here: K = 0.01 for top-k; K = 0.1 for random-k (not rescaled, as the original: at 0.01 its update is
a hundredth of the gradient and it barely trains in 8 epochs); V = 0.02 for threshold (the original's 0.001 keeps
54% of the digits CNN's summed gradient at the start: with its index beside each value, 1.19x fewer bytes than
dense; V = 0.02 keeps 13%, 4.8x);
adaptive-threshold and TernGrad have no option; QSGD s = 255; PowerSGD rank 2. Run under the shared lock, then
draw it:

    flock /tmp/anytimectl-bench.lock .venv/bin/python tests/bench/compress_layerwise_vs_entire.py --out runs/lve
    flock /tmp/anytimectl-bench.lock .venv/bin/python tests/bench/compress_layerwise_vs_entire.py --out runs/lve \
        --methods fp16,bf16,signsgd,ef-signsgd,powersgd
    anytimectl plot runs/lve --type layerwise_vs_entire
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from compress_convergence import run  # noqa: E402

METHODS = {
    "topk": ["--ratio", "0.01"],
    "randomk": ["--ratio", "0.1"],
    "threshold": ["--threshold", "0.02"],
    "adaptive-threshold": [],
    "terngrad": [],
    "qsgd": ["--levels", "255"],
    "fp16": [],
    "bf16": [],
    "signsgd": [],
    "ef-signsgd": [],
    "powersgd": ["--rank", "2"],
}
MODES = ("layerwise", "entire")
ONE_MODE = ("fp16", "bf16", "powersgd")  # one run, layerwise: the casts have no mode, powersgd no entire


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=None, help="default: the command's (digits: 8)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here (for the figure)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="compress-lve-"))
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    print(f"runs in {out}; load average {os.getloadavg()[0]:.1f}", flush=True)
    results: dict[str, dict] = {}
    for seed in range(args.seeds):
        base = run(out, f"none-s{seed}", ["--method", "none"], seed, args.workers, args.epochs)
        results.setdefault("none", {}).setdefault("dense", []).append(base)
        print(f"none seed {seed}: {base['final_accuracy']:.4f}", flush=True)
        for method in methods:
            for mode in MODES[:1] if method in ONE_MODE else MODES:
                mode_option = [] if method in ONE_MODE else ["--mode", mode]
                row = run(out, f"{method}-{mode}-s{seed}", ["--compressor", method, *mode_option, *METHODS[method]],
                          seed, args.workers, args.epochs)
                results.setdefault(method, {}).setdefault(mode, []).append(row)
                print(f"{method} {mode} seed {seed}: final accuracy {row['final_accuracy']:.4f} (best "
                      f"{row['best_accuracy']:.4f}), {row['compression_ratio']:.1f}x", flush=True)

    def mean(rows: list[dict], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    dense = mean(results["none"]["dense"], "final_accuracy")
    print(f"\nuncompressed (none): final accuracy {dense:.4f}")
    print(f"{'method':<20}{'option':<18}{'layerwise':>10}{'entire':>10}{'l - e':>9}{'ratio l':>10}{'ratio e':>10}")
    for method in methods:
        layer = results[method]["layerwise"]
        a = mean(layer, "final_accuracy")
        if method in ONE_MODE:
            print(f"{method:<20}{' '.join(METHODS[method]) or '-':<18}{a:>10.4f}{'-':>10}{'-':>9}"
                  f"{mean(layer, 'compression_ratio'):>9.1f}x{'-':>10}")
            continue
        entire = results[method]["entire"]
        b = mean(entire, "final_accuracy")
        print(f"{method:<20}{' '.join(METHODS[method]) or '-':<18}{a:>10.4f}{b:>10.4f}{(a - b) * 100:>+8.2f}pt"
              f"{mean(layer, 'compression_ratio'):>9.1f}x{mean(entire, 'compression_ratio'):>9.1f}x")
    print(f"({args.seeds} seed(s); one point = 3.6 of the 360 test images); load average now "
          f"{os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
