#!/usr/bin/env python3
"""Write a random-weight GGUF with the real Nemotron 3 Nano 30B-A3B dimensions.

The file is in llama.cpp's layout (nemocpu.arch), so llama.cpp's llama-bench runs the very
same file as ``nemocpu bench``. Only the first N layers of the real 52-layer pattern are
kept (16 by default: 6 Mamba, 8 MoE, 2 attention), which keeps the file a few GB while
every kernel sees its real shapes.

Random data is generated directly in each storage format (no float -> quant pass), but is
well formed: quant scales give weights of std ~0.02, the router has real spread so tokens
go to many experts, A/dt/D are in the trained model's ranges, norms are ~1.

    python bench/synthetic.py --layers 16 --type q4_0 -o bench/cache/nano16-q4_0.gguf
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from nemocpu import arch  # noqa: E402

NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"

QK = 32            # elements per Q4_0 / Q8_0 block
WEIGHT_STD = 0.02  # std of the random matrices, as in a freshly initialised model

# llama.cpp's general.file_type values (LLAMA_FTYPE_*); FP8 has none (nemocpu's own type).
FILE_TYPE = {"q4_0": 2, "q8_0": 7, "bf16": 32, "f16": 1, "f32": 0}
GGML_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30, "fp8": arch.GGML_TYPE_I8}


def nano_hparams(n_layers: int) -> arch.HParams:
    """Nemotron 3 Nano 30B-A3B (reference/nemotron-h.md §1), first n_layers layers."""
    return arch.HParams(
        arch=arch.ARCH_MOE, n_vocab=131072, n_embd=2688, layer_kinds=NANO_PATTERN[:n_layers],
        n_head=32, n_head_kv=2, head_dim=128,
        ssm_n_head=64, ssm_head_dim=64, ssm_d_state=128, ssm_n_group=8, ssm_conv_kernel=4,
        n_expert=128, n_expert_used=6, n_ff_exp=1856, n_ff_shexp=3712, n_expert_shared=1,
        expert_weights_norm=True, expert_weights_scale=2.5, rms_eps=1e-5,
        extra={"layer_norm_epsilon": 1e-5, "rope_theta": 10000.0},
    )


# ---- random matrices, generated straight in their storage format -----------------------
def rand_q8_0(rng, n_elems: int) -> np.ndarray:
    nb = n_elems // QK
    blocks = np.empty((nb, 34), np.uint8)
    d = (rng.uniform(0.8, 1.2, nb) * WEIGHT_STD / 73.6).astype(np.float16)   # uniform int8 std ~73.6
    blocks[:, :2] = d.view(np.uint8).reshape(nb, 2)
    blocks[:, 2:] = rng.integers(-127, 128, (nb, QK), dtype=np.int8).view(np.uint8)
    return blocks.reshape(-1)


def rand_q4_0(rng, n_elems: int) -> np.ndarray:
    nb = n_elems // QK
    blocks = np.empty((nb, 18), np.uint8)
    d = (rng.uniform(0.8, 1.2, nb) * WEIGHT_STD / 4.61).astype(np.float16)    # uniform (q-8) std ~4.61
    blocks[:, :2] = d.view(np.uint8).reshape(nb, 2)
    blocks[:, 2:] = rng.integers(0, 256, (nb, QK // 2), dtype=np.uint8)
    return blocks.reshape(-1)


def rand_bf16(rng, n_elems: int) -> np.ndarray:
    # sign | exponent in [2^-9, 2^-5] | random mantissa: |w| ~ 0.002..0.06, std ~0.02
    r = rng.integers(0, 1 << 16, n_elems, dtype=np.uint16)
    exp = (118 + (r >> 7) % 5).astype(np.uint16)
    return ((r & 0x807F) | (exp << 7)).astype(np.uint16).view(np.uint8)


def rand_f16(rng, n_elems: int) -> np.ndarray:
    return (rng.standard_normal(n_elems, dtype=np.float32) * WEIGHT_STD).astype(np.float16).view(np.uint8)


def rand_fp8(rng, n_elems: int) -> np.ndarray:
    # float8_e4m3fn codes: sign | exponent field 4..7 (2^-3..2^0) | mantissa; never NaN (0x7f/0xff)
    r = rng.integers(0, 256, n_elems, dtype=np.uint8)
    return (r & 0x87) | ((4 + ((r >> 3) & 3)) << 3).astype(np.uint8)


MATRIX_MAKERS = {"q8_0": rand_q8_0, "q4_0": rand_q4_0, "bf16": rand_bf16, "f16": rand_f16, "fp8": rand_fp8}
BYTES_PER_ELEM = {"q8_0": 34 / 32, "q4_0": 18 / 32, "bf16": 2, "f16": 2, "fp8": 1}


def f32_tensor(rng, spec: arch.TensorSpec, hp: arch.HParams) -> np.ndarray:
    n, name = spec.n_elements, spec.name
    if name.endswith("norm.weight"):
        v = rng.uniform(0.8, 1.2, n)
    elif name.endswith("ssm_a"):
        v = -np.exp(rng.uniform(0.0, np.log(16.0), n))        # A = -exp(A_log), A_log in [0, log 16]
    elif name.endswith("ssm_d"):
        v = rng.uniform(0.5, 1.5, n)
    elif name.endswith("ssm_dt.bias"):
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), n))
        v = dt + np.log(-np.expm1(-dt))                       # inverse softplus
    elif name.endswith("ssm_conv1d.weight"):
        v = rng.uniform(-0.5, 0.5, n)
    elif name.endswith("ssm_conv1d.bias"):
        v = rng.uniform(-0.1, 0.1, n)
    elif name.endswith("ffn_gate_inp.weight"):
        v = rng.standard_normal(n) / np.sqrt(hp.n_embd)       # unit-variance router logits: real spread
    elif name.endswith("exp_probs_b.bias"):
        v = rng.uniform(-0.05, 0.05, n)
    else:
        raise ValueError(f"no generator for F32 tensor {name}")
    return v.astype(np.float32)


def synthetic_vocab(n_vocab: int):
    """A byte-level BPE vocabulary llama.cpp accepts: specials, the 256 GPT-2 byte symbols, fillers."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, k = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + k)
            k += 1
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tokens = specials + [chr(c) for c in cs] + ["ĠĠ"]
    tokens += [f"<synthetic_{i}>" for i in range(n_vocab - len(tokens))]
    types = [3] * len(specials) + [1] * (n_vocab - len(specials))
    return tokens, types, ["Ġ Ġ"]


