"""Open a GGUF file and check that it is a Nemotron-H model nemocpu can run.

Everything is checked before any compute and before the engine sees a byte: the
hyperparameters (``arch.hparams_from_gguf_kv``), the GGUF types of the architecture keys
(llama.cpp refuses e.g. an INT32 ``block_count``, so do we), and every tensor of
``arch.tensor_specs``: present, the exact ggml shape, a type its role allows. Extra tensors
are an error too (llama.cpp's loader refuses them: "wrong number of tensors"). The C++
engine checks again; this module gives the error a file name and a human sentence.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from . import arch
from .errors import GGUFError, ModelFileError
from .gguf_file import GGML_TYPE_ID, GGUFFile, ggml_type_name

F32, I8 = GGML_TYPE_ID["F32"], GGML_TYPE_ID["I8"]
# Weight types the engine has kernels for. FP8 is nemocpu's I8 + "_scale" convention.
MATRIX_TYPES = {GGML_TYPE_ID[n] for n in ("F32", "F16", "BF16", "Q8_0", "Q4_0")} | {I8}
ROLE_TYPES = {"f32": {F32}, "embd": MATRIX_TYPES, "output": MATRIX_TYPES, "matrix": MATRIX_TYPES}


def _type_list(types) -> str:
    return ", ".join("FP8 (I8 + _scale)" if t == I8 else ggml_type_name(t) for t in sorted(types))


@dataclass
class ModelFile:
    """A validated model: its GGUF, hyperparameters and the tensor table for the engine."""
    gguf: GGUFFile
    hparams: arch.HParams
    # name -> (uint8 view, ggml_type, ne): exactly the engine's ``tensors`` argument
    tensors: dict[str, tuple[np.ndarray, int, tuple[int, ...]]]

    @property
    def path(self) -> str:
        return self.gguf.path

    @property
    def metadata(self) -> dict:
        return self.gguf.metadata


def open_model_file(path) -> ModelFile:
    gg = GGUFFile(path)
    try:
        hp = arch.hparams_from_gguf_kv(gg.metadata, where=gg.path)
        _check_key_types(gg, hp)
        if "output.weight" not in gg.tensors:       # llama.cpp: absent lm_head = tied
            hp = dataclasses.replace(hp, tie_word_embeddings=True)
        tensors = _check_tensors(gg, hp)
    except ModelFileError as e:
        gg.close()
        if isinstance(e, GGUFError):
            raise
        raise GGUFError(gg.path, e.message) from None
    return ModelFile(gg, hp, tensors)


def _check_key_types(gg: GGUFFile, hp: arch.HParams) -> None:
    for key, _, want in arch.gguf_kv(hp):
        have = gg.kv_types.get(key)
        if have is None or have == want:
            continue
        # llama.cpp accepts UINT32 arrays and scalars broadcast over layers for per-layer keys
        if want == arch.ARR_I32 and have in ("ARRAY_UINT32", "INT32", "UINT32"):
            continue
        raise GGUFError(gg.path, f"metadata key {key!r} has type {have}, llama.cpp requires {want}")


def _check_tensors(gg: GGUFFile, hp: arch.HParams) -> dict:
    where = gg.path
    specs = arch.tensor_specs(hp)
    expected = {s.name for s in specs}
    out = {}
    for spec in specs:
        t = gg.tensors.get(spec.name)
        if t is None:
            if spec.optional:
                continue
            raise GGUFError(where, f"missing tensor {spec.name!r}")
        if t.ne != spec.ne:
            raise GGUFError(where, f"tensor {spec.name!r} has shape {list(t.ne)}, expected {list(spec.ne)}")
        allowed = ROLE_TYPES[spec.role]
        if t.ggml_type not in allowed:
            raise GGUFError(where, f"unsupported type {t.type_name} for tensor {spec.name!r} "
                                   f"(allowed: {_type_list(allowed)})")
        out[spec.name] = (gg.data(spec.name), t.ggml_type, t.ne)
        if t.ggml_type == I8:
            scale_name = arch.fp8_scale_name(spec.name)
            out[scale_name] = _check_fp8_scale(gg, spec.name, scale_name, t.ne)
            expected.add(scale_name)
    extra = [n for n in gg.tensors if n not in expected]
    if extra:
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise GGUFError(where, f"unexpected tensor(s) {', '.join(map(repr, extra[:5]))}{more} "
                               f"for a {hp.arch} model with layers {hp.layer_kinds!r}")
    return out


def _check_fp8_scale(gg: GGUFFile, name: str, scale_name: str, ne) -> tuple:
    fmt = gg.metadata.get(arch.FP8_FORMAT_KEY)
    if fmt != arch.FP8_FORMAT:
        raise GGUFError(gg.path, f"tensor {name!r} is I8 (FP8) but {arch.FP8_FORMAT_KEY!r} is {fmt!r}, "
                                 f"expected {arch.FP8_FORMAT!r}")
    s = gg.tensors.get(scale_name)
    if s is None:
        raise GGUFError(gg.path, f"FP8 tensor {name!r} has no scale tensor {scale_name!r}")
    if s.ggml_type != F32:
        raise GGUFError(gg.path, f"FP8 scale {scale_name!r} must be F32, not {s.type_name}")
    rows = ne[1] if len(ne) > 1 else 1
    n_mat = math.prod(ne[2:])
    if s.n_elements not in (1, n_mat, n_mat * rows):
        raise GGUFError(gg.path, f"FP8 scale {scale_name!r} has {s.n_elements} elements; a tensor of shape "
                                 f"{list(ne)} needs 1, {n_mat} or {n_mat * rows}")
    view = gg.data(scale_name)
    values = view.view(np.float32)
    if not np.all(np.isfinite(values)):
        raise GGUFError(gg.path, f"FP8 scale {scale_name!r} holds non-finite values")
    return (view, s.ggml_type, s.ne)
