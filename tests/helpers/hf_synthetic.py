"""Large random NemotronH checkpoints written directly as safetensors (no torch, bounded memory).

For converter scale tests (peak RSS on multi-GB inputs, interrupting a long conversion):
``write_synthetic_checkpoint(dir, hidden=2048, n_expert=64, ...)`` streams random bf16
weights into ``model.safetensors`` (or several shards plus an index) one tensor at a time, and
copies the tiny model's tokenizer files. The weights mean nothing; the names, shapes and
config follow the NVIDIA layout exactly.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np

from .hf_random import TOKENIZER_FILES, tokenizer_source

_KIND_TO_TYPE = {"M": "mamba", "*": "attention", "E": "moe", "-": "mlp"}


# A small MoE checkpoint (all layer kinds, 2 SSM groups) for tests that only need *a* valid one.
SMALL = dict(pattern="M*EM", hidden=64, n_expert=4, moe_ff=32, shexp_ff=64, n_head=4,
             n_kv=2, head_dim=16, ssm_heads=4, ssm_head_dim=16, d_state=16, n_groups=2)


def synthetic_config(pattern="MEM*EME", hidden=1024, n_expert=16, moe_ff=512, shexp_ff=1024,
                     n_head=8, n_kv=2, head_dim=128, ssm_heads=16, ssm_head_dim=64, d_state=64,
                     n_groups=2, vocab=4096) -> dict:
    return {
        "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
        "hybrid_override_pattern": pattern, "num_hidden_layers": len(pattern),
        "layers_block_type": [_KIND_TO_TYPE[k] for k in pattern],
        "vocab_size": vocab, "hidden_size": hidden, "num_attention_heads": n_head,
        "num_key_value_heads": n_kv, "head_dim": head_dim, "mamba_num_heads": ssm_heads,
        "mamba_head_dim": ssm_head_dim, "ssm_state_size": d_state, "n_groups": n_groups,
        "conv_kernel": 4, "n_routed_experts": n_expert, "num_experts_per_tok": 4,
        "moe_intermediate_size": moe_ff, "moe_shared_expert_intermediate_size": shexp_ff,
        "n_shared_experts": 1, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
        "n_group": 1, "topk_group": 1, "intermediate_size": 4 * hidden, "layer_norm_epsilon": 1e-5,
        "norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 8192,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "time_step_limit": [0.0, {"__float__": "Infinity"}],
    }


def checkpoint_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, torch shape) of every tensor of a NemotronH checkpoint with this config."""
    E, V = cfg["hidden_size"], cfg["vocab_size"]
    nh, hd, N, G = cfg["mamba_num_heads"], cfg["mamba_head_dim"], cfg["ssm_state_size"], cfg["n_groups"]
    di, conv = nh * hd, nh * hd + 2 * G * N
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    out = [("backbone.embeddings.weight", (V, E)), ("backbone.norm_f.weight", (E,)), ("lm_head.weight", (V, E))]
    for i, k in enumerate(cfg["hybrid_override_pattern"]):
        L, M = f"backbone.layers.{i}.", f"backbone.layers.{i}.mixer."
        out.append((L + "norm.weight", (E,)))
        if k == "M":
            out += [(M + "in_proj.weight", (2 * di + 2 * G * N + nh, E)), (M + "conv1d.weight", (conv, 1, 4)),
                    (M + "conv1d.bias", (conv,)), (M + "dt_bias", (nh,)), (M + "A_log", (nh,)), (M + "D", (nh,)),
                    (M + "norm.weight", (di,)), (M + "out_proj.weight", (E, di))]
        elif k == "*":
            out += [(M + "q_proj.weight", (q, E)), (M + "k_proj.weight", (kv, E)),
                    (M + "v_proj.weight", (kv, E)), (M + "o_proj.weight", (E, q))]
        elif k == "E":
            F, S = cfg["moe_intermediate_size"], cfg["moe_shared_expert_intermediate_size"]
            out += [(M + "gate.weight", (cfg["n_routed_experts"], E)),
                    (M + "gate.e_score_correction_bias", (cfg["n_routed_experts"],)),
                    (M + "shared_experts.up_proj.weight", (S, E)), (M + "shared_experts.down_proj.weight", (E, S))]
            for e in range(cfg["n_routed_experts"]):
                out += [(f"{M}experts.{e}.up_proj.weight", (F, E)), (f"{M}experts.{e}.down_proj.weight", (E, F))]
        elif k == "-":
            out += [(M + "up_proj.weight", (cfg["intermediate_size"], E)),
                    (M + "down_proj.weight", (E, cfg["intermediate_size"]))]
    return out


def _write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], seed: int) -> None:
    header, offset = {}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape in tensors:
            n = int(np.prod(shape))
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])   # same values however sharded
            for start in range(0, n, 1 << 22):          # 4 M elements at a time: bounded memory
                k = min(1 << 22, n - start)
                f.write((rng.standard_normal(k, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16).tobytes())


def write_synthetic_checkpoint(directory, n_shards: int = 1, seed: int = 0, **cfg_kw) -> dict:
    """Write config, tokenizer and random bf16 weights (``n_shards`` files + index if > 1)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = synthetic_config(**cfg_kw)
    (directory / "config.json").write_text(json.dumps(cfg, indent=1))
    src = tokenizer_source()
    for f in TOKENIZER_FILES:
        shutil.copyfile(src / f, directory / f)
    tensors = checkpoint_shapes(cfg)
    shards = [tensors[i::n_shards] for i in range(n_shards)]
    if n_shards == 1:
        _write_shard(directory / "model.safetensors", tensors, seed)
    else:
        weight_map = {}
        for i, part in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
            _write_shard(directory / fname, part, seed)
            weight_map.update({name: fname for name, _ in part})
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return cfg
