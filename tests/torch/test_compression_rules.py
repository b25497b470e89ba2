"""Each method's arithmetic on fixed tensors, against the original's formulas, in layerwise and entire modes."""

import math

import numpy as np
import pytest
import torch

from anytimectl.backends.torch.compression import (
    Draws,
    canonical_method,
    canonical_mode,
    make_codec,
    make_compressor,
    method_names,
    random_indices,
)
from anytimectl.runtime.errors import UsageError

# three tensors of different sizes, distinct magnitudes everywhere (so "the k largest" is one set)
SIZES = (40, 7, 153)
LAYOUT = [(sum(SIZES[:i]), n) for i, n in enumerate(SIZES)]
N = sum(SIZES)


def fixed_gradient(seed=0):
    rng = np.random.default_rng(seed)
    magnitudes = rng.permutation(np.arange(1, N + 1)).astype(np.float32) / N
    signs = rng.choice([-1.0, 1.0], N).astype(np.float32)
    return magnitudes * signs


def tensors(mode):
    return LAYOUT if mode == "layerwise" else [(0, N)]


def sent_indices(codec, messages, mode):
    """Global indices of what sparse messages send."""
    offsets = [o for o, _ in tensors(mode)]
    return np.concatenate([m.indices + o for m, o in zip(messages, offsets, strict=True)])


@pytest.mark.parametrize("mode", ["layerwise", "entire"])
@pytest.mark.parametrize("ratio", [0.01, 0.07, 0.1, 0.5, 1.0])
def test_topk_keeps_the_ceil_kn_largest_magnitudes(mode, ratio):
    g = fixed_gradient()
    codec = make_codec("topk", LAYOUT, mode=mode, ratio=ratio)
    messages = codec.compress(g, 0)
    expected = []
    for offset, n in tensors(mode):
        k = math.ceil(round(ratio * n, 9))
        part = np.abs(g[offset:offset + n])
        expected.append(np.sort(np.argsort(-part)[:k]) + offset)
    assert [m.count for m in messages] == [e.size for e in expected]
    assert np.array_equal(sent_indices(codec, messages, mode), np.concatenate(expected))
    dense = codec.decompress(messages)
    kept = np.concatenate(expected)
    assert np.array_equal(dense[kept], g[kept]) and not dense[np.setdiff1d(np.arange(N), kept)].any()


def test_topk_is_the_originals_kthvalue_rule_without_its_extra_element():
    """The original kept |g| >= kthvalue(|g|, ceil(n (1 - K))): ceil(nK) + 1 elements when nK is whole. The fix
    keeps exactly the ceil(nK) largest, a subset of the original's."""
    g = torch.from_numpy(fixed_gradient())
    ratio = 0.1
    original = torch.nonzero(g.abs() >= torch.kthvalue(g.abs(), math.ceil(N * (1 - ratio))).values).view(-1)
    ours = make_codec("topk", LAYOUT, mode="entire", ratio=ratio).compress(g, 0)[0].indices
    assert ours.size == math.ceil(N * ratio) == original.numel() - 1
    assert set(ours.tolist()) <= set(original.tolist())


def test_topk_ties_go_to_the_lowest_indices():
    g = np.array([1, -1, 3, 1, 1, -1], dtype=np.float32)
    message = make_codec("topk", [(0, 6)], ratio=0.5).compress(g, 0)[0]
    assert message.indices.tolist() == [0, 1, 2] and message.values.tolist() == [1, -1, 3]


def _largest_first(g: np.ndarray, k: int) -> np.ndarray:
    """The k largest |g|, ties to the lowest indices (a stable sort), ascending."""
    return np.sort(np.argsort(-np.abs(g), kind="stable")[:k])


def _long_tensors():
    rng = np.random.default_rng(7)
    n = 300_000
    relu_like = rng.normal(size=n).astype(np.float32)
    relu_like[rng.random(n) < 0.9] = 0  # mostly exact zeros
    periodic = np.zeros(n, np.float32)
    periodic[::7] = 1.0  # a seventh of the tensor ties at the top
    spiky = rng.normal(size=n).astype(np.float32)
    spiky[[3, 50_000, 299_999]] = [np.inf, -np.inf, 1e30]
    return {"normal": rng.normal(size=n).astype(np.float32), "few-levels": rng.integers(-3, 4, n).astype(np.float32),
            "relu-like": relu_like, "periodic": periodic, "infinite": spiky}


