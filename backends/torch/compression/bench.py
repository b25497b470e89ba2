"""The per-method study behind `anytimectl compress bench`: for one flat gradient and its layout, every method
in every mode, what it puts on the wire, how close that is to the method's packing bound, how much it distorts
the gradient, and what encoding and decoding cost.

Rows are plain dicts (one per method and mode), ready for a table, a CSV or JSON:
method, mode, value_dtype, ratio, threshold, levels (None where a method has no such option), elements,
tensors, sent (values or symbols that travel), bytes (payload, header included), bound_bytes (packing bound / 8),
bytes_over_bound, dense_bytes (float32), compression_ratio (dense_bytes / bytes), relative_error
(||C(g) - g|| / ||g||, one step, no error feedback), encode_s and decode_s (wall-clock medians of `repeats`;
decoding averages `world` copies of the payload, as a rank does after the all-gather), encode_cpu_s and
decode_cpu_s (the same in this process's CPU time, which other processes on the cores do not inflate).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .codec import MODES, make_codec
from .compressors import DEFAULTS, canonical_method, compressor_class, method_names


def threshold_for_ratio(grad: np.ndarray | torch.Tensor, ratio: float) -> float:
    """The V at which `threshold` keeps about ratio * n elements of `grad`: the ceil(ratio n)-th largest |g|
    (so that the threshold method is compared with top-k at the same K)."""
    magnitude = torch.as_tensor(grad, dtype=torch.float32).reshape(-1).abs()
    k = max(1, min(magnitude.numel(), math.ceil(ratio * magnitude.numel())))
    return float(torch.kthvalue(magnitude, magnitude.numel() - k + 1).values)


def _median_seconds(action: Any, repeats: int) -> tuple[float, float, Any]:
    """(median wall seconds, median CPU seconds of this process, last result) of `repeats` calls. CPU time
    stays meaningful when other processes share the cores; wall time is what a step waits."""
    wall, cpu, result = [], [], None
    for _ in range(max(1, repeats)):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = action()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return float(np.median(wall)), float(np.median(cpu)), result


def bench_codecs(grad: np.ndarray | torch.Tensor, layout: Iterable[Any], *, methods: Sequence[str] | None = None,
                 modes: Sequence[str] = MODES, ratio: float = 0.01, threshold: float | None = None,
                 levels: int = DEFAULTS["levels"], value_dtype: str = "float32", rescale: bool = False,
                 repeats: int = 5, world: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (method, mode); see the module docstring. `threshold` None: `threshold_for_ratio(ratio)`."""
    flat = torch.as_tensor(grad, dtype=torch.float32).reshape(-1).contiguous()
    layout = list(layout)
    reference = flat.double()
    norm = float(torch.linalg.vector_norm(reference))
    if threshold is None:
        threshold = threshold_for_ratio(flat, ratio)
    options = {"ratio": ratio, "threshold": threshold, "levels": levels, "value_dtype": value_dtype,
               "rescale": rescale}
    rows = []
    for name in [canonical_method(m) for m in (methods or method_names())]:
        takes = compressor_class(name).parameters
        for mode in modes:
            codec = make_codec(name, layout, mode=mode, seed=seed, size=flat.numel(), **options)
            encode_s, encode_cpu_s, payload = _median_seconds(lambda codec=codec: codec.encode(flat, 0), repeats)
            payloads = [payload] * max(1, world)
            decode_s, decode_cpu_s, decoded = _median_seconds(lambda codec=codec, p=payloads: codec.decode_mean(p),
                                                              repeats)
            _, messages = codec.unpack(payload)
            counts = codec.counts(messages)
            bound = codec.bound_bits(counts) / 8
            error = torch.from_numpy(decoded).double() - reference
            rows.append({
                "method": name, "mode": codec.mode,
                "value_dtype": value_dtype if "value_dtype" in takes else "float32",
                "ratio": ratio if "ratio" in takes else None,
                "threshold": threshold if "threshold" in takes else None,
                "levels": levels if "levels" in takes else None,
                "elements": codec.size, "tensors": len(codec.sizes), "sent": int(sum(counts)),
                "bytes": int(payload.size), "bound_bytes": bound,
                "bytes_over_bound": payload.size / bound if bound > 0 else None,
                "dense_bytes": codec.dense_nbytes, "compression_ratio": codec.dense_nbytes / payload.size,
                "relative_error": float(torch.linalg.vector_norm(error)) / norm if norm > 0 else 0.0,
                "encode_s": encode_s, "decode_s": decode_s, "encode_cpu_s": encode_cpu_s, "decode_cpu_s": decode_cpu_s,
            })
    return rows


