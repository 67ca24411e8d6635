"""The Nemotron-H architecture as nemocpu and llama.cpp store it in GGUF.

This module is the single home of the model's *schema*: the hyperparameters, how they are
read from a Hugging Face ``config.json`` and from GGUF metadata, which GGUF keys (with the
exact value types llama.cpp checks) encode them, and which tensors (names, ggml shapes,
storage rules) a file must hold. The converter writes through it, the loader validates
through it; neither repeats this knowledge.

Shapes are in ggml order (``ne0`` first = the fastest axis = PyTorch's last axis), so a
PyTorch ``Linear`` weight ``[out, in]`` is ``(in, out)`` here.
Reference: ../shared/reference/gguf-layout.md sections 1-2 and 6.1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ModelFileError

ARCH_MOE = "nemotron_h_moe"
ARCH_DENSE = "nemotron_h"
ARCHITECTURES = (ARCH_MOE, ARCH_DENSE)

# Layer kinds, one character each, as in HF's ``hybrid_override_pattern``.
MAMBA, ATTENTION, MOE, MLP = "M", "*", "E", "-"

# transformers 5.x writes ``layers_block_type``; older code used other words.
_BLOCK_TYPE_TO_KIND = {
    "linear_attention": MAMBA, "mamba": MAMBA, "mamba2": MAMBA, "M": MAMBA,
    "full_attention": ATTENTION, "attention": ATTENTION, "*": ATTENTION,
    "moe": MOE, "E": MOE,
    "mlp": MLP, "-": MLP,
}

# llama.cpp writes 2**20 for hybrid models without RoPE (GraniteHybridModel).
LLAMACPP_HYBRID_CONTEXT_LENGTH = 1 << 20


@dataclass(frozen=True)
class HParams:
    """Everything the forward pass needs to know about a Nemotron-H model."""

    arch: str                      # ARCH_MOE or ARCH_DENSE
    n_vocab: int
    n_embd: int
    layer_kinds: str               # one of M * E - per layer
    n_head: int                    # attention query heads
    n_head_kv: int
    head_dim: int
    ssm_n_head: int                # Mamba heads ("time_step_rank" in GGUF)
    ssm_head_dim: int
    ssm_d_state: int
    ssm_n_group: int
    ssm_conv_kernel: int
    n_ff: int = 0                  # dense MLP width ('-' layers, nemotron_h only)
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    n_expert_shared: int = 0
    expert_weights_norm: bool = True
    expert_weights_scale: float = 1.0
    expert_group_count: int = 1
    expert_group_used_count: int = 1
    rms_eps: float = 1e-5
    context_length: int = LLAMACPP_HYBRID_CONTEXT_LENGTH
    tie_word_embeddings: bool = False
    extra: dict = field(default_factory=dict, compare=False)  # informational values

    # ---- derived sizes -------------------------------------------------------------
    @property
    def n_layer(self) -> int:
        return len(self.layer_kinds)

    @property
    def ssm_d_inner(self) -> int:
        return self.ssm_n_head * self.ssm_head_dim

    @property
    def ssm_conv_dim(self) -> int:
        return self.ssm_d_inner + 2 * self.ssm_n_group * self.ssm_d_state

    @property
    def ssm_in_dim(self) -> int:
        return 2 * self.ssm_d_inner + 2 * self.ssm_n_group * self.ssm_d_state + self.ssm_n_head

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d.update(n_layer=self.n_layer, ssm_d_inner=self.ssm_d_inner,
                 ssm_conv_dim=self.ssm_conv_dim, ssm_in_dim=self.ssm_in_dim)
        return d

    def validate(self, where=None) -> None:
        """Raise ModelFileError if the numbers cannot describe a runnable model."""
        def bad(msg):
            raise ModelFileError(where, f"inconsistent hyperparameters: {msg}")
        if self.arch not in ARCHITECTURES:
            bad(f"unknown architecture {self.arch!r}")
        for name in ("n_vocab", "n_embd", "ssm_conv_kernel"):
            if getattr(self, name) <= 0:
                bad(f"{name} must be positive, got {getattr(self, name)}")
        if not self.layer_kinds:
            bad("no layers")
        for i, k in enumerate(self.layer_kinds):
            if k not in (MAMBA, ATTENTION, MOE, MLP):
                bad(f"layer {i} has unknown kind {k!r}")
        kinds = set(self.layer_kinds)
        if MAMBA in kinds:
            if min(self.ssm_n_head, self.ssm_head_dim, self.ssm_d_state, self.ssm_n_group) <= 0:
                bad("Mamba layers need positive ssm head count, head dim, state size and groups")
            if self.ssm_n_head % self.ssm_n_group:
                bad(f"ssm heads ({self.ssm_n_head}) not divisible by groups ({self.ssm_n_group})")
        if ATTENTION in kinds:
            if min(self.n_head, self.n_head_kv, self.head_dim) <= 0:
                bad("attention layers need positive head counts and head_dim")
            if self.n_head % self.n_head_kv:
                bad(f"n_head ({self.n_head}) not divisible by n_head_kv ({self.n_head_kv})")
        if MOE in kinds:
            if self.arch != ARCH_MOE:
                bad("MoE layers in a dense nemotron_h model")
            if not (0 < self.n_expert_used <= self.n_expert) or self.n_ff_exp <= 0:
                bad(f"bad MoE sizes: {self.n_expert_used} of {self.n_expert} experts, width {self.n_ff_exp}")
        if MLP in kinds and self.n_ff <= 0:
            bad("dense MLP layers need a positive feed_forward_length")
        if not (0.0 < self.rms_eps < 1.0) or not math.isfinite(self.expert_weights_scale):
            bad("bad epsilon or expert weight scale")


# ------------------------------------------------------------------------------------
# Hugging Face config.json
# ------------------------------------------------------------------------------------
def _get(cfg: dict, *names, default=None):
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
    return default


def layer_kinds_from_hf(cfg: dict, where=None) -> str:
    pattern = cfg.get("hybrid_override_pattern")
    types = cfg.get("layers_block_type")
    kinds = None
    if isinstance(types, list) and types:
        try:
            kinds = "".join(_BLOCK_TYPE_TO_KIND[t] for t in types)
        except KeyError as e:
            raise ModelFileError(where, f"unknown layer type {e.args[0]!r} in layers_block_type") from None
    if isinstance(pattern, str) and pattern:
        bad = sorted(set(pattern) - set(_BLOCK_TYPE_TO_KIND))
        if bad:
            raise ModelFileError(where, f"unknown layer kind(s) {bad} in hybrid_override_pattern")
        if kinds is not None and kinds != pattern:
            raise ModelFileError(
                where, f"hybrid_override_pattern {pattern!r} disagrees with layers_block_type {kinds!r}")
        kinds = pattern
    if kinds is None:
        raise ModelFileError(where, "config has neither hybrid_override_pattern nor layers_block_type")
    n = cfg.get("num_hidden_layers")
    if isinstance(n, int) and n != len(kinds) and "layers_block_type" not in cfg:
        raise ModelFileError(where, f"num_hidden_layers={n} but the pattern has {len(kinds)} layers")
    return kinds


def hparams_from_hf_config(cfg: dict, where=None) -> HParams:
    """Read a NemotronHForCausalLM config.json (transformers 4.x or 5.x)."""
    archs = cfg.get("architectures") or []
    if "NemotronHForCausalLM" not in archs and cfg.get("model_type") != "nemotron_h":
        raise ModelFileError(where, f"not a Nemotron-H checkpoint (architectures={archs!r}, "
                                    f"model_type={cfg.get('model_type')!r})")
    cfg = dict(cfg.get("llm_config") or {}, **cfg) if "llm_config" in cfg else cfg
    kinds = layer_kinds_from_hf(cfg, where)
    # The MoE family is chosen by its layers, not by the mere presence of MoE keys:
    # transformers 5.x serialises MoE defaults even for dense models.
    arch = ARCH_MOE if MOE in kinds else ARCH_DENSE
    try:
        n_embd = int(cfg["hidden_size"])
        n_vocab = int(cfg["vocab_size"])
    except KeyError as e:
        raise ModelFileError(where, f"config.json lacks {e.args[0]!r}") from None
    n_head = int(_get(cfg, "num_attention_heads", default=0))
    head_dim = int(_get(cfg, "head_dim", "attention_head_dim", default=(n_embd // n_head if n_head else 0)))
    n_shexp = int(_get(cfg, "n_shared_experts", default=1 if arch == ARCH_MOE else 0))
    hp = HParams(
        arch=arch,
        n_vocab=n_vocab,
        n_embd=n_embd,
        layer_kinds=kinds,
        n_head=n_head,
        n_head_kv=int(_get(cfg, "num_key_value_heads", default=n_head)),
        head_dim=head_dim,
        ssm_n_head=int(_get(cfg, "mamba_num_heads", default=0)),
        ssm_head_dim=int(_get(cfg, "mamba_head_dim", default=0)),
        ssm_d_state=int(_get(cfg, "ssm_state_size", "mamba_d_state", default=0)),
        ssm_n_group=int(_get(cfg, "n_groups", "mamba_n_groups", default=1)),
        ssm_conv_kernel=int(_get(cfg, "conv_kernel", "mamba_d_conv", default=4)),
        n_ff=int(_get(cfg, "intermediate_size", default=0)) if MLP in kinds else 0,
        n_expert=int(_get(cfg, "n_routed_experts", default=0)) if arch == ARCH_MOE else 0,
        n_expert_used=int(_get(cfg, "num_experts_per_tok", default=0)) if arch == ARCH_MOE else 0,
        n_ff_exp=int(_get(cfg, "moe_intermediate_size", default=0)) if arch == ARCH_MOE else 0,
        n_ff_shexp=(int(_get(cfg, "moe_shared_expert_intermediate_size", default=0)) * max(n_shexp, 1)
                    if arch == ARCH_MOE and n_shexp > 0 else 0),
        n_expert_shared=n_shexp if arch == ARCH_MOE else 0,
        expert_weights_norm=bool(_get(cfg, "norm_topk_prob", default=True)),
        expert_weights_scale=float(_get(cfg, "routed_scaling_factor", default=1.0)),
        expert_group_count=int(_get(cfg, "n_group", default=1)),
        expert_group_used_count=int(_get(cfg, "topk_group", default=1)),
        rms_eps=float(_get(cfg, "norm_eps", "layer_norm_epsilon", "rms_norm_eps", default=1e-5)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        extra={"max_position_embeddings": cfg.get("max_position_embeddings"),
               # None when config.json has none: llama.cpp then writes no rope.freq_base
               "rope_theta": (float(cfg["rope_theta"]) if cfg.get("rope_theta") is not None else None),
               "layer_norm_epsilon": float(_get(cfg, "layer_norm_epsilon", "norm_eps", default=1e-5)),
               "bos_token_id": cfg.get("bos_token_id"), "eos_token_id": cfg.get("eos_token_id"),
               "pad_token_id": cfg.get("pad_token_id")},
    )
    hp.validate(where)
    return hp


# ------------------------------------------------------------------------------------
# GGUF metadata
# ------------------------------------------------------------------------------------
# Value types as llama.cpp's loader checks them (gguf-layout.md §1.3). Strings are
# GGUFValueType names so this module does not import gguf at load time.
U32, F32, BOOL, STR, ARR_I32 = "UINT32", "FLOAT32", "BOOL", "STRING", "ARRAY_INT32"


def gguf_kv(hp: HParams) -> list[tuple[str, Any, str]]:
    """The architecture keys llama.cpp reads, in the order its converter writes them."""
    a = hp.arch
    ff = [hp.n_ff_exp if k == MOE else hp.n_ff if k == MLP else 0 for k in hp.layer_kinds]
    kv_heads = [hp.n_head_kv if k == ATTENTION else 0 for k in hp.layer_kinds]
    rope_dims = hp.n_embd // hp.n_head if hp.n_head else 0   # llama.cpp quirk, unused
    out = [
        ("general.architecture", a, STR),
        (f"{a}.vocab_size", hp.n_vocab, U32),
        (f"{a}.context_length", hp.context_length, U32),
        (f"{a}.embedding_length", hp.n_embd, U32),
        (f"{a}.block_count", hp.n_layer, U32),
        (f"{a}.feed_forward_length", ff, ARR_I32),
        (f"{a}.attention.head_count", hp.n_head, U32),
        (f"{a}.attention.head_count_kv", kv_heads, ARR_I32),
        (f"{a}.attention.key_length", hp.head_dim, U32),
        (f"{a}.attention.value_length", hp.head_dim, U32),
        (f"{a}.attention.layer_norm_rms_epsilon", hp.rms_eps, F32),
        (f"{a}.attention.layer_norm_epsilon", float(hp.extra.get("layer_norm_epsilon", hp.rms_eps)), F32),
        (f"{a}.rope.dimension_count", rope_dims, U32),
        (f"{a}.rope.scaling.finetuned", False, BOOL),
        (f"{a}.ssm.conv_kernel", hp.ssm_conv_kernel, U32),
        (f"{a}.ssm.inner_size", hp.ssm_d_inner, U32),
        (f"{a}.ssm.state_size", hp.ssm_d_state, U32),
        (f"{a}.ssm.time_step_rank", hp.ssm_n_head, U32),
        (f"{a}.ssm.group_count", hp.ssm_n_group, U32),
    ]
    if hp.extra.get("rope_theta") is not None:   # read but unused by llama.cpp (no RoPE)
        out.insert(12, (f"{a}.rope.freq_base", float(hp.extra["rope_theta"]), F32))
    if a == ARCH_MOE:
        out += [
            (f"{a}.expert_count", hp.n_expert, U32),
            (f"{a}.expert_used_count", hp.n_expert_used, U32),
            (f"{a}.expert_group_count", hp.expert_group_count, U32),
            (f"{a}.expert_group_used_count", hp.expert_group_used_count, U32),
            (f"{a}.expert_feed_forward_length", hp.n_ff_exp, U32),
            (f"{a}.expert_shared_feed_forward_length", hp.n_ff_shexp, U32),
            (f"{a}.expert_shared_count", hp.n_expert_shared, U32),
            (f"{a}.expert_weights_norm", hp.expert_weights_norm, BOOL),
            (f"{a}.expert_weights_scale", hp.expert_weights_scale, F32),
        ]
    return out


def _per_layer(kv: dict, key: str, n_layer: int, where) -> list[int]:
    if key not in kv:
        raise ModelFileError(where, f"missing metadata key {key!r}")
    v = kv[key]
    if isinstance(v, (list, tuple)):
        if len(v) != n_layer:
            raise ModelFileError(where, f"{key!r} has {len(v)} entries, block_count is {n_layer}")
        return [int(x) for x in v]
    return [int(v)] * n_layer


def hparams_from_gguf_kv(kv: dict, where=None) -> HParams:
    """Rebuild HParams from GGUF metadata (files written by nemocpu or by llama.cpp)."""
    arch = kv.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelFileError(where, f"unsupported architecture {arch!r} (nemocpu runs {', '.join(ARCHITECTURES)})")

    def req(name, typ=int):
        key = f"{arch}.{name}"
        if key not in kv:
            raise ModelFileError(where, f"missing metadata key {key!r}")
        v = kv[key]
        if isinstance(v, (list, tuple, str, bytes)) or (typ is int and isinstance(v, float)):
            raise ModelFileError(where, f"metadata key {key!r} has the wrong type ({type(v).__name__})")
        return typ(v)

    def opt(name, default, typ=int):
        return req(name, typ) if f"{arch}.{name}" in kv else default

    n_layer = req("block_count")
    if not 0 < n_layer <= 4096:
        raise ModelFileError(where, f"absurd block_count {n_layer}")
    ff = _per_layer(kv, f"{arch}.feed_forward_length", n_layer, where)
    kvh = _per_layer(kv, f"{arch}.attention.head_count_kv", n_layer, where)
    n_expert = opt("expert_count", 0)
    kinds = "".join(
        (MAMBA if h == 0 else ATTENTION) if f == 0 else (MOE if n_expert > 0 else MLP)
        for f, h in zip(ff, kvh))
    n_head = opt("attention.head_count", 0)
    head_kv = max(kvh) if any(kvh) else 0
    mlp_widths = {f for f, k in zip(ff, kinds) if k == MLP}
    if len(mlp_widths) > 1:
        raise ModelFileError(where, f"dense MLP layers of different widths {sorted(mlp_widths)} are not supported")
    n_embd = req("embedding_length")
    tokens = kv.get("tokenizer.ggml.tokens")
    n_vocab = len(tokens) if isinstance(tokens, (list, tuple)) else opt("vocab_size", 0)
    hp = HParams(
        arch=arch,
        n_vocab=n_vocab,
        n_embd=n_embd,
        layer_kinds=kinds,
        n_head=n_head,
        n_head_kv=head_kv,
        head_dim=opt("attention.key_length", n_embd // n_head if n_head else 0),
        ssm_n_head=req("ssm.time_step_rank"),
        ssm_head_dim=(req("ssm.inner_size") // req("ssm.time_step_rank")) if req("ssm.time_step_rank") else 0,
        ssm_d_state=req("ssm.state_size"),
        ssm_n_group=req("ssm.group_count"),
        ssm_conv_kernel=req("ssm.conv_kernel"),
        n_ff=mlp_widths.pop() if mlp_widths else 0,
        n_expert=n_expert,
        n_expert_used=opt("expert_used_count", 0),
        n_ff_exp=opt("expert_feed_forward_length", 0),
        n_ff_shexp=opt("expert_shared_feed_forward_length", 0),
        n_expert_shared=opt("expert_shared_count", 1 if n_expert else 0),
        expert_weights_norm=bool(opt("expert_weights_norm", False, bool)),
        expert_weights_scale=opt("expert_weights_scale", 0.0, float) or 1.0,
        expert_group_count=opt("expert_group_count", 1),
        expert_group_used_count=opt("expert_group_used_count", 1),
        # llama.cpp's converter writes the rms key only from norm_eps/rms_norm_eps; a config with
        # just layer_norm_epsilon (which HF NemotronH uses for every RMSNorm) yields only that key.
        rms_eps=opt("attention.layer_norm_rms_epsilon", None, float) or req("attention.layer_norm_epsilon", float),
        context_length=opt("context_length", LLAMACPP_HYBRID_CONTEXT_LENGTH),
    )
    if kinds.count(MAMBA) and hp.ssm_d_inner != req("ssm.inner_size"):
        raise ModelFileError(where, "ssm.inner_size is not a multiple of ssm.time_step_rank")
    if any(h not in (0, head_kv) for h in kvh):
        raise ModelFileError(where, "attention layers with different kv head counts are not supported")
    hp.validate(where)
    return hp


# ------------------------------------------------------------------------------------
# Tensors
# ------------------------------------------------------------------------------------
# Storage rules (gguf-layout.md §2.3 and §6.1):
#   "f32"    always F32 (norms, 1-D tensors, router, conv, ssm_a/d, biases); never quantized
#   "embd"   token embedding: quantized like other matrices
#   "output" lm_head: llama-quantize keeps it at >= Q8_0 for Q4_0 files
#   "matrix" every other 2-D/3-D weight: takes the requested type
@dataclass(frozen=True)
class TensorSpec:
    name: str
    ne: tuple[int, ...]      # ggml order
    role: str                # "f32" | "embd" | "output" | "matrix"
    optional: bool = False

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)


def tensor_specs(hp: HParams) -> list[TensorSpec]:
    """Every tensor of a model with these hyperparameters, in llama.cpp's file order."""
    E, V = hp.n_embd, hp.n_vocab
    out = [TensorSpec("token_embd.weight", (E, V), "embd"),
           TensorSpec("output_norm.weight", (E,), "f32"),
           TensorSpec("output.weight", (E, V), "output", optional=hp.tie_word_embeddings)]
    di, G, N, nh = hp.ssm_d_inner, hp.ssm_n_group, hp.ssm_d_state, hp.ssm_n_head
    for i, kind in enumerate(hp.layer_kinds):
        b = f"blk.{i}."
        out.append(TensorSpec(b + "attn_norm.weight", (E,), "f32"))
        if kind == MAMBA:
            out += [
                TensorSpec(b + "ssm_in.weight", (E, hp.ssm_in_dim), "matrix"),
                TensorSpec(b + "ssm_conv1d.weight", (hp.ssm_conv_kernel, hp.ssm_conv_dim), "f32"),
                TensorSpec(b + "ssm_conv1d.bias", (hp.ssm_conv_dim,), "f32"),
                TensorSpec(b + "ssm_dt.bias", (nh,), "f32"),
                TensorSpec(b + "ssm_a", (1, nh), "f32"),
                TensorSpec(b + "ssm_d", (1, nh), "f32"),
                TensorSpec(b + "ssm_norm.weight", (di // G, G), "f32"),
                TensorSpec(b + "ssm_out.weight", (di, E), "matrix"),
            ]
        elif kind == ATTENTION:
            q, kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
            out += [
                TensorSpec(b + "attn_q.weight", (E, q), "matrix"),
                TensorSpec(b + "attn_k.weight", (E, kv), "matrix"),
                TensorSpec(b + "attn_v.weight", (E, kv), "matrix"),
                TensorSpec(b + "attn_output.weight", (q, E), "matrix"),
            ]
        elif kind == MOE:
            out += [
                TensorSpec(b + "ffn_gate_inp.weight", (E, hp.n_expert), "f32"),
                TensorSpec(b + "exp_probs_b.bias", (hp.n_expert,), "f32"),
                TensorSpec(b + "ffn_up_exps.weight", (E, hp.n_ff_exp, hp.n_expert), "matrix"),
                TensorSpec(b + "ffn_down_exps.weight", (hp.n_ff_exp, E, hp.n_expert), "matrix"),
            ]
            if hp.n_ff_shexp > 0:
                out += [
                    TensorSpec(b + "ffn_up_shexp.weight", (E, hp.n_ff_shexp), "matrix"),
                    TensorSpec(b + "ffn_down_shexp.weight", (hp.n_ff_shexp, E), "matrix"),
                ]
        elif kind == MLP:
            out += [
                TensorSpec(b + "ffn_up.weight", (E, hp.n_ff), "matrix"),
                TensorSpec(b + "ffn_down.weight", (hp.n_ff, E), "matrix"),
            ]
    return out


# ------------------------------------------------------------------------------------
# nemocpu's FP8 (E4M3) weights in GGUF -- see docs/gguf-fp8.md.
# ggml has no FP8 type. An FP8 weight keeps its name and ggml shape, is stored with
# ggml type I8 holding the raw float8_e4m3fn bytes, and has a sibling F32 tensor
# ``<name>_scale`` (e.g. ``blk.3.ffn_up_exps.weight_scale``) with 1 (per tensor),
# n_mat (per matrix of a stacked 3-D tensor) or n_mat*rows (per output row) elements:
#     W[m, r, :] = e4m3(code[m, r, :]) * scale[idx],  idx = 0 | m | m*rows + r
# The key FP8_FORMAT_KEY = "e4m3fn" marks a file that uses this encoding.
# ------------------------------------------------------------------------------------
FP8_FORMAT_KEY = "nemocpu.fp8.format"
FP8_FORMAT = "e4m3fn"
FP8_SCALE_SUFFIX = "_scale"
GGML_TYPE_I8 = 24


def fp8_scale_name(weight_name: str) -> str:
    return weight_name + FP8_SCALE_SUFFIX
