"""Independent expectations for converted GGUF files, written from the reference documents
(gguf-layout.md §1-2, §6; docs/gguf-fp8.md), not from the converter's code.

``expected_tensors(hf_dir)`` gives every GGUF tensor as float32 in numpy order (= reversed
ggml ne), computed from the HF checkpoint with the documented transforms;
``read_gguf_tensors(path)`` reads a GGUF back with gguf-py (dequantized + raw bytes).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import ml_dtypes
import numpy as np

# Keys and the GGUF value types llama.cpp's loader checks (gguf-layout.md §1.3), per arch.
LLAMACPP_KEY_TYPES = {
    "context_length": "UINT32", "embedding_length": "UINT32", "block_count": "UINT32",
    "feed_forward_length": "ARRAY[INT32]", "attention.head_count": "UINT32",
    "attention.head_count_kv": "ARRAY[INT32]", "attention.key_length": "UINT32",
    "attention.value_length": "UINT32", "attention.layer_norm_rms_epsilon": "FLOAT32",
    "attention.layer_norm_epsilon": "FLOAT32", "ssm.conv_kernel": "UINT32", "ssm.inner_size": "UINT32",
    "ssm.state_size": "UINT32", "ssm.time_step_rank": "UINT32", "ssm.group_count": "UINT32",
    "vocab_size": "UINT32", "rope.dimension_count": "UINT32", "rope.scaling.finetuned": "BOOL",
}
LLAMACPP_MOE_KEY_TYPES = {
    "expert_count": "UINT32", "expert_used_count": "UINT32", "expert_group_count": "UINT32",
    "expert_group_used_count": "UINT32", "expert_feed_forward_length": "UINT32",
    "expert_shared_feed_forward_length": "UINT32", "expert_shared_count": "UINT32",
    "expert_weights_norm": "BOOL", "expert_weights_scale": "FLOAT32",
}


@functools.lru_cache(maxsize=4)
def _load_hf_cached(hf_dir: str) -> tuple[dict, dict]:
    return _load_hf(hf_dir)


def load_hf(hf_dir) -> tuple[dict, dict]:
    """Cached _load_hf (checkpoints in tests are written once and never changed)."""
    return _load_hf_cached(str(hf_dir))


def _load_hf(hf_dir) -> tuple[dict, dict]:
    """(config, {name: float32 array}) of a checkpoint; FP8 weights dequantized with their scale."""
    import torch
    from safetensors import safe_open

    hf_dir = Path(hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text())
    files = sorted(hf_dir.glob("model*.safetensors"))
    raw = {}
    for f in files:
        with safe_open(f, "pt") as st:
            for k in st.keys():
                raw[k] = st.get_tensor(k)
    out = {}
    for k, t in raw.items():
        if k.endswith(("_scale",)):
            continue
        v = t.float().numpy()
        if t.dtype == torch.float8_e4m3fn:
            s = raw[k + "_scale"].float().numpy().reshape(-1)
            v = v * (s.reshape(-1, *[1] * (v.ndim - 1)) if s.size > 1 else s[0])   # per row / tensor
        out[k] = v.astype(np.float32)
    return cfg, out


def kinds_of(cfg: dict) -> str:
    names = {"mamba": "M", "linear_attention": "M", "attention": "*", "full_attention": "*",
             "moe": "E", "mlp": "-"}
    if cfg.get("hybrid_override_pattern"):
        return cfg["hybrid_override_pattern"]
    return "".join(names[t] for t in cfg["layers_block_type"])


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order: in head h, new row 2i+j holds old row j*hd/2+i."""
    hd = w.shape[0] // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        for i in range(hd // 2):
            for j in range(2):
                out[h * hd + 2 * i + j] = w[h * hd + j * hd // 2 + i]
    return out


@functools.lru_cache(maxsize=4)
def _expected_cached(hf_dir: str) -> dict[str, np.ndarray]:
    return _expected(hf_dir)


def expected_tensors(hf_dir) -> dict[str, np.ndarray]:
    return _expected_cached(str(hf_dir))


def _expected(hf_dir) -> dict[str, np.ndarray]:
    cfg, hf = load_hf(hf_dir)
    G = cfg["n_groups"]
    out = {"token_embd.weight": hf["backbone.embeddings.weight"], "output_norm.weight": hf["backbone.norm_f.weight"]}
    if "lm_head.weight" in hf:
        out["output.weight"] = hf["lm_head.weight"]
    for i, kind in enumerate(kinds_of(cfg)):
        b, m = f"blk.{i}.", f"backbone.layers.{i}.mixer."
        out[b + "attn_norm.weight"] = hf[f"backbone.layers.{i}.norm.weight"]
        if kind == "M":
            out[b + "ssm_in.weight"] = hf[m + "in_proj.weight"]
            out[b + "ssm_conv1d.weight"] = hf[m + "conv1d.weight"][:, 0, :]
            out[b + "ssm_conv1d.bias"] = hf[m + "conv1d.bias"]
            out[b + "ssm_dt.bias"] = hf[m + "dt_bias"]
            out[b + "ssm_a"] = (-np.exp(hf[m + "A_log"].astype(np.float64))).astype(np.float32)[:, None]
            out[b + "ssm_d"] = hf[m + "D"][:, None]
            out[b + "ssm_norm.weight"] = hf[m + "norm.weight"].reshape(G, -1)
            out[b + "ssm_out.weight"] = hf[m + "out_proj.weight"]
        elif kind == "*":
            out[b + "attn_q.weight"] = rope_permute(hf[m + "q_proj.weight"], cfg["num_attention_heads"])
            out[b + "attn_k.weight"] = rope_permute(hf[m + "k_proj.weight"], cfg["num_key_value_heads"])
            out[b + "attn_v.weight"] = hf[m + "v_proj.weight"]
            out[b + "attn_output.weight"] = hf[m + "o_proj.weight"]
        elif kind == "E":
            n = cfg["n_routed_experts"]
            out[b + "ffn_gate_inp.weight"] = hf[m + "gate.weight"]
            out[b + "exp_probs_b.bias"] = hf[m + "gate.e_score_correction_bias"]
            out[b + "ffn_up_exps.weight"] = np.stack([hf[f"{m}experts.{e}.up_proj.weight"] for e in range(n)])
            out[b + "ffn_down_exps.weight"] = np.stack([hf[f"{m}experts.{e}.down_proj.weight"] for e in range(n)])
            out[b + "ffn_up_shexp.weight"] = hf[m + "shared_experts.up_proj.weight"]
            out[b + "ffn_down_shexp.weight"] = hf[m + "shared_experts.down_proj.weight"]
        elif kind == "-":
            out[b + "ffn_up.weight"] = hf[m + "up_proj.weight"]
            out[b + "ffn_down.weight"] = hf[m + "down_proj.weight"]
    return out


def is_f32_role(name: str) -> bool:
    """Tensors llama.cpp always stores F32 (gguf-layout.md §2.3 / §6.1)."""
    return (name.endswith(("_norm.weight", ".bias", "ssm_a", "ssm_d"))
            or "ffn_gate_inp" in name or "ssm_conv1d" in name)


def read_gguf_tensors(path) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """name -> (type name, raw bytes as uint8, float32 values in numpy order).

    FP8 (I8 + ``<name>_scale``) tensors are decoded with their scale per docs/gguf-fp8.md."""
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}
    out = {}
    for name, t in tensors.items():
        if name.endswith("_scale") and name[: -len("_scale")] in tensors:
            continue
        shape = tuple(int(x) for x in reversed(t.shape))
        raw = np.asarray(t.data).reshape(-1).view(np.uint8)
        if t.tensor_type == T.I8:
            scale = np.asarray(tensors[name + "_scale"].data, dtype=np.float32).reshape(-1)
            codes = raw.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
            rows = codes.reshape(-1, shape[-1])
            if scale.size == 1:
                vals = rows * scale[0]
            elif scale.size == rows.shape[0]:
                vals = rows * scale[:, None]
            else:   # one scale per matrix of a stacked tensor
                vals = rows.reshape(scale.size, -1) * scale[:, None]
            out[name] = ("FP8", raw, vals.reshape(shape).astype(np.float32))
        else:
            vals = dequantize(np.asarray(t.data), t.tensor_type).reshape(shape).astype(np.float32)
            out[name] = (t.tensor_type.name, raw, vals)
    return out
