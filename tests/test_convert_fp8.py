"""FP8: NVIDIA ModelOpt FP8 checkpoints converted losslessly, ``--outtype fp8`` from BF16,
and every other outtype dequantizing FP8 first (docs/gguf-fp8.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf import quants as gq

from nemocpu.convert import convert

torch = pytest.importorskip("torch")

# ModelOpt's recipe for Nemotron 3 Nano: Mamba in/out projections and all experts in FP8,
# attention, embeddings, lm_head, router and conv kept in BF16 (reference nemotron-h.md §6.1).
FP8_SUFFIXES = ("mixer.in_proj.weight", "mixer.out_proj.weight", "up_proj.weight", "down_proj.weight")


def make_modelopt_fp8(src: Path, dst: Path) -> dict[str, tuple[np.ndarray, float]]:
    """Quantize ``src`` like ModelOpt FP8 (per-tensor scale = amax/448); return name -> (codes, scale)."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    sd = load_file(src / "model.safetensors")
    out, fp8 = {}, {}
    for name, w in sd.items():
        if name.endswith(FP8_SUFFIXES):
            w32 = w.float()
            scale = (w32.abs().max() / 448.0).reshape(())
            codes = (w32 / scale).to(torch.float8_e4m3fn)
            out[name] = codes
            out[name + "_scale"] = scale.float()
            out[name.replace(".weight", ".input_scale")] = torch.tensor(1.0)
            fp8[name] = (codes.view(torch.uint8).numpy().copy(), float(scale))
        else:
            out[name] = w
    save_file(out, dst / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": None}
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "FP8", "exclude_modules": []}}))
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(src / f, dst / f)
    return fp8


@pytest.fixture(scope="module")
def fp8_ckpt(tmp_path_factory):
    from helpers.hf_random import make_random_checkpoint

    root = tmp_path_factory.mktemp("fp8")
    make_random_checkpoint(root / "bf16", pattern="ME*EM", moe=True, n_groups=2, seed=7, dtype="bfloat16")
    return root / "fp8", make_modelopt_fp8(root / "bf16", root / "fp8")


def gguf_of(src: Path, outtype: str, tmp: Path) -> dict:
    path = convert(src, tmp / f"{outtype}.gguf", outtype=outtype, progress=False)
    r = GGUFReader(path)      # also proves gguf-py can list an FP8 file
    return {"reader": r, "t": {t.name: t for t in r.tensors},
            "kv": {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}}


def hf_for(gguf_name: str, n_expert: int) -> list[str]:
    """HF FP8 source names of a GGUF matrix (stacked experts -> one per expert)."""
    blk, i, rest = gguf_name.split(".", 2)
    m = f"backbone.layers.{i}.mixer."
    return {"ssm_in.weight": [m + "in_proj.weight"], "ssm_out.weight": [m + "out_proj.weight"],
            "ffn_up_shexp.weight": [m + "shared_experts.up_proj.weight"],
            "ffn_down_shexp.weight": [m + "shared_experts.down_proj.weight"],
            "ffn_up_exps.weight": [f"{m}experts.{e}.up_proj.weight" for e in range(n_expert)],
            "ffn_down_exps.weight": [f"{m}experts.{e}.down_proj.weight" for e in range(n_expert)],
            }.get(rest, [])


def check_lossless(g: dict, fp8: dict, n_expert: int) -> int:
    """Every FP8 checkpoint weight is in the file with identical codes and scales."""
    n = 0
    for name, t in g["t"].items():
        srcs = hf_for(name, n_expert) if "blk." in name else []
        if not srcs or not all(s in fp8 for s in srcs):
            continue
        assert t.tensor_type == T.I8, name
        codes = np.concatenate([fp8[s][0].reshape(-1) for s in srcs])
        assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), codes), f"{name}: E4M3 codes changed"
        scale = np.asarray(g["t"][name + "_scale"].data, dtype=np.float32).reshape(-1)
        assert scale.tobytes() == np.array([fp8[s][1] for s in srcs], dtype=np.float32).tobytes(), name
        n += 1
    return n


def test_modelopt_auto_is_lossless(fp8_ckpt, tmp_path):
    src, fp8 = fp8_ckpt
    g = gguf_of(src, "auto", tmp_path)
    assert g["kv"]["nemocpu.fp8.format"] == "e4m3fn"
    assert "general.file_type" not in g["kv"]              # no llama.cpp file type describes FP8
    # 2 Mamba layers x 2 + 2 MoE layers x (2 stacked + 2 shared) = 12 FP8 tensors
    assert check_lossless(g, fp8, 8) == 12
    for name, t in g["t"].items():
        if name in ("token_embd.weight", "output.weight") or ".attn_" in name and "norm" not in name:
            assert t.tensor_type == T.BF16, f"{name}: the BF16 tensors keep BF16 under auto"


