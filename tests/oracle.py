"""Float64 NumPy oracle of the Nemotron-H forward pass on GGUF-named tensors.

A port of Appendix A of reference/nemotron-h.md to llama.cpp's GGUF names and transforms:
``ssm_a`` already holds -exp(A_log), ``ssm_conv1d.weight`` is [C, K] (ggml ne {K, C}),
``ssm_norm.weight`` is [G, d_inner/G], experts are stacked [n_expert, rows, K].
Arrays are NumPy-shaped (ggml ``ne`` reversed). It is deliberately slow and plain: it is
the spec the C++ engine is tested against, never the other way round.

``random_gguf_tensors`` makes well-formed random weights for every tensor of
``nemocpu.arch.tensor_specs`` in a chosen storage type, returning both what the engine
reads (raw bytes, ggml type, ne) and what the oracle reads (the dequantized values).
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

from nemocpu.arch import MAMBA, ATTENTION, MOE, HParams, fp8_scale_name, tensor_specs

GGML_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 8, "FP8": 24, "BF16": 30}


# ---------------------------------------------------------------------------------------
# forward pass
# ---------------------------------------------------------------------------------------
def rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def relu2(x):
    r = np.maximum(x, 0)
    return r * r


_QUANT_MARGIN = [np.inf]


def reset_quant_margin():
    _QUANT_MARGIN[0] = np.inf


def quant_margin() -> float:
    """Smallest distance (in int8 steps) of any activation the oracle quantized since the last
    reset_quant_margin() to a rounding boundary. The engine computes the same activations in
    fp32 (~1e-6 relative apart), so below ~1e-3 the two may round one step apart: a real,
    format-inherent difference that tests exclude rather than paper over with tolerance."""
    return _QUANT_MARGIN[0]


def q8_act_blocks(x):
    """The engine's activation quantization reproduced bit for bit: per 32-block
    d = fp32(amax / 127), q = round-half-away(fp32(x * fp32(1 / d))).
    Returns (d [..., nb] float32, q [..., nb, 32] float64 integers, v = the unrounded x/d)."""
    x32 = np.asarray(x, np.float32).reshape(*np.shape(x)[:-1], -1, 32)
    d = (np.abs(x32).max(-1) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (x32 * inv[..., None]).astype(np.float32).astype(np.float64)
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return d, q, v


def quantize_act(x):
    """x after the engine's int8 activation quantization (what Q8_0/Q4_0 weights see)."""
    d, q, v = q8_act_blocks(x)
    a = np.abs(v)
    _QUANT_MARGIN[0] = min(_QUANT_MARGIN[0], float(np.abs(a - np.floor(a) - 0.5).min()))
    return (q * d[..., None]).reshape(np.shape(x))


# Names of weights whose input the engine quantizes to int8 (Q8_0 / Q4_0 weights). The
# oracle reproduces that step when asked, so quantized models compare at tight tolerance.
ACT_QUANT: set = set()


def lin(P, name, x, expert=None):
    w = P[name] if expert is None else P[name][expert]
    if name in ACT_QUANT:
        x = quantize_act(x)
    return x @ w.T


