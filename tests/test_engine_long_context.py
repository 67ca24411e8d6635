"""The engine's attention at contexts long enough to cut the keys into ranges (split-K, merged
by attention_merge), against the float64 oracle; the cut never depends on the thread count."""

from __future__ import annotations

import numpy as np
import pytest

import nemocpu._core as core
from helpers.engine_cases import rel_err
from oracle import OracleState, forward, random_gguf_tensors, tiny_hparams

N = 700   # > 2 x 256 keys: prefill ubatches and decode steps both split the keys


@pytest.mark.parametrize("kv", ["f32", "f16"])
def test_long_context_prefill_and_decode_match_oracle(kv):
    hp = tiny_hparams(layer_kinds="M*E*", n_head=8, n_head_kv=2)
    tensors, P = random_gguf_tensors(hp, 3, "F32")
    ids = (np.arange(N + 3) * 37 % hp.n_vocab).astype(np.int32)
    ost = OracleState(hp)
    ref = forward(P, hp, ids[:N], state=ost)
    ref_steps = np.concatenate([forward(P, hp, ids[i:i + 1], state=ost) for i in range(N, N + 3)])
    tol = 1e-4 if kv == "f32" else 2e-3   # f16 cache: keys/values rounded to 11 bits
    outs = []
    for threads in (1, 3):
        eng = core.Engine(hp.as_dict(), tensors, threads, 0.0)
        st = eng.new_state(N + 3, kv)
        pre = eng.eval(st, ids[:N], all_logits=True)
        steps = np.concatenate([eng.eval(st, ids[i:i + 1]) for i in range(N, N + 3)])
        assert rel_err(pre, ref) <= tol and rel_err(steps, ref_steps) <= tol
        outs.append((pre, steps))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
