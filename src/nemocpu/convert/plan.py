"""Map checkpoint tensors onto GGUF tensors (llama.cpp's names, shapes, transforms, order).

Transforms (llama.cpp ``NemotronHModel`` / ``Mamba2Model`` / ``LlamaModel.modify_tensors``):

* ``A_log`` -> ``ssm_a`` = -exp(A_log) as float32 (A_log read as float32, exp evaluated in
  float64 and rounded once; llama.cpp's torch float32 exp can differ by 1 ulp);
  ``D`` -> ``ssm_d``; both (1, nh).
* ``conv1d.weight`` [C, 1, K] squeezed to ggml (K, C); ``mixer.norm.weight`` viewed as
  ggml (d_inner/G, G). Squeeze and reshape leave the bytes untouched.
* Routed experts stacked along the slowest axis: ggml (in, out, n_expert).
* ``q_proj`` / ``k_proj`` rows permuted inside every head as LlamaModel.permute does for
  RoPE (new row 2i+j = old row j*head_dim/2+i). NemotronH has no RoPE and Q and K get the
  same permutation, so attention scores do not change; it is applied for byte parity.

Order: llama.cpp emits tensors in checkpoint iteration order, a stacked expert tensor when
its layer's last expert tensor has been read (down before up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..arch import HParams, TensorSpec, tensor_specs
from ..errors import ConversionError
from .checkpoint import FP8, IGNORED_SUFFIXES, ST_DTYPES, HFCheckpoint, StoredTensor


@dataclass
class PlannedTensor:
    spec: TensorSpec
    sources: list[StoredTensor]
    transform: str = ""            # "" | "neg_exp" | "permute"
    permute_heads: int = 0
    qtype: object = None           # gguf GGMLQuantizationType or types.FP8
    order: tuple = ()
    fp8_scales: list[np.ndarray] = field(default_factory=list)  # ModelOpt scales, per source

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def sources_fp8(self) -> bool:
        return all(s.dtype == FP8 for s in self.sources)


def _hf_prefix_candidates(ckpt: HFCheckpoint, name: str) -> str:
    """Older NVIDIA checkpoints call the embedding ``backbone.embedding.weight``."""
    if name == "backbone.embeddings.weight" and name not in ckpt.tensors and "backbone.embedding.weight" in ckpt.tensors:
        return "backbone.embedding.weight"
    return name


def _sources(spec: TensorSpec, hp: HParams) -> tuple[list[tuple[str, tuple[int, ...]]], str, int]:
    """(HF name, expected HF shape) of each source, the transform and its head count."""
    E = hp.n_embd
    name = spec.name
    mat = (spec.ne[1], spec.ne[0]) if len(spec.ne) == 2 else None
    if name == "token_embd.weight":
        return [("backbone.embeddings.weight", mat)], "", 0
    if name == "output_norm.weight":
        return [("backbone.norm_f.weight", (E,))], "", 0
    if name == "output.weight":
        return [("lm_head.weight", mat)], "", 0
    _, i, rest = name.split(".", 2)
    L = f"backbone.layers.{i}."
    M = L + "mixer."
    simple = {
        "attn_norm.weight": (L + "norm.weight", (E,)),
        "ssm_in.weight": (M + "in_proj.weight", mat),
        "ssm_conv1d.bias": (M + "conv1d.bias", (hp.ssm_conv_dim,)),
        "ssm_dt.bias": (M + "dt_bias", (hp.ssm_n_head,)),
        "ssm_d": (M + "D", (hp.ssm_n_head,)),
        "ssm_norm.weight": (M + "norm.weight", (hp.ssm_d_inner,)),
        "ssm_out.weight": (M + "out_proj.weight", mat),
        "attn_v.weight": (M + "v_proj.weight", mat),
        "attn_output.weight": (M + "o_proj.weight", mat),
        "ffn_gate_inp.weight": (M + "gate.weight", mat),
        "exp_probs_b.bias": (M + "gate.e_score_correction_bias", (hp.n_expert,)),
        "ffn_up_shexp.weight": (M + "shared_experts.up_proj.weight", mat),
        "ffn_down_shexp.weight": (M + "shared_experts.down_proj.weight", mat),
        "ffn_up.weight": (M + "up_proj.weight", mat),
        "ffn_down.weight": (M + "down_proj.weight", mat),
    }
    if rest in simple:
        return [simple[rest]], "", 0
    if rest == "ssm_a":
        return [(M + "A_log", (hp.ssm_n_head,))], "neg_exp", 0
    if rest == "ssm_conv1d.weight":
        return [(M + "conv1d.weight", (hp.ssm_conv_dim, 1, hp.ssm_conv_kernel))], "", 0
    if rest == "attn_q.weight":
        return [(M + "q_proj.weight", mat)], "permute", hp.n_head
    if rest == "attn_k.weight":
        return [(M + "k_proj.weight", mat)], "permute", hp.n_head_kv
    if rest in ("ffn_up_exps.weight", "ffn_down_exps.weight"):
        proj = "up_proj" if rest.startswith("ffn_up") else "down_proj"
        shape = (spec.ne[1], spec.ne[0])
        return [(f"{M}experts.{e}.{proj}.weight", shape) for e in range(hp.n_expert)], "", 0
    raise ConversionError(None, f"internal: no checkpoint source known for GGUF tensor {name!r}")


def _shape_ok(t: StoredTensor, want: tuple[int, ...]) -> bool:
    if t.shape == want:
        return True
    # squeezed variants of 1-wide axes (e.g. conv1d stored [C, K], A_log stored [nh, 1])
    return tuple(d for d in t.shape if d != 1) == tuple(d for d in want if d != 1) and \
        math.prod(t.shape) == math.prod(want)


def plan_tensors(ckpt: HFCheckpoint) -> list[PlannedTensor]:
    """Every GGUF tensor with its validated sources, in llama.cpp's file order."""
    hp = ckpt.hparams
    position = {name: k for k, name in enumerate(ckpt.tensors)}
    used: set[str] = set()
    planned = []
    for spec in tensor_specs(hp):
        if spec.name == "output.weight" and hp.tie_word_embeddings and "lm_head.weight" not in ckpt.tensors:
            continue
        srcs, transform, heads = _sources(spec, hp)
        stored = []
        for hf_name, want in srcs:
            hf_name = _hf_prefix_candidates(ckpt, hf_name)
            t = ckpt.tensors.get(hf_name)
            if t is None:
                raise ConversionError(ckpt.dir, f"tensor {hf_name!r} (for GGUF {spec.name!r}) is missing from the "
                                                f"checkpoint, but config.json's layer pattern needs it")
            if t.dtype not in ST_DTYPES or t.dtype == "F64":
                raise ConversionError(t.path, f"tensor {hf_name!r} has unsupported dtype {t.dtype} "
                                              "(supported: F32, F16, BF16, F8_E4M3)")
            if not _shape_ok(t, want):
                raise ConversionError(t.path, f"tensor {hf_name!r} has shape {list(t.shape)}, expected {list(want)} "
                                              "from config.json")
            stored.append(t)
            used.add(hf_name)
        p = PlannedTensor(spec, stored, transform, heads)
        if any(s.dtype == FP8 for s in stored):
            p.fp8_scales = [ckpt.fp8_scale(s) if s.dtype == FP8 else None for s in stored]
            used.update(s.name + "_scale" for s in stored if s.dtype == FP8)
        last = max(position[s.name] for s in stored)
        p.order = (last, 1 if spec.name.endswith("ffn_up_exps.weight") else 0)
        planned.append(p)

    # Stacked up/down experts of a layer are emitted together, after the layer's last expert tensor.
    by_name = {p.name: p for p in planned}
    for p in planned:
        if p.name.endswith("ffn_down_exps.weight"):
            up = by_name[p.name.replace("ffn_down_exps", "ffn_up_exps")]
            last = max(p.order[0], up.order[0])
            p.order, up.order = (last, 0), (last, 1)

    unknown = [n for n in ckpt.tensors if n not in used and not n.endswith(IGNORED_SUFFIXES)
               and not n.startswith("mtp.") and not n.endswith("_scale")]
    if unknown:
        t = ckpt.tensors[unknown[0]]
        raise ConversionError(t.path, f"{len(unknown)} checkpoint tensor(s) do not fit config.json's layer pattern "
                                      f"{hp.layer_kinds!r}, e.g. {unknown[0]!r}")
    planned.sort(key=lambda p: p.order)
    return planned


