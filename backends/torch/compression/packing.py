"""Vectorised bit packing: unsigned integers of a fixed width, and symbols of a q-letter alphabet.

Everything here is numpy over whole arrays; no Python loop runs per element. Two codes:

- `pack_bits(values, bits)`: each value in `bits` bits, little-endian bit order, no gap between values, so
  m values take exactly ceil(m * bits / 8) bytes. Eight values always fill exactly `bits` bytes, so the packer
  works on groups of eight (one uint64 word per 64 bits of the group) with eight vector operations, whatever
  the width (1..64). Widths 8, 16, 32 and 64 are plain little-endian views.
- `SymbolCode(q)`: symbols 0..q-1 either bit-packed at ceil(log2 q) bits, or grouped in base q (g symbols
  form one integer sum s_j q^j, stored in B little-endian bytes, q^g <= 256^B), whichever costs fewer bits per
  symbol. Ternary symbols go 5 to a byte (1.6 bits against log2 3 = 1.585); 511-letter QSGD symbols (s = 255)
  are bit-packed at 9 bits (log2 511 = 8.997).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np


def bits_for(count: int) -> int:
    """Bits that hold every value 0..count-1 (an index into `count` items): ceil(log2 count), 0 for count <= 1."""
    return max(0, int(count) - 1).bit_length()


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that `pack_bits` writes for `count` values of `bits` bits."""
    return (int(count) * int(bits) + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """`values` (non-negative integers below 2**bits) packed at `bits` bits each: uint8, `packed_nbytes` long.

    Layout: the low 8*(bits // 8) bits of every value as whole little-endian bytes (a plain view), then the
    remaining bits % 8 high bits of every value as one bit stream (little-endian bit order). Both parts together
    take exactly ceil(count * bits / 8) bytes, the same as one continuous bit stream, but only the high bits
    need shifting. Values must fit: the caller guarantees it (indices below the tensor size, symbols below q).
    """
    values = np.asarray(values).reshape(-1)
    bits = int(bits)
    if not 0 <= bits <= 64:
        raise ValueError(f"bit width {bits} is outside 0..64")
    if values.size == 0 or bits == 0:
        return np.zeros(0, dtype=np.uint8)
    whole, rest = divmod(bits, 8)
    parts = []
    if whole:
        low = values if not rest else values & ((1 << (8 * whole)) - 1)
        parts.append(_whole_bytes(low, whole))
    if rest:
        high = values >> (8 * whole) if whole else values
        parts.append(_pack_narrow(high, rest))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def unpack_bits(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The `count` values of `bits` bits that `pack_bits` wrote into `data` (uint8, at least `packed_nbytes`
    long), in the smallest unsigned dtype that holds them."""
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    count, bits = int(count), int(bits)
    nbytes = packed_nbytes(count, bits)
    if data.size < nbytes:
        raise ValueError(f"{data.size} bytes cannot hold {count} values of {bits} bits ({nbytes} bytes)")
    dtype = uint_dtype((1 << bits) - 1)
    if count == 0 or bits == 0:
        return np.zeros(count, dtype=dtype)
    whole, rest = divmod(bits, 8)
    out = _from_whole_bytes(data[: count * whole], whole, dtype) if whole else None
    if rest:
        high = _unpack_narrow(data[count * whole: nbytes], rest, count).astype(dtype, copy=False)
        if out is None:
            return high
        high <<= dtype.type(8 * whole)
        out |= high
    return out


def _whole_bytes(values: np.ndarray, width: int) -> np.ndarray:
    """Each value as `width` little-endian bytes (width 1..8)."""
    if width in (1, 2, 4, 8):
        return np.ascontiguousarray(values, dtype=f"<u{width}").view(np.uint8).reshape(-1)
    wide = uint_dtype((1 << (8 * width)) - 1)
    as_bytes = np.ascontiguousarray(values, dtype=wide).view(np.uint8).reshape(-1, wide.itemsize)
    return as_bytes[:, :width].reshape(-1).copy()


def _from_whole_bytes(data: np.ndarray, width: int, dtype: np.dtype) -> np.ndarray:
    if width in (1, 2, 4, 8):
        return data.view(f"<u{width}").astype(dtype)
    wide = uint_dtype((1 << (8 * width)) - 1)
    buffer = np.zeros((data.size // width, wide.itemsize), dtype=np.uint8)
    buffer[:, :width] = data.reshape(-1, width)
    return buffer.view(wide).reshape(-1).astype(dtype, copy=False)


def _pack_narrow(values: np.ndarray, bits: int) -> np.ndarray:
    """Values of 1..7 bits as one bit stream: eight values fill exactly `bits` bytes, built as one integer of
    8*bits bits per group of eight (eight vector shifts, whatever the count)."""
    count = values.size
    if bits == 1:
        return np.packbits(values.astype(bool), bitorder="little")
    work = uint_dtype((1 << (8 * bits)) - 1)
    groups = -(-count // 8)
    padded = np.zeros(groups * 8, dtype=work)
    padded[:count] = values
    columns = np.ascontiguousarray(padded.reshape(groups, 8).T)  # row j: values j, j+8, j+16, ...
    number = columns[0].copy()
    for j in range(1, 8):
        columns[j] <<= work.type(j * bits)
        number |= columns[j]
    packed = number.view(np.uint8).reshape(groups, work.itemsize)[:, :bits]
    return packed.reshape(-1)[: packed_nbytes(count, bits)].copy()


def _unpack_narrow(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    if bits == 1:
        return np.unpackbits(data, count=count, bitorder="little")
    work = uint_dtype((1 << (8 * bits)) - 1)
    groups = -(-count // 8)
    buffer = np.zeros((groups, work.itemsize), dtype=np.uint8)
    flat = np.zeros(groups * bits, dtype=np.uint8)
    flat[: data.size] = data
    buffer[:, :bits] = flat.reshape(groups, bits)
    number = buffer.view(work).reshape(groups)
    mask = work.type((1 << bits) - 1)
    out = np.empty((8, groups), dtype=np.uint8)
    for j in range(8):
        np.bitwise_and(number >> work.type(j * bits), mask, out=out[j], casting="unsafe")
    return out.T.reshape(-1)[:count]


@dataclass(frozen=True)
class SymbolCode:
    """The cheaper fixed-length code for symbols 0..q-1: bit-packing at ceil(log2 q) bits, or g symbols per B
    bytes in base q. `bits_per_symbol` is what one symbol costs on the wire (8B/g for the base-q groups)."""

    q: int

    def __post_init__(self) -> None:
        if self.q < 2:
            raise ValueError(f"an alphabet needs at least 2 symbols, not {self.q}")

    @cached_property
    def _choice(self) -> tuple[int, int]:
        """(g, B) of the best base-q grouping, or (0, 0) when plain bit-packing is at least as cheap."""
        bits = bits_for(self.q)
        best, choice = float(bits), (0, 0)
        group = 1
        while self.q ** group <= 1 << 64:
            nbytes = -(-(self.q ** group - 1).bit_length() // 8)
            if 8 * nbytes / group < best - 1e-12:
                best, choice = 8 * nbytes / group, (group, nbytes)
            group += 1
        return choice

    @property
    def group(self) -> int:
        """Symbols per base-q group; 0 when the code is plain bit-packing."""
        return self._choice[0]

    @property
    def bits_per_symbol(self) -> float:
        group, nbytes = self._choice
        return 8 * nbytes / group if group else float(bits_for(self.q))

    def nbytes(self, count: int) -> int:
        """Bytes for `count` symbols: ceil(count / g) * B for base-q groups, ceil(count * bits / 8) otherwise."""
        group, nbytes = self._choice
        return -(-int(count) // group) * nbytes if group else packed_nbytes(count, bits_for(self.q))

    @property
    def dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds a symbol (what `unpack` returns)."""
        return uint_dtype(self.q - 1)

    def pack(self, symbols: np.ndarray) -> np.ndarray:
        """Symbols (integers in 0..q-1) as `nbytes(len)` bytes."""
        symbols = np.asarray(symbols).reshape(-1)
        group, nbytes = self._choice
        if not group:
            return pack_bits(symbols, bits_for(self.q))
        work = uint_dtype(self.q ** group - 1)  # Horner never exceeds q^g - 1
        groups = -(-symbols.size // group)
        padded = np.zeros(groups * group, dtype=work)
        padded[: symbols.size] = symbols
        columns = np.ascontiguousarray(padded.reshape(groups, group).T)
        number = columns[group - 1].copy()
        q = work.type(self.q)
        for j in range(group - 2, -1, -1):  # sum s_j q^j, highest power first
            number *= q
            number += columns[j]
        return number.view(np.uint8).reshape(groups, work.itemsize)[:, :nbytes].reshape(-1).copy()

    @cached_property
    def _table(self) -> np.ndarray:
        """For one-byte groups: the g symbols of every byte value (256 x g), so decoding is one lookup."""
        digits = np.arange(256, dtype=np.int64)[:, None] // (self.q ** np.arange(self.group, dtype=np.int64)) % self.q
        return digits.astype(self.dtype)

    def unpack(self, data: np.ndarray, count: int) -> np.ndarray:
        """The `count` symbols that `pack` wrote into `data`, as `dtype`."""
        data = np.asarray(data, dtype=np.uint8).reshape(-1)
        group, nbytes = self._choice
        if not group:
            return unpack_bits(data, bits_for(self.q), count).astype(self.dtype, copy=False)
        total = self.nbytes(count)
        if data.size < total:
            raise ValueError(f"{data.size} bytes cannot hold {count} symbols of {self.q} letters ({total} bytes)")
        groups = total // nbytes
        if nbytes == 1 and self.dtype.itemsize == 1 and group <= 8:
            # every byte value's g symbols, padded to 8 bytes: one uint64 gather per byte
            rows = np.zeros((256, 8), dtype=np.uint8)
            rows[:, :group] = self._table
            gathered = rows.view("<u8").reshape(256)[data[:total]]
            return gathered.view(np.uint8).reshape(groups, 8)[:, :group].reshape(-1)[:count]
        if nbytes == 1:
            return self._table[data[:total]].reshape(-1)[:count]
        work = uint_dtype(self.q ** group - 1)
        buffer = np.zeros((groups, work.itemsize), dtype=np.uint8)
        buffer[:, :nbytes] = data[:total].reshape(groups, nbytes)
        number = buffer.view(work).reshape(groups).copy()
        out = np.empty((group, groups), dtype=self.dtype)
        q = work.type(self.q)
        for j in range(group):
            out[j] = number % q
            number //= q
        return out.T.reshape(-1)[:count]


def uint_dtype(largest: int) -> np.dtype:
    """The smallest little-endian unsigned integer dtype that holds `largest`."""
    for itemsize in (1, 2, 4, 8):
        if largest < 1 << (8 * itemsize):
            return np.dtype(f"<u{itemsize}")
    raise ValueError(f"{largest} does not fit in 64 bits")


def level_dtype(levels: int) -> np.dtype:
    """The signed dtype for levels -L..L: as wide as the unsigned dtype of the symbols 0..2L, so that adding L
    to the two's-complement bits maps one onto the other in place."""
    return np.dtype(f"<i{uint_dtype(2 * int(levels)).itemsize}")


def ideal_bits(q: int) -> float:
    """log2 q: what one symbol of a q-letter alphabet costs in an ideal fixed-rate code (the packing bound)."""
    return math.log2(q)
