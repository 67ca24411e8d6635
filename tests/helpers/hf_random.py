"""Tiny random NemotronH checkpoints written by transformers 5.23 itself (``save_pretrained``).

    cfg = make_random_checkpoint(tmp_path, pattern="MEM*EME*M", moe=True, n_groups=2)

gives a directory with config.json, model.safetensors, generation_config.json and the tiny
model's tokenizer files (vocab 4096), usable by the converter and by transformers'
``NemotronHForCausalLM.from_pretrained`` as the reference. Both families: ``moe=True`` uses
'E' layers (nemotron_h_moe), ``moe=False`` uses '-' dense ReLU^2 MLP layers (nemotron_h); a
pattern may mix the letters M * E - and is translated accordingly.

transformers initialises A_log, D, dt_bias, norm weights, conv bias and the router's
e_score_correction_bias to degenerate constants (ones/zeros/log(1..n)); they are randomised
here so that a wrong transform or a swapped tensor changes the numbers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# The shared material sits beside the repository (../shared), as in tests/conftest.py.
TINY_MODEL_DIR = Path(__file__).resolve().parents[3] / "shared" / "models" / "nemotron-h-tiny"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_KIND_TO_TYPE = {"M": "mamba", "*": "attention", "E": "moe", "-": "mlp"}


def tokenizer_source() -> Path:
    """Where the tokenizer files come from (the tiny model), or raise FileNotFoundError."""
    if all((TINY_MODEL_DIR / f).is_file() for f in TOKENIZER_FILES):
        return TINY_MODEL_DIR
    raise FileNotFoundError(f"{TINY_MODEL_DIR} (tokenizer files for random checkpoints) is not available")


def random_config(pattern: str = "MEM*EME*M", moe: bool = True, n_groups: int = 2, **overrides):
    """A small NemotronHConfig; '-' and 'E' in ``pattern`` follow ``moe``."""
    from transformers import NemotronHConfig

    kinds = pattern.replace("E" if not moe else "-", "-" if not moe else "E")
    kw = dict(
        vocab_size=4096, hidden_size=64, layers_block_type=[_KIND_TO_TYPE[k] for k in kinds],
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        mamba_num_heads=4 * n_groups, mamba_head_dim=16, ssm_state_size=16, n_groups=n_groups,
        conv_kernel=4, chunk_size=16, intermediate_size=96,
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=64, n_shared_experts=1, routed_scaling_factor=2.5,
        norm_topk_prob=True, layer_norm_epsilon=1e-5, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=512,
    )
    kw.update(overrides)
    return NemotronHConfig(**kw)


def randomize_degenerate_parameters(model, seed: int) -> None:
    """Give A_log, D, dt_bias, norms, conv bias and e_score_correction_bias random values."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)

    def rnd(t, lo, hi):
        return (torch.rand(t.shape, generator=g, dtype=torch.float32) * (hi - lo) + lo).to(t.dtype)

    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("A_log"):
                p.copy_(rnd(p, -1.0, 2.0))
            elif name.endswith(".D") or name.endswith("dt_bias"):
                p.copy_(rnd(p, -1.0, 1.0))
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(rnd(p, 0.5, 1.5))
            elif name.endswith("conv1d.bias"):
                p.copy_(rnd(p, -0.5, 0.5))
            elif name.endswith("e_score_correction_bias"):
                p.copy_(rnd(p, -0.1, 0.1))


def make_random_checkpoint(directory, pattern: str = "MEM*EME*M", moe: bool = True, n_groups: int = 2,
                           seed: int = 0, dtype: str = "float32", **overrides):
    """Write a random tiny NemotronH checkpoint into ``directory``; return its config."""
    import torch
    from transformers import NemotronHForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = random_config(pattern, moe, n_groups, **overrides)
    torch.manual_seed(seed)
    model = NemotronHForCausalLM(cfg).eval()
    randomize_degenerate_parameters(model, seed)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    elif dtype != "float32":
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', not {dtype!r}")
    model.save_pretrained(directory)
    src = tokenizer_source()
    for f in TOKENIZER_FILES:
        shutil.copyfile(src / f, directory / f)
    return model.config
