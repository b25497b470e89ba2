"""Benchmark: every compression method on a real ResNet9 gradient (6,573,120 floats, 25 tensors), against the
issue's targets: bytes on the wire within 1.1x of each method's packing bound at K = 0.01, and encode + decode
of the whole gradient at most 10% of ResNet9's backward pass at batch 512, on this CPU, in the same process.

The gradient is one backward pass of the summed cross-entropy of a freshly initialised ResNet9 on a random batch
(the torch engine's model and layout when `anytimectl.backends.torch.engine` imports, otherwise cifar10-fast's
ResNet9 defined below). The backward pass is timed alone (forward excluded), median of --backward-repeats.
Threshold's V is set so that it keeps K n elements (bench.threshold_for_ratio). A last table times top-k's
selection of the k largest magnitudes as the codec makes it (candidates that a fixed sample's threshold picks, on
long tensors) against a selection over each whole tensor (`torch.kthvalue`, what top-k did before), in the same
run, on the same gradient, checking that both choose the same indices. Run under the shared lock:

    flock /tmp/anytimectl-bench.lock .venv/bin/python tests/bench/compression_codecs.py --threads 1
    flock /tmp/anytimectl-bench.lock .venv/bin/python tests/bench/compression_codecs.py            # default threads
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn
from torch.nn import functional


def _conv_bn(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(width, width), _conv_bn(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.125


def local_resnet9() -> nn.Module:
    """cifar10-fast's ResNet9: prep 64, layer 128 + residual, layer 256, layer 512 + residual, classifier x 0.125."""
    return nn.Sequential(_conv_bn(3, 64), _conv_bn(64, 128), nn.MaxPool2d(2), _Residual(128),
                         _conv_bn(128, 256), nn.MaxPool2d(2), _conv_bn(256, 512), nn.MaxPool2d(2), _Residual(512),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(512, 10, bias=False), _Scale())


def model_and_layout() -> tuple[nn.Module, list, str]:
    """The engine's ResNet9 and gradient layout if the engine imports cleanly, else the local one."""
    try:
        from anytimectl.backends.torch.engine import TorchEngine

        engine = TorchEngine("resnet9", (32, 32, 3), 10, "sgd", 0.1, 0.0)
        return engine.model, [s for s in engine.layout if s.trainable], "anytimectl torch engine"
    except Exception as error:  # noqa: BLE001 - any failure means: use the local definition
        model = local_resnet9()
        layout, offset = [], 0
        for p in model.parameters():
            layout.append((offset, p.numel()))
            offset += p.numel()
        return model, layout, f"local ResNet9 (engine unavailable: {type(error).__name__}: {error})"


def resnet9_gradient(batch_size: int, backward_repeats: int) -> tuple[list, str, torch.Tensor, float, float]:
    """(layout, where the model came from, one flat gradient, median backward wall and CPU seconds): the summed
    cross-entropy of a random batch through a freshly initialised ResNet9, its backward timed alone; printed."""
    model, layout, source = model_and_layout()
    parameters = [p for p in model.parameters() if p.requires_grad]
    model.train()
    x = torch.randn(batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (batch_size,))
    backward, backward_cpu, grad = [], [], None
    for _ in range(max(1, backward_repeats)):
        for p in parameters:
            if p.grad is not None:
                p.grad.zero_()  # in place: the engine's gradients are views of its flat buffer
        loss = functional.cross_entropy(model(x), y, reduction="sum")
        start, start_cpu = time.perf_counter(), time.process_time()
        loss.backward()
        backward.append(time.perf_counter() - start)
        backward_cpu.append(time.process_time() - start_cpu)
        if grad is None:
            grad = torch.cat([p.grad.reshape(-1) for p in parameters]).clone()
    backward_s, backward_cpu_s = statistics.median(backward), statistics.median(backward_cpu)
    print(f"model: {source}; {grad.numel():,} floats in {len(layout)} tensors; torch threads "
          f"{torch.get_num_threads()}; backward at batch {batch_size}: {backward_s:.2f} s wall, "
          f"{backward_cpu_s:.2f} s CPU (medians of {len(backward)}: {', '.join(f'{t:.2f}' for t in backward)} s); "
          f"load average {os.getloadavg()[0]:.1f}")
    return layout, source, grad, backward_s, backward_cpu_s


