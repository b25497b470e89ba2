"""Bit packing: exact byte counts, round trips at every width, and the documented layout on small examples."""

import numpy as np
import pytest

from anytimectl.backends.torch.compression.packing import (
    SymbolCode,
    bits_for,
    level_dtype,
    pack_bits,
    packed_nbytes,
    unpack_bits,
)

COUNTS = (0, 1, 7, 8, 9, 15, 16, 17, 1001)


@pytest.mark.parametrize("bits", range(65))
def test_pack_bits_round_trip_at_every_width(bits):
    rng = np.random.default_rng(bits)
    for count in COUNTS:
        values = rng.integers(0, 1 << bits, count, dtype=np.uint64) if bits else np.zeros(count, np.uint64)
        if count and bits:
            values[0] = (1 << bits) - 1  # the widest value must survive
        packed = pack_bits(values, bits)
        assert packed.dtype == np.uint8 and packed.size == packed_nbytes(count, bits) == -(-count * bits // 8)
        back = unpack_bits(packed, bits, count)
        assert back.size == count and np.array_equal(back.astype(np.uint64), values)


def test_pack_bits_accepts_signed_index_arrays():
    indices = np.array([0, 5, 1023, 77], dtype=np.int64)
    assert np.array_equal(unpack_bits(pack_bits(indices, 10), 10, 4), indices)


def test_pack_bits_layout():
    # 2 bits, little-endian bit order: 1 | 2 << 2 | 3 << 4
    assert pack_bits(np.array([1, 2, 3]), 2).tolist() == [1 + (2 << 2) + (3 << 4)]
    # 9 bits: the low bytes as bytes, then the high bits as a bit stream; ceil(18 / 8) = 3 bytes in all
    assert pack_bits(np.array([0x1FF, 0x100]), 9).tolist() == [0xFF, 0x00, 0b11]
    assert pack_bits(np.array([0x1234, 0xABCD]), 16).tolist() == [0x34, 0x12, 0xCD, 0xAB]


def test_unpack_rejects_short_data():
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_bits(np.zeros(2, np.uint8), 9, 2)


def test_bits_for():
    assert [bits_for(n) for n in (0, 1, 2, 3, 4, 5, 1 << 20, (1 << 20) + 1)] == [0, 0, 1, 2, 2, 3, 20, 21]


def test_symbol_codes_pick_the_cheaper_code():
    ternary = SymbolCode(3)
    assert (ternary.group, ternary.bits_per_symbol, ternary.nbytes(11)) == (5, 1.6, 3)
    assert ternary.pack(np.array([2, 0, 1, 0, 0])).tolist() == [2 + 9 * 1]  # base 3, first symbol lowest
    qsgd = SymbolCode(2 * 255 + 1)
    assert (qsgd.group, qsgd.bits_per_symbol, qsgd.nbytes(8)) == (0, 9.0, 9)
    assert SymbolCode(2).bits_per_symbol == 1.0
    assert SymbolCode(5).bits_per_symbol < 2.34  # base-5 groups beat 3 bits
    with pytest.raises(ValueError):
        SymbolCode(1)


@pytest.mark.parametrize("q", [2, 3, 4, 5, 6, 7, 9, 16, 255, 256, 257, 511, 1023, 3 ** 40, (1 << 40) + 3])
def test_symbol_code_round_trip(q):
    rng = np.random.default_rng(q % 1000)
    code = SymbolCode(q)
    for count in COUNTS:
        symbols = rng.integers(0, q, count, dtype=np.uint64)
        if count:
            symbols[-1] = q - 1
        packed = code.pack(symbols)
        assert packed.size == code.nbytes(count)
        back = code.unpack(packed, count)
        assert back.dtype == code.dtype and np.array_equal(back, symbols)


def test_level_dtype_holds_every_level():
    for levels in (1, 127, 128, 255, 32767, 32768):
        dtype = level_dtype(levels)
        assert np.iinfo(dtype).min <= -levels and np.iinfo(dtype).max >= levels