@pytest.mark.parametrize("ratio", [1e-4, 0.01, 0.05])
@pytest.mark.parametrize("kind", list(_long_tensors()))
def test_topk_on_a_long_tensor_selects_among_sampled_candidates_with_the_same_result(monkeypatch, kind, ratio):
    """Long tensors take the sampled-threshold path (the whole-tensor selection is made to fail here); it must
    send exactly the k largest magnitudes with ties to the lowest indices, as the whole-tensor selection does."""
    from anytimectl.backends.torch.compression import compressors

    g = _long_tensors()[kind]
    k = make_compressor("topk", ratio=ratio).count(g.size)
    whole = compressors._top_indices_whole(torch.from_numpy(g), k).numpy()
    assert np.array_equal(whole, _largest_first(g, k))

    def refuse(*_):
        raise AssertionError("took the whole-tensor selection")

    monkeypatch.setattr(compressors, "_top_indices_whole", refuse)
    message = make_codec("topk", [(0, g.size)], ratio=ratio).compress(g, 0)[0]
    assert np.array_equal(message.indices, whole) and np.array_equal(message.values, g[whole])


def test_topk_falls_back_to_the_whole_tensor_when_the_sample_leaves_too_few_candidates(monkeypatch):
    """A sample drawn from the largest elements only sets a threshold fewer than k pass: the answer is still the
    k largest (and so is it with NaN in the tensor, which torch.topk ranks above every number)."""
    from anytimectl.backends.torch.compression import compressors

    g = np.random.default_rng(3).normal(size=100_000).astype(np.float32)
    k = 1000
    monkeypatch.setitem(compressors._SAMPLE_INDICES, g.size, np.argsort(-np.abs(g))[:compressors._SAMPLE])
    chosen = compressors._top_indices(torch.from_numpy(g), k).numpy()
    assert np.array_equal(chosen, _largest_first(g, k))
    g[10] = np.nan
    expected = compressors._top_indices_whole(torch.from_numpy(g), k).numpy()
    monkeypatch.delitem(compressors._SAMPLE_INDICES, g.size)
    assert 10 in expected and np.array_equal(compressors._top_indices(torch.from_numpy(g), k).numpy(), expected)


def test_k_is_ceil_of_the_decimal_ratio():
    assert make_compressor("topk", ratio=0.07).count(100) == 7  # not 8 from 0.07 * 100 = 7.000000000000001
    assert make_compressor("topk", ratio=0.01).count(10) == 1
    assert make_compressor("randomk", ratio=0.5).count(1) == 1
    assert make_compressor("topk", ratio=1e-9).count(6_573_120) == 1


@pytest.mark.parametrize("mode", ["layerwise", "entire"])
def test_threshold_keeps_magnitudes_at_or_above_v(mode):
    g = fixed_gradient()
    threshold = float(np.abs(g)[17])  # an element exactly at V is kept
    messages = make_codec("threshold", LAYOUT, mode=mode, threshold=threshold).compress(g, 0)
    sent = sent_indices(None, messages, mode)
    assert np.array_equal(sent, np.flatnonzero(np.abs(g) >= threshold)) and 17 in sent
    assert np.array_equal(np.concatenate([m.values for m in messages]), g[sent])


def test_threshold_zero_sends_every_non_zero_element():
    g = np.array([0, 1e-30, 0, -2], dtype=np.float32)
    message = make_codec("threshold", [(0, 4)], threshold=0).compress(g, 0)[0]
    assert message.indices.tolist() == [1, 3]


