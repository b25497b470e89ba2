"""Encoding and decoding: exact round trips, byte counts by formula, error feedback, and the multi-rank aggregate."""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from anytimectl.backends.torch.compression import (
    HEADER_BYTES,
    Dense,
    Levels,
    Sparse,
    make_codec,
    method_names,
    segments,
)
from anytimectl.backends.torch.compression.bench import bench_codecs, threshold_for_ratio

SIZES = (300, 1, 7, 2500, 64)
LAYOUT = [(sum(SIZES[:i]), n) for i, n in enumerate(SIZES)]
N = sum(SIZES)
OPTIONS = {"ratio": 0.05, "threshold": 1.2, "levels": 255}
DTYPES = ("float32", "float16")
MODES = ("layerwise", "entire")


def gradient(seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(N) * scale).astype(np.float32)


def cases():
    """(name, gradient, layout, options): ordinary, all-zero, one-element tensors, a threshold keeping nothing,
    a float16-overflowing gradient."""
    g = gradient()
    yield "random", g, LAYOUT, {}
    yield "zeros", np.zeros(N, np.float32), LAYOUT, {}
    yield "single", np.array([-0.75], np.float32), [(0, 1)], {}
    yield "ones-of-one", gradient(1)[:4], [(0, 1), (1, 1), (2, 1), (3, 1)], {}
    yield "nothing-kept", g, LAYOUT, {"threshold": 1e9}
    yield "huge", gradient(2, scale=1e6), LAYOUT, {}


