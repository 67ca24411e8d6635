"""Attention over a KV cache (f32 and f16 cache) and the MoE router against float64 / numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nemocpu._core as core
from kernel_ref import VARIANTS
from oracle import route as oracle_route, tiny_hparams


def attn_ref(q, k, v, nq, nkv, n_past):
    """float64 causal GQA: query t sees cache positions 0..n_past+t."""
    T = q.shape[0]
    hd = q.shape[1] // nq
    rep = nq // nkv
    o = np.zeros((T, nq * hd))
    for t in range(T):
        n = n_past + t + 1
        for g in range(nkv):
            qg = q[t, g * rep * hd:(g + 1) * rep * hd].reshape(rep, hd)
            s = qg @ k[:n, g * hd:(g + 1) * hd].T / np.sqrt(hd)          # [rep, n]
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            o[t, g * rep * hd:(g + 1) * rep * hd] = (p @ v[:n, g * hd:(g + 1) * hd]).ravel()
    return o


def attn_case(rng, nkv, rep, hd, n_past, T, f16):
    nq = nkv * rep
    q = rng.normal(0, 1, (T, nq * hd)).astype(np.float32)
    k = rng.normal(0, 1, (n_past + T, nkv * hd)).astype(np.float16 if f16 else np.float32)
    v = rng.normal(0, 1, (n_past + T, nkv * hd)).astype(np.float16 if f16 else np.float32)
    return q, k, v, attn_ref(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), nq, nkv, n_past)


def assert_close(o, ref):
    assert np.abs(o - ref).max() <= 1e-5 * (1 + np.abs(ref).max())


# The kernel takes one kv head with its `rep` query heads for a tile of tokens and a key range;
# ops.attention runs it as the engine does (tiles, split-K ranges merged by attention_merge).
@settings(max_examples=60, deadline=None)
@given(nkv=st.integers(1, 2), rep=st.integers(1, 16), hd=st.sampled_from([1, 4, 8, 12, 16, 24, 64, 100, 128, 256]),
       n_keys=st.one_of(st.integers(1, 100), st.integers(100, 3000)), T=st.integers(1, 6), f16=st.booleans(), n_split=st.integers(1, 9),
       tile=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_attention_matches_float64(nkv, rep, hd, n_keys, T, f16, n_split, tile, seed):
    T = min(T, n_keys)
    q, k, v, ref = attn_case(np.random.default_rng(seed), nkv, rep, hd, n_keys - T, T, f16)
    for var in VARIANTS:
        for reference in (False, True):
            o = core.ops.attention(q, k, v, nkv * rep, nkv, n_keys - T, n_split=n_split, tile=tile, variant=var,
                                   reference=reference)
            assert_close(o, ref)


@settings(max_examples=30, deadline=None)
@given(nkv=st.integers(1, 3), rep=st.integers(1, 3), hd=st.sampled_from([1, 4, 8, 16, 24]),
       n_past=st.integers(0, 80), T=st.integers(1, 40), f16=st.booleans(), seed=st.integers(0, 2**31))
def test_attention_prefill_tiles_match_float64(nkv, rep, hd, n_past, T, f16, seed):
    """Many tokens per call: the causal triangle inside a tile and key blocks split by it."""
    q, k, v, ref = attn_case(np.random.default_rng(seed), nkv, rep, hd, n_past, T, f16)
    for var in VARIANTS:
        assert_close(core.ops.attention(q, k, v, nkv * rep, nkv, n_past, variant=var), ref)
        assert_close(core.ops.attention(q, k, v, nkv * rep, nkv, n_past, n_split=3, tile=7, variant=var), ref)


@settings(max_examples=20, deadline=None)
@given(rep=st.integers(1, 16), hd=st.sampled_from([8, 13, 64, 128]), n_past=st.integers(0, 200),
       T=st.integers(2, 24), f16=st.booleans(), seed=st.integers(0, 2**31))
def test_attention_is_the_same_bits_for_any_tile(rep, hd, n_past, T, f16, seed):
    """Key blocks are aligned to absolute positions: prefill == token-by-token decode, bit for bit."""
    q, k, v, _ = attn_case(np.random.default_rng(seed), 2, rep, hd, n_past, T, f16)
    for var in VARIANTS:
        full = core.ops.attention(q, k, v, 2 * rep, 2, n_past, variant=var)
        for tile in (1, 3):
            np.testing.assert_array_equal(core.ops.attention(q, k, v, 2 * rep, 2, n_past, tile=tile, variant=var), full)
        steps = [core.ops.attention(q[t:t + 1], k[:n_past + t + 1], v[:n_past + t + 1], 2 * rep, 2, n_past + t,
                                    variant=var) for t in range(T)]
        np.testing.assert_array_equal(np.concatenate(steps), full)
        again = core.ops.attention(q, k, v, 2 * rep, 2, n_past, n_split=4, variant=var)
        np.testing.assert_array_equal(core.ops.attention(q, k, v, 2 * rep, 2, n_past, n_split=4, variant=var), again)


def test_attention_split_k_long_context():
    """Decode at a long context cut in many ranges (as the engine does on many threads)."""
    q, k, v, ref = attn_case(np.random.default_rng(3), 2, 16, 128, 8191, 1, True)
    for var in VARIANTS:
        for n_split in (1, 2, 16, 64):
            assert_close(core.ops.attention(q, k, v, 32, 2, 8191, n_split=n_split, variant=var), ref)


def test_attention_is_causal_and_propagates_nan():
    """A NaN/inf in a position a query may not see cannot reach it; one it sees poisons it."""
    rng = np.random.default_rng(4)
    T, n_past = 5, 40
    q, k, v, ref = attn_case(rng, 2, 3, 16, n_past, T, True)
    k[-1, :] = np.inf
    v[-1, :] = np.nan
    for var in VARIANTS:
        for n_split, tile in ((1, None), (3, 2)):
            o = core.ops.attention(q, k, v, 6, 2, n_past, n_split=n_split, tile=tile, variant=var)
            assert_close(o[:-1], ref[:-1])
            assert np.isnan(o[-1]).all()


def test_attention_rejects_bad_arguments():
    q = np.zeros((2, 16), np.float32)
    kv = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match="n_split"):
        core.ops.attention(q, kv, kv, 2, 1, 0, n_split=0)
    with pytest.raises(ValueError, match="tile"):
        core.ops.attention(q, kv, kv, 2, 1, 0, tile=0)
    with pytest.raises(ValueError):
        core.ops.attention(q, kv[:1], kv[:1], 2, 1, 0)
    with pytest.raises(ValueError):
        core.ops.attention(q, kv, kv.astype(np.float16), 2, 1, 0)


def test_to_f16_round_to_nearest_even():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1, 1000), rng.normal(0, 1e-6, 100), [65504, 65520, 1e6, -1e-8, 0.0]])
    x = x.astype(np.float32)
    with np.errstate(over="ignore"):      # 1e6 -> inf is the point
        want = x.astype(np.float16).view(np.uint16)
    for var in VARIANTS:
        np.testing.assert_array_equal(core.ops.to_f16(x, variant=var), want)


# ---- router --------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(E=st.sampled_from([4, 8, 16, 32]), k=st.integers(1, 4), groups=st.sampled_from([1, 2, 4]),
       norm=st.booleans(), T=st.integers(1, 6), seed=st.integers(0, 2**31), ties=st.booleans())
def test_router_matches_numpy(E, k, groups, norm, T, seed, ties):
    rng = np.random.default_rng(seed)
    used = max(1, groups // 2)
    if used * (E // groups) < k:
        used = groups
    hp = tiny_hparams("E", n_expert=E, n_expert_used=k, expert_group_count=groups,
                      expert_group_used_count=used, expert_weights_norm=norm, expert_weights_scale=2.5)
    logits = rng.normal(0, 2, (T, E)).astype(np.float32)
    bias = rng.uniform(-0.2, 0.2, E).astype(np.float32)
    if ties:   # exact ties in the selection score: lower index must win
        logits[:, 1::2] = logits[:, 0::2]
        bias[:] = 0
    idx, w = core.ops.route(logits, bias, k, groups, used, norm, 2.5)
    # the reference works in float32 for the scores, so ties stay ties
    s32 = (1 / (1 + np.exp(-logits.astype(np.float32)))).astype(np.float32)
    logit_for_ref = -np.log(1 / s32.astype(np.float64) - 1)   # same s in float64
    ridx, rw = oracle_route(logit_for_ref, bias.astype(np.float64), hp)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_allclose(w, rw, rtol=1e-5)


def test_router_near_ties_use_biased_selection_but_unbiased_weights():
    logits = np.array([[0.0, 0.0, 0.0, 0.0]], np.float32)
    bias = np.array([0.0, 1e-6, 0.0, 2e-6], np.float32)
    idx, w = core.ops.route(logits, bias, 2, norm=False, scale=1.0)
    assert idx.tolist() == [[3, 1]]
    np.testing.assert_allclose(w, [[0.5, 0.5]])


def test_group_routing_masks_groups():
    # group 0 holds the single best expert but group 1 has the best top-2 sum
    logits = np.array([[5.0, -5.0, 2.0, 2.0]], np.float32)
    idx, _ = core.ops.route(logits, None, 2, n_group=2, n_group_used=1, norm=True, scale=1.0)
    assert sorted(idx[0].tolist()) == [2, 3]
    idx, _ = core.ops.route(logits, None, 2, n_group=1, n_group_used=1)
    assert idx[0].tolist()[0] == 0


def test_router_rejects_bad_arguments():
    with pytest.raises(ValueError):
        core.ops.route(np.zeros((1, 4), np.float32), None, 5)
    with pytest.raises(ValueError):
        core.ops.route(np.zeros((1, 4), np.float32), np.zeros(3, np.float32), 2)


def test_router_survives_nan_scores():
    logits = np.array([[np.nan, 1.0, np.nan, 0.5, -1.0]], np.float32)
    idx, w = core.ops.route(logits, None, 2, norm=True, scale=1.0)
    assert idx.tolist() == [[1, 3]] and np.isfinite(w).all()