def bench_exchanges(grad: np.ndarray | torch.Tensor, layout: Iterable[Any], methods: Sequence[str], *,
                    modes: Sequence[str] = MODES, repeats: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """The same rows for gradient exchanges that are not codecs (`anytimectl.exchange`: fp16, bf16, signsgd,
    ef-signsgd, ...), measured through the exchange contract in one process (world 1: the sum is this rank's own
    message), memory off. Bytes and bound are the exchange's own count (`ExchangeStats`); encode_s and decode_s
    its own timing of the two phases (wall medians); the CPU time is the whole call's (`codec_cpu_s`), as the
    phases are not split in CPU time. Exchanges without modes get one row (mode "dense")."""
    from anytimectl.exchange import ExchangeSpec, entry, make_exchange
    from anytimectl.exchange.options import ExchangeOptions

    from .codec import segments

    flat = torch.as_tensor(grad, dtype=torch.float32).reshape(-1).contiguous().numpy()
    layout = list(layout)
    offsets, sizes = segments(layout, flat.size)
    shapes = {int(e.offset): tuple(int(d) for d in e.shape) for e in layout
              if getattr(e, "trainable", True) is not False and getattr(e, "shape", None) is not None}
    spec = ExchangeSpec(layout=tuple(zip(offsets.tolist(), sizes.tolist(), strict=True)), trainable=flat.size,
                        length=flat.size + 2, seed=seed,  # shapes: PowerSGD's matrices (every tensor, or none)
                        shapes=tuple(shapes[o] for o in offsets.tolist()) if len(shapes) == len(offsets) else ())
    reference = flat.astype(np.float64)
    norm = float(np.linalg.norm(reference))
    contribution = np.concatenate([flat, [1.0, 0.0]]).astype(np.float32)
    rows = []
    for name in methods:
        chosen = entry(name)
        for mode in ([m for m in modes if m in chosen.modes] if chosen.modes else ("dense",)):
            options = ExchangeOptions(compressor=chosen.name, mode=mode if chosen.modes else "layerwise",
                                      error_feedback=False if chosen.error_feedback is False else None)
            exchange = make_exchange(options, spec, None)
            encode, decode, cpu, result = [], [], [], None
            for _ in range(max(1, repeats)):
                exchange.load(None)  # memory off: every repeat sees the plain gradient
                start_cpu = time.process_time()
                result = exchange.exchange(contribution.copy(), 1)
                cpu.append(time.process_time() - start_cpu)
                encode.append(exchange.stats.encode_time)
                decode.append(exchange.stats.decode_time)
            stats = exchange.stats
            error = result[:flat.size].astype(np.float64) - reference
            described = exchange.describe()
            rows.append({
                "method": chosen.name, "mode": described.get("mode", mode),
                "value_dtype": {"fp16": "float16", "bf16": "bfloat16"}.get(chosen.name),
                "ratio": None, "threshold": None, "levels": None,
                "elements": int(flat.size), "tensors": int(described.get("tensors", len(sizes))),
                "sent": int(stats.values_sent), "bytes": int(stats.payload_bytes), "bound_bytes": stats.bound_bytes,
                "bytes_over_bound": stats.payload_bytes / stats.bound_bytes if stats.bound_bytes > 0 else None,
                "dense_bytes": 4 * int(flat.size), "compression_ratio": 4 * flat.size / stats.payload_bytes,
                "relative_error": float(np.linalg.norm(error)) / norm if norm > 0 else 0.0,
                "encode_s": float(np.median(encode)), "decode_s": float(np.median(decode)),
                "encode_cpu_s": None, "decode_cpu_s": None, "codec_cpu_s": float(np.median(cpu)),
            })
    return rows
