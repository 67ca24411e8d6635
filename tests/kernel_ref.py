"""Float64 references of the individual kernels (shared by the kernel test files)."""

from __future__ import annotations

import numpy as np

import nemocpu._core as core

VARIANTS = core.variants()   # every variant this CPU can run; tests loop over all of them


def quantize_q8_act(x):
    """The engine's activation quantization reproduced exactly: per 32-block d = amax/127
    (fp32), q = round-half-away(fp32(x * (1/d))). Returns (d [.., nb], q [.., nb, 32])."""
    x32 = np.asarray(x, np.float32).reshape(*np.shape(x)[:-1], -1, 32)
    amax = np.abs(x32).max(-1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (x32 * inv[..., None]).astype(np.float32).astype(np.float64)
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return d, q


def matmul_quant_ref(w_deq, x):
    """y = W . x with x quantized like the engine does (float64 sums); W already dequantized."""
    d, q = quantize_q8_act(x)
    xq = (q * d[..., None].astype(np.float64)).reshape(x.shape)
    return xq @ w_deq.T


def silu(x):
    return x / (1.0 + np.exp(-x))


def softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))
