"""Which GGML type each tensor gets, and how float32 rows are encoded into it.

Output types (``--outtype``):

* ``f32`` / ``f16`` / ``bf16``: every weight matrix in that type.
* ``q8_0``: every weight matrix Q8_0, including ``token_embd`` and ``output``, as llama.cpp's
  converter does with ``--outtype q8_0``.
* ``q4_0``: what ``llama-quantize ... Q4_0`` produces without an imatrix: matrices Q4_0,
  ``output.weight`` Q8_0 (llama-quantize gives the output tensor a higher type: Q6_K, which
  falls back to Q8_0 when ne0 % 256 != 0 as for Nano 3; nemocpu does not implement Q6_K and
  always uses Q8_0), ``token_embd`` Q4_0 (follows the file type).
* ``fp8``: matrices in nemocpu's FP8 encoding (docs/gguf-fp8.md). FP8 weights of a ModelOpt
  checkpoint are copied bit for bit with their scales; other matrices are quantized with one
  scale per output row, ``scale = amax(|row|) / 448``, codes = round-to-nearest-even E4M3 of
  ``row / scale`` (ml_dtypes), scale 1 for all-zero rows.
* ``auto``: keep the checkpoint's precision. FP8 weights stay FP8 (lossless); the other
  matrices take the dtype of the first >= 2-D tensor of the checkpoint (BF16, F16 or F32;
  llama.cpp would write F16 for an F32 checkpoint).

Rules shared by every output type (llama.cpp ``prepare_tensors`` and llama-quantize's
``tensor_allows_quantization``): 1-D tensors, ``*_norm.weight``, ``ffn_gate_inp`` (router),
``ssm_conv1d``, ``ssm_a``/``ssm_d`` and all biases stay F32 (role "f32" in nemocpu.arch).
A Q8_0/Q4_0 tensor whose row length (ne0) is not a multiple of 32 falls back to F16, as
llama.cpp does. Any FP8 input feeding a non-FP8 output is dequantized first
(``e4m3(code) * scale`` in float32, as llama.cpp's ``dequant_simple``).

Q8_0, Q4_0 and BF16 bytes come from gguf-py's reference quantizers (``gguf.quants``), which
reproduce ggml's C reference implementations bit for bit.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType
from gguf import quants as gq

from ..arch import GGML_TYPE_I8

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "fp8", "auto")
FP8 = "FP8"            # pseudo type: I8 codes + F32 "<name>_scale" sibling
FP8_MAX = 448.0        # largest finite float8_e4m3fn

_FIXED = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0, "fp8": FP8}

# general.file_type as llama.cpp's LLAMA_FTYPE_*; FP8 files have none (see docs/gguf-fp8.md).
FILE_TYPES = {T.F32: LlamaFileType.ALL_F32, T.F16: LlamaFileType.MOSTLY_F16,
              T.BF16: LlamaFileType.MOSTLY_BF16, T.Q8_0: LlamaFileType.MOSTLY_Q8_0,
              T.Q4_0: LlamaFileType.MOSTLY_Q4_0}


_HALF_BELOW = np.nextafter(np.float32(0.5), np.float32(0))


def q8_0_blocks(blocks: np.ndarray) -> np.ndarray:
    """gguf.quants.Q8_0.quantize_blocks (= ggml's quantize_row_q8_0_ref), about 2x faster.

    The same float32 steps (d = amax/127, v = x * (1/d)); C roundf (half away from zero) is
    trunc(v + copysign(0.49999997, v)) in float32, checked equal to gguf-py's np_roundf for
    every float32 in +-[0.25, 128) (|v| <= 127 here; below 0.25 both give 0)."""
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    v = blocks * inv
    q = np.trunc(v + np.copysign(_HALF_BELOW, v)).astype(np.int8)
    out = np.empty((blocks.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:] = q.view(np.uint8)
    return out


def choose_type(role: str, ne0: int, outtype: str, auto_type, sources_fp8: bool):
    """The GGML type (or FP8) of a tensor with this storage role and row length."""
    if role == "f32":
        return T.F32
    if outtype == "auto":
        t = FP8 if sources_fp8 else auto_type
    elif outtype == "q4_0" and role == "output":
        t = T.Q8_0
    else:
        t = _FIXED[outtype]
    if t in (T.Q8_0, T.Q4_0) and ne0 % 32:
        t = T.F16
    return t


def tensor_nbytes(qtype, ne: tuple[int, ...]) -> int:
    n = math.prod(ne)
    if qtype == FP8:
        return n
    block, size = gq.GGML_QUANT_SIZES[qtype]
    return n // block * size


def ggml_type_id(qtype) -> int:
    return GGML_TYPE_I8 if qtype == FP8 else int(qtype)


def encode_rows(rows: np.ndarray, qtype) -> np.ndarray:
    """float32 [n, ne0] -> the bytes of these rows in ``qtype`` (FP8 is handled by fp8_rows)."""
    if qtype == T.F32:
        out = rows.astype(np.float32, copy=False)
    elif qtype == T.F16:
        out = rows.astype(np.float16)
    elif qtype == T.Q8_0:
        out = q8_0_blocks(rows.astype(np.float32, copy=False).reshape(-1, 32))
    elif qtype == T.Q4_0:
        # gguf.quants.quantize() runs quantize_blocks 16 rows at a time; blocks are independent,
        # so one call over every block of the chunk gives the same bytes, much faster.
        out = gq.Q4_0.quantize_blocks(rows.astype(np.float32, copy=False).reshape(-1, 32))
    else:
        out = gq.quantize(rows, qtype)
    return out.reshape(-1).view(np.uint8)


def fp8_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize float32 rows [n, ne0] to E4M3 codes with one float32 scale per row."""
    amax = np.max(np.abs(rows), axis=1)
    scale = np.where(amax > 0, amax / np.float32(FP8_MAX), np.float32(1)).astype(np.float32)
    scaled = np.clip(rows / scale[:, None], -FP8_MAX, FP8_MAX)
    return scaled.astype(ml_dtypes.float8_e4m3fn).view(np.uint8), scale


def fp8_dequant(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """E4M3 codes [n, ne0] times float32 scale broadcast over rows ([n] or scalar)."""
    w = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    s = np.asarray(scale, dtype=np.float32).reshape(-1)
    return w * (s[:, None] if s.size > 1 else s[0])
