"""Encodings: a list of messages (one per tensor of the layout) as bytes and back, bit for bit.

The decoder knows the layout (every tensor's size n_t) and the method's parameters, because every rank builds
the same codec; only what it cannot know travels. Payload bodies, with v = 32 or 16 value bits, T tensors,
k_t values sent for tensor t, b_t = ceil(log2 n_t) (0 for n_t = 1):

- Dense (none): n v/8 bytes; bound n v bits.
- Sparse with k following from n (topk): sum_t ceil(k_t b_t / 8) + K v/8 bytes, K = sum_t k_t;
  bound sum_t k_t (b_t + v) bits.
- Sparse with k in the payload (threshold, adaptive-threshold): the same plus ceil(T c / 8) bytes of counts,
  c = ceil(log2(max_t n_t + 1)) bits each; bound sum_t k_t (b_t + v) bits.
- SharedIndex (randomk): K v/8 bytes (indices regenerated from the shared seed); bound K v bits.
- Levels (terngrad, qsgd): 4 T bytes of float32 scales + the symbol bytes of n symbols of q = 2L + 1 letters;
  bound n log2 q + 32 T bits.

Symbol bytes (`packing.SymbolCode`): ternary (q = 3) goes 5 symbols to a byte, ceil(n/5), 1.6 bits against the
bound's log2 3 = 1.585 (ratio 1.0095); otherwise the cheaper of ceil(n ceil(log2 q) / 8) (bit-packed; q = 511,
s = 255: 9 bits against 8.997) and base-q groups. Indices are bit-packed at b_t bits, the fewest that can name
every element of tensor t (uint8/uint16/int32 would cost up to 1.45x more at ResNet9's 2.36M-element layer).
The bound charges nothing for the header and the counts; `Codec.nbytes` adds them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from .messages import Dense, Levels, Message, Sparse
from .packing import SymbolCode, bits_for, ideal_bits, level_dtype, pack_bits, packed_nbytes, unpack_bits


def _check_size(body: np.ndarray, expected: int, what: str) -> None:
    if body.size != expected:
        raise ValueError(f"{what} payload body has {body.size} bytes, expected {expected}: "
                         "was it encoded by a codec with another method, layout or options?")


def _split(array: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    return np.split(array, np.cumsum(counts)[:-1]) if len(counts) else []


class Encoding(ABC):
    """Packs one method's messages for the tensors of sizes `sizes` (one message per tensor)."""

    @abstractmethod
    def pack(self, messages: Sequence[Message], sizes: np.ndarray) -> list[np.ndarray]:
        """The body as a list of uint8 chunks (the codec joins them after the header)."""

    @abstractmethod
    def unpack(self, body: np.ndarray, sizes: np.ndarray, step: int, seed: int) -> list[Message]:
        """The messages that `pack` turned into `body`."""

    @abstractmethod
    def nbytes(self, sizes: np.ndarray, counts: Sequence[int]) -> int:
        """Body bytes when tensor t sends counts[t] values (or symbols), by the formula in the table above."""

    @abstractmethod
    def bound_bits(self, sizes: np.ndarray, counts: Sequence[int]) -> float:
        """What an ideal fixed-length packing of the same message costs, in bits."""


class DenseEncoding(Encoding):
    def __init__(self, value_dtype: np.dtype) -> None:
        self.value_dtype = np.dtype(value_dtype)

    def pack(self, messages: Sequence[Message], sizes: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(m.values, dtype=self.value_dtype).view(np.uint8) for m in messages]

    def unpack(self, body: np.ndarray, sizes: np.ndarray, step: int, seed: int) -> list[Message]:
        _check_size(body, self.nbytes(sizes, sizes), "dense")
        return [Dense(v) for v in _split(body.view(self.value_dtype), sizes)]

    def nbytes(self, sizes: np.ndarray, counts: Sequence[int]) -> int:
        return int(np.sum(sizes)) * self.value_dtype.itemsize

    def bound_bits(self, sizes: np.ndarray, counts: Sequence[int]) -> float:
        return float(np.sum(sizes)) * 8 * self.value_dtype.itemsize