def test_outtype_fp8_keeps_modelopt_and_quantizes_the_rest_per_row(fp8_ckpt, tmp_path):
    src, fp8 = fp8_ckpt
    g = gguf_of(src, "fp8", tmp_path)
    assert check_lossless(g, fp8, 8) == 12
    from helpers.convert_reference import expected_tensors

    ref = expected_tensors(src)
    t = g["t"]["blk.2.attn_v.weight"]                  # BF16 in the checkpoint -> FP8 per row
    assert t.tensor_type == T.I8
    rows = ref["blk.2.attn_v.weight"]
    scale = np.asarray(g["t"]["blk.2.attn_v.weight_scale"].data, dtype=np.float32)
    np.testing.assert_array_equal(scale, (np.abs(rows).max(axis=1) / np.float32(448)).astype(np.float32))
    want = (rows / scale[:, None]).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)   # RNE, docs/gguf-fp8.md
    assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(want.shape), want)
    # router, norms and conv stay F32
    assert g["t"]["blk.1.ffn_gate_inp.weight"].tensor_type == T.F32
    assert g["t"]["blk.0.ssm_conv1d.weight"].tensor_type == T.F32


@pytest.mark.parametrize("outtype", ["bf16", "q8_0", "f32"])
def test_other_outtypes_dequantize_fp8_first(fp8_ckpt, tmp_path, outtype):
    src, fp8 = fp8_ckpt
    g = gguf_of(src, outtype, tmp_path)
    assert "nemocpu.fp8.format" not in g["kv"]
    name, hf = "blk.0.ssm_in.weight", "backbone.layers.0.mixer.in_proj.weight"
    codes, scale = fp8[hf]
    deq = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32) * np.float32(scale)
    t = g["t"][name]
    if outtype == "bf16":
        want = deq.astype(ml_dtypes.bfloat16).view(np.uint8)
    elif outtype == "q8_0":
        want = gq.quantize(deq, T.Q8_0)
    else:
        want = deq.view(np.uint8)
    assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), want.reshape(-1).view(np.uint8))


def test_outtype_fp8_from_bf16_within_e4m3_bound(tiny_gguf, tiny_dir):
    from helpers.convert_reference import expected_tensors, read_gguf_tensors

    ref = expected_tensors(tiny_dir)
    n = 0
    for name, (typ, raw, vals) in read_gguf_tensors(tiny_gguf("fp8")).items():
        if typ != "FP8":
            continue
        rows = ref[name].reshape(-1, ref[name].shape[-1])
        scale = np.abs(rows).max(axis=1, keepdims=True) / 448
        err = np.abs(vals.reshape(rows.shape) - rows)
        assert np.all(err <= np.abs(rows) * 2.0**-4 * (1 + 1e-6) + scale * 2.0**-10 + 1e-12), name
        n += 1
    assert n == 46    # every quantizable matrix of the tiny model


def test_shared_tiny_fp8_model_is_lossless(tiny_gguf):
    """The shared ModelOpt checkpoint: codes and scales in the GGUF equal the safetensors'."""
    from safetensors import safe_open

    from helpers.hf_random import TINY_MODEL_DIR

    fp8_dir = TINY_MODEL_DIR.parent / "nemotron-h-tiny-fp8"
    path = tiny_gguf("fp8-modelopt")
    fp8 = {}
    with safe_open(fp8_dir / "model.safetensors", "pt") as st:
        for k in st.keys():
            t = st.get_tensor(k)
            if t.dtype == torch.float8_e4m3fn:
                fp8[k] = (t.view(torch.uint8).numpy().copy(), float(st.get_tensor(k + "_scale")))
    r = GGUFReader(path)
    g = {"t": {t.name: t for t in r.tensors}}
    n_fp8_gguf = sum(1 for t in r.tensors if t.tensor_type == T.I8)
    assert check_lossless(g, fp8, 32) == n_fp8_gguf > 0


def test_per_row_modelopt_scales_are_kept_and_permuted_with_their_rows(fp8_ckpt, tmp_path):
    """A per-output-row weight_scale ([out]) stays per row; for q_proj/k_proj the scales move
    with the rows of llama.cpp's Q/K permutation, so W is unchanged."""
    from safetensors.torch import load_file, save_file

    from helpers.convert_reference import expected_tensors, read_gguf_tensors

    src, _ = fp8_ckpt
    dst = tmp_path / "per-row"
    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    for name in ("backbone.layers.0.mixer.in_proj.weight", "backbone.layers.2.mixer.q_proj.weight"):
        w = sd[name].float() * (sd[name + "_scale"].float() if name + "_scale" in sd else 1.0)
        scale = (w.abs().amax(dim=1) / 448.0).clamp_min(1e-12)
        sd[name] = (w / scale[:, None]).to(torch.float8_e4m3fn)
        sd[name + "_scale"] = scale.float()
    save_file(sd, dst / "model.safetensors")

    got = read_gguf_tensors(convert(dst, tmp_path / "m.gguf", outtype="auto", progress=False))
    ref = expected_tensors(dst)            # HF codes * per-row scales, then the documented permutation
    for name in ("blk.0.ssm_in.weight", "blk.2.attn_q.weight"):
        typ, raw, vals = got[name]
        assert typ == "FP8"
        np.testing.assert_array_equal(vals, ref[name])
    scale = GGUFReader(tmp_path / "m.gguf").tensors
    n_scale = {t.name: int(np.prod(t.shape)) for t in scale if t.name.endswith("_scale")}
    assert n_scale["blk.2.attn_q.weight_scale"] == 64 and n_scale["blk.0.ssm_in.weight_scale"] > 1
