"""Lazy, read-only access to a Hugging Face NemotronH checkpoint directory.

Only the safetensors headers are read up front; tensor bytes are read on demand with plain
file reads (not a memory map), so resident memory stays bounded by what the converter
holds at one time, however large the checkpoint is.

Tensor iteration order is the one llama.cpp's converter uses (shards sorted by file name,
tensors sorted by name inside each shard); the GGUF tensor order is derived from it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from ..arch import HParams, hparams_from_hf_config
from ..errors import ConversionError, ModelFileError

# safetensors dtype name -> numpy dtype of its stored elements
ST_DTYPES = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F64": np.dtype(np.float64),
}
FP8 = "F8_E4M3"
# ModelOpt side tensors that carry no weight information for a CPU runtime.
IGNORED_SUFFIXES = (".input_scale", ".k_scale", ".v_scale")


def _decode_json_special(obj: dict):
    """transformers 5.x writes non-finite floats as {"__float__": "Infinity"}."""
    if set(obj) == {"__float__"}:
        return float(obj["__float__"])
    return obj


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_hook=_decode_json_special)
    except FileNotFoundError:
        raise ConversionError(path, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(path, f"not valid JSON: {e}") from None
    except OSError as e:      # a directory, no permission, an I/O error
        raise ConversionError(path, f"cannot read: {e.strerror or e}") from None


@dataclass(frozen=True)
class StoredTensor:
    """Where one checkpoint tensor lives: file, dtype, shape, absolute byte range."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def np_dtype(self) -> np.dtype:
        return ST_DTYPES[self.dtype]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    def read_raw(self, start: int = 0, count: int | None = None) -> np.ndarray:
        """Elements [start, start+count) of the flattened tensor, in the stored dtype."""
        count = self.n_elements - start if count is None else count
        item = self.np_dtype.itemsize
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset + start * item)
                buf = f.read(count * item)
        except OSError as e:  # not "writing failed": the converter reports OSErrors of the output so
            raise ConversionError(self.path, f"cannot read tensor {self.name!r}: {e.strerror or e}") from None
        if len(buf) != count * item:
            raise ConversionError(self.path, f"tensor {self.name!r} is truncated")
        return np.frombuffer(buf, dtype=self.np_dtype)

    def read_f32(self, start: int = 0, count: int | None = None) -> np.ndarray:
        return self.read_raw(start, count).astype(np.float32)


def _read_safetensors_header(path: Path) -> list[StoredTensor]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(path, "not a safetensors file (shorter than 8 bytes)")
            n = int.from_bytes(head, "little")
            if n > min(size - 8, 100 << 20):
                raise ConversionError(path, f"not a safetensors file (header length {n} exceeds the file)")
            raw = f.read(n)
    except OSError as e:      # a directory, no permission, an I/O error
        raise ConversionError(path, f"cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(path, f"corrupt safetensors header: {e}") from None
    data_start = 8 + n
    out = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = meta["dtype"], tuple(int(x) for x in meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ConversionError(path, f"corrupt safetensors header entry for tensor {name!r}") from None
        t = StoredTensor(name, path, dtype, shape, data_start + a, b - a)
        if dtype in ST_DTYPES and (b - a != t.n_elements * t.np_dtype.itemsize or data_start + b > size):
            raise ConversionError(path, f"tensor {name!r}: byte range does not match its shape/dtype or the file size")
        out.append(t)
    return sorted(out, key=lambda t: t.name)


class HFCheckpoint:
    """A NemotronHForCausalLM checkpoint directory: config, tokenizer files, lazy tensors."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise ConversionError(self.dir, "not a directory (expected a Hugging Face checkpoint)")
        self.config_path = self.dir / "config.json"
        self.config = read_json(self.config_path)
        try:
            self.hparams: HParams = hparams_from_hf_config(self.config, self.config_path)
        except ConversionError:
            raise
        except ModelFileError as e:
            raise ConversionError(e.path, e.message) from None
        self.tensors: dict[str, StoredTensor] = {}   # in llama.cpp's iteration order
        for part in self._part_files():
            for t in _read_safetensors_header(part):
                if t.name in self.tensors:
                    raise ConversionError(part, f"tensor {t.name!r} is also in {self.tensors[t.name].path.name}")
                self.tensors[t.name] = t
        self.quant_method = self._quant_method()

    def _part_files(self) -> list[Path]:
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(index, "has no 'weight_map'")
            parts = sorted(set(weight_map.values()))
            missing = [p for p in parts if not (self.dir / p).is_file()]
            if missing:
                raise ConversionError(self.dir / missing[0], f"shard listed in {index.name} is missing")
            return [self.dir / p for p in parts]
        parts = sorted(p for p in os.listdir(self.dir) if p.startswith("model") and p.endswith(".safetensors"))
        if not parts:
            raise ConversionError(self.dir / "model.safetensors", "no model*.safetensors file in the checkpoint")
        return [self.dir / p for p in parts]

    def _quant_method(self) -> str | None:
        """'modelopt-fp8' for NVIDIA ModelOpt FP8 checkpoints, None for plain ones."""
        qc = self.config.get("quantization_config") or {}
        algo, method = qc.get("quant_algo"), qc.get("quant_method")
        hfq = self.dir / "hf_quant_config.json"
        if hfq.is_file():
            q = read_json(hfq)
            algo = (q.get("quantization") or {}).get("quant_algo", algo)
            method = method or (q.get("producer") or {}).get("name")
        has_fp8 = any(t.dtype == FP8 for t in self.tensors.values())
        if algo is None and not has_fp8:
            return None
        if str(algo).upper() == "FP8" or (has_fp8 and algo is None):
            return "modelopt-fp8"
        raise ConversionError(hfq if hfq.is_file() else self.config_path,
                              f"unsupported quantization {method!r}/{algo!r} (nemocpu reads BF16/F16/F32 "
                              "checkpoints and ModelOpt FP8)")

    # ---- tensor access -----------------------------------------------------------------
    def get(self, name: str) -> StoredTensor:
        t = self.tensors.get(name)
        if t is None:
            raise ConversionError(self.dir, f"tensor {name!r} is missing from the checkpoint")
        return t

    def fp8_scale(self, weight: StoredTensor) -> np.ndarray:
        """The float32 ``weight_scale`` of a ModelOpt FP8 weight (1 or out_features values)."""
        s = self.tensors.get(weight.name + "_scale")
        if s is None:
            raise ConversionError(weight.path, f"FP8 tensor {weight.name!r} has no {weight.name}_scale")
        if s.dtype not in ("F32", "BF16", "F16") or s.n_elements not in (1, weight.shape[0]):
            raise ConversionError(s.path, f"{s.name!r}: expected a per-tensor or per-row float scale, "
                                          f"got {s.dtype} {list(s.shape)}")
        return s.read_f32()
