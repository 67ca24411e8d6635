"""What the CPU and the CUDA engine tests share: the random configurations, the prompt, the
logit comparison and the greedy loop, so both backends are held to the same cases."""

from __future__ import annotations

import numpy as np

IDS = np.array([1, 5, 7, 9, 11, 3, 2, 50, 60, 61, 4], np.int32)

# Overrides of oracle.tiny_hparams: both families, expert groups, MQA with 4 SSM groups.
CONFIGS = {
    "moe": dict(layer_kinds="MEM*EME*M"),
    "dense": dict(layer_kinds="M-M*-"),
    "moe-groups": dict(layer_kinds="ME*E", n_expert=8, n_expert_used=2, expert_group_count=4,
                       expert_group_used_count=2, n_ff_shexp=0, n_expert_shared=0),
    "mqa-4groups": dict(layer_kinds="*M*E", n_head=6, n_head_kv=1, head_dim=8, ssm_n_head=8,
                        ssm_n_group=4, ssm_d_state=8, ssm_conv_kernel=3),
}


def rel_err(a, ref) -> float:
    """Largest error of each position relative to that position's largest |logit|, max over positions."""
    a, ref = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(ref)
    return float(np.max(np.abs(a - ref).max(axis=1) / np.abs(ref).max(axis=1)))


def greedy_continuation(eval_ids, prompt_ids, max_new: int, stop_ids) -> list[int]:
    """Greedy tokens after prompt_ids; eval_ids(ids) appends ids and returns logits [1, n_vocab]."""
    logits = eval_ids(np.asarray(prompt_ids, np.int32))[0]
    out: list[int] = []
    while len(out) < max_new:
        tok = int(np.argmax(logits))
        out.append(tok)
        if tok in stop_ids:
            break
        logits = eval_ids(np.asarray([tok], np.int32))[0]
    return out
