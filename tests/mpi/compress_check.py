"""Run under `mpiexec -n 2 python -m mpi4py tests/mpi/compress_check.py` by tests/test_compress_mpi.py.

The real CompressedProtocol (its set-up, its steps, its all-gather of payloads) on 2 real ranks, for every method in
both modes (and float16 values, error feedback, random-k's rescale), a few steps each. Evidence is collected with
explicit collectives the protocol never uses (mpi4py's allgather of Python objects), and with spies on the engine
(what each rank computed) and the codec (what each rank meant to send). Checked per rank per step:

- bytes: the row's payload_bytes equals the encoding's formula recomputed here from the README's table (not by
  calling the library), and the comm counters moved by exactly this rank's payload + remainder (sent) and the other
  rank's (received);
- the update: the new parameters equal the old minus lr x (sum over ranks of what each rank meant to send,
  decompressed) / (total examples) (plain SGD, no weight decay), and the batch-norm statistics equal the
  example-weighted mean of the ranks'; both ranks hold bit-identical parameters;
- error feedback: the residual is exactly (gradient + previous residual) - what was sent;
- the counts threshold and adaptive-threshold send are the elements they must keep.

Rank 0 prints one JSON report (one entry per case).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from anytimectl.cli.options import OptimizerOptions
from anytimectl.protocols.base import RunRequest
from anytimectl.protocols.compressed import CompressedProtocol
from anytimectl.runtime.launch import start_rank
from anytimectl.runtime.run_config import CompressedConfig
from anytimectl.runtime.shell import RunContext, Stopper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: run_configs
from run_configs import make_config  # noqa: E402

MODEL = str(Path(__file__).with_name("compress_tiny_model.py")) + ":build"
SEED, STEPS, BATCH, LR, RATIO = 3, 3, 16, 0.1, 0.05
rank_info = start_rank(1)
world = rank_info.comm.mpi
rank, size = rank_info.rank, rank_info.size
METHODS = ("topk", "randomk", "threshold", "adaptive-threshold", "terngrad", "qsgd")
CASES = [("none", "layerwise", "float32", False, False)]
CASES += [(m, mode, "float32", False, False) for m in METHODS for mode in ("layerwise", "entire")]
CASES += [("topk", "layerwise", "float16", True, False), ("randomk", "entire", "float32", True, True),
          ("qsgd", "layerwise", "float32", True, False)]


def bits(n: int) -> int:
    return max(0, int(n) - 1).bit_length()


def expected_payload(method: str, sizes: list[int], counts: list[int], value_bytes: int) -> int:
    """The README's packing table: 6-byte header + the body."""
    header = 6
    index_bytes = sum(math.ceil(k * bits(n) / 8) for n, k in zip(sizes, counts, strict=True))
    if method == "topk":
        return header + index_bytes + sum(counts) * value_bytes
    if method == "randomk":
        return header + sum(counts) * value_bytes
    if method in ("threshold", "adaptive-threshold"):
        count_bits = bits(max(sizes) + 1)
        return header + math.ceil(len(sizes) * count_bits / 8) + index_bytes + sum(counts) * value_bytes
    if method == "terngrad":
        return header + 4 * len(sizes) + math.ceil(sum(sizes) / 5)
    if method == "qsgd":  # s = 255: 511 symbols, 9 bits each
        return header + 4 * len(sizes) + math.ceil(9 * sum(sizes) / 8)
    raise ValueError(method)


def make(method: str, mode: str, dtype: str, feedback: bool, rescale: bool, threshold: float) -> CompressedProtocol:
    config = dataclasses.asdict(OptimizerOptions(optimizer="sgd", learning_rate=LR, weight_decay=0.0))
    config.update(dataset="digits", data_dir=None, model=MODEL, seed=SEED, test_size=40, steps=STEPS, epochs=None,
                  target_accuracy=None, batch_size=BATCH, compressor=method, mode=mode, ratio=RATIO,
                  threshold=threshold,
                  levels=255, value_dtype=dtype, rescale=rescale, error_feedback=feedback, momentum=0.0,
                  nesterov=False, augment="none", log_every=None, lr_schedule="piecewise", lr_peak_epoch=None,
                  lr_knots=None)
    config = make_config(CompressedConfig, **config)
    request = RunRequest(command="compress", method="compress", protocol="compressed", backend="torch",
                         dataset="digits", model=MODEL, config=config, launch=None, output=None, seed=SEED)
    protocol = CompressedProtocol(RunContext(request=request, rank=rank_info, stopper=Stopper(), delay=None, slow={}))
    protocol.setup()
    return protocol


def spy(protocol: CompressedProtocol) -> dict:
    """Record what the engine computed and what the codec meant to send, each step."""
    seen: dict = {}
    compute = protocol.engine.compute

    def computed(x, y, micro_batches, deadline):
        result = compute(x, y, micro_batches, deadline)
        seen["buffer"] = result[0].copy()
        return result

    protocol.engine.compute = computed
    codec = getattr(protocol.exchange, "codec", None)
    if codec is not None:
        pack = codec.pack

        def packed(messages, step):
            seen["sent"] = codec.decompress(messages)
            seen["counts"] = codec.counts(messages)
            return pack(messages, step)

        codec.pack = packed
    return seen