def same_message(a, b):
    assert type(a) is type(b)
    if isinstance(a, Sparse):
        assert a.indices.dtype == b.indices.dtype == np.int64 and np.array_equal(a.indices, b.indices)
    if isinstance(a, Dense | Sparse):
        assert a.values.dtype == b.values.dtype
        assert np.array_equal(a.values.view(f"u{a.values.itemsize}"), b.values.view(f"u{b.values.itemsize}"))
    if isinstance(a, Levels):
        assert a.levels == b.levels and np.float32(a.scale).tobytes() == np.float32(b.scale).tobytes()
        assert a.symbols.dtype == b.symbols.dtype and np.array_equal(a.symbols, b.symbols)


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("value_dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_encode_then_decode_returns_exactly_what_the_compressor_meant(method, value_dtype, mode):
    for name, g, layout, extra in cases():
        codec = make_codec(method, layout, mode=mode, value_dtype=value_dtype, seed=4, rank=1,
                           **{**OPTIONS, **extra})
        messages = codec.compress(g, 11)
        payload = codec.pack(messages, 11)
        assert payload.dtype == np.uint8 and payload.ndim == 1
        receiver = make_codec(method, layout, mode=mode, value_dtype=value_dtype, seed=4, rank=0,
                              **{**OPTIONS, **extra})  # another rank: randomk's indices are rebuilt there
        step, back = receiver.unpack(payload.tobytes())
        assert step == 11 and len(back) == len(messages), name
        for a, b in zip(messages, back, strict=True):
            same_message(a, b)
        decoded = receiver.decode_mean([payload])
        assert np.array_equal(decoded, codec.decompress(messages)) and np.isfinite(decoded).all(), name
        if name == "nothing-kept" and method == "threshold":
            assert sum(m.count for m in messages) == 0 and not decoded.any()


def expected_nbytes(method, value_dtype, mode, layout, counts, levels=255):
    """The payload formulas of encodings.py, written out independently."""
    sizes = [n for _, n in layout] if mode == "layerwise" else [sum(n for _, n in layout)]
    value = 4 if value_dtype == "float32" else 2
    index_bits = [max(0, n - 1).bit_length() for n in sizes]
    if method == "none":
        body = sum(sizes) * value
    elif method == "randomk":
        body = sum(counts) * value
    elif method in ("topk", "threshold", "adaptive-threshold"):
        body = sum(math.ceil(k * b / 8) for k, b in zip(counts, index_bits, strict=True)) + sum(counts) * value
        if method != "topk":
            body += math.ceil(len(sizes) * max(sizes).bit_length() / 8)  # counts at ceil(log2(max n + 1)) bits
    elif method == "terngrad":
        body = 4 * len(sizes) + math.ceil(sum(sizes) / 5)  # 5 trits per byte
    else:
        body = 4 * len(sizes) + math.ceil(sum(sizes) * math.ceil(math.log2(2 * levels + 1)) / 8)
    return HEADER_BYTES + body


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("value_dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_payload_bytes_follow_the_formula(method, value_dtype, mode):
    for _, g, layout, extra in cases():
        codec = make_codec(method, layout, mode=mode, value_dtype=value_dtype, **{**OPTIONS, **extra})
        messages = codec.compress(g, 0)
        counts = codec.counts(messages)
        payload = codec.pack(messages, 0)
        assert payload.size == codec.nbytes(counts) == expected_nbytes(method, value_dtype, mode, layout, counts)
        if method in ("topk", "randomk"):
            sizes = [n for _, n in layout] if mode == "layerwise" else [sum(n for _, n in layout)]
            assert counts == [math.ceil(n * OPTIONS["ratio"]) for n in sizes]


def test_bytes_stay_near_the_packing_bound():
    g = gradient()
    for method in method_names():
        codec = make_codec(method, LAYOUT, mode="entire", **OPTIONS)
        messages = codec.compress(g, 0)
        ratio = codec.pack(messages, 0).size * 8 / codec.bound_bits(codec.counts(messages))
        assert 1.0 <= ratio < 1.05, (method, ratio)


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("value_dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_error_feedback_loses_nothing(method, value_dtype, mode):
    codec = make_codec(method, LAYOUT, mode=mode, value_dtype=value_dtype, error_feedback=True, seed=2,
                       **OPTIONS)
    sent = np.zeros(N, np.float64)
    total = np.zeros(N, np.float64)
    for step in range(6):
        g = gradient(step)
        total += g
        sent += codec.decode_mean([codec.encode(g, step)])
    residual = codec.memory.state()
    np.testing.assert_allclose(sent + residual, total, rtol=1e-5, atol=1e-5 * np.abs(total).max())
    if method == "topk":  # what was not sent is really carried: the residual is not zero
        assert np.abs(residual).max() > 0


def test_error_feedback_feeds_the_residual_into_the_next_gradient():
    codec = make_codec("topk", [(0, 4)], ratio=0.25, error_feedback=True)
    first = codec.decompress(codec.compress(np.array([4, 3, 2, 1], np.float32), 0))
    second = codec.decompress(codec.compress(np.array([0, 0, 0, 0], np.float32), 1))
    assert first.tolist() == [4, 0, 0, 0] and second.tolist() == [0, 3, 0, 0]
    assert codec.memory.state().tolist() == [0, 0, 2, 1]
    codec.memory.load(None)
    assert not codec.memory.state().any()


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("mode", MODES)
def test_aggregate_of_ranks_is_the_average_of_their_decompressed_gradients(method, mode):
    world = 3
    codecs = [make_codec(method, LAYOUT, mode=mode, value_dtype="float16", seed=7, rank=r, **OPTIONS)
              for r in range(world)]
    messages = [c.compress(gradient(10 + r), 5) for r, c in enumerate(codecs)]
    payloads = [c.pack(m, 5) for c, m in zip(codecs, messages, strict=True)]
    total = np.zeros(N, np.float32)
    for c, m in zip(codecs, messages, strict=True):
        total += c.decompress(m)
    for receiver in codecs:  # every rank computes the same update
        np.testing.assert_array_equal(receiver.decode_sum(payloads), total)
        np.testing.assert_array_equal(receiver.decode_mean(payloads), total / np.float32(world))


def test_decoding_refuses_foreign_mixed_and_truncated_payloads():
    g = gradient()
    topk = make_codec("topk", LAYOUT, ratio=0.1)
    payload = topk.encode(g, 1)
    with pytest.raises(ValueError, match="method id"):
        make_codec("randomk", LAYOUT, ratio=0.1).unpack(payload)
    with pytest.raises(ValueError, match="flags"):
        make_codec("topk", LAYOUT, ratio=0.1, mode="entire").unpack(payload)
    with pytest.raises(ValueError, match="expected"):
        make_codec("topk", LAYOUT, ratio=0.2).unpack(payload)
    with pytest.raises(ValueError, match="expected"):
        topk.unpack(payload[:-1])
    with pytest.raises(ValueError, match="header"):
        topk.unpack(payload[:3])
    with pytest.raises(ValueError, match="different steps"):
        topk.decode_sum([payload, topk.encode(g, 2)])
    with pytest.raises(ValueError, match="elements"):
        topk.encode(g[:-1], 0)


@dataclass(frozen=True)
class Slice:
    name: str
    offset: int
    size: int
    trainable: bool = True


def test_layouts_from_engine_slices_dicts_and_pairs():
    slices = [Slice("b", 3, 5), Slice("a", 0, 3), Slice("running_mean", 8, 4, trainable=False)]
    offsets, sizes = segments(slices)
    assert offsets.tolist() == [0, 3] and sizes.tolist() == [3, 5]
    assert segments([{"offset": 0, "size": 2}, {"offset": 2, "size": 1}])[1].tolist() == [2, 1]
    assert segments({"w": (0, 4)})[1].tolist() == [4]
    with pytest.raises(ValueError, match="gaps"):
        segments([(0, 3), (4, 2)])
    with pytest.raises(ValueError, match="covers"):
        segments([(0, 3)], size=4)
    with pytest.raises(ValueError, match="at least one"):
        segments([(0, 0)])
    codec = make_codec("qsgd", slices, levels=3)
    assert codec.size == 8 and codec.describe() == {"compressor": "qsgd", "levels": 3, "mode": "layerwise",
                                                    "error_feedback": False, "tensors": 2}


def test_torch_gradients_are_accepted_and_left_untouched():
    g = torch.from_numpy(gradient())
    before = g.clone()
    codec = make_codec("terngrad", LAYOUT, error_feedback=True)
    numpy_payload = make_codec("terngrad", LAYOUT).encode(g.numpy(), 0)
    assert np.array_equal(codec.encode(g, 0), numpy_payload)
    assert torch.equal(g, before)


def test_bench_rows():
    g = gradient()
    rows = bench_codecs(g, LAYOUT, ratio=0.05, repeats=1, world=2)
    assert [(r["method"], r["mode"]) for r in rows] == [(m, mode) for m in method_names() for mode in MODES]
    by = {(r["method"], r["mode"]): r for r in rows}
    assert by["none", "entire"]["relative_error"] == 0 and by["none", "entire"]["compression_ratio"] < 1
    topk = by["topk", "layerwise"]
    assert topk["sent"] == sum(math.ceil(n * 0.05) for n in SIZES)
    assert topk["bytes"] == make_codec("topk", LAYOUT, ratio=0.05).encode(g, 0).size
    assert topk["compression_ratio"] == pytest.approx(4 * N / topk["bytes"])
    assert 1 <= topk["bytes_over_bound"] < 1.1 and 0 < topk["relative_error"] < 1
    assert by["threshold", "entire"]["sent"] == pytest.approx(0.05 * N, abs=2)  # V chosen to keep K n
    assert threshold_for_ratio(np.array([3, -1, 2], np.float32), 0.5) == 2.0
    assert by["qsgd", "layerwise"]["ratio"] is None and by["qsgd", "layerwise"]["levels"] == 255
