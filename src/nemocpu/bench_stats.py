"""What one decoded token costs in memory traffic, from a model's tensor table.

Decode is bound by memory bandwidth: each token streams every weight it uses once. This
counts those bytes from the types actually stored in the file (so Q4_0, Q8_0, FP8 and BF16
files are each charged their own size): every non-expert tensor, n_expert_used of the
n_expert routed experts, the shared expert, the lm_head, one row of the token embedding,
plus the recurrent state each Mamba layer reads and the attention KV cache at the current
context length. ``nemocpu bench`` and bench/vs_llamacpp.py divide bandwidth by it.
"""

from __future__ import annotations

import math

from .arch import ATTENTION, MAMBA, HParams

KV_BYTES = {"f16": 2, "f32": 4}


def weight_bytes_per_token(hp: HParams, tensors: dict) -> int:
    """tensors: {name: (data, ggml_type, ne)} as the engine gets them (FP8 "_scale" siblings included)."""
    total = 0.0
    for name, (data, _type, _ne) in tensors.items():
        nbytes = data.nbytes
        base = name[:-len("_scale")] if name.endswith("_scale") else name
        if base == "token_embd.weight":
            tied = "output.weight" not in tensors
            total += nbytes if tied else nbytes / hp.n_vocab    # tied: the lm_head reads it all
        elif "_exps." in base:
            total += nbytes * hp.n_expert_used / hp.n_expert
        else:
            total += nbytes
    return int(total)


def state_bytes_per_token(hp: HParams, n_past: int, kv_type: str = "f16") -> int:
    """Recurrent state read by every Mamba layer (fp32 SSM + conv state) and the KV cache of
    every attention layer holding n_past tokens."""
    n_mamba, n_attn = hp.layer_kinds.count(MAMBA), hp.layer_kinds.count(ATTENTION)
    ssm = hp.ssm_n_head * hp.ssm_head_dim * hp.ssm_d_state * 4
    conv = (hp.ssm_conv_kernel - 1) * hp.ssm_conv_dim * 4
    kv = 2 * hp.n_head_kv * hp.head_dim * KV_BYTES[kv_type] * n_past
    return n_mamba * (ssm + conv) + n_attn * kv


def n_params(tensors: dict) -> int:
    """Weights in the model (FP8 scales excluded: they are part of their weight's encoding)."""
    return sum(math.prod(ne) for name, (_d, _t, ne) in tensors.items() if not name.endswith("_scale"))
