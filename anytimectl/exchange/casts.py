"""`fp16` and `bf16`: the gradient cast to a 16-bit float and summed by one all-reduce IN THAT TYPE, as PyTorch
DDP's `fp16_compress_hook` and `bf16_compress_hook` do.

Per rank and step, exactly the hooks' arithmetic: c = cast(g) / W, divided in the cast type (W ranks; dividing
first keeps the sum inside fp16's range as the hooks intend), then one all-reduce whose every addition is rounded
to the cast type, then the result back to float32. The exchange hands the engine a SUM (the contract), so it
multiplies that float32 average by W: exact when W is a power of two, one float32 rounding otherwise. With 2
ranks the sum of two values is correctly rounded whatever the reduction order, so parameters match the hooks' bit
for bit (tests/torch/test_cast_exchange.py checks it against a real DDP run); with more ranks, the rounding of the
partial sums depends on the order the all-reduce adds them (as with gloo or NCCL), identical on every rank.

An addition in the cast type is done as float32 addition rounded once to the type: for fp16 (11-bit significand)
and bf16 (8) against float32's 24, 24 >= 2p + 2, so the double rounding is exact and the result is the correctly
rounded 16-bit sum. The remainder (batch-norm statistics x n, n, the loss) stays float32 in a second all-reduce, so
the example count and the loss stay exact. Wire bytes: 2 per trainable parameter plus 4 per remainder float.

fp16 saturates to inf beyond 65504: the engine's contribution is a gradient SUM over the batch, larger than the
mean DDP casts by the batch size, so large batches of large gradients can overflow fp16 where the hook would not;
bf16 has float32's range.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from anytimectl.comm.half_floats import from_words, to_words
from anytimectl.exchange import Exchange, Marks, NoMarks, flat_contribution


def divide_words(words: np.ndarray, divisor: int, kind: str) -> np.ndarray:
    """words / divisor in the 16-bit type, as the hooks' `div_(world_size)` on the cast tensor."""
    return to_words(from_words(words, kind) / np.float32(divisor), kind)


class CastExchange(Exchange):
    """The trainable gradient as 16-bit floats summed in that type by all-reduce; the remainder in float32."""

    linear = True
    kind: str = "float16"

    def __init__(self, spec: Any, options: Any, comm: Any) -> None:
        super().__init__(spec, options, comm)
        self.kind = {"fp16": "float16", "bf16": "bfloat16"}[options.compressor]

    def exchange(self, contribution: np.ndarray, step: int, marks: Marks | None = None) -> np.ndarray:
        marks = marks or NoMarks()
        flat = flat_contribution(contribution, self.spec)
        trainable, world = self.spec.trainable, self.world
        start = time.perf_counter()
        words = divide_words(to_words(flat[:trainable], self.kind), world, self.kind)
        encode = time.perf_counter() - start
        marks.encoded()
        rest = np.ascontiguousarray(flat[trainable:])
        if self.comm is not None:
            self.comm.allreduce_sum16(words, self.kind)
            ready = self.comm.ready_at
            self.comm.allreduce_sum(rest)
            marks.sent(ready)
        else:
            marks.sent(None)
        marks.received()
        start = time.perf_counter()
        reduced = np.empty(self.spec.length, dtype=np.float32)
        reduced[:trainable] = from_words(words, self.kind)
        reduced[:trainable] *= np.float32(world)
        reduced[trainable:] = rest
        decode = time.perf_counter() - start
        s = self.stats
        s.payload_bytes, s.bound_bytes, s.values_sent = 2 * trainable, 2.0 * trainable, trainable
        s.encode_time, s.decode_time = encode, decode
        s.payload_total = 2 * trainable * world
        s.sent_bytes = s.received_bytes = (words.nbytes + rest.nbytes) if self.comm is not None else 0
        return reduced

    def describe(self) -> dict[str, Any]:
        return {"compressor": self.options.compressor, "mode": "dense", "error_feedback": False,
                "pattern": "all-reduce", "sum": f"{self.kind}, each addition rounded to it, after dividing by the "
                "world size in it (torch's compress hooks); times the world size in float32 after"}
