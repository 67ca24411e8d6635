"""Sampling against transformers' logits processors (the reference) and float64 numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nemocpu.sampling import (REASONING_DEFAULTS, Sampler, SamplingParams, apply_penalties, filter_mask,
                              recommended_params)

torch = pytest.importorskip("torch")
gen_utils = pytest.importorskip("transformers.generation.logits_process")

logits_st = st.integers(2, 300).flatmap(
    lambda n: st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=n, max_size=n))


def hf_filtered(x, temperature, top_k, top_p, min_p):
    t = torch.tensor(np.asarray(x, dtype=np.float64))[None]
    ids = torch.zeros((1, 1), dtype=torch.long)
    t = gen_utils.TemperatureLogitsWarper(temperature)(ids, t)
    if top_k:
        t = gen_utils.TopKLogitsWarper(top_k)(ids, t)
    if top_p < 1:
        t = gen_utils.TopPLogitsWarper(top_p)(ids, t)
    if min_p > 0:
        t = gen_utils.MinPLogitsWarper(min_p)(ids, t)
    return torch.isfinite(t[0]).numpy()


@settings(max_examples=80, deadline=None)
@given(logits_st, st.floats(0.1, 2.0), st.integers(0, 50), st.floats(0.05, 1.0), st.floats(0.0, 0.5))
def test_filters_keep_the_same_tokens_as_transformers(x, temperature, top_k, top_p, min_p):
    x = np.asarray(x, dtype=np.float64)
    # ties at the cut make the kept set ambiguous; keep the comparison meaningful
    if len(np.unique(x)) != len(x):
        x = x + np.arange(len(x)) * 1e-6
    z = x / temperature
    ours = filter_mask(z, top_k, top_p, min_p)
    ref = hf_filtered(x, temperature, top_k, top_p, min_p)
    probs = np.exp(z - z.max()); probs /= probs.sum()
    # a token within rounding of a cumulative-probability boundary may fall either way (our
    # normaliser sums float32 exponentials: relative error ~1e-7)
    before = np.cumsum(np.sort(probs)[::-1])
    if top_p < 1 and np.min(np.abs(before - top_p)) < 1e-6:
        return
    if min_p > 0 and np.min(np.abs(probs - min_p * probs.max())) < 1e-12:
        return
    assert np.array_equal(ours, ref)


@settings(max_examples=60, deadline=None)
@given(logits_st, st.lists(st.integers(0, 299), max_size=40), st.floats(0.5, 2.0), st.floats(-1, 1),
       st.floats(-1, 1))
def test_penalties_match_transformers_and_the_openai_formula(x, hist, rep, presence, frequency):
    x = np.asarray(x, dtype=np.float64)
    hist = [h for h in hist if h < len(x)]
    p = SamplingParams(repetition_penalty=rep, penalty_last_n=-1)
    ours = apply_penalties(x, hist, p)
    if hist:
        ref = gen_utils.RepetitionPenaltyLogitsProcessor(rep)(torch.tensor([hist]), torch.tensor(x)[None])[0].numpy()
    else:
        ref = x
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)
    p = SamplingParams(presence_penalty=presence, frequency_penalty=frequency, penalty_last_n=-1)
    expected = x.copy()
    for tid in set(hist):
        expected[tid] -= presence + frequency * hist.count(tid)
    np.testing.assert_allclose(apply_penalties(x, hist, p), expected, rtol=1e-12, atol=1e-12)


def test_penalty_window_only_sees_recent_tokens():
    x = np.ones(5)
    out = apply_penalties(x, [0, 1, 2], SamplingParams(presence_penalty=1.0, penalty_last_n=2))
    assert list(out) == [1, 0, 0, 1, 1]


def test_greedy_is_argmax_and_bans_are_respected():
    x = np.array([0.1, 5.0, 5.0, 3.0])
    assert Sampler(SamplingParams(temperature=0)).sample(x) == 1          # first max, like torch.argmax
    assert Sampler(SamplingParams(temperature=0), banned=np.array([1, 2])).sample(x) == 3


def test_same_seed_same_tokens_and_different_seed_differs():
    rows = np.random.default_rng(0).normal(size=(50, 100))
    p = SamplingParams(temperature=1.0, seed=1234)
    s1, s2 = Sampler(p), Sampler(p)
    first = [s1.sample(r) for r in rows]
    assert first == [s2.sample(r) for r in rows]
    other = Sampler(SamplingParams(temperature=1.0, seed=99))
    assert first != [other.sample(r) for r in rows]


def test_draws_follow_the_filtered_distribution():
    x = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.75, seed=7))
    counts = np.bincount([s.sample(x) for _ in range(20000)], minlength=4)
    # top_p 0.75 keeps {0.5, 0.3} -> renormalised 0.625 / 0.375
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / 20000 - 0.625) < 0.015
    s = Sampler(SamplingParams(temperature=2.0, seed=7))
    counts = np.bincount([s.sample(x) for _ in range(20000)], minlength=4)
    expected = np.sqrt([0.5, 0.3, 0.15, 0.05]); expected /= expected.sum()
    assert np.abs(counts / 20000 - expected).max() < 0.015


def test_recommended_defaults():
    assert recommended_params({}, reasoning=True) == SamplingParams(**REASONING_DEFAULTS)
    assert recommended_params({}, reasoning=False).greedy
    meta = {"general.sampling.temp": 0.3, "general.sampling.top_k": 20}
    p = recommended_params(meta, reasoning=True, top_p=None, seed=5)
    assert (p.temperature, p.top_k, p.top_p, p.seed) == (0.3, 20, 0.95, 5)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)


@pytest.mark.parametrize("kw", [{"top_p": 0.99999}, {"top_k": 3}, {"min_p": 0.01}, {}])
def test_draws_use_token_ids_when_a_filter_keeps_everything(kw):
    # every token survives but the filter returns them best-first: ids must not be confused with ranks
    probs = np.array([0.2, 0.3, 0.5])
    s = Sampler(SamplingParams(temperature=1.0, seed=3, **kw))
    counts = np.bincount([s.sample(np.log(probs)) for _ in range(20000)], minlength=3) / 20000
    assert np.abs(counts - probs).max() < 0.015