@pytest.mark.parametrize("mode", ["layerwise", "entire"])
def test_adaptive_threshold_keeps_half_the_max(mode):
    g = fixed_gradient()
    g[40:47] *= 0.01  # a small layer: sends its own top half layerwise, nothing against the global max
    messages = make_codec("adaptive-threshold", LAYOUT, mode=mode).compress(g, 0)
    expected = [np.flatnonzero(np.abs(g[o:o + n]) >= np.abs(g[o:o + n]).max() / 2) + o for o, n in tensors(mode)]
    assert np.array_equal(sent_indices(None, messages, mode), np.concatenate(expected))
    if mode == "layerwise":
        assert messages[1].count > 0
    else:
        assert not np.isin(np.arange(40, 47), messages[0].indices).any()


@pytest.mark.parametrize("mode", ["layerwise", "entire"])
def test_randomk_picks_exactly_ceil_nk_shared_coordinates(mode):
    g = fixed_gradient()
    ratio = 0.1
    first, second = (make_codec("randomk", LAYOUT, mode=mode, ratio=ratio, seed=5, rank=r) for r in (0, 3))
    for step in (0, 1):
        a, b = first.compress(g, step), second.compress(g * 2, step)
        for (offset, n), ma, mb in zip(tensors(mode), a, b, strict=True):
            assert ma.count == math.ceil(n * ratio) == np.unique(ma.indices).size
            assert np.array_equal(ma.indices, mb.indices)  # every rank draws the same coordinates
            assert np.array_equal(ma.values, g[offset + ma.indices])  # no rescale by default
    assert not all(np.array_equal(x.indices, y.indices) for x, y in zip(first.compress(g, 0), first.compress(g, 1),
                                                                          strict=True))


def test_randomk_rescale_multiplies_by_n_over_k():
    g = fixed_gradient()
    message = make_codec("randomk", [(0, N)], ratio=0.1, rescale=True).compress(g, 0)[0]
    assert np.allclose(message.values, g[message.indices] * (N / math.ceil(N * 0.1)), rtol=1e-6)


def test_random_indices_are_distinct_sorted_and_complete_at_k_equals_n():
    chosen = random_indices(1000, 100, seed=1, step=2, index=3)
    assert chosen.size == 100 and np.all(np.diff(chosen) > 0) and chosen.max() < 1000
    assert np.array_equal(random_indices(5, 5, 1, 2, 3), np.arange(5))


def _original_formula(method, x, uniform, levels=255):
    """The original's expressions on one tensor, with the same uniform draws."""
    if method == "terngrad":
        s = x.abs().max()
        return torch.sign(x) * s * (uniform < x.abs() / s).float()
    norm = torch.linalg.vector_norm(x)
    return torch.sign(x) * norm * torch.floor(x.abs() / norm * levels + uniform) / levels


@pytest.mark.parametrize("method", ["terngrad", "qsgd"])
@pytest.mark.parametrize("mode", ["layerwise", "entire"])
def test_quantisers_reproduce_the_original_expression_with_the_same_draws(method, mode):
    g = torch.from_numpy(fixed_gradient())
    codec = make_codec(method, LAYOUT, mode=mode, levels=255, seed=9, rank=2)
    dense = codec.decompress(codec.compress(g, 4))
    draws = Draws(9, 2, 4).rounding  # the codec draws each tensor's uniforms in layout order from this stream
    expected = torch.cat([_original_formula(method, g[o:o + n], torch.rand(n, generator=draws)) for o, n in
                          tensors(mode)])
    np.testing.assert_allclose(dense, expected.numpy(), rtol=2e-6, atol=1e-9)


def _copies(x, count):
    """A flat gradient of `count` copies of x, and its layout (layerwise: independent draws per copy)."""
    return np.tile(x, count), [(i * x.size, x.size) for i in range(count)]


@pytest.mark.parametrize("method", ["terngrad", "qsgd"])
def test_quantisers_are_unbiased_layerwise(method):
    x = fixed_gradient()[:16] * np.float32(3)
    copies = 3000
    flat, layout = _copies(x, copies)
    codec = make_codec(method, layout, levels=2)
    dense = codec.decompress(codec.compress(flat, 0)).reshape(copies, x.size).astype(np.float64)
    mean, stderr = dense.mean(axis=0), dense.std(axis=0) / math.sqrt(copies)
    assert np.all(np.abs(mean - x) <= 5 * stderr + 1e-6)
    if method == "terngrad":  # every element is 0 or +-max|x| with the sign of x
        scale = np.abs(x).max()
        assert set(np.unique(np.abs(dense))) <= {0.0, float(scale)}
        assert np.all(np.sign(dense) * np.sign(x) >= 0)


