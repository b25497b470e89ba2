"""Sign compression with real bit packing: `signsgd` (majority vote, Bernstein et al. 2018/2019) and `ef-signsgd`
(scaled sign with error feedback, Karimireddy et al. 2019). Numpy only, so any backend can use them.

Each rank sends, per tensor t of the mode (every tensor of the layout in `layerwise`, the whole gradient in
`entire`), one float32 scale s_t = ||p_t||_1 / n_t and one bit per element: 1 for p >= 0, 0 for p < 0 (one bit
cannot carry three states, so sign(0) is taken as +1). p is the gradient part of the contribution, plus the
residual under error feedback. Payload: 4 T bytes of scales, then ceil(n / 8) bytes of bits (numpy's packbits,
little bit order) for n elements in all; packing bound n + 32 T bits (the payload is within the last byte of it).

- `ef-signsgd`: rank w stands for s_w sign(p_w) (per tensor); the exchange sums those over ranks in rank order.
  Error feedback is always on: e <- p - s sign(p), so what was not sent is added to the next gradient.
- `signsgd`: the majority vote. Element i of the result is sign(sum_w sign_w,i) (a tie gives 0) times sum_w s_w,t:
  the direction is the vote of the ranks, and its magnitude is the ranks' l1 scales summed, so that, divided by
  the examples as the engine does, the step is on the scale of the mean gradient and the learning rates of the
  other methods carry over (the original applies lr x sign with a rate tuned for it). Without error feedback by
  default; `--error-feedback` keeps e <- p - s sign(p) of this rank's own message.

The vote is not linear (a sum of votes is not the vote of the sum), so both all-gather their payloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from anytimectl.comm.transport import Transport
from anytimectl.exchange import ExchangeSpec, GatherExchange


def segments_of(spec: ExchangeSpec, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, sizes) of the tensors the scales are taken over."""
    if mode == "entire":
        return np.zeros(1, np.int64), np.array([spec.trainable], np.int64)
    return (np.array([o for o, _ in spec.layout], np.int64), np.array([n for _, n in spec.layout], np.int64))


def pack_signs(values: np.ndarray, offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The payload (uint8): float32 l1 scales per tensor, then one bit per element (1: >= 0)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    sums = np.add.reduceat(np.abs(values).astype(np.float64), offsets) if values.size else np.zeros(len(sizes))
    scales = (sums / sizes).astype("<f4")
    bits = np.packbits(values >= 0, bitorder="little")
    return np.concatenate([scales.view(np.uint8), bits])


def unpack_signs(payload: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scales float32 per tensor, signs int8 of +-1 per element) of a payload."""
    payload = np.ascontiguousarray(payload, dtype=np.uint8).reshape(-1)
    tensors, elements = len(sizes), int(np.sum(sizes))
    expected = 4 * tensors + -(-elements // 8)
    if payload.size != expected:
        raise ValueError(f"sign payload of {payload.size} bytes, expected {expected}: was it encoded by an exchange "
                         "with another layout or mode?")
    scales = payload[:4 * tensors].view("<f4").astype(np.float32)
    signs = np.unpackbits(payload[4 * tensors:], count=elements, bitorder="little").astype(np.int8)
    return scales, signs * np.int8(2) - np.int8(1)


def scaled(scales: np.ndarray, signs: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """sign x scale per element (float32): what one payload stands for."""
    return np.repeat(scales, sizes) * signs.astype(np.float32)


class SignExchange(GatherExchange):
    """Both sign methods: one class, the vote switched by `vote`."""

    vote: ClassVar[bool] = False

    def __init__(self, spec: ExchangeSpec, options: Any, comm: Transport | None) -> None:
        super().__init__(spec, options, comm)
        self.mode = options.mode if options.mode in ("layerwise", "entire") else "layerwise"
        self.offsets, self.sizes = segments_of(spec, self.mode)
        self.error_feedback = bool(options.uses_error_feedback)
        self.residual = np.zeros(spec.trainable, np.float32) if self.error_feedback else None

    def encode(self, gradient: np.ndarray, step: int) -> tuple[np.ndarray, int, float]:
        p = gradient + self.residual if self.residual is not None else gradient
        payload = pack_signs(p, self.offsets, self.sizes)
        if self.residual is not None:
            scales, signs = unpack_signs(payload, self.sizes)
            np.subtract(p, scaled(scales, signs, self.sizes), out=self.residual)
        return payload, int(self.spec.trainable), float(self.spec.trainable + 32 * len(self.sizes))

    def decode_sum(self, payloads: Sequence[np.ndarray], step: int) -> np.ndarray:
        if not self.vote:
            out = np.zeros(self.spec.trainable, np.float32)
            for payload in payloads:  # rank order: the same sum on every rank
                scales, signs = unpack_signs(payload, self.sizes)
                out += scaled(scales, signs, self.sizes)
            return out
        votes = np.zeros(self.spec.trainable, np.int32)
        magnitude = np.zeros(len(self.sizes), np.float32)
        for payload in payloads:
            scales, signs = unpack_signs(payload, self.sizes)
            votes += signs
            magnitude += scales
        return np.repeat(magnitude, self.sizes) * np.sign(votes).astype(np.float32)

    def state(self) -> dict[str, Any] | None:
        return None if self.residual is None else {"residual": self.residual.copy()}

    def load(self, state: dict[str, Any] | None) -> None:
        if self.residual is None:
            return
        residual = None if state is None else state.get("residual")
        if residual is None:
            self.residual[:] = 0.0
            return
        residual = np.asarray(residual, np.float32).reshape(-1)
        if residual.size != self.residual.size:
            raise ValueError(f"residual of {residual.size} elements for a gradient of {self.residual.size}")
        self.residual[:] = residual

    def describe(self) -> dict[str, Any]:
        return {"compressor": self.options.compressor, "mode": self.mode, "error_feedback": self.error_feedback,
                "tensors": len(self.sizes), "pattern": "all-gather",
                "aggregate": "majority vote x summed l1 scales" if self.vote else "sum of scaled signs"}


class MajorityVote(SignExchange):
    vote = True


class ScaledSign(SignExchange):
    vote = False