def mamba(P, pre, h, hp: HParams, dt_floor, clamp, state):
    """state: dict with 'conv' [K-1, C] (pre-conv inputs, oldest first) and 'ssm' [nh, hd, N]."""
    T = h.shape[0]
    nh, hd, G, N, K = hp.ssm_n_head, hp.ssm_head_dim, hp.ssm_n_group, hp.ssm_d_state, hp.ssm_conv_kernel
    di, cd = hp.ssm_d_inner, hp.ssm_conv_dim
    u = lin(P, pre + "ssm_in.weight", h)
    z, xbc, dtr = u[:, :di], u[:, di:di + cd], u[:, di + cd:]
    W = P[pre + "ssm_conv1d.weight"]                                  # [C, K]
    pad = np.concatenate([state["conv"], xbc], 0)                     # [K-1+T, C]
    state["conv"] = pad[T:].copy()
    xbc = silu(np.stack([(pad[t:t + K] * W.T).sum(0) for t in range(T)]) + P[pre + "ssm_conv1d.bias"])
    xs = xbc[:, :di].reshape(T, nh, hd)
    B = xbc[:, di:di + G * N].reshape(T, G, N)
    C = xbc[:, di + G * N:].reshape(T, G, N)
    dt = softplus(dtr + P[pre + "ssm_dt.bias"])
    dt = np.where(clamp[:, None], np.maximum(dt, dt_floor), dt)
    A = P[pre + "ssm_a"][:, 0]
    D = P[pre + "ssm_d"][:, 0]
    S = state["ssm"]
    y = np.zeros((T, nh, hd))
    hpg = nh // G
    for t in range(T):
        for hh in range(nh):
            g = hh // hpg
            S[hh] = np.exp(dt[t, hh] * A[hh]) * S[hh] + dt[t, hh] * np.outer(xs[t, hh], B[t, g])
            y[t, hh] = S[hh] @ C[t, g] + D[hh] * xs[t, hh]
    v = (y.reshape(T, di) * silu(z)).reshape(T, G, di // G)
    v = v / np.sqrt((v * v).mean(-1, keepdims=True) + hp.rms_eps) * P[pre + "ssm_norm.weight"]
    return lin(P, pre + "ssm_out.weight", v.reshape(T, di))


def attention(P, pre, h, hp: HParams, cache):
    """cache: dict with 'k', 'v' [n_past, n_kv*hd]; appended to."""
    T = h.shape[0]
    nq, nkv, hd = hp.n_head, hp.n_head_kv, hp.head_dim
    q = lin(P, pre + "attn_q.weight", h).reshape(T, nq, hd)
    cache["k"] = np.concatenate([cache["k"], lin(P, pre + "attn_k.weight", h)], 0)
    cache["v"] = np.concatenate([cache["v"], lin(P, pre + "attn_v.weight", h)], 0)
    n = cache["k"].shape[0]
    past = n - T
    k = cache["k"].reshape(n, nkv, hd)
    v = cache["v"].reshape(n, nkv, hd)
    o = np.zeros((T, nq, hd))
    rep = nq // nkv
    mask = np.arange(n)[None, :] > (past + np.arange(T))[:, None]
    for j in range(nq):
        s = q[:, j] @ k[:, j // rep].T / math.sqrt(hd)
        s = np.where(mask, -np.inf, s)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        o[:, j] = p @ v[:, j // rep]
    return lin(P, pre + "attn_output.weight", o.reshape(T, nq * hd))


def route(logits, bias, hp: HParams):
    """Expert indices and weights for each row of router logits (float64)."""
    s = 1.0 / (1.0 + np.exp(-logits))
    sel = s + bias
    E, k = hp.n_expert, hp.n_expert_used
    idx_all, w_all = [], []
    for t in range(s.shape[0]):
        st = sel[t].copy()
        if hp.expert_group_count > 1:
            gs = E // hp.expert_group_count
            grp = st.reshape(hp.expert_group_count, gs)
            score = -np.sort(-grp, axis=1)[:, :min(2, gs)].sum(1)
            keep = np.argsort(-score, kind="stable")[:hp.expert_group_used_count]
            drop = np.setdiff1d(np.arange(hp.expert_group_count), keep)
            for g in drop:
                st[g * gs:(g + 1) * gs] = -np.inf
        idx = np.argsort(-st, kind="stable")[:k]
        w = s[t, idx]
        if hp.expert_weights_norm:
            w = w / (w.sum() + 1e-20)
        idx_all.append(idx)
        w_all.append(w * hp.expert_weights_scale)
    return np.array(idx_all), np.array(w_all)


def moe(P, pre, h, hp: HParams):
    idx, w = route(h @ P[pre + "ffn_gate_inp.weight"].T, P[pre + "exp_probs_b.bias"], hp)
    up, down = pre + "ffn_up_exps.weight", pre + "ffn_down_exps.weight"
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        for e, we in zip(idx[t], w[t]):
            out[t] += we * lin(P, down, relu2(lin(P, up, h[t:t + 1], e)), e)[0]
    if hp.n_ff_shexp > 0:
        out += lin(P, pre + "ffn_down_shexp.weight", relu2(lin(P, pre + "ffn_up_shexp.weight", h)))
    return out


def mlp(P, pre, h):
    return lin(P, pre + "ffn_down.weight", relu2(lin(P, pre + "ffn_up.weight", h)))


class OracleState:
    """The oracle's memory of one sequence, so decode can be run step by step too."""

    def __init__(self, hp: HParams):
        self.n_past = 0
        self.layers = []
        for kind in hp.layer_kinds:
            if kind == MAMBA:
                self.layers.append({"conv": np.zeros((hp.ssm_conv_kernel - 1, hp.ssm_conv_dim)),
                                    "ssm": np.zeros((hp.ssm_n_head, hp.ssm_head_dim, hp.ssm_d_state))})
            elif kind == ATTENTION:
                w = hp.n_head_kv * hp.head_dim
                self.layers.append({"k": np.zeros((0, w)), "v": np.zeros((0, w))})
            else:
                self.layers.append(None)


def forward(P, hp: HParams, ids, dt_floor=0.0, state: OracleState | None = None, act_quant=()):
    """Logits [T, n_vocab] (float64) for `ids` appended to `state` (a fresh one if None).

    dt_floor follows the engine contract: the clamp applies only when this call starts a
    sequence or has more than one token (transformers' prefill path). act_quant: names of
    weights whose inputs are quantized to int8 blocks first, as the engine does for
    Q8_0/Q4_0 weights (see quantized_names)."""
    ACT_QUANT.clear()
    ACT_QUANT.update(act_quant)
    state = state or OracleState(hp)
    ids = np.asarray(ids)
    T = len(ids)
    clamp = np.full(T, dt_floor > 0 and (state.n_past == 0 or T > 1))
    x = P["token_embd.weight"][ids].astype(np.float64)
    for i, kind in enumerate(hp.layer_kinds):
        pre = f"blk.{i}."
        h = rmsnorm(x, P[pre + "attn_norm.weight"], hp.rms_eps)
        if kind == MAMBA:
            y = mamba(P, pre, h, hp, dt_floor, clamp, state.layers[i])
        elif kind == ATTENTION:
            y = attention(P, pre, h, hp, state.layers[i])
        elif kind == MOE:
            y = moe(P, pre, h, hp)
        else:
            y = mlp(P, pre, h)
        x = x + y
    state.n_past += T
    out = "output.weight" if "output.weight" in P else "token_embd.weight"
    return lin(P, out, rmsnorm(x, P["output_norm.weight"], hp.rms_eps))


def quantized_names(tensors) -> set:
    """Names of the engine tensors stored as Q8_0 / Q4_0 (their inputs get quantized)."""
    return {n for n, (_, t, _) in tensors.items() if t in (GGML_TYPE["Q8_0"], GGML_TYPE["Q4_0"])}


# ---------------------------------------------------------------------------------------
# random well-formed weights
# ---------------------------------------------------------------------------------------
def _values(spec, rng, hp: HParams):
    """Random float64 values (NumPy shape) with magnitudes that keep activations O(1)."""
    shape = tuple(reversed(spec.ne))
    n = spec.name.rsplit(".", 1)[0] if spec.name.endswith((".weight", ".bias")) else spec.name
    kind = n.split(".")[-1]
    if kind in ("attn_norm", "output_norm", "ssm_norm"):
        return rng.uniform(0.5, 1.5, shape)
    if kind == "ssm_conv1d" and spec.name.endswith(".weight"):
        return rng.normal(0, 0.5, shape)
    if kind == "ssm_conv1d":
        return rng.normal(0, 0.1, shape)
    if kind == "ssm_dt":
        # some heads below softplus^-1(1e-3) so a dt floor of 1e-3 changes results
        return rng.uniform(-8.0, 1.0, shape)
    if kind == "ssm_a":
        return -np.exp(rng.uniform(-1.0, 1.5, shape))
    if kind == "ssm_d":
        return rng.uniform(0.5, 1.5, shape)
    if kind == "exp_probs_b":
        return rng.uniform(-0.2, 0.2, shape)
    if kind == "token_embd":
        return rng.normal(0, 1.0, shape)
    fan_in = spec.ne[0]
    return rng.normal(0, 1.0 / math.sqrt(fan_in), shape)


def encode(values: np.ndarray, weight_type: str):
    """(raw uint8 bytes, ggml type id, dequantized float64 values, fp8 scale or None)."""
    v32 = np.ascontiguousarray(values, dtype=np.float32)
    if weight_type == "F32":
        return v32.reshape(-1).view(np.uint8), 0, v32.astype(np.float64), None
    if weight_type == "F16":
        h = v32.astype(np.float16)
        return h.reshape(-1).view(np.uint8), 1, h.astype(np.float64), None
    if weight_type == "BF16":
        b = v32.astype(ml_dtypes.bfloat16)
        return b.reshape(-1).view(np.uint8), 30, b.astype(np.float64), None
    if weight_type in ("Q8_0", "Q4_0"):
        qt = Q.Q8_0 if weight_type == "Q8_0" else Q.Q4_0
        raw = quants.quantize(v32, qt)
        deq = quants.dequantize(raw, qt).astype(np.float64).reshape(values.shape)
        return np.ascontiguousarray(raw).reshape(-1).view(np.uint8), GGML_TYPE[weight_type], deq, None
    if weight_type == "FP8":
        rows = v32.reshape(-1, v32.shape[-1])
        scale = (np.abs(rows).max(1) / 448.0).astype(np.float32)
        scale[scale == 0] = 1.0
        codes = (rows / scale[:, None]).astype(ml_dtypes.float8_e4m3fn)
        deq = (codes.astype(np.float64) * scale[:, None].astype(np.float64)).reshape(values.shape)
        return codes.reshape(-1).view(np.uint8), 24, deq, scale
    raise ValueError(f"unknown weight type {weight_type!r}")


def random_gguf_tensors(hp: HParams, seed: int = 0, weight_type: str = "F32"):
    """-> (engine_tensors, oracle_params).

    engine_tensors: {gguf_name: (uint8 bytes, ggml_type, ne)} as nemocpu._core.Engine takes it
    (FP8 weights come with their per-row "<name>_scale" F32 tensor);
    oracle_params: {gguf_name: float64 array in NumPy shape}, the exact values the bytes encode.
    """
    rng = np.random.default_rng(seed)
    tensors, params = {}, {}
    for spec in tensor_specs(hp):
        if spec.optional:
            continue
        vals = _values(spec, rng, hp)
        wt = "F32" if spec.role == "f32" else weight_type
        if wt in ("Q8_0", "Q4_0") and spec.ne[0] % 32:
            wt = "F16"     # like llama.cpp's converter when a row does not split into blocks
        raw, gtype, deq, scale = encode(vals, wt)
        tensors[spec.name] = (raw, gtype, tuple(spec.ne))
        params[spec.name] = deq
        if scale is not None:
            tensors[fp8_scale_name(spec.name)] = (scale.view(np.uint8), 0, (scale.size,))
    return tensors, params


def tiny_hparams(layer_kinds="MEM*EME*M", **over) -> HParams:
    """A small random-model configuration covering both families (dense '-' needs nemotron_h)."""
    arch = "nemotron_h_moe" if "E" in layer_kinds else "nemotron_h"
    base = dict(arch=arch, n_vocab=97, n_embd=64, layer_kinds=layer_kinds, n_head=4, n_head_kv=2,
                head_dim=16, ssm_n_head=8, ssm_head_dim=8, ssm_d_state=16, ssm_n_group=2,
                ssm_conv_kernel=4, n_ff=96 if "-" in layer_kinds else 0,
                n_expert=8 if "E" in layer_kinds else 0, n_expert_used=3 if "E" in layer_kinds else 0,
                n_ff_exp=32 if "E" in layer_kinds else 0, n_ff_shexp=64 if "E" in layer_kinds else 0,
                n_expert_shared=1 if "E" in layer_kinds else 0, expert_weights_norm=True,
                expert_weights_scale=2.5, rms_eps=1e-5)
    base.update(over)
    hp = HParams(**base)
    hp.validate()
    return hp