def selection_against_whole_tensor(grad: torch.Tensor, layout: list, ratio: float, repeats: int) -> None:
    """Top-k's selection as the codec makes it against the whole-tensor selection, per mode (layerwise: every
    tensor of the layout in turn), medians of `repeats`; the same indices or an AssertionError."""
    from anytimectl.backends.torch.compression import compressors, segments

    count = compressors.make_compressor("topk", ratio=ratio).count
    offsets, sizes = segments(layout, grad.numel())
    print(f"top-k's selection at K = {ratio}: sampled candidates (the codec's) against the whole tensor")
    print(f"{'mode':<10}{'whole ms':>10}{'sampled ms':>12}{'speed-up':>10}")
    for mode, parts in (("layerwise", list(zip(offsets.tolist(), sizes.tolist(), strict=True))),
                        ("entire", [(0, grad.numel())])):
        tensors = [(grad[o:o + n], count(n)) for o, n in parts]
        times = {}
        for name, select in (("whole", compressors._top_indices_whole), ("sampled", compressors._top_indices)):
            chosen, elapsed = None, []
            for _ in range(max(1, repeats)):
                start = time.perf_counter()
                chosen = [select(t, k) if k < t.numel() else None for t, k in tensors]
                elapsed.append(time.perf_counter() - start)
            times[name] = (statistics.median(elapsed), chosen)
        for a, b in zip(times["whole"][1], times["sampled"][1], strict=True):
            assert (a is None and b is None) or torch.equal(a, b), "the two selections chose different indices"
        whole, sampled = times["whole"][0], times["sampled"][0]
        print(f"{mode:<10}{whole * 1e3:>10.1f}{sampled * 1e3:>12.1f}{whole / sampled:>9.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--levels", type=int, default=255)
    parser.add_argument("--value-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--repeats", type=int, default=5, help="encode/decode repetitions (median)")
    parser.add_argument("--backward-repeats", type=int, default=3)
    parser.add_argument("--world", type=int, default=1, help="payloads averaged per decode")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from anytimectl.backends.torch.compression.bench import bench_codecs

    layout, source, grad, backward_s, backward_cpu_s = resnet9_gradient(args.batch_size, args.backward_repeats)

    rows = bench_codecs(grad, layout, ratio=args.ratio, levels=args.levels, value_dtype=args.value_dtype,
                        repeats=args.repeats, world=args.world)
    print(f"{'method':<19}{'mode':<10}{'bytes':>11}{'bound':>11}{'/bound':>8}{'ratio':>8}{'rel.err':>8}"
          f"{'enc ms':>8}{'dec ms':>8}{'/bwd':>7}{'cpu/bwd':>8}")
    worst_bound = worst_time = worst_cpu = 0.0
    for row in rows:
        share = (row["encode_s"] + row["decode_s"]) / backward_s
        cpu_share = (row["encode_cpu_s"] + row["decode_cpu_s"]) / backward_cpu_s
        row.update(codec_over_backward=share, codec_cpu_over_backward_cpu=cpu_share, backward_s=backward_s,
                   backward_cpu_s=backward_cpu_s)
        over = row["bytes_over_bound"]
        worst_bound = max(worst_bound, over or 0.0)
        worst_time, worst_cpu = max(worst_time, share), max(worst_cpu, cpu_share)
        print(f"{row['method']:<19}{row['mode']:<10}{row['bytes']:>11,}{row['bound_bytes']:>11,.0f}"
              f"{(over or float('nan')):>8.4f}{row['compression_ratio']:>8.1f}{row['relative_error']:>8.3f}"
              f"{row['encode_s'] * 1e3:>8.1f}{row['decode_s'] * 1e3:>8.1f}{share:>7.1%}{cpu_share:>8.1%}")
    print(f"worst bytes/bound {worst_bound:.4f} (target <= 1.1): {'PASS' if worst_bound <= 1.1 else 'FAIL'}; "
          f"worst (encode + decode)/backward {worst_time:.1%} wall, {worst_cpu:.1%} CPU (target <= 10%): "
          f"{'PASS' if worst_time <= 0.10 else 'FAIL'}; load average now {os.getloadavg()[0]:.1f}")
    selection_against_whole_tensor(grad, layout, args.ratio, args.repeats)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"source": source, "threads": torch.get_num_threads(), "backward_s": backward_s,
                       "rows": rows}, stream, indent=1)


if __name__ == "__main__":
    main()
