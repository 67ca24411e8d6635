"""The C++ engine on random tiny models against the float64 oracle (tests/oracle.py).

F32 weights: max relative error <= 1e-4 (of max |logit|) on prefill and on step-by-step decode.
Q8_0 / Q4_0 weights: the oracle reproduces the engine's int8 activation quantization, so the
same 1e-4 holds (what is left is fp32 accumulation, and rare round-half flips of one int8
activation step). F16 / BF16 / FP8 weights: the oracle uses the exact decoded weights.
"""

from __future__ import annotations

import numpy as np
import pytest

import nemocpu._core as core
from helpers.engine_cases import CONFIGS, IDS, rel_err
from oracle import OracleState, forward, quantized_names, random_gguf_tensors, tiny_hparams

TOL = 1e-4


def build(cfg, wtype="F32", seed=0, threads=2, dt_floor=0.0, repack=True):
    hp = tiny_hparams(**CONFIGS[cfg])
    tensors, params = random_gguf_tensors(hp, seed, wtype)
    eng = core.Engine(hp.as_dict(), tensors, threads, dt_floor, repack=repack)
    return hp, eng, params, quantized_names(tensors)


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("kv", ["f32", "f16"])
def test_f32_prefill_and_decode_match_oracle(cfg, kv):
    hp, eng, P, _ = build(cfg)
    ref = forward(P, hp, IDS)
    # f16 KV cache: keys/values rounded to 11 bits -> ~5e-4 relative on attention outputs
    tol = TOL if kv == "f32" else 2e-3
    st = eng.new_state(32, kv)
    assert rel_err(eng.eval(st, IDS, all_logits=True), ref) <= tol
    st = eng.new_state(32, kv)
    steps = np.concatenate([eng.eval(st, IDS[i:i + 1]) for i in range(len(IDS))])
    assert rel_err(steps, ref) <= tol
    assert st.n_past == len(IDS)


@pytest.mark.parametrize("wtype", ["F16", "BF16", "Q8_0", "Q4_0", "FP8", "Q8_0-rows", "Q4_0-rows"])
@pytest.mark.parametrize("cfg", ["moe", "dense"])
def test_weight_types_match_oracle(cfg, wtype):
    """Q8_0/Q4_0 run repacked to the 8-row layout by default; "-rows" keeps the file's layout."""
    wtype, _, layout = wtype.partition("-")
    hp, eng, P, aq = build(cfg, wtype, seed=1, repack=layout != "rows")
    ref = forward(P, hp, IDS, act_quant=aq)
    st = eng.new_state(32, "f32")
    assert rel_err(eng.eval(st, IDS, all_logits=True), ref) <= TOL
    st = eng.new_state(32, "f32")
    last = [eng.eval(st, IDS[i:i + 1])[0] for i in range(len(IDS))]
    assert rel_err(np.stack(last), ref) <= TOL


def test_last_logits_only_equals_last_row():
    hp, eng, P, _ = build("moe")
    full = eng.eval(eng.new_state(32, "f32"), IDS, all_logits=True)
    last = eng.eval(eng.new_state(32, "f32"), IDS)
    assert last.shape == (1, hp.n_vocab) and last.dtype == np.float32
    np.testing.assert_array_equal(last[0], full[-1])


@pytest.mark.parametrize("cfg", ["moe", "dense"])
def test_chunked_prefill_equals_one_prefill(cfg):
    _, eng, _, _ = build(cfg)
    one = eng.eval(eng.new_state(32), IDS, all_logits=True)
    st = eng.new_state(32)
    parts = [eng.eval(st, IDS[a:b], all_logits=True) for a, b in [(0, 3), (3, 4), (4, 9), (9, 11)]]
    np.testing.assert_allclose(np.concatenate(parts), one, rtol=0, atol=1e-5 * np.abs(one).max())


def test_dt_floor_prefill_only():
    """dt_floor clamps in evals that start at n_past == 0 or have T > 1, never in decode."""
    hp, eng, P, _ = build("moe", dt_floor=1e-3)
    floor = 1e-3
    ref_plain = forward(P, hp, IDS)
    ref_clamped = forward(P, hp, IDS, dt_floor=floor)
    assert rel_err(ref_clamped, ref_plain) > 1e-3       # the random dt_bias makes the clamp matter
    assert rel_err(eng.eval(eng.new_state(32, "f32"), IDS, all_logits=True), ref_clamped) <= TOL
    # prefill 4 tokens (clamped), then decode one by one (not clamped)
    st = eng.new_state(32, "f32")
    ost = OracleState(hp)
    got = [eng.eval(st, IDS[:4], all_logits=True)]
    want = [forward(P, hp, IDS[:4], dt_floor=floor, state=ost)]
    for i in range(4, len(IDS)):
        got.append(eng.eval(st, IDS[i:i + 1]))
        want.append(forward(P, hp, IDS[i:i + 1], dt_floor=floor, state=ost))
    assert rel_err(np.concatenate(got), np.concatenate(want)) <= TOL