# ---- reading a planned tensor as rows ---------------------------------------------------
CHUNK_ELEMENTS = 1 << 22     # 16 MiB of float32 per chunk keeps peak memory flat


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """LlamaModel.permute: inside each head, interleave the two halves of the rows."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def iter_source_rows(p: PlannedTensor, raw_fp8: bool):
    """Yield (source index, row array) chunks covering the tensor in ggml row order.

    raw_fp8=False: float32 rows (FP8 sources dequantized). raw_fp8=True: uint8 E4M3 codes.
    """
    ne0 = p.spec.ne[0]
    for k, src in enumerate(p.sources):
        n_rows = src.n_elements // ne0
        if p.transform:
            rows = _read(src, 0, n_rows, ne0, raw_fp8, p.fp8_scales[k] if p.fp8_scales else None)
            if p.transform == "neg_exp":
                # exp in float64, rounded once to float32: deterministic on every CPU (float32
                # exp implementations differ by an ulp between numpy, torch and SIMD widths)
                rows = (-np.exp(rows.astype(np.float64))).astype(np.float32)
            elif p.transform == "permute":
                rows = permute_rows(rows, p.permute_heads)
            yield k, rows
            continue
        step = max(1, CHUNK_ELEMENTS // ne0)
        for r0 in range(0, n_rows, step):
            r1 = min(n_rows, r0 + step)
            yield k, _read(src, r0, r1, ne0, raw_fp8, p.fp8_scales[k] if p.fp8_scales else None, n_rows)


def _read(src: StoredTensor, r0: int, r1: int, ne0: int, raw_fp8: bool, scale, n_rows: int | None = None):
    from .types import fp8_dequant

    data = src.read_raw(r0 * ne0, (r1 - r0) * ne0).reshape(r1 - r0, ne0)
    if src.dtype == FP8:
        if raw_fp8:
            return data.view(np.uint8)
        s = scale.reshape(-1)
        return fp8_dequant(data.view(np.uint8), s[r0:r1] if s.size > 1 else s)
    return data.astype(np.float32)
