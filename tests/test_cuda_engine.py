"""The CUDA engine (nemocpu._core.CudaEngine, csrc/cuda/) against the references the CPU
engine is held to: the float64 oracle (tests/oracle.py), the CPU engine itself, transformers'
NemotronHForCausalLM on random tiny checkpoints, and the trained tiny model's recorded greedy
outputs. Skipped unless the core was built with NEMOCPU_CUDA=ON and a GPU is present.

Tolerances (max |gpu - ref| / max |ref| over the vocabulary, worst position):
* decode and every F32-weight product run fp32 matrix-vector kernels: 1e-4, as the CPU engine;
* F16/BF16/FP8/Q8_0/Q4_0 weights with more than 8 tokens go through the tensor-core kernel
  with operands split into bf16 pairs (~16 significant bits): 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest

import nemocpu._core as core
from helpers.engine_cases import CONFIGS as CPU_CONFIGS
from helpers.engine_cases import IDS, greedy_continuation, rel_err
from oracle import OracleState, forward, random_gguf_tensors, tiny_hparams

pytestmark = pytest.mark.skipif(not hasattr(core, "CudaEngine") or not core.cuda_devices(),
                                reason="core built without NEMOCPU_CUDA or no CUDA GPU")

TOL = 1e-4
TOL_GEMM = 1e-3
CONFIGS = {
    **CPU_CONFIGS,
    # the trained tiny model's shapes (vocab 4096, 32 experts top-4, d_state 64, head_dim 64)
    "tiny-dims": dict(layer_kinds="MEMEM*EM*E", n_vocab=4096, n_embd=256, n_head=4, n_head_kv=2, head_dim=64,
                      ssm_n_head=8, ssm_head_dim=64, ssm_d_state=64, ssm_n_group=2, n_expert=32,
                      n_expert_used=4, n_ff_exp=128, n_ff_shexp=256),
    # real-model head shapes: GQA group of 16, hd 128, d_state 128 (shared-memory opt-in paths)
    "nano-heads": dict(layer_kinds="M*E", n_embd=96, n_head=32, n_head_kv=2, head_dim=128, ssm_n_head=4,
                       ssm_head_dim=16, ssm_d_state=128, ssm_n_group=2),
}


def build(cfg, wtype="F32", seed=0, dt_floor=0.0):
    hp = tiny_hparams(**CONFIGS[cfg])
    tensors, params = random_gguf_tensors(hp, seed, wtype)
    return hp, core.CudaEngine(hp.as_dict(), tensors, 1, dt_floor), params, tensors


def decode_steps(eng, st, ids):
    return np.concatenate([eng.eval(st, ids[i:i + 1]) for i in range(len(ids))])


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("kv", ["f32", "f16"])
def test_f32_prefill_and_decode_match_oracle(cfg, kv):
    hp, eng, P, _ = build(cfg)
    ref = forward(P, hp, IDS)
    tol = TOL if kv == "f32" else 2e-3  # f16 cache: keys/values rounded to 11 bits
    assert rel_err(eng.eval(eng.new_state(32, kv), IDS, all_logits=True), ref) <= tol
    st = eng.new_state(32, kv)
    assert rel_err(decode_steps(eng, st, IDS), ref) <= tol  # steps 2.. replay a CUDA graph
    assert st.n_past == len(IDS)


@pytest.mark.parametrize("wtype", ["F16", "BF16", "Q8_0", "Q4_0", "FP8"])
@pytest.mark.parametrize("cfg", ["moe", "dense"])
def test_weight_types_match_oracle(cfg, wtype):
    hp, eng, P, _ = build(cfg, wtype, seed=1)
    # 300 tokens: several 64-token tiles, and experts with more than 64 rows in the grouped product
    ids = np.random.default_rng(2).integers(0, hp.n_vocab, 300).astype(np.int32)
    ref = forward(P, hp, ids)   # exact decoded weights; the GPU keeps activations in fp32 / 2 x bf16
    assert rel_err(eng.eval(eng.new_state(320, "f32"), ids, all_logits=True), ref) <= TOL_GEMM
    st = eng.new_state(64, "f32")
    assert rel_err(decode_steps(eng, st, ids[:12]), ref[:12]) <= TOL
    small = eng.eval(eng.new_state(64, "f32"), ids[:6], all_logits=True)  # <= 8 tokens: fp32 kernel
    assert rel_err(small, ref[:6]) <= TOL


@pytest.mark.parametrize("wtype", ["F32", "BF16"])
def test_gpu_engine_agrees_with_cpu_engine(wtype):
    hp = tiny_hparams(**CONFIGS["moe"])
    tensors, _ = random_gguf_tensors(hp, 4, wtype)
    cpu = core.Engine(hp.as_dict(), tensors, 2, 0.0)
    gpu = core.CudaEngine(hp.as_dict(), tensors, 1, 0.0)
    ids = np.random.default_rng(5).integers(0, hp.n_vocab, 30).astype(np.int32)
    want = cpu.eval(cpu.new_state(64, "f32"), ids, all_logits=True)
    got = gpu.eval(gpu.new_state(64, "f32"), ids, all_logits=True)
    assert rel_err(got, want) <= (TOL if wtype == "F32" else TOL_GEMM)
    sc, sg = cpu.new_state(64, "f32"), gpu.new_state(64, "f32")
    assert rel_err(decode_steps(gpu, sg, ids[:10]), decode_steps(cpu, sc, ids[:10])) <= TOL


def test_long_context_split_k_decode_matches_oracle():
    hp, eng, P, _ = build("moe")
    ids = np.random.default_rng(7).integers(0, hp.n_vocab, 700).astype(np.int32)
    ref = forward(P, hp, ids)
    st = eng.new_state(800, "f32")
    pre = eng.eval(st, ids[:690], all_logits=True)
    assert rel_err(pre, ref[:690]) <= TOL
    assert rel_err(decode_steps(eng, st, ids[690:]), ref[690:]) <= TOL


@pytest.mark.parametrize("cfg,dt_floor", [(c, 0.0) for c in sorted(CONFIGS)] + [("moe", 1e-3)])
def test_chunked_scan_prefill_then_decode_match_oracle(cfg, dt_floor):
    """Prefills of 64 tokens or more take the chunked (SSD) scan: chunks of 32, the last one
    partial here; decode then continues from the state it left (with a dt floor, only the
    prefill clamps: the decode steps are checked without one)."""
    hp, eng, P, _ = build(cfg, dt_floor=dt_floor)
    ids = np.random.default_rng(11).integers(0, hp.n_vocab, 103).astype(np.int32)
    ref = forward(P, hp, ids, dt_floor=dt_floor)
    st = eng.new_state(128, "f32")
    assert rel_err(eng.eval(st, ids[:99], all_logits=True), ref[:99]) <= TOL
    if dt_floor == 0.0:
        assert rel_err(decode_steps(eng, st, ids[99:]), ref[99:]) <= TOL


def test_prefill_longer_than_one_chunk():
    hp, eng, P, _ = build("dense")
    ids = np.random.default_rng(8).integers(0, hp.n_vocab, 1100).astype(np.int32)  # chunk = 1024
    ref = forward(P, hp, ids)
    st = eng.new_state(1200, "f32")
    assert rel_err(eng.eval(st, ids, all_logits=True), ref) <= TOL
    assert st.n_past == 1100


def test_dt_floor_semantics_match_cpu_engine():
    hp = tiny_hparams(**CONFIGS["moe"])
    tensors, P = random_gguf_tensors(hp, 0, "F32")
    cpu = core.Engine(hp.as_dict(), tensors, 2, 1e-3)
    gpu = core.CudaEngine(hp.as_dict(), tensors, 1, 1e-3)
    for eng_ids in ([IDS], [IDS[:1], IDS[1:4], IDS[4:5], IDS[5:6], IDS[6:]]):
        sc, sg = cpu.new_state(32, "f32"), gpu.new_state(32, "f32")
        for part in eng_ids:
            want = cpu.eval(sc, part, all_logits=True)
            got = gpu.eval(sg, part, all_logits=True)
            assert rel_err(got, want) <= TOL
    ost = OracleState(hp)
    forward(P, hp, IDS[:4], dt_floor=1e-3, state=ost)
    want = forward(P, hp, IDS[4:5], dt_floor=1e-3, state=ost)   # decode at n_past > 0: no clamp
    sg = gpu.new_state(32, "f32")
    gpu.eval(sg, IDS[:4])
    assert rel_err(gpu.eval(sg, IDS[4:5]), want) <= TOL


def test_snapshot_restore_reset_replay_identically():
    hp, eng, _, _ = build("moe")
    st = eng.new_state(64, "f16")
    eng.eval(st, IDS[:5])
    eng.eval(st, IDS[5:6])
    snap = st.snapshot()
    a = decode_steps(eng, st, IDS[6:])
    st.restore(snap)
    assert st.n_past == 6
    b = decode_steps(eng, st, IDS[6:])
    np.testing.assert_array_equal(a, b)
    st.reset()
    assert st.n_past == 0
    c = eng.eval(st, IDS, all_logits=True)
    d = eng.eval(eng.new_state(64, "f16"), IDS, all_logits=True)
    np.testing.assert_array_equal(c, d)


def test_kept_decode_logits_survive_later_steps_and_the_engine():
    """Single-token logits arrive in pooled page-locked buffers: an array the caller keeps must not
    change when later steps reuse the pool, nor when the engine is gone."""
    hp, eng, _, _ = build("moe")
    st = eng.new_state(64, "f32")
    eng.eval(st, IDS[:3])
    kept = [eng.eval(st, IDS[i:i + 1]) for i in range(3, 8)]
    copies = [k.copy() for k in kept]
    assert all(k.shape == (1, hp.n_vocab) and k.dtype == np.float32 for k in kept)
    assert not np.array_equal(copies[0], copies[1])
    for i in range(12):  # more steps than the pool keeps buffers
        eng.eval(st, IDS[i % 8:i % 8 + 1])
    del eng, st
    for k, c in zip(kept, copies):
        np.testing.assert_array_equal(k, c)


def test_bad_evals_raise_before_touching_the_state():
    hp, eng, _, _ = build("moe")
    st = eng.new_state(8, "f32")
    eng.eval(st, IDS[:3])
    before = eng.eval(st.snapshot(), IDS[3:4])
    for bad in (np.array([hp.n_vocab], np.int32), np.array([-1], np.int32), np.zeros(6, np.int32),
                np.zeros(0, np.int32)):
        with pytest.raises(ValueError):
            eng.eval(st, bad)
        assert st.n_past == 3
    np.testing.assert_array_equal(eng.eval(st, IDS[3:4]), before)
    with pytest.raises(ValueError, match="kv_type"):
        eng.new_state(8, "q8")


def test_bad_tensor_is_rejected_like_the_cpu_engine():
    hp = tiny_hparams(**CONFIGS["moe"])
    tensors, _ = random_gguf_tensors(hp, 0, "F32")
    raw, typ, ne = tensors["blk.0.ssm_in.weight"]
    tensors["blk.0.ssm_in.weight"] = (raw[:-4], typ, ne)
    with pytest.raises(ValueError, match="blk.0.ssm_in.weight"):
        core.CudaEngine(hp.as_dict(), tensors, 1, 0.0)


def test_device_arrays_are_accepted():
    torch = pytest.importorskip("torch")
    hp = tiny_hparams(**CONFIGS["moe"])
    tensors, P = random_gguf_tensors(hp, 3, "Q8_0")
    on_gpu = {n: (torch.from_numpy(np.array(raw)).cuda(), t, ne) for n, (raw, t, ne) in tensors.items()}
    a = core.CudaEngine(hp.as_dict(), on_gpu, 1, 0.0)
    b = core.CudaEngine(hp.as_dict(), tensors, 1, 0.0)
    np.testing.assert_array_equal(a.eval(a.new_state(32), IDS, all_logits=True),
                                  b.eval(b.new_state(32), IDS, all_logits=True))


# ---- the trained tiny model -------------------------------------------------------------
STOP_IDS = {2, 4}


def _engine_of(path):
    from nemocpu.model_file import open_model_file
    mf = open_model_file(path)
    return core.CudaEngine(mf.hparams.as_dict(), mf.tensors, 1, 0.0)


@pytest.mark.parametrize("outtype,tol", [("f32", TOL), ("bf16", TOL_GEMM)])
@pytest.mark.parametrize("prompt", [0, 11])
def test_tiny_model_logits_match_cpu_engine(tiny_gguf, tiny_reference, outtype, tol, prompt):
    from nemocpu.model_file import open_model_file
    mf = open_model_file(tiny_gguf(outtype))
    cpu = core.Engine(mf.hparams.as_dict(), mf.tensors, 2, 0.0)
    gpu = core.CudaEngine(mf.hparams.as_dict(), mf.tensors, 1, 0.0)
    p = tiny_reference["prompts"][prompt]
    ids = np.asarray(p["prompt_token_ids"] + p["greedy_token_ids"], np.int32)
    want = cpu.eval(cpu.new_state(len(ids), "f16"), ids, all_logits=True)
    got = gpu.eval(gpu.new_state(len(ids), "f16"), ids, all_logits=True)
    err = np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)
    print(f"tiny {outtype} prompt {prompt}: {len(ids)} tokens, max prefill error {err.max():.2e}")
    assert err.max() <= tol, f"first bad position {int(np.argmax(err > tol))} of {len(ids)}: {err.max():.2e}"
    sc, sg = cpu.new_state(len(ids), "f16"), gpu.new_state(len(ids), "f16")
    n = len(p["prompt_token_ids"])
    cpu.eval(sc, ids[:n])
    gpu.eval(sg, ids[:n])
    assert rel_err(decode_steps(gpu, sg, ids[n:n + 16]), decode_steps(cpu, sc, ids[n:n + 16])) <= TOL


@pytest.mark.parametrize("outtype", ["f32", "bf16"])
def test_tiny_model_greedy_matches_reference(tiny_gguf, tiny_reference, outtype):
    eng = _engine_of(tiny_gguf(outtype))
    mismatches = []
    max_new = tiny_reference["max_new_tokens"]
    for p in tiny_reference["prompts"]:
        prompt, want = p["prompt_token_ids"], p["greedy_token_ids"]
        st = eng.new_state(len(prompt) + max_new + 8, "f16")
        out = greedy_continuation(lambda ids: eng.eval(st, ids), prompt, max_new, STOP_IDS)
        if out != want:
            mismatches.append((p["name"], out[:10], want[:10]))
    assert not mismatches, mismatches


# ---- transformers on random tiny checkpoints ----------------------------------------------
@pytest.mark.parametrize("case", [dict(pattern="MEM*EME*M", moe=True, n_groups=2),
                                  dict(pattern="M*EM*E", moe=True, n_groups=1, num_key_value_heads=1,
                                       time_step_min=0.5)], ids=["moe-g2", "moe-mqa-clamp"])
def test_transformers_parity(tmp_path, case):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from helpers.hf_random import make_random_checkpoint
    from transformers import NemotronHForCausalLM

    from nemocpu.convert import convert
    from nemocpu.model_file import open_model_file

    cfg = make_random_checkpoint(tmp_path / "hf", seed=0, dtype="float32", **case)
    convert(tmp_path / "hf", tmp_path / "m.gguf", outtype="f32", progress=False)
    ref = NemotronHForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32, attn_implementation="eager",
                                               experts_implementation="eager").eval()
    mf = open_model_file(tmp_path / "m.gguf")
    eng = core.CudaEngine(mf.hparams.as_dict(), mf.tensors, 1, float(cfg.time_step_min))
    ids = np.random.default_rng(0).integers(5, cfg.vocab_size, 23)
    with torch.no_grad():
        want = ref(torch.tensor([ids.tolist()])).logits[0].numpy()
        out = ref.generate(torch.tensor([ids.tolist()]), do_sample=False, max_new_tokens=24, min_new_tokens=0,
                           eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    assert rel_err(eng.eval(eng.new_state(64, "f32"), ids.astype(np.int32), all_logits=True), want) <= TOL
    st = eng.new_state(64, "f32")
    logits = eng.eval(st, ids.astype(np.int32))[0]
    for step, (tok_ref, lg_ref) in enumerate(zip(out.sequences[0, len(ids):].tolist(), out.logits)):
        assert rel_err(logits, lg_ref[0].numpy()) <= TOL, f"step {step}"
        tok = int(np.argmax(logits))
        assert tok == tok_ref, f"greedy token differs at step {step}"
        logits = eng.eval(st, np.asarray([tok], np.int32))[0]