def threshold_for(protocol: CompressedProtocol) -> float:
    """A V that keeps some but not all of a real gradient's elements (its 90th percentile magnitude)."""
    x, y = protocol.stream.peek(BATCH)
    buffer, _, _ = protocol.engine.compute(x, y, 1, math.inf)
    return float(np.quantile(np.abs(buffer[:protocol.spec.trainable]), 0.9))


def check_case(method: str, mode: str, dtype: str, feedback: bool, rescale: bool, threshold: float) -> dict:
    protocol = make(method, mode, dtype, feedback, rescale, threshold)
    engine, comm, T = protocol.engine, protocol.comm, protocol.spec.trainable
    codec = getattr(protocol.exchange, "codec", None)
    P = engine.param_count
    layout = [s.size for s in engine.layout if s.trainable]
    sizes = layout if mode == "layerwise" else [T]
    value_bytes = 2 if dtype == "float16" else 4
    seen = spy(protocol)
    f = protocol.layout
    report = {"case": f"{method}/{mode}/{dtype}" + ("/ef" if feedback else "") + ("/rescale" if rescale else ""),
              "steps": STEPS, "payload_mismatches": 0, "counter_mismatches": 0, "count_mismatches": 0,
              "residual_mismatches": 0, "max_update_error": 0.0, "max_update": 0.0, "max_stats_error": 0.0,
              "identical_params": True, "payload_bytes": [], "bound_ratio": []}
    residual = np.zeros(T, np.float32)
    for step in range(1, STEPS + 1):
        before = engine.get_params()
        sent_before, received_before = comm.bytes.sent, comm.bytes.received
        protocol.clock.begin(step)
        protocol.step(step, LR)
        row = protocol.clock.row.copy()
        after = engine.get_params()
        buffer = seen["buffer"]
        gradient = buffer[:T]
        payload, extra = int(row[f["payload_bytes"]]), int(row[f["extra_bytes"]])
        report["payload_bytes"].append(payload)
        if codec is None:
            sent = gradient
            expected = 4 * T
        else:
            sent, counts = seen["sent"], seen["counts"]
            if method == "topk" or method == "randomk":
                k = Fraction(RATIO).limit_denominator(1 << 32)
                wanted = [-(-n * k.numerator // k.denominator) for n in sizes]
                report["count_mismatches"] += int(list(counts) != wanted)
            elif method in ("threshold", "adaptive-threshold") and not feedback:
                pieces = np.split(np.abs(gradient), np.cumsum(sizes)[:-1])
                wanted = [int((p >= (threshold if method == "threshold" else p.max() / 2)).sum()) if p.max() > 0
                          else 0 for p in pieces]
                report["count_mismatches"] += int(list(counts) != wanted)
            expected = expected_payload(method, sizes, list(counts), value_bytes)
            report["bound_ratio"].append(payload / row[f["bound_bytes"]])
            if feedback:
                compensated = gradient + residual
                residual = codec.memory.state()
                report["residual_mismatches"] += int(not np.array_equal(residual, compensated - sent))
        report["payload_mismatches"] += int(payload != expected)
        everyone = world.allgather((payload, extra, sent.astype(np.float64), buffer.astype(np.float64)))
        others = sum(p + e for i, (p, e, _, _) in enumerate(everyone) if i != rank)
        if codec is None:  # one all-reduce: hands over the buffer once and obtains the sum once
            report["counter_mismatches"] += int(comm.bytes.sent - sent_before != 4 * (P + 2)
                                                or comm.bytes.received - received_before != 4 * (P + 2))
        else:
            report["counter_mismatches"] += int(comm.bytes.sent - sent_before != payload + extra
                                                or comm.bytes.received - received_before != others)
        examples = sum(b[P] for _, _, _, b in everyone)
        update = -LR * sum(s for _, _, s, _ in everyone) / examples
        moved = after[:T].astype(np.float64) - before[:T]
        report["max_update_error"] = max(report["max_update_error"], float(np.max(np.abs(moved - update))))
        report["max_update"] = max(report["max_update"], float(np.max(np.abs(update))))
        stats = sum(b[T:P] for _, _, _, b in everyone) / examples
        report["max_stats_error"] = max(report["max_stats_error"], float(np.max(np.abs(after[T:P] - stats))))
        params = world.allgather(after)
        report["identical_params"] &= all(np.array_equal(params[0], p) for p in params)
    protocol.finish()
    return report


probe = make("none", "layerwise", "float32", False, False, 0.0)
threshold = world.bcast(threshold_for(probe), root=0)  # one V for both ranks, as every codec is built alike
reports = [check_case(*case, threshold) for case in CASES]
if rank == 0:
    print(json.dumps({"size": size, "threshold": threshold, "cases": reports}))
sys.stdout.flush()
