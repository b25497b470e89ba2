"""What a compressor means to send for one tensor: the contract between compressors and encodings.

Three shapes cover every method. A message holds exactly the numbers that travel (values already in the value
dtype, so the encoding moves them bit for bit), plus, for random-k, indices that do not travel but that every
rank can regenerate. `to_dense` is the one decompression: the sender uses it for the error-feedback residual and
the receiver for the update, so both see the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Dense:
    """Every element (method none): `values` in the value dtype."""

    values: np.ndarray

    @property
    def count(self) -> int:
        return int(self.values.size)

    def add_to(self, out: np.ndarray) -> None:
        out += self.values


@dataclass(frozen=True, eq=False)
class Sparse:
    """Some elements: ascending `indices` into the tensor (int64) and their `values` in the value dtype
    (top-k, threshold, adaptive threshold; random-k, whose indices every rank regenerates)."""

    indices: np.ndarray
    values: np.ndarray

    @property
    def count(self) -> int:
        return int(self.values.size)

    def add_to(self, out: np.ndarray) -> None:
        out[self.indices] += self.values  # indices are unique, so fancy-index += adds each once


@dataclass(frozen=True, eq=False)
class Levels:
    """Every element as a signed level in -levels..levels of one per-tensor `scale` (float32):
    element = symbol * (scale / levels). TernGrad: levels 1, scale max|g|. QSGD: levels s, scale ||g||_2."""

    scale: np.float32
    symbols: np.ndarray
    levels: int

    @property
    def count(self) -> int:
        return int(self.symbols.size)

    @property
    def unit(self) -> np.float32:
        """The value of one level, computed once in float32 so that every rank decodes identically."""
        return np.float32(np.float32(self.scale) / np.float32(self.levels))

    def add_to(self, out: np.ndarray) -> None:
        out += self.symbols.astype(np.float32) * self.unit


Message = Dense | Sparse | Levels


def to_dense(message: Message, size: int) -> np.ndarray:
    """The float32 tensor of `size` elements that `message` stands for."""
    out = np.zeros(size, dtype=np.float32)
    message.add_to(out)
    return out