def write(path: Path, n_layers: int, wtype: str, seed: int = 0) -> dict:
    import gguf

    hp = nano_hparams(n_layers)
    rng = np.random.default_rng(seed)
    specs = arch.tensor_specs(hp)
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), hp.arch)
    w.add_name(f"synthetic Nemotron 3 Nano, first {n_layers} layers, random {wtype} weights")
    for key, val, vt in arch.gguf_kv(hp):
        if key == "general.architecture":
            continue
        if vt == arch.ARR_I32:
            w.add_array(key, val)
        else:
            w.add_key_value(key, val, getattr(gguf.GGUFValueType, vt))
    if wtype in FILE_TYPE:
        w.add_file_type(FILE_TYPE[wtype])
    else:
        w.add_string(arch.FP8_FORMAT_KEY, arch.FP8_FORMAT)
    w.add_quantization_version(2)
    tokens, types, merges = synthetic_vocab(hp.n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("pixtral")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(4)
    w.add_add_bos_token(False)

    # Tensor infos first (the header needs all of them), then stream the data one tensor at a time.
    plan = []
    for s in specs:
        if s.optional and s.name == "output.weight" and hp.tie_word_embeddings:
            continue
        if s.role == "f32":
            plan.append((s, "f32", s.n_elements * 4))
            continue
        # llama-quantize keeps the output matrix at Q8_0 in a Q4_0 file (gguf-layout.md §6.2).
        t = "q8_0" if (wtype == "q4_0" and s.role == "output") else wtype
        plan.append((s, t, int(s.n_elements * BYTES_PER_ELEM[t])))
        if t == "fp8":
            rows = s.n_elements // s.ne[0]
            plan.append((arch.TensorSpec(arch.fp8_scale_name(s.name), (rows,), "f32"), "fp8_scale", rows * 4))
    raw = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
           "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
           "q4_0": gguf.GGMLQuantizationType.Q4_0, "fp8": gguf.GGMLQuantizationType.I8,
           "fp8_scale": gguf.GGMLQuantizationType.F32}
    for s, t, nbytes in plan:
        # GGUFWriter wants the numpy (torch-order) shape: reversed ggml ne; for quant types the
        # shape is in bytes along the last axis.
        shape = list(reversed(s.ne))
        if t in ("q8_0", "q4_0"):
            shape[-1] = shape[-1] // QK * (34 if t == "q8_0" else 18)
        elif t in ("bf16", "f16"):
            pass
        w.add_tensor_info(s.name, shape, np.dtype(np.uint8 if t in ("q8_0", "q4_0") else
                                                  np.float32 if t in ("f32", "fp8_scale") else
                                                  np.int8 if t == "fp8" else np.float16),
                          nbytes, raw_dtype=raw[t])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    t0 = time.time()
    total = 0
    for s, t, nbytes in plan:
        if t == "f32":
            data = f32_tensor(rng, s, hp)
        elif t == "fp8_scale":
            data = np.full(s.n_elements, WEIGHT_STD / 1.0, np.float32)
        else:
            data = MATRIX_MAKERS[t](rng, s.n_elements)
        data = np.ascontiguousarray(data).view(np.uint8)
        assert data.nbytes == nbytes, (s.name, data.nbytes, nbytes)
        w.write_tensor_data(data)
        total += nbytes
    w.close()
    os.replace(tmp, path)
    return {"path": str(path), "bytes": path.stat().st_size, "tensor_bytes": total,
            "seconds": round(time.time() - t0, 1), "layers": hp.layer_kinds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--type", choices=sorted(MATRIX_MAKERS), default="q4_0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", type=Path, required=True)
    a = ap.parse_args(argv)
    if not 1 <= a.layers <= len(NANO_PATTERN):
        ap.error(f"--layers must be in 1..{len(NANO_PATTERN)}")
    a.output.parent.mkdir(parents=True, exist_ok=True)
    print(write(a.output, a.layers, a.type, a.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
