"""Sign exchanges (anytimectl/exchange/sign.py), numpy only: the packing is 1 bit a sign plus a float32 l1 scale per
tensor and decodes to sign(x) x scale; the majority vote is the hand-computed one; error feedback keeps exactly
what was not sent; a one-process exchange passes the remainder through exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anytimectl.exchange import ExchangeSpec, make_exchange
from anytimectl.exchange.options import ExchangeOptions
from anytimectl.exchange.sign import pack_signs, scaled, unpack_signs

SIZES = np.array([5, 13, 1, 64], np.int64)
OFFSETS = np.concatenate([[0], np.cumsum(SIZES)[:-1]])


def _spec(trainable_layout=SIZES, remainder=3) -> ExchangeSpec:
    offsets = np.concatenate([[0], np.cumsum(trainable_layout)[:-1]])
    trainable = int(np.sum(trainable_layout))
    return ExchangeSpec(layout=tuple(zip(offsets.tolist(), np.asarray(trainable_layout).tolist(), strict=True)),
                        trainable=trainable, length=trainable + remainder)


def test_unpack_of_pack_is_the_sign_times_the_l1_scale():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(int(SIZES.sum())).astype(np.float32)
    x[x == 0] = 1.0
    payload = pack_signs(x, OFFSETS, SIZES)
    assert payload.size == 4 * len(SIZES) + math.ceil(SIZES.sum() / 8)  # 1 bit a sign + one float32 per tensor
    scales, signs = unpack_signs(payload, SIZES)
    pieces = np.split(x, np.cumsum(SIZES)[:-1])
    assert np.array_equal(scales, np.array([np.abs(p).astype(np.float64).mean() for p in pieces], np.float32))
    assert np.array_equal(signs, np.sign(x).astype(np.int8))
    expected = np.concatenate([np.sign(p) * s for p, s in zip(pieces, scales, strict=True)]).astype(np.float32)
    assert np.array_equal(scaled(scales, signs, SIZES), expected)


def test_a_zero_travels_as_plus_one_and_a_foreign_payload_is_refused():
    x = np.array([0.0, -2.0, 0.0, 4.0], np.float32)
    scales, signs = unpack_signs(pack_signs(x, np.zeros(1, np.int64), np.array([4])), np.array([4]))
    assert scales.tolist() == [1.5] and signs.tolist() == [1, -1, 1, 1]
    with pytest.raises(ValueError, match="expected"):
        unpack_signs(pack_signs(x, np.zeros(1, np.int64), np.array([4])), np.array([12]))


def test_majority_vote_against_a_hand_computation():
    spec = _spec(np.array([4]), remainder=0)
    vote = make_exchange(ExchangeOptions(compressor="signsgd", mode="entire"), spec, None)
    ranks = [np.array([1, -2, 3, -4], np.float32), np.array([-1, -1, 2, 5], np.float32),
             np.array([2, -3, -1, 1], np.float32)]
    payloads = [pack_signs(x, np.zeros(1, np.int64), np.array([4])) for x in ranks]
    # signs per element: (+ - +), (- - -), (+ + -), (- + +): votes +1, -3, +1, +1; scales 10/4 + 9/4 + 7/4 = 6.5
    assert vote.decode_sum(payloads, 1).tolist() == [6.5, -6.5, 6.5, 6.5]
    # a tie (two ranks disagreeing) gives 0
    tie = [pack_signs(np.array([1, 1, -1, 2], np.float32), np.zeros(1, np.int64), np.array([4])),
           pack_signs(np.array([-1, 3, 1, 2], np.float32), np.zeros(1, np.int64), np.array([4]))]
    assert vote.decode_sum(tie, 1).tolist() == [0.0, 3.0, 0.0, 3.0]  # scales 1.25 + 1.75


def test_ef_signsgd_keeps_exactly_what_it_did_not_send():
    spec = _spec()
    exchange = make_exchange(ExchangeOptions(compressor="ef-signsgd"), spec, None)
    rng = np.random.default_rng(2)
    residual = np.zeros(spec.trainable, np.float32)
    sent_total = np.zeros(spec.trainable, np.float64)
    gradients = [rng.standard_normal(spec.trainable).astype(np.float32) for _ in range(4)]
    for step, g in enumerate(gradients, 1):
        contribution = np.concatenate([g, [1.0, 2.0, 3.0]]).astype(np.float32)
        reduced = exchange.exchange(contribution, step)
        compensated = g + residual
        scales, signs = unpack_signs(pack_signs(compensated, OFFSETS, SIZES), SIZES)
        sent = scaled(scales, signs, SIZES)
        assert np.array_equal(reduced[:spec.trainable], sent)  # one process: the sum is its own message
        assert reduced[spec.trainable:].tolist() == [1.0, 2.0, 3.0]  # the remainder passes exactly
        residual = exchange.state()["residual"]
        assert np.array_equal(residual, compensated - sent)
        sent_total += sent
        stats = exchange.stats
        assert stats.payload_bytes == 4 * len(SIZES) + math.ceil(spec.trainable / 8)
        assert stats.bound_bytes == (spec.trainable + 32 * len(SIZES)) / 8
    # nothing lost, only delayed
    np.testing.assert_allclose(sent_total + residual, np.sum(gradients, axis=0), rtol=1e-5, atol=1e-5)
    fresh = make_exchange(ExchangeOptions(compressor="ef-signsgd"), spec, None)
    fresh.load(exchange.state())
    assert np.array_equal(fresh.state()["residual"], residual)


def test_signsgd_without_error_feedback_keeps_no_state():
    exchange = make_exchange(ExchangeOptions(compressor="signsgd"), _spec(), None)
    assert exchange.state() is None and exchange.describe()["error_feedback"] is False
