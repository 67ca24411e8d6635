"""Small random-weight Nemotron-H GGUF files for reader, loader and hostile-file tests.

Written with gguf-py's GGUFWriter straight from nemocpu.arch (keys + tensor specs), so the
files have llama.cpp's layout without needing the converter or a Hugging Face checkpoint.
"""

from __future__ import annotations

import numpy as np

from nemocpu import arch

SMALL_MOE = dict(
    arch=arch.ARCH_MOE, n_vocab=64, n_embd=64, layer_kinds="ME*E", n_head=4, n_head_kv=2,
    head_dim=16, ssm_n_head=4, ssm_head_dim=16, ssm_d_state=8, ssm_n_group=2, ssm_conv_kernel=4,
    n_expert=4, n_expert_used=2, n_ff_exp=32, n_ff_shexp=32, n_expert_shared=1,
    expert_weights_norm=True, expert_weights_scale=2.5, rms_eps=1e-5,
    extra={"layer_norm_epsilon": 1e-5, "rope_theta": 10000.0},
)


def small_hparams(**overrides) -> arch.HParams:
    return arch.HParams(**{**SMALL_MOE, **overrides})


def _f32_values(rng, spec: arch.TensorSpec) -> np.ndarray:
    n, name = spec.n_elements, spec.name
    if name.endswith("norm.weight"):
        v = rng.uniform(0.8, 1.2, n)
    elif name.endswith("ssm_a"):
        v = -np.exp(rng.uniform(0.0, 2.0, n))
    elif name.endswith("ssm_dt.bias"):
        v = rng.uniform(-4.0, -2.0, n)
    else:
        v = rng.uniform(-0.5, 0.5, n)
    return v.astype(np.float32).reshape(tuple(reversed(spec.ne)))


def write_model(path, hp: arch.HParams | None = None, wtype: str = "f32", seed: int = 0,
                extra_kv=None, skip_kv=(), tensor_hook=None, with_vocab: bool = True):
    """Write a random model. tensor_hook(name, array, raw_type) -> (name, array, raw_type) | None
    lets hostile tests rename/reshape/drop tensors; skip_kv drops metadata keys."""
    import gguf

    hp = hp or small_hparams()
    rng = np.random.default_rng(seed)
    qt = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(str(path), hp.arch)
    for key, val, vt in arch.gguf_kv(hp):
        if key == "general.architecture" or key in skip_kv:
            continue
        if vt == arch.ARR_I32:
            w.add_array(key, val)
        else:
            w.add_key_value(key, val, getattr(gguf.GGUFValueType, vt))
    if with_vocab:
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"<t{i}>" for i in range(hp.n_vocab)])
    if wtype == "fp8":
        w.add_string(arch.FP8_FORMAT_KEY, arch.FP8_FORMAT)
    for key, (val, vt) in (extra_kv or {}).items():
        w.add_key_value(key, val, vt)
    for spec in arch.tensor_specs(hp):
        if spec.optional and hp.tie_word_embeddings:
            continue
        if spec.role == "f32":
            items = [(spec.name, _f32_values(rng, spec), qt.F32)]
        else:
            x = (rng.standard_normal(tuple(reversed(spec.ne))) * 0.05).astype(np.float32)
            items = _encode(spec.name, x, wtype)
        for name, data, raw in items:
            if tensor_hook is not None:
                r = tensor_hook(name, data, raw)
                if r is None:
                    continue
                name, data, raw = r
            w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hp


def _encode(name, x, wtype):
    import gguf
    import ml_dtypes

    qt = gguf.GGMLQuantizationType
    if wtype == "f32":
        return [(name, x, qt.F32)]
    if wtype == "f16":
        return [(name, x.astype(np.float16), qt.F16)]
    if wtype in ("bf16", "q8_0", "q4_0"):
        t = {"bf16": qt.BF16, "q8_0": qt.Q8_0, "q4_0": qt.Q4_0}[wtype]
        return [(name, gguf.quants.quantize(x, t), t)]
    if wtype == "fp8":  # nemocpu FP8: per-row scale, E4M3 codes stored as I8
        rows = x.reshape(-1, x.shape[-1])
        scale = np.maximum(np.abs(rows).max(axis=1), 1e-12) / 448.0
        codes = (rows / scale[:, None]).astype(ml_dtypes.float8_e4m3fn).view(np.int8).reshape(x.shape)
        return [(name, codes, qt.I8), (arch.fp8_scale_name(name), scale.astype(np.float32), qt.F32)]
    raise ValueError(wtype)
