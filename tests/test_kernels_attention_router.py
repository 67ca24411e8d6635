"""Attention over a KV cache (f32 and f16 cache) and the MoE router against float64 / numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nemocpu._core as core
from kernel_ref import VARIANTS
from oracle import route as oracle_route, tiny_hparams


def attn_ref(q, k, v, nq, nkv, n_past):
    T = q.shape[0]
    hd = q.shape[1] // nq
    o = np.zeros((T, nq * hd))
    for t in range(T):
        n = n_past + t + 1
        for j in range(nq):
            g = j // (nq // nkv)
            s = k[:n, g * hd:(g + 1) * hd] @ q[t, j * hd:(j + 1) * hd] / np.sqrt(hd)
            p = np.exp(s - s.max())
            p /= p.sum()
            o[t, j * hd:(j + 1) * hd] = p @ v[:n, g * hd:(g + 1) * hd]
    return o


@settings(max_examples=30, deadline=None)
@given(nkv=st.integers(1, 3), rep=st.integers(1, 3), hd=st.sampled_from([1, 4, 8, 16, 24]),
       n_past=st.integers(0, 20), T=st.integers(1, 9), f16=st.booleans(), seed=st.integers(0, 2**31))
def test_attention_matches_reference(nkv, rep, hd, n_past, T, f16, seed):
    rng = np.random.default_rng(seed)
    nq = nkv * rep
    q = rng.normal(0, 1, (T, nq * hd)).astype(np.float32)
    k = rng.normal(0, 1, (n_past + T, nkv * hd)).astype(np.float16 if f16 else np.float32)
    v = rng.normal(0, 1, (n_past + T, nkv * hd)).astype(np.float16 if f16 else np.float32)
    ref = attn_ref(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), nq, nkv, n_past)
    for var in VARIANTS:
        o = core.ops.attention(q, k, v, nq, nkv, n_past, variant=var)
        assert np.abs(o - ref).max() <= 1e-5 * (1 + np.abs(ref).max())


def test_attention_incremental_equals_full():
    rng = np.random.default_rng(1)
    nq, nkv, hd, T = 4, 2, 8, 12
    q = rng.normal(0, 1, (T, nq * hd)).astype(np.float32)
    k = rng.normal(0, 1, (T, nkv * hd)).astype(np.float32)
    v = rng.normal(0, 1, (T, nkv * hd)).astype(np.float32)
    for var in VARIANTS:
        full = core.ops.attention(q, k, v, nq, nkv, 0, variant=var)
        steps = [core.ops.attention(q[t:t + 1], k[:t + 1], v[:t + 1], nq, nkv, t, variant=var) for t in range(T)]
        np.testing.assert_array_equal(np.concatenate(steps), full)


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
