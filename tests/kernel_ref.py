"""Float64 references of the individual kernels (shared by the kernel test files)."""

from __future__ import annotations

import numpy as np

import nemocpu._core as core
from oracle import q8_act_blocks

VARIANTS = core.variants()   # every variant this CPU can run; tests loop over all of them


def quantize_q8_act(x):
    """The engine's activation quantization: (d [.., nb], q [.., nb, 32]); see oracle."""
    d, q, _ = q8_act_blocks(x)
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
