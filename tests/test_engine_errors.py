"""Every bad input to the engine raises ValueError (naming the tensor where there is one)
before any compute or state change; nothing crashes."""

from __future__ import annotations

import numpy as np
import pytest

import nemocpu._core as core
from oracle import random_gguf_tensors, tiny_hparams

HP = tiny_hparams("MEM*EME*M")


@pytest.fixture(scope="module")
def model():
    tensors, _ = random_gguf_tensors(HP, 0, "Q8_0")
    return tensors, core.Engine(HP.as_dict(), tensors, 2)


def make(tensors, hp=HP, **kw):
    return core.Engine(hp.as_dict(), tensors, 1, **kw)


def test_eval_errors_leave_state_untouched(model):
    _, eng = model
    st = eng.new_state(8)
    eng.eval(st, np.array([1, 2], np.int32))
    snap = st.snapshot()
    bad_inputs = [np.array([], np.int32), np.array([1, HP.n_vocab], np.int32), np.array([-1], np.int32),
                  np.array([2**40], np.int64), np.arange(7, dtype=np.int32), np.array([1.0, 2.0]),
                  np.zeros((2, 2), np.int32)]
    for bad in bad_inputs:
        with pytest.raises(ValueError):
            eng.eval(st, bad)
        assert st.n_past == 2
    np.testing.assert_array_equal(eng.eval(st, np.array([3], np.int32)), eng.eval(snap, np.array([3], np.int32)))


def test_context_overflow_message(model):
    _, eng = model
    st = eng.new_state(4)
    with pytest.raises(ValueError, match="n_ctx"):
        eng.eval(st, np.arange(5, dtype=np.int32))


def test_bad_state_arguments(model):
    _, eng = model
    with pytest.raises(ValueError):
        eng.new_state(0)
    with pytest.raises(ValueError):
        eng.new_state(8, "q8")


def test_restore_from_another_layout(model):
    _, eng = model
    a, b = eng.new_state(8), eng.new_state(16)
    with pytest.raises(ValueError):
        a.restore(b)


@pytest.mark.parametrize("mutate, name", [
    (lambda t: t.pop("blk.1.ffn_up_exps.weight"), "blk.1.ffn_up_exps.weight"),
    (lambda t: t.__setitem__("blk.0.ssm_a", (t["blk.0.ssm_a"][0], 0, (8, 1))), "blk.0.ssm_a"),
    (lambda t: t.__setitem__("blk.0.ssm_norm.weight", (t["blk.0.ssm_norm.weight"][0], 1, (4, 8))),
     "blk.0.ssm_norm.weight"),
    (lambda t: t.__setitem__("blk.3.attn_q.weight", (t["blk.3.attn_q.weight"][0][:-1], 8, (64, 64))),
     "blk.3.attn_q.weight"),
    (lambda t: t.__setitem__("blk.3.attn_k.weight", (t["blk.3.attn_k.weight"][0], 12, (64, 32))),
     "blk.3.attn_k.weight"),
    (lambda t: t.__setitem__("output_norm.weight", (np.zeros(64 * 4, np.uint8), 8, (64,))), "output_norm.weight"),
    (lambda t: t.pop("token_embd.weight"), "token_embd.weight"),
])
def test_bad_tensors_are_named(model, mutate, name):
    tensors = dict(model[0])
    mutate(tensors)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        make(tensors)


def test_fp8_needs_its_scale():
    tensors, _ = random_gguf_tensors(HP, 0, "FP8")
    t = dict(tensors)
    t.pop("blk.0.ssm_in.weight_scale")
    with pytest.raises(ValueError, match=r"blk\.0\.ssm_in\.weight_scale"):
        make(t)
    t = dict(tensors)
    t["blk.0.ssm_in.weight_scale"] = (np.zeros(12, np.uint8), 0, (3,))
    with pytest.raises(ValueError, match="weight_scale"):
        make(t)


def test_quant_rows_must_be_block_multiples():
    hp = tiny_hparams("M", n_embd=48)
    tensors, _ = random_gguf_tensors(hp, 0, "F32")
    raw = np.zeros(48 // 32 * 34 * hp.ssm_in_dim, np.uint8)
    tensors["blk.0.ssm_in.weight"] = (raw, 8, (48, hp.ssm_in_dim))
    with pytest.raises(ValueError, match=r"blk\.0\.ssm_in\.weight"):
        make(tensors, hp)


def test_bad_hparams_and_arguments(model):
    tensors = model[0]
    d = HP.as_dict()
    d.pop("n_embd")
    with pytest.raises(ValueError, match="n_embd"):
        core.Engine(d, tensors, 1)
    d = HP.as_dict()
    d["n_expert_used"] = 99
    with pytest.raises(ValueError):
        core.Engine(d, tensors, 1)
    with pytest.raises(ValueError):
        make(tensors, dt_floor=-1.0)
    with pytest.raises(ValueError):
        core.Engine(HP.as_dict(), {"token_embd.weight": "nope"}, 1)


def test_missing_output_reuses_embedding():
    """Like llama.cpp: no output.weight means tied embeddings."""
    tensors, _ = random_gguf_tensors(HP, 0, "F32")
    tensors = dict(tensors)
    tensors.pop("output.weight")
    eng = make(tensors)
    assert eng.eval(eng.new_state(4), np.array([1], np.int32)).shape == (1, HP.n_vocab)
