"""Converter: every outtype on random tiny checkpoints (both families) and on the tiny model.

Each GGUF tensor is read back with gguf-py, dequantized and compared with the HF weights
transformed as gguf-layout.md documents (tests/helpers/convert_reference.py); quantized
bytes are compared with gguf-py's reference quantizers; metadata with llama.cpp's key types.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType
from gguf import quants as gq
from helpers.convert_reference import (LLAMACPP_KEY_TYPES, LLAMACPP_MOE_KEY_TYPES, expected_tensors,
                                       is_f32_role, kinds_of, load_hf, read_gguf_tensors)

from nemocpu.convert import OUTTYPES, convert

pytest.importorskip("transformers")

RANDOM_CASES = {
    # id: (pattern, moe, n_groups, dtype, overrides)
    "moe-g2-f32": ("MEM*EME*M", True, 2, "float32", {}),
    "dense-g1-bf16": ("M-M*-", False, 1, "bfloat16", {}),
    "moe-g4-bf16-ff40": ("*EMM", True, 4, "bfloat16", {"moe_intermediate_size": 40}),
    "dense-g2-tied": ("M*M-M", False, 2, "float32", {"tie_word_embeddings": True}),
}


@pytest.fixture(scope="module", params=sorted(RANDOM_CASES))
def random_ckpt(request, tmp_path_factory):
    from helpers.hf_random import make_random_checkpoint

    pattern, moe, groups, dtype, over = RANDOM_CASES[request.param]
    d = tmp_path_factory.mktemp(request.param)
    make_random_checkpoint(d, pattern=pattern, moe=moe, n_groups=groups, seed=len(request.param),
                           dtype=dtype, **over)
    return d


def expected_type(name: str, ne0: int, outtype: str, source_type: str) -> str:
    """gguf-layout.md §2.3 / §6.1 / §6.2 and docs/gguf-fp8.md, restated."""
    if is_f32_role(name):
        return "F32"
    t = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0", "fp8": "FP8",
         "auto": source_type}[outtype]
    if outtype == "q4_0" and name == "output.weight":
        t = "Q8_0"
    if t in ("Q8_0", "Q4_0") and ne0 % 32:
        t = "F16"
    return t


def check_values(name: str, typ: str, raw: np.ndarray, got: np.ndarray, ref: np.ndarray) -> None:
    """got (dequantized from the file) vs ref (HF weights, float32) within typ's error bound."""
    assert got.shape == ref.shape, name
    if typ == "F32":
        np.testing.assert_array_equal(got, ref, err_msg=name)
    elif typ == "F16":
        np.testing.assert_array_equal(got, ref.astype(np.float16).astype(np.float32), err_msg=name)
    elif typ == "BF16":
        np.testing.assert_array_equal(got, ref.astype(ml_dtypes.bfloat16).astype(np.float32), err_msg=name)
    elif typ in ("Q8_0", "Q4_0"):
        qt = T[typ]
        want = gq.quantize(ref.reshape(-1, ref.shape[-1]), qt).reshape(-1).view(np.uint8)
        assert np.array_equal(raw, want), f"{name}: bytes differ from gguf.quants' reference {typ} quantizer"
        blocks = ref.reshape(-1, 32)
        amax = np.abs(blocks).max(axis=1, keepdims=True)
        # rounding: half a step (Q8_0) / one step at the clipped end (Q4_0); plus the f16 rounding
        # of the step d, times the largest |q| (127 / 8): relative 2^-11, absolute 2^-25 if subnormal
        d, qmax, steps = (amax / 127, 127, 0.5) if typ == "Q8_0" else (amax / 8, 8, 1.0)
        bound = d * steps + qmax * np.maximum(d * 2.0**-11, 2.0**-25)
        err = np.abs(got.reshape(-1, 32) - blocks)
        assert np.all(err <= bound * (1 + 1e-5)), f"{name}: {typ} error above its bound"
    elif typ == "FP8":
        rows = ref.reshape(-1, ref.shape[-1])
        scale = np.abs(rows).max(axis=1, keepdims=True) / 448
        err = np.abs(got.reshape(rows.shape) - rows)
        # E4M3: 3 mantissa bits -> half-ulp relative error 2^-4; subnormal step 2^-9 * scale
        assert np.all(err <= np.abs(rows) * 2.0**-4 * (1 + 1e-6) + scale * 2.0**-10 + 1e-12), \
            f"{name}: FP8 error above the E4M3 bound"
    else:
        raise AssertionError(f"{name}: unexpected type {typ}")