@pytest.mark.parametrize("method", ["terngrad", "qsgd"])
def test_quantisers_are_unbiased_entire(method):
    x = fixed_gradient()[:12]
    codec = make_codec(method, [(0, 5), (5, 7)], mode="entire", levels=3, seed=1)
    steps = 1500
    dense = np.stack([codec.decompress(codec.compress(x, step)) for step in range(steps)]).astype(np.float64)
    mean, stderr = dense.mean(axis=0), dense.std(axis=0) / math.sqrt(steps)
    assert np.all(np.abs(mean - x) <= 5 * stderr + 1e-6)


def test_qsgd_levels_are_whole_and_bounded():
    x = fixed_gradient()
    message = make_codec("qsgd", [(0, N)], mode="entire", levels=7).compress(x, 0)[0]
    assert np.abs(message.symbols).max() <= 7 and message.scale == np.float32(np.linalg.norm(x))
    one_hot = np.zeros(5, np.float32)
    one_hot[2] = -3.0  # |g| / ||g|| = 1: the level is s exactly, never s + 1
    single = make_codec("qsgd", [(0, 5)], levels=7).compress(one_hot, 0)[0]
    assert single.symbols.tolist() == [0, 0, -7, 0, 0]


@pytest.mark.parametrize("method", ["terngrad", "qsgd", "topk", "randomk", "threshold", "adaptive-threshold"])
@pytest.mark.parametrize("mode", ["layerwise", "entire"])
def test_all_zero_tensors_decode_to_zeros_without_nan(method, mode):
    codec = make_codec(method, LAYOUT, mode=mode, ratio=0.1, threshold=0.0)
    dense = codec.decode_mean([codec.encode(np.zeros(N, np.float32), 0)])
    assert np.all(dense == 0) and np.isfinite(dense).all()


def test_same_seed_rank_step_gives_the_same_bytes_and_ranks_differ():
    g = fixed_gradient()
    payloads = [make_codec("terngrad", LAYOUT, seed=1, rank=r).encode(g, 3) for r in (0, 0, 1)]
    assert np.array_equal(payloads[0], payloads[1]) and not np.array_equal(payloads[0], payloads[2])


def test_names_originals_and_errors():
    assert method_names() == ("none", "topk", "randomk", "threshold", "adaptive-threshold", "terngrad", "qsgd")
    originals = {"Topk": "topk", "Randomk": "randomk", "Thresholdv": "threshold", "AdaptiveThreshold":
                 "adaptive-threshold", "TernGrad": "terngrad", "RandomDithering": "qsgd", "TOPK": "topk",
                 "None": "none"}
    assert {name: canonical_method(name) for name in originals} == originals
    assert canonical_mode("entiremodel") == "entire" and canonical_mode("LayerWise") == "layerwise"
    with pytest.raises(UsageError, match="not one of none, topk, randomk"):
        canonical_method("QSGD8")
    with pytest.raises(UsageError, match="mode 'whole'"):
        canonical_mode("whole")
    for bad in ({"ratio": 0}, {"ratio": 1.5}, {"ratio": float("nan")}, {"ratio": "x"}):
        with pytest.raises(UsageError, match="ratio"):
            make_compressor("topk", **bad)
    with pytest.raises(UsageError, match="threshold"):
        make_compressor("threshold", threshold=-1)
    with pytest.raises(UsageError, match="levels"):
        make_compressor("qsgd", levels=0)
    with pytest.raises(UsageError, match="value dtype"):
        make_compressor("topk", value_dtype="bfloat16")
    with pytest.raises(TypeError, match="unknown"):
        make_compressor("topk", K=0.1)
    # options a method does not take are ignored, so the CLI can pass them all
    assert make_compressor("qsgd", ratio=0.2, levels=3, value_dtype="float16").options() == {"levels": 3}