class SparseEncoding(Encoding):
    """(indices, values): every tensor's indices bit-packed at b_t bits (each tensor's run starts on a byte),
    then all values in the value dtype. `fixed_count(n)` gives k when it follows from the size (top-k); None
    means the counts travel, bit-packed at c bits each, at the front of the body."""

    def __init__(self, value_dtype: np.dtype, fixed_count: Callable[[int], int] | None) -> None:
        self.value_dtype = np.dtype(value_dtype)
        self.fixed_count = fixed_count

    @staticmethod
    def count_bits(sizes: np.ndarray) -> int:
        return bits_for(int(np.max(sizes)) + 1) if len(sizes) else 0

    def _counts_nbytes(self, sizes: np.ndarray) -> int:
        return 0 if self.fixed_count else packed_nbytes(len(sizes), self.count_bits(sizes))

    def pack(self, messages: Sequence[Message], sizes: np.ndarray) -> list[np.ndarray]:
        chunks = []
        if self.fixed_count is None:
            chunks.append(pack_bits(np.array([m.count for m in messages], dtype=np.int64), self.count_bits(sizes)))
        chunks += [pack_bits(m.indices, bits_for(n)) for m, n in zip(messages, sizes, strict=True)]
        values = [np.ascontiguousarray(m.values, dtype=self.value_dtype) for m in messages]
        chunks.append(np.concatenate(values).view(np.uint8) if values else np.zeros(0, np.uint8))
        return chunks

    def _counts(self, body: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        if self.fixed_count is not None:
            return np.array([self.fixed_count(int(n)) for n in sizes], dtype=np.int64)
        if body.size < self._counts_nbytes(sizes):
            raise ValueError(f"sparse payload body of {body.size} bytes is too short for its {len(sizes)} counts")
        counts = unpack_bits(body, self.count_bits(sizes), len(sizes)).astype(np.int64)
        if np.any(counts > sizes):
            raise ValueError("sparse payload claims more values than its tensors have: corrupt or foreign payload")
        return counts

    def unpack(self, body: np.ndarray, sizes: np.ndarray, step: int, seed: int) -> list[Message]:
        counts = self._counts(body, sizes)
        _check_size(body, self.nbytes(sizes, counts), "sparse")
        position = self._counts_nbytes(sizes)
        indices = []
        for n, k in zip(sizes, counts, strict=True):
            bits = bits_for(n)
            length = packed_nbytes(k, bits)
            found = unpack_bits(body[position: position + length], bits, k).astype(np.int64)
            if found.size and found.max() >= n:
                raise ValueError("sparse payload names an index beyond its tensor: corrupt or foreign payload")
            indices.append(found)
            position += length
        values = _split(body[position:].view(self.value_dtype), counts)
        return [Sparse(i, v) for i, v in zip(indices, values, strict=True)]

    def nbytes(self, sizes: np.ndarray, counts: Sequence[int]) -> int:
        index_bytes = sum(packed_nbytes(k, bits_for(n)) for n, k in zip(sizes, counts, strict=True))
        return self._counts_nbytes(sizes) + index_bytes + int(np.sum(counts)) * self.value_dtype.itemsize

    def bound_bits(self, sizes: np.ndarray, counts: Sequence[int]) -> float:
        value_bits = 8 * self.value_dtype.itemsize
        return float(sum(int(k) * (bits_for(n) + value_bits) for n, k in zip(sizes, counts, strict=True)))


class SharedIndexEncoding(Encoding):
    """Values only (random-k): the receiver regenerates every tensor's indices with `indices(n, k, seed, step,
    t)`, the function the sender drew them with. The last step's index sets are kept, so decoding W payloads
    of one step draws them once."""

    def __init__(self, value_dtype: np.dtype, count: Callable[[int], int],
                 indices: Callable[[int, int, int, int, int], np.ndarray]) -> None:
        self.value_dtype = np.dtype(value_dtype)
        self.count = count
        self.indices = indices
        self._cached: tuple[tuple[int, int, bytes], list[np.ndarray]] | None = None

    def pack(self, messages: Sequence[Message], sizes: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(m.values, dtype=self.value_dtype).view(np.uint8) for m in messages]

    def _index_sets(self, sizes: np.ndarray, step: int, seed: int) -> list[np.ndarray]:
        key = (int(step), int(seed), np.asarray(sizes, dtype=np.int64).tobytes())
        if self._cached is None or self._cached[0] != key:
            sets = [self.indices(int(n), self.count(int(n)), seed, step, t) for t, n in enumerate(sizes)]
            self._cached = (key, sets)
        return self._cached[1]

    def unpack(self, body: np.ndarray, sizes: np.ndarray, step: int, seed: int) -> list[Message]:
        counts = [self.count(int(n)) for n in sizes]
        _check_size(body, self.nbytes(sizes, counts), "random-k")
        values = _split(body.view(self.value_dtype), counts)
        return [Sparse(i, v) for i, v in zip(self._index_sets(sizes, step, seed), values, strict=True)]

    def nbytes(self, sizes: np.ndarray, counts: Sequence[int]) -> int:
        return int(np.sum(counts)) * self.value_dtype.itemsize

    def bound_bits(self, sizes: np.ndarray, counts: Sequence[int]) -> float:
        return float(np.sum(counts)) * 8 * self.value_dtype.itemsize


class LevelEncoding(Encoding):
    """One float32 scale per tensor, then every tensor's symbols (level + L, in 0..2L) in one stream."""

    def __init__(self, levels: int) -> None:
        self.levels = int(levels)
        self.code = SymbolCode(2 * self.levels + 1)

    def pack(self, messages: Sequence[Message], sizes: np.ndarray) -> list[np.ndarray]:
        scales = np.array([m.scale for m in messages], dtype="<f4")
        if not messages:
            return [scales.view(np.uint8)]
        signed = level_dtype(self.levels)
        symbols = np.concatenate([np.asarray(m.symbols, dtype=signed) for m in messages])
        shifted = symbols.view(self.code.dtype)  # two's complement: level + L wraps into 0..2L
        shifted += self.code.dtype.type(self.levels)
        return [scales.view(np.uint8), self.code.pack(shifted)]

    def unpack(self, body: np.ndarray, sizes: np.ndarray, step: int, seed: int) -> list[Message]:
        _check_size(body, self.nbytes(sizes, sizes), "quantised")
        tensors = len(sizes)
        scales = body[: 4 * tensors].view("<f4")
        symbols = self.code.unpack(body[4 * tensors:], int(np.sum(sizes)))
        symbols -= self.code.dtype.type(self.levels)  # wraps back to the level's two's complement
        levels = symbols.view(level_dtype(self.levels))
        return [Levels(np.float32(s), v, self.levels) for s, v in zip(scales, _split(levels, sizes), strict=True)]

    def nbytes(self, sizes: np.ndarray, counts: Sequence[int]) -> int:
        return 4 * len(sizes) + self.code.nbytes(int(np.sum(sizes)))

    def bound_bits(self, sizes: np.ndarray, counts: Sequence[int]) -> float:
        return float(np.sum(sizes)) * ideal_bits(self.code.q) + 32 * len(sizes)