def check_file(path, hf_dir, outtype: str) -> None:
    ref = expected_tensors(hf_dir)
    got = read_gguf_tensors(path)
    assert sorted(got) == sorted(ref), "tensor names differ from the documented llama.cpp set"
    cfg, hf = load_hf(hf_dir)
    source = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[str(cfg.get("dtype") or cfg.get("torch_dtype"))]
    for name, (typ, raw, vals) in got.items():
        want_t = expected_type(name, ref[name].shape[-1], outtype, source)
        assert typ == want_t, f"{name}: type {typ}, expected {want_t} for --outtype {outtype}"
        check_values(name, typ, raw, vals, ref[name])


def check_metadata(path, hf_dir) -> None:
    cfg, _ = load_hf(hf_dir)
    kinds = kinds_of(cfg)
    r = GGUFReader(path)
    arch = r.fields["general.architecture"].contents()
    assert arch == ("nemotron_h_moe" if "E" in kinds else "nemotron_h")
    want = dict(LLAMACPP_KEY_TYPES, **(LLAMACPP_MOE_KEY_TYPES if arch == "nemotron_h_moe" else {}))
    for suffix, typ in want.items():
        f = r.fields.get(f"{arch}.{suffix}")
        assert f is not None, f"missing {arch}.{suffix}"
        names = [GGUFValueType(t).name for t in f.types]
        got = names[0] if len(names) == 1 else f"{names[0]}[{names[1]}]"
        assert got == typ, f"{arch}.{suffix}: {got}, llama.cpp reads {typ}"
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    n = len(kinds)
    assert kv[f"{arch}.block_count"] == n
    assert kv[f"{arch}.feed_forward_length"] == [
        cfg["moe_intermediate_size"] if k == "E" else cfg["intermediate_size"] if k == "-" else 0 for k in kinds]
    assert kv[f"{arch}.attention.head_count_kv"] == [cfg["num_key_value_heads"] if k == "*" else 0 for k in kinds]
    assert kv[f"{arch}.ssm.inner_size"] == cfg["mamba_num_heads"] * cfg["mamba_head_dim"]
    assert kv[f"{arch}.ssm.time_step_rank"] == cfg["mamba_num_heads"]
    assert kv[f"{arch}.ssm.group_count"] == cfg["n_groups"]
    assert kv[f"{arch}.context_length"] == 1 << 20
    assert math.isclose(kv[f"{arch}.attention.layer_norm_rms_epsilon"], cfg["layer_norm_epsilon"], rel_tol=1e-6)
    if arch == "nemotron_h_moe":
        assert kv[f"{arch}.expert_count"] == cfg["n_routed_experts"]
        assert kv[f"{arch}.expert_used_count"] == cfg["num_experts_per_tok"]
        assert kv[f"{arch}.expert_shared_feed_forward_length"] == cfg["moe_shared_expert_intermediate_size"]
        assert math.isclose(kv[f"{arch}.expert_weights_scale"], cfg["routed_scaling_factor"], rel_tol=1e-6)
    assert kv["tokenizer.ggml.model"] == "gpt2"
    assert kv["tokenizer.ggml.pre"] == "qwen2"          # the tiny tokenizer's regex is Qwen2's
    assert len(kv["tokenizer.ggml.tokens"]) == cfg["vocab_size"] == len(kv["tokenizer.ggml.token_type"])
    assert kv["tokenizer.ggml.add_bos_token"] is False  # tokenizer_config.json says so
    assert kv["tokenizer.ggml.bos_token_id"] == 1
    assert kv["tokenizer.ggml.tokens"][kv["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    assert "{%" in kv["tokenizer.chat_template"]
    for key in ("pre_tokenizer", "normalizer", "decoder", "post_processor", "added_tokens", "model_options"):
        assert f"nemocpu.tokenizer.hf.{key}" in kv
    assert r.alignment == 32


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_random_checkpoint_every_outtype(random_ckpt, outtype, tmp_path):
    out = convert(random_ckpt, tmp_path / "m.gguf", outtype=outtype, progress=False)
    check_file(out, random_ckpt, outtype)
    check_metadata(out, random_ckpt)


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_tiny_model_every_outtype(tiny_gguf, tiny_dir, outtype):
    check_file(tiny_gguf(outtype), tiny_dir, outtype)


def test_tiny_model_metadata(tiny_gguf, tiny_dir):
    path = tiny_gguf("q8_0")
    check_metadata(path, tiny_dir)
    kv = {k: f.contents() for k, f in GGUFReader(path).fields.items()}
    assert kv["general.file_type"] == 7 and kv["general.quantization_version"] == 2
    assert kv["nemocpu.tokenizer.eos_token_ids"] == [2, 4]     # generation_config.json
    assert "nemotron_h_moe.rope.freq_base" not in kv            # config.json has no rope_theta
    import json
    tok = json.loads((tiny_dir / "tokenizer.json").read_text())
    assert json.loads(kv["nemocpu.tokenizer.hf.pre_tokenizer"]) == tok["pre_tokenizer"]
    assert json.loads(kv["nemocpu.tokenizer.hf.added_tokens"]) == tok["added_tokens"]


def test_tensor_order_follows_checkpoint_order(tiny_gguf):
    """llama.cpp emits tensors in sorted checkpoint-name order (blk.10 before blk.2), experts
    stacked down-then-up at the position of their layer's last expert tensor."""
    names = [t.name for t in GGUFReader(tiny_gguf("f32")).tensors]
    assert names[0] == "token_embd.weight" and names[-2:] == ["output_norm.weight", "output.weight"]
    assert names.index("blk.10.attn_norm.weight") < names.index("blk.2.ssm_a")
    assert names[names.index("blk.1.ffn_down_exps.weight") + 1] == "blk.1.ffn_up_exps.weight"
    assert names.index("blk.1.ffn_up_exps.weight") < names.index("blk.1.exp_probs_b.bias")


def test_sharded_checkpoint_equals_single_file(tmp_path):
    """A checkpoint split into shards + index converts to the same bytes as the single file."""
    from helpers.hf_synthetic import write_synthetic_checkpoint

    kw = dict(pattern="M*E", hidden=64, n_expert=4, moe_ff=32, shexp_ff=64, n_head=4, n_kv=2,
              head_dim=16, ssm_heads=4, ssm_head_dim=16, d_state=16, n_groups=2)
    write_synthetic_checkpoint(tmp_path / "one", n_shards=1, **kw)
    write_synthetic_checkpoint(tmp_path / "three", n_shards=3, **kw)
    a = convert(tmp_path / "one", tmp_path / "one.gguf", outtype="q8_0", progress=False)
    b = convert(tmp_path / "three", tmp_path / "three.gguf", outtype="q8_0", progress=False)
    # same tensors and bytes; the order follows the shards, as in llama.cpp
    ta = {t.name: np.asarray(t.data) for t in GGUFReader(a).tensors}
    tb = {t.name: np.asarray(t.data) for t in GGUFReader(b).tensors}
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert np.array_equal(ta[name], tb[name]), name


def test_config_dialects_give_identical_files(tmp_path):
    """transformers 4.x (hybrid_override_pattern only, NVIDIA's releases) and 5.x
    (layers_block_type, {"__float__": "Infinity"}) configs of one model convert identically."""
    import json

    from helpers.hf_synthetic import write_synthetic_checkpoint

    src = tmp_path / "ckpt"
    write_synthetic_checkpoint(src, pattern="M*E", hidden=64, n_expert=4, moe_ff=32, shexp_ff=64, n_head=4,
                               n_kv=2, head_dim=16, ssm_heads=4, ssm_head_dim=16, d_state=16, n_groups=2)
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["time_step_limit"][1] == {"__float__": "Infinity"}
    outs = []
    for variant in ("both", "4.x", "5.x"):
        c = dict(cfg)
        if variant == "4.x":
            c.pop("layers_block_type")
            c["time_step_limit"] = [0.0, float("inf")]       # json writes Infinity
        elif variant == "5.x":
            c.pop("hybrid_override_pattern")
            c.pop("num_hidden_layers")
        (src / "config.json").write_text(json.dumps(c))
        outs.append(convert(src, tmp_path / f"{variant}.gguf", outtype="q8_0", progress=False).read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_cli_outtypes_match_the_converter():
    """nemocpu/commands/convert.py repeats the list to keep `nemocpu --help` import-light."""
    from nemocpu.commands.convert import OUTTYPES as CLI_OUTTYPES

    assert CLI_OUTTYPES == OUTTYPES
