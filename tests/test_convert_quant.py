"""The converter's encoders vs references, on random rows of many shapes (hypothesis):
Q8_0/Q4_0/BF16/F16 bytes equal to gguf-py's reference quantizers (gguf.quants.quantize, which
matches ggml's C reference bit for bit), FP8 codes equal to a from-scratch E4M3 table search."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants as gq
from hypothesis import given, settings
from hypothesis import strategies as st

from nemocpu.convert import types as ty


@st.composite
def rows(draw):
    n = draw(st.integers(1, 6))
    ne0 = 32 * draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-6, 1e-3, 1.0, 300.0, 6e4]))
    x = (rng.standard_normal((n, ne0)) * scale).astype(np.float32)
    kind = draw(st.sampled_from(["plain", "zeros", "ties", "one-hot", "const"]))
    if kind == "zeros":
        x[:, : ne0 // 2] = 0
    elif kind == "ties":      # values on exact half steps of the Q8_0 grid: rounding direction matters
        x = (rng.integers(-254, 255, (n, ne0)) * 0.5).astype(np.float32)
        x[:, 0] = 127.0
    elif kind == "one-hot":
        x[:] = 0
        x[:, rng.integers(0, ne0)] = -scale
    elif kind == "const":
        x[:] = np.float32(scale)
    return x


@settings(max_examples=60, deadline=None)
@given(rows(), st.sampled_from([T.Q8_0, T.Q4_0, T.BF16, T.F16, T.F32]))
def test_encode_rows_equals_gguf_reference(x, qtype):
    with np.errstate(over="ignore"):      # F16 of 6e4-scale rows: inf in both (the converter refuses those)
        got = ty.encode_rows(x, qtype)
        want = gq.quantize(x, qtype).reshape(-1).view(np.uint8)
    assert got.tobytes() == want.tobytes()


def _e4m3_values() -> tuple[np.ndarray, np.ndarray]:
    """(code, value) of every finite float8_e4m3fn, decoded from the bit layout by hand."""
    codes, vals = [], []
    for c in range(256):
        s, e, m = c >> 7, (c >> 3) & 0xF, c & 7
        if e == 15 and m == 7:
            continue                         # NaN
        v = (m / 8) * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
        codes.append(c)
        vals.append(-v if s else v)
    return np.array(codes, np.uint8), np.array(vals, np.float64)


E4M3_CODES, E4M3_VALS = _e4m3_values()


def e4m3_rne_reference(x: np.ndarray) -> np.ndarray:
    """Nearest finite E4M3 value, ties to the even mantissa, +0 for zero (|x| <= 448 assumed)."""
    out = np.empty(x.shape, np.uint8)
    for idx, v in np.ndenumerate(x.astype(np.float64)):
        d = np.abs(E4M3_VALS - v)
        best = np.flatnonzero(d == d.min())
        if len(best) > 1:
            even = [b for b in best if E4M3_CODES[b] & 1 == 0]
            best = even or best
        c = E4M3_CODES[best[0]]
        if v == 0:
            c = 0
        out[idx] = c
    return out


@settings(max_examples=40, deadline=None)
@given(rows())
def test_fp8_rows_per_row_scale_and_rne_codes(x):
    codes, scale = ty.fp8_rows(x)
    amax = np.abs(x).max(axis=1)
    want_scale = np.where(amax > 0, amax / np.float32(448), np.float32(1)).astype(np.float32)
    np.testing.assert_array_equal(scale, want_scale)
    scaled = np.clip(x / want_scale[:, None], -448, 448)
    ref = e4m3_rne_reference(scaled)
    # -0.0 and +0.0 both decode to 0: compare decoded values, then the codes of non-zeros
    got_v = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    ref_v = ref.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    np.testing.assert_array_equal(got_v, ref_v)
    assert not np.isnan(got_v).any()


def test_q8_0_rounding_at_every_half_step():
    """Blocks with amax 127 have d = 1, so each element is rounded as is: k + 0.5 and its float32
    neighbours, for every k, both signs, must round like ggml's roundf (gguf.quants)."""
    half = np.arange(127, dtype=np.float32) + np.float32(0.5)
    vals = [half]
    for direction in (0, 200):
        v = half
        for _ in range(3):
            v = np.nextafter(v, np.float32(direction))
            vals.append(v)
    vals = np.concatenate(vals)
    vals = np.concatenate([vals, -vals])
    vals = vals[np.abs(vals) <= 127]
    vals = np.concatenate([vals, np.zeros(-len(vals) % 31, np.float32)])
    blocks = np.concatenate([np.full((len(vals) // 31, 1), 127, np.float32), vals.reshape(-1, 31)], axis=1)
    assert ty.q8_0_blocks(blocks).tobytes() == gq.Q8_0.quantize_blocks(blocks).tobytes()
