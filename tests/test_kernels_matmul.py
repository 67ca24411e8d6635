"""The matmul family against float64, for every weight encoding and every usable CPU variant.

Float weights (F32/F16/BF16/FP8) dot fp32 activations: the reference is the dequantized
weight times x in float64, tolerance = a few fp32 ulps of sum |w||x| (accumulation order).
Q8_0/Q4_0 dot int8 activations: the reference reproduces the activation quantization in
float64, so the only difference left is fp32 accumulation of exact block sums.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nemocpu._core as core
from kernel_ref import VARIANTS, matmul_quant_ref, quantize_q8_act
from oracle import GGML_TYPE, encode

FLOAT_TYPES = ["F32", "F16", "BF16", "FP8"]
QUANT_TYPES = ["Q8_0", "Q4_0"]
FLOAT_K = [1, 7, 8, 9, 31, 32, 33, 64, 96, 100]
QUANT_K = [32, 64, 96, 160, 256]


def make_weight(rows, K, wtype, rng):
    vals = rng.normal(0, 1, (rows, K))
    raw, gtype, deq, scale = encode(vals, wtype)
    return raw, gtype, deq, scale


def check(y, ref, bound, rel):
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= rel * bound + 1e-30), f"max err {err.max():.3g}, bound {(rel * bound).max():.3g}"


@settings(max_examples=60, deadline=None)
@given(wtype=st.sampled_from(FLOAT_TYPES), K=st.sampled_from(FLOAT_K), rows=st.integers(1, 37),
       T=st.integers(1, 17), seed=st.integers(0, 2**31))
def test_matmul_float_weights(wtype, K, rows, T, seed):
    rng = np.random.default_rng(seed)
    raw, gtype, deq, scale = make_weight(rows, K, wtype, rng)
    x = rng.normal(0, 1, (T, K)).astype(np.float32)
    ref = x.astype(np.float64) @ deq.T
    bound = np.abs(x.astype(np.float64)) @ np.abs(deq).T
    for v in VARIANTS:
        for reference in (False, True):
            y = core.ops.matmul(raw, gtype, K, rows, x, scale=scale, variant=v, reference=reference)
            assert y.shape == (T, rows) and y.dtype == np.float32
            check(y, ref, bound, 4 * K * 2**-24 + 2**-23)


@settings(max_examples=60, deadline=None)
@given(wtype=st.sampled_from(QUANT_TYPES), K=st.sampled_from(QUANT_K), rows=st.integers(1, 37),
       T=st.integers(1, 17), seed=st.integers(0, 2**31))
def test_matmul_quantized_weights(wtype, K, rows, T, seed):
    rng = np.random.default_rng(seed)
    raw, gtype, deq, _ = make_weight(rows, K, wtype, rng)
    x = (rng.normal(0, 1, (T, K)) * rng.uniform(0.1, 10, (T, 1))).astype(np.float32)
    ref = matmul_quant_ref(deq, x)
    d, q = quantize_q8_act(x)
    bound = (np.abs(q) * d[..., None]).reshape(T, K) @ np.abs(deq).T
    for v in VARIANTS:
        for reference in (False, True):
            y = core.ops.matmul(raw, gtype, K, rows, x, variant=v, reference=reference)
            check(y, ref, bound, 4 * (K // 32 + 8) * 2**-24)


@pytest.mark.parametrize("wtype", FLOAT_TYPES + QUANT_TYPES)
def test_matmul_large_k(wtype):
    """A 2688-wide row (Nemotron 3 Nano's n_embd), the prefill tile and its tail."""
    rng = np.random.default_rng(7)
    K, rows, T = 2688, 5, 9
    raw, gtype, deq, scale = make_weight(rows, K, wtype, rng)
    x = rng.normal(0, 1, (T, K)).astype(np.float32)
    if wtype in QUANT_TYPES:
        ref = matmul_quant_ref(deq, x)
        d, q = quantize_q8_act(x)
        bound = (np.abs(q) * d[..., None]).reshape(T, K) @ np.abs(deq).T
    else:
        ref = x.astype(np.float64) @ deq.T
        bound = np.abs(x.astype(np.float64)) @ np.abs(deq).T
    for v in VARIANTS:
        y = core.ops.matmul(raw, gtype, K, rows, x, scale=scale, variant=v)
        check(y, ref, bound, 2**-16)


@settings(max_examples=40, deadline=None)
@given(nb=st.integers(1, 9), seed=st.integers(0, 2**31), scale=st.sampled_from([0.0, 1e-3, 1.0, 1e4]))
def test_quantize_q8_0_activations(nb, seed, scale):
    rng = np.random.default_rng(seed)
    x = (rng.normal(0, 1, nb * 32) * scale).astype(np.float32)
    x[rng.integers(0, x.size)] = 0.5 * scale     # exercise ties after scaling sometimes
    d_ref, q_ref = quantize_q8_act(x)
    for v in VARIANTS:
        d, q = core.ops.quantize_q8_0(x, variant=v)
        np.testing.assert_array_equal(d, d_ref)
        np.testing.assert_array_equal(q.astype(np.float64), q_ref)


def test_round_half_away_from_zero():
    # 63.5 / 127 * 127 lands exactly on .5 steps: llama.cpp rounds them away from zero
    x = np.zeros(32, np.float32)
    x[0], x[1], x[2] = 127.0, 0.5, -0.5
    d, q = core.ops.quantize_q8_0(x)
    assert d[0] == np.float32(1.0)
    assert (q[0, 1], q[0, 2]) == (1, -1)


@pytest.mark.parametrize("wtype", FLOAT_TYPES + QUANT_TYPES)
def test_dequantize_matches_gguf_py(wtype):
    rng = np.random.default_rng(3)
    raw, gtype, deq, scale = make_weight(6, 64, wtype, rng)
    for v in VARIANTS:
        out = core.ops.dequantize(raw, gtype, 64, 6, scale=scale, variant=v)
        # exact: FP8's code * scale is one correctly rounded fp32 product
        np.testing.assert_array_equal(out, deq.astype(np.float32))


def test_fp8_table_covers_all_codes():
    import ml_dtypes
    codes = np.arange(256, dtype=np.uint8)
    expect = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    finite = np.isfinite(expect)
    for v in VARIANTS:
        out = core.ops.dequantize(codes, GGML_TYPE["FP8"], 256, 1, scale=np.ones(1, np.float32), variant=v)[0]
        np.testing.assert_array_equal(out[finite], expect[finite])
        assert np.isnan(out[~finite]).all()


def test_matmul_rejects_bad_input():
    raw = np.zeros(34, np.uint8)
    with pytest.raises(ValueError):
        core.ops.matmul(raw, 8, 33, 1, np.zeros((1, 33), np.float32))     # K not a multiple of 32
    with pytest.raises(ValueError):
        core.ops.matmul(raw, 8, 32, 2, np.zeros((1, 32), np.float32))     # too few bytes
    with pytest.raises(ValueError):
        core.ops.matmul(raw, 77, 32, 1, np.zeros((1, 32), np.float32))    # unknown type
    with pytest.raises(ValueError):
        core.ops.matmul(np.zeros(32, np.uint8), 24, 32, 1, np.zeros((1, 32), np.float32))  # FP8, no scale
    with pytest.raises(ValueError):
        core.ops.matmul(raw, 8, 32, 1, np.zeros((1, 32), np.float32), variant="sse9")


@settings(max_examples=30, deadline=None)
@given(K=st.sampled_from([32, 33, 63, 64, 100, 2688]), rows=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_fp8_decode_every_code(K, rows, seed):
    """Decode (one token) with FP8 weights, the 32-codes-per-step path and its tail: every
    finite E4M3 code (subnormals, both zeros, the largest 448) against float64."""
    import ml_dtypes

    rng = np.random.default_rng(seed)
    finite = np.array([c for c in range(256) if c & 0x7f != 0x7f], dtype=np.uint8)
    codes = np.resize(rng.permutation(finite), rows * K).reshape(rows, K)
    deq = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    scale = rng.uniform(0.5, 2, rows).astype(np.float32)
    x = rng.normal(0, 1, (1, K)).astype(np.float32)
    ref = (x.astype(np.float64) @ deq.T) * scale
    bound = (np.abs(x.astype(np.float64)) @ np.abs(deq).T) * scale
    for v in VARIANTS:
        y = core.ops.matmul(codes.reshape(-1), GGML_TYPE["FP8"], K, rows, x, scale=scale, variant=v)
        check(y, ref, bound, 4 * K * 2**-24 + 2**-23)


def _fp8_every_code(rows, K, rng):
    """[rows, K] E4M3 codes cycling through every finite code in random order, their float64 values."""
    import ml_dtypes

    finite = np.array([c for c in range(256) if c & 0x7f != 0x7f], dtype=np.uint8)
    codes = np.resize(rng.permutation(finite), rows * K).reshape(rows, K)
    return codes, codes.view(ml_dtypes.float8_e4m3fn).astype(np.float64)


def _check_fp8_matmul(T, K, rows, seed):
    rng = np.random.default_rng(seed)
    codes, deq = _fp8_every_code(rows, K, rng)
    scale = rng.uniform(0.5, 2, rows).astype(np.float32)
    x = rng.normal(0, 1, (T, K)).astype(np.float32)
    ref = (x.astype(np.float64) @ deq.T) * scale
    bound = (np.abs(x.astype(np.float64)) @ np.abs(deq).T) * scale
    for v in VARIANTS:
        y = core.ops.matmul(codes.reshape(-1), GGML_TYPE["FP8"], K, rows, x, scale=scale, variant=v)
        assert y.shape == (T, rows)
        check(y, ref, bound, 4 * K * 2**-24 + 2**-23)


@settings(max_examples=40, deadline=None)
@given(T=st.integers(2, 160), K=st.sampled_from([1, 7, 8, 31, 33, 100, 255, 256, 257, 300, 520, 777, 1856]),
       rows=st.integers(1, 37), seed=st.integers(0, 2**31))
def test_fp8_prefill_every_code(T, K, rows, seed):
    """Prefill with FP8 weights: the few-token path (decode in registers) and the panel path
    (fp32 panels of 256 codes, 2x6 register tiles, blocks of 72 tokens, y holding partial sums
    across K blocks) with their edges: K below/at/above a panel and with a tail, rows not a
    multiple of the panel or tile, T across token blocks. Every finite E4M3 code vs float64."""
    _check_fp8_matmul(T, K, rows, seed)


@pytest.mark.parametrize("T,K,rows", [(2, 2688, 3), (4, 2688, 9), (5, 2688, 9), (6, 513, 8), (72, 256, 16),
                                      (73, 257, 17), (144, 2689, 2), (145, 64, 1), (256, 3712, 5)])
def test_fp8_prefill_edges(T, K, rows):
    """Fixed shapes at the boundaries of the FP8 blocking (tokens 4/5, 72/73, 144/145; K 256/257,
    Nano's 2688 and 3712; rows 8/9, 16/17, 1)."""
    _check_fp8_matmul(T, K, rows, seed=T * 7919 + K)


@pytest.mark.parametrize("wtype", FLOAT_TYPES)
@pytest.mark.parametrize("T", [1, 3, 8])
def test_matmul_empty_k_is_zero(wtype, T):
    """K = 0: every output is the empty sum 0 (FP8's prefill path writes y per K block)."""
    if wtype == "FP8":   # (the oracle's encoder needs a non-empty row for its scale)
        raw, gtype, scale = np.zeros(0, np.uint8), GGML_TYPE["FP8"], np.ones(3, np.float32)
    else:
        raw, gtype, _, scale = make_weight(3, 0, wtype, np.random.default_rng(0))
    for v in VARIANTS:
        for reference in (False, True):
            y = core.ops.matmul(raw, gtype, 0, 3, np.zeros((T, 0), np.float32), scale=scale, variant=v,
                                reference=reference)
            np.testing.assert_array_equal(y, np.zeros((T, 3), np.float32))
