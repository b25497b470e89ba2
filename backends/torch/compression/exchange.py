"""The AAAI'20 study's codecs (topk, randomk, threshold, adaptive-threshold, terngrad, qsgd) as gradient exchanges
(`anytimectl.exchange`): this rank's gradient through the codec (memory, compressor, bit packing), the payloads
all-gathered, every rank's decoded and added in rank order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from anytimectl.exchange import Collectives, ExchangeSpec, GatherExchange

from .codec import Codec, make_codec


class CodecExchange(GatherExchange):
    """One codec per rank, built alike on every rank (`rank` only seeds its stochastic rounding)."""

    def __init__(self, spec: ExchangeSpec, options: Any, comm: Collectives | None) -> None:
        super().__init__(spec, options, comm)
        self.codec = self._codec(options.uses_error_feedback)

    def _codec(self, error_feedback: bool) -> Codec:
        o = self.options
        return make_codec(o.compressor, self.spec.layout, mode=o.mode, seed=self.spec.seed, rank=self.spec.rank,
                          error_feedback=error_feedback, ratio=o.ratio, threshold=o.threshold, levels=o.levels,
                          value_dtype=o.value_dtype, rescale=o.rescale)

    def encode(self, gradient: np.ndarray, step: int) -> tuple[np.ndarray, int, float]:
        codec = self.codec
        messages = codec.compress(gradient, step)
        counts = codec.counts(messages)
        return codec.pack(messages, step), int(sum(counts)), codec.bound_bits(counts)

    def decode_sum(self, payloads: Sequence[np.ndarray], step: int) -> np.ndarray:
        return self.codec.decode_sum(payloads)

    def warm_up(self) -> None:
        codec = self._codec(False)
        gradient = np.random.default_rng(self.spec.seed).standard_normal(self.spec.trainable).astype(np.float32)
        codec.decode_sum([codec.encode(gradient, 0)])

    def state(self) -> dict[str, Any] | None:
        residual = self.codec.memory.state()
        return None if residual is None else {"residual": residual}

    def load(self, state: dict[str, Any] | None) -> None:
        self.codec.memory.load(None if state is None else state.get("residual"))

    def describe(self) -> dict[str, Any]:
        return {**self.codec.describe(), "pattern": "all-gather"}
