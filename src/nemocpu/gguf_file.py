"""A strict, fast, read-only GGUF reader.

Why our own and not ``gguf.GGUFReader``: GGUF files come from strangers, so every length,
count, offset and shape is checked against the file size *before* it is used, and every
problem is a ``GGUFError`` naming the file and the field (GGUFReader trusts the header and
fails with numpy/struct errors, or allocates whatever a hostile count asks for). It is also
much faster on real vocabularies: GGUFReader builds several numpy objects per string, which
takes seconds for 131k tokens + 269k merges; here a string array is one tight loop.

Layout (ggml/include/gguf.h, all little-endian): magic "GGUF", version u32 (2 or 3),
n_tensors u64, n_kv u64, then the key/values, the tensor infos, padding to
``general.alignment`` (default 32) and the tensor data. Tensor offsets are relative to the
start of the data section and must be aligned.

Tensor data is never copied: ``GGUFFile.data(name)`` is a read-only uint8 view into a
memory map of the file.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from .errors import GGUFError

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_NESTING = 8          # deeper nesting is never legitimate; bounds recursion
# Metadata arrays become Python lists, ~5-40x the bytes they occupy in the file, so a large
# hostile file could ask for tens of GB. Real vocabularies are < 1M tokens/merges.
MAX_METADATA_ELEMENTS = 1 << 24   # all metadata array elements of a file together
_I64_MAX = (1 << 63) - 1

# ------------------------------------------------------------------------------------
# ggml tensor types: id -> (name, elements per block, bytes per block)
# Values from ggml/include/ggml.h and ggml-common.h. gguf-py's GGML_QUANT_SIZES agrees except for
# Q8_1 (it says 40; ggml's block_q8_1 is 36 bytes), a type never stored in model files.
# Listing types nemocpu cannot compute lets us reject them by name instead of failing to parse.
# ------------------------------------------------------------------------------------
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}
GGML_TYPE_ID = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}


def ggml_type_name(ggml_type: int) -> str:
    info = GGML_TYPES.get(ggml_type)
    return info[0] if info else f"unknown type {ggml_type}"


def tensor_nbytes(ggml_type: int, ne) -> int:
    """Bytes of a tensor of this type and ggml shape (ne0 must be a whole number of blocks)."""
    _, blk, size = GGML_TYPES[ggml_type]
    return math.prod(ne) // blk * size


# ------------------------------------------------------------------------------------
# Metadata value types (gguf.h enum gguf_type)
# ------------------------------------------------------------------------------------
_SCALAR_TYPES = {  # id -> (name, struct format)
    0: ("UINT8", "<B"), 1: ("INT8", "<b"), 2: ("UINT16", "<H"), 3: ("INT16", "<h"),
    4: ("UINT32", "<I"), 5: ("INT32", "<i"), 6: ("FLOAT32", "<f"), 7: ("BOOL", "<B"),
    10: ("UINT64", "<Q"), 11: ("INT64", "<q"), 12: ("FLOAT64", "<d"),
}
_NUMPY_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4",
                 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
T_STRING, T_ARRAY = 8, 9
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _min_value_size(vtype: int) -> int:
    """Fewest bytes one value of this type can occupy (bounds hostile counts)."""
    if vtype == T_STRING:
        return 8
    if vtype == T_ARRAY:
        return 12
    return struct.calcsize(_SCALAR_TYPES[vtype][1])


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    ne: tuple[int, ...]        # ggml order, ne[0] fastest
    offset: int                # absolute byte offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.ggml_type)

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)


class GGUFFile:
    """A parsed GGUF file. ``metadata``: key -> Python value (arrays as lists);
    ``kv_types``: key -> GGUF type name ("UINT32", "ARRAY_INT32", "ARRAY_ARRAY", ...);
    ``tensors``: name -> TensorInfo in file order; ``data(name)``: zero-copy uint8 view."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                self.file_size = os.fstat(f.fileno()).st_size
                if self.file_size < 24:
                    self._fail(f"file too small to be GGUF ({self.file_size} bytes)")
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFError(self.path, f"cannot open: {e.strerror or e}") from None
        self._pos = 0
        self.metadata: dict = {}
        self._n_elements = 0      # metadata array elements read so far (MAX_METADATA_ELEMENTS)
        self.kv_types: dict[str, str] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            self._parse()
        except Exception:
            self.close()
            raise
        self._bytes = np.frombuffer(self._mm, dtype=np.uint8)

    # ---- public ------------------------------------------------------------------
    def data(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view into the mapping (no copy)."""
        t = self.tensors.get(name)
        if t is None:
            raise GGUFError(self.path, f"no tensor named {name!r}")
        if self._bytes is None:
            raise GGUFError(self.path, "file is closed")
        return self._bytes[t.offset:t.offset + t.nbytes]

    def close(self) -> None:
        """Drop the mapping. Views handed out keep it alive until they are released."""
        self._bytes = None
        mm, self._mm = getattr(self, "_mm", None), None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # numpy views still use it; it is unmapped when they are freed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"GGUFFile({self.path!r}, v{self.version}, {len(self.metadata)} keys, {len(self.tensors)} tensors)"

    # ---- parsing -------------------------------------------------------------------
    def _fail(self, msg: str):
        raise GGUFError(self.path, msg)

    def _need(self, n: int, what: str) -> int:
        """Reserve n bytes at the cursor; return their start."""
        p = self._pos
        if n < 0 or n > self.file_size - p:
            self._fail(f"truncated: {what} needs {n} bytes at offset {p}, file has {self.file_size}")
        self._pos = p + n
        return p

    def _u32(self, what):
        return _U32.unpack_from(self._mm, self._need(4, what))[0]

    def _u64(self, what):
        return _U64.unpack_from(self._mm, self._need(8, what))[0]

    def _str(self, what) -> str:
        n = self._u64(f"length of {what}")
        p = self._need(n, what)
        try:
            return self._mm[p:p + n].decode("utf-8")
        except UnicodeDecodeError:
            self._fail(f"{what} at offset {p} is not valid UTF-8")

    def _count(self, n: int, min_size: int, what: str) -> int:
        """A count read from the file, accepted only if that many items could fit."""
        if n * min_size > self.file_size - self._pos:
            self._fail(f"absurd {what} {n}: cannot fit in the {self.file_size - self._pos} bytes left at offset {self._pos}")
        return n

    def _parse(self):
        if self._mm[:4] != GGUF_MAGIC:
            self._fail(f"not a GGUF file (magic {bytes(self._mm[:4])!r}, expected b'GGUF')")
        self._pos = 4
        self.version = self._u32("version")
        if self.version not in (2, 3):
            if int.from_bytes(_U32.pack(self.version), "big") in (2, 3):
                self._fail("big-endian GGUF files are not supported")
            self._fail(f"unsupported GGUF version {self.version} (nemocpu reads versions 2 and 3)")
        n_tensors = self._u64("tensor count")
        n_kv = self._u64("metadata count")
        self._count(n_kv, 13, "metadata count")
        self._count(n_tensors, 32, "tensor count")

        for i in range(n_kv):
            key = self._str(f"key of metadata entry {i}")
            if key in self.metadata:
                self._fail(f"duplicate metadata key {key!r}")
            vtype = self._u32(f"type of {key!r}")
            self.metadata[key], self.kv_types[key] = self._value(vtype, key, 0)

        self.alignment = GGUF_DEFAULT_ALIGNMENT
        if "general.alignment" in self.metadata:
            a = self.metadata["general.alignment"]
            if self.kv_types["general.alignment"] != "UINT32" or a == 0 or a & (a - 1):
                self._fail(f"general.alignment must be a UINT32 power of two, got {a!r}")
            self.alignment = a

        infos, seen = [], set()
        for i in range(n_tensors):
            name = self._str(f"name of tensor {i}")
            if name in seen:
                self._fail(f"duplicate tensor name {name!r}")
            seen.add(name)
            n_dims = self._u32(f"n_dims of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                self._fail(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
            ne = tuple(self._u64(f"shape of tensor {name!r}") for _ in range(n_dims))
            ggml_type = self._u32(f"type of tensor {name!r}")
            rel_offset = self._u64(f"offset of tensor {name!r}")
            infos.append((name, ne, ggml_type, rel_offset))

        self.data_offset = -(-self._pos // self.alignment) * self.alignment
        # (A file without tensors may end before the padding; each tensor's range is checked below.)
        ranges = []
        for name, ne, ggml_type, rel_offset in infos:
            t = self.tensors[name] = self._tensor_info(name, ne, ggml_type, rel_offset)
            if t.nbytes:
                ranges.append((t.offset, t.offset + t.nbytes, name))
        ranges.sort()
        for (s0, e0, n0), (s1, e1, n1) in zip(ranges, ranges[1:]):
            if s1 < e0:
                self._fail(f"tensors {n0!r} and {n1!r} overlap in the file")

    def _tensor_info(self, name, ne, ggml_type, rel_offset) -> TensorInfo:
        if any(d <= 0 for d in ne):
            self._fail(f"tensor {name!r} has a non-positive dimension in shape {list(ne)}")
        n = 1
        for d in ne:
            n *= d
            if n > _I64_MAX:
                self._fail(f"tensor {name!r}: element count of shape {list(ne)} overflows int64")
        if ggml_type not in GGML_TYPES:
            self._fail(f"tensor {name!r} has unknown ggml type {ggml_type}")
        tname, blk, size = GGML_TYPES[ggml_type]
        if ne[0] % blk:
            self._fail(f"tensor {name!r}: {tname} needs ne[0] a multiple of {blk}, got {ne[0]}")
        nbytes = n // blk * size
        if rel_offset % self.alignment:
            self._fail(f"tensor {name!r}: data offset {rel_offset} is not aligned to {self.alignment}")
        start = self.data_offset + rel_offset
        if start > self.file_size or nbytes > self.file_size - start:
            self._fail(f"tensor {name!r}: data [{start}, {start + nbytes}) lies past the end of the file "
                       f"({self.file_size} bytes; truncated?)")
        return TensorInfo(name, ggml_type, ne, start, nbytes)

    def _value(self, vtype: int, key: str, depth: int):
        """Read one value of type vtype; return (python value, type name)."""
        if vtype in _SCALAR_TYPES:
            tname, fmt = _SCALAR_TYPES[vtype]
            size = struct.calcsize(fmt)
            v = struct.unpack_from(fmt, self._mm, self._need(size, f"value of {key!r}"))[0]
            if vtype == 7:
                if v > 1:
                    self._fail(f"metadata {key!r}: BOOL value {v} is neither 0 nor 1")
                v = bool(v)
            return v, tname
        if vtype == T_STRING:
            return self._str(f"value of {key!r}"), "STRING"
        if vtype == T_ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                self._fail(f"metadata {key!r}: arrays nested deeper than {MAX_ARRAY_NESTING}")
            etype = self._u32(f"element type of {key!r}")
            if etype not in _SCALAR_TYPES and etype not in (T_STRING, T_ARRAY):
                self._fail(f"metadata {key!r}: unknown array element type {etype}")
            n = self._count(self._u64(f"length of {key!r}"), _min_value_size(etype), f"length of array {key!r}")
            self._n_elements += n
            if self._n_elements > MAX_METADATA_ELEMENTS:
                self._fail(f"metadata {key!r}: more than {MAX_METADATA_ELEMENTS} array elements in the file's "
                           "metadata (no model needs that many)")
            if etype in _NUMPY_DTYPES:
                dt = np.dtype(_NUMPY_DTYPES[etype])
                p = self._need(n * dt.itemsize, f"array {key!r}")
                arr = np.frombuffer(self._mm, dtype=dt, count=n, offset=p)
                if etype == 7:
                    if n and arr.max() > 1:
                        self._fail(f"metadata {key!r}: BOOL array holds a value other than 0 or 1")
                    arr = arr.astype(bool)
                return arr.tolist(), "ARRAY_" + _SCALAR_TYPES[etype][0]
            if etype == T_STRING:
                return self._str_array(n, key), "ARRAY_STRING"
            return [self._value(T_ARRAY, f"{key}[{i}]", depth + 1)[0] for i in range(n)], "ARRAY_ARRAY"
        self._fail(f"metadata {key!r} has unknown value type {vtype}")

    def _str_array(self, n: int, key: str) -> list[str]:
        # The hot loop for vocabularies (400k strings in a Nano file): locals only, and the
        # length read relies on struct.error for the rare out-of-bounds case.
        mm, end, p = self._mm, self.file_size, self._pos
        unpack = _U64.unpack_from
        out = [None] * n
        i = 0
        try:
            for i in range(n):
                q = p + 8 + unpack(mm, p)[0]
                if q > end:
                    self._fail(f"array {key!r}: string {i} at offset {p} runs past the end of the file")
                out[i] = mm[p + 8:q].decode("utf-8")
                p = q
        except struct.error:
            self._fail(f"truncated: array {key!r} ends at element {i} of {n}")
        except UnicodeDecodeError:
            self._fail(f"array {key!r}: string {i} at offset {p} is not valid UTF-8")
        self._pos = p
        return out