def test_snapshot_restore_gives_identical_continuations():
    _, eng, _, _ = build("moe")
    st = eng.new_state(32)
    eng.eval(st, IDS[:6])
    snap = st.snapshot()
    assert snap.n_past == 6
    a = eng.eval(st, IDS[6:], all_logits=True)
    eng.eval(st, IDS[:3])                      # wander off
    st.restore(snap)
    assert st.n_past == 6
    b = eng.eval(st, IDS[6:], all_logits=True)
    np.testing.assert_array_equal(a, b)
    # the snapshot itself is a usable state and unaffected by the continuation above
    c = eng.eval(snap, IDS[6:], all_logits=True)
    np.testing.assert_array_equal(a, c)


def test_reset_equals_fresh_state():
    _, eng, _, _ = build("dense")
    st = eng.new_state(32)
    first = eng.eval(st, IDS, all_logits=True)
    st.reset()
    assert st.n_past == 0
    np.testing.assert_array_equal(eng.eval(st, IDS, all_logits=True), first)


def test_threads_and_variants_agree():
    hp, eng, P, _ = build("moe", threads=1)
    ref = forward(P, hp, IDS)
    one = eng.eval(eng.new_state(32, "f32"), IDS, all_logits=True)
    eng.set_threads(3)
    three = eng.eval(eng.new_state(32, "f32"), IDS, all_logits=True)
    np.testing.assert_array_equal(one, three)   # threads split rows/heads, never a sum
    assert rel_err(one, ref) <= TOL


def test_kv_cache_grows_past_its_first_allocation():
    hp, eng, P, _ = build("moe")
    ids = (np.arange(300) * 7 % hp.n_vocab).astype(np.int32)
    st = eng.new_state(400, "f32")
    got = eng.eval(st, ids[:250], all_logits=True)[-1]
    got2 = eng.eval(st, ids[250:])[-1]
    ost = OracleState(hp)
    ref = forward(P, hp, ids[:250], state=ost)[-1]
    ref2 = forward(P, hp, ids[250:], state=ost)[-1]
    assert rel_err(got, ref) <= TOL and rel_err(got2, ref2) <= TOL


def test_engine_properties():
    hp, eng, _, _ = build("moe")
    assert eng.n_vocab == hp.n_vocab
    assert eng.variant in core.variants()
    rep = eng.memory_report()
    assert rep["weights_copied_bytes"] == 0 and rep["weights_mapped_bytes"] > 0
    st = eng.new_state(16)
    assert st.n_ctx == 16 and st.n_past == 0 and st.nbytes > 0


def test_forced_variant_env(monkeypatch):
    import subprocess
    import sys
    code = "import nemocpu._core as c; print(c.active_variant())"
    for v in core.variants():
        out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "NEMOCPU_ISA": v},
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == v
    bad = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "NEMOCPU_ISA": "nope"},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "NEMOCPU_ISA=nope" in bad.stderr
    assert "generic" in core.variants() and isinstance(core.cpu_features(), dict)


def test_every_variant_runs_the_engine():
    """The engine picks its kernels at construction: run it under each usable NEMOCPU_ISA."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    code = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]);"
        "import nemocpu._core as core; from oracle import *;"
        "hp = tiny_hparams('MEM*EME*M'); t, P = random_gguf_tensors(hp, 2, 'Q4_0');"
        "eng = core.Engine(hp.as_dict(), t, 2); ids = np.arange(1, 12, dtype=np.int32);"
        "ref = forward(P, hp, ids, act_quant=quantized_names(t));"
        "got = eng.eval(eng.new_state(16, 'f32'), ids, all_logits=True);"
        "print(eng.variant, float(np.abs(got - ref).max() / np.abs(ref).max()))")
    for v in core.variants():
        out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True,
                             text=True, env={**os.environ, "NEMOCPU_ISA": v}, check=True).stdout.split()
        assert out[0] == v and float(out[1]) <= TOL, out


@pytest.mark.parametrize("wtype", ["Q8_0", "Q4_0", "F16"])
def test_repack_is_counted_in_the_memory_report(wtype):
    """The X8 copies are memory the report must show; what stays read in place is 'mapped'.
    A matrix moves on first use (an eval touches some experts), all of them on repack_all()."""
    hp = tiny_hparams(**CONFIGS["moe"])
    tensors, _ = random_gguf_tensors(hp, 0, wtype)
    eng = core.Engine(hp.as_dict(), tensors, 1)
    plain = core.Engine(hp.as_dict(), tensors, 1, repack=False)
    before = eng.memory_report()
    assert before == plain.memory_report() and before["weights_repacked_bytes"] == 0
    eng.eval(eng.new_state(8), IDS[:2])
    used = eng.memory_report()
    eng.repack_all()
    every = eng.memory_report()
    # the portable (generic) kernels run the file's layout faster: that variant does not repack
    assert eng.repacks == (wtype != "F16" and core.active_variant() != "generic")
    if not eng.repacks:
        weights = lambda r: {k: v for k, v in r.items() if k.startswith("weights_")}  # noqa: E731
        assert weights(used) == weights(every) == weights(before)
        return
    assert 0 < used["weights_repacked_bytes"] < every["weights_repacked_bytes"]   # not every expert was routed to
    # every matrix but the embedding moves; x8 pads rows to a multiple of 8, so >= what left the map
    moved = before["weights_mapped_bytes"] - every["weights_mapped_bytes"]
    assert moved > 0 and every["weights_repacked_bytes"] >= moved
    assert every["weights_repacked_bytes"] < moved * 1.5
    eng.repack_all()
    assert eng.memory_report() == every
