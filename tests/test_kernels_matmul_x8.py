"""The 8-row interleaved layout (LAYOUT_X8) of Q8_0 / Q4_0 weights that the engine repacks to
at load: its kernels against float64 on many shapes and row ranges, every usable variant, and
its scalar reference against the file layout's, bit for bit (the repack moves bytes only)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nemocpu._core as core
from kernel_ref import VARIANTS, matmul_quant_ref, quantize_q8_act
from oracle import GGML_TYPE, encode

QUANT_TYPES = ["Q8_0", "Q4_0"]


def check(y, ref, bound, rel):
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= rel * bound + 1e-30), f"max err {err.max():.3g}, bound {(rel * bound).max():.3g}"


@settings(max_examples=80, deadline=None)
@given(wtype=st.sampled_from(QUANT_TYPES), K=st.sampled_from([32, 64, 96, 160, 256, 2688]),
       rows=st.integers(1, 45), T=st.integers(1, 11), data=st.data(), seed=st.integers(0, 2**31))
def test_x8_matmul_matches_float64(wtype, K, rows, T, data, seed):
    rng = np.random.default_rng(seed)
    raw, gtype, deq, _ = encode(rng.normal(0, 1, (rows, K)), wtype)
    x = (rng.normal(0, 1, (T, K)) * rng.uniform(0.1, 10, (T, 1))).astype(np.float32)
    # the engine hands out whole groups of 8 rows; the last group may be partial
    g0 = data.draw(st.integers(0, (rows - 1) // 8))
    r0 = 8 * g0
    r1 = data.draw(st.sampled_from(sorted({min(rows, 8 * g) for g in range(g0 + 1, (rows + 7) // 8 + 1)})))
    ref = matmul_quant_ref(deq, x)
    d, q = quantize_q8_act(x)
    bound = (np.abs(q) * d[..., None]).reshape(T, K) @ np.abs(deq).T
    for v in VARIANTS:
        for reference in (False, True):
            y = core.ops.matmul(raw, gtype, K, rows, x, variant=v, reference=reference, layout="x8", r0=r0, r1=r1)
            check(y[:, r0:r1], ref[:, r0:r1], bound[:, r0:r1], 4 * (K // 32 + 8) * 2**-24)
            outside = np.ones(rows, bool)
            outside[r0:r1] = False
            assert np.isnan(y[:, outside]).all(), "a kernel wrote rows outside [r0, r1)"


@pytest.mark.parametrize("wtype", QUANT_TYPES)
@pytest.mark.parametrize("rows", [1, 8, 13, 24, 31])
def test_x8_reference_equals_file_layout_reference(wtype, rows):
    rng = np.random.default_rng(rows)
    K, T = 96, 5
    raw, gtype, _, _ = encode(rng.normal(0, 1, (rows, K)), wtype)
    x = rng.normal(0, 3, (T, K)).astype(np.float32)
    for v in VARIANTS:
        a = core.ops.matmul(raw, gtype, K, rows, x, variant=v, reference=True)
        b = core.ops.matmul(raw, gtype, K, rows, x, variant=v, reference=True, layout="x8")
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_x8_extreme_codes_do_not_overflow(sign):
    """Largest int partial sums: Q4_0 nibbles 15 (value 7) and Q8_0 codes +-127 / -128 against
    activations that quantize to +-127 everywhere; the Q4_0 kernel keeps 8 maddubs pairs in int16."""
    K, rows, T = 256, 16, 5
    x = np.full((T, K), sign, np.float32)
    nb = K // 32
    one = np.array([1.0], np.float16).view(np.uint8)
    q4 = np.zeros((rows, nb, 18), np.uint8)
    q4[..., :2] = one
    q4[..., 2:] = 0xFF                                # every nibble 15 -> value 15 - 8 = 7
    q8 = np.zeros((rows, nb, 34), np.uint8)
    q8[..., :2] = one
    q8[..., 2:] = np.where(np.arange(rows)[:, None, None] % 2, 0x80, 0x7F)   # -128 / +127
    cases = [(q4, GGML_TYPE["Q4_0"], np.full((rows, K), 7.0)),
             (q8, GGML_TYPE["Q8_0"], np.where(np.arange(rows)[:, None] % 2, -128.0, 127.0) * np.ones((rows, K)))]
    for raw, gtype, deq in cases:
        want = matmul_quant_ref(deq, x)
        for v in VARIANTS:
            for layout in ("rows", "x8"):
                y = core.ops.matmul(raw.reshape(-1), gtype, K, rows, x, variant=v, layout=layout)
                np.testing.assert_allclose(y, want, rtol=1e-6)


def test_x8_layout_rejects_what_it_cannot_hold():
    rng = np.random.default_rng(0)
    raw, gtype, _, scale = encode(rng.normal(0, 1, (8, 64)), "FP8")
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(ValueError, match="Q8_0 and Q4_0"):
        core.ops.matmul(raw, gtype, 64, 8, x, scale=scale, layout="x8")
    raw, gtype, _, _ = encode(rng.normal(0, 1, (12, 64)), "Q8_0")
    with pytest.raises(ValueError, match="multiple of 8"):
        core.ops.matmul(raw, gtype, 64, 12, x, layout="x8", r0=4)
