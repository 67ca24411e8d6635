"""A raw GGUF serializer: writes what gguf-py's GGUFWriter refuses to (duplicate keys,
bad counts, version 2, ...), for reader and hostile-file tests. Layout: ggml/include/gguf.h."""

from __future__ import annotations

import struct

U32, STR, ARR, BOOL = 4, 8, 9, 7     # gguf_type ids used by the tests


def s_str(s) -> bytes:
    b = s if isinstance(s, bytes) else s.encode()
    return struct.pack("<Q", len(b)) + b


def s_kv(key, vtype, payload: bytes) -> bytes:
    return s_str(key) + struct.pack("<I", vtype) + payload


def s_tensor(name, ne, ggml_type, offset) -> bytes:
    return s_str(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne) \
        + struct.pack("<IQ", ggml_type, offset)


def raw_gguf(kvs=(), tensors=(), data=b"", version=3, n_kv=None, n_tensors=None, magic=b"GGUF", align=32):
    head = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    body += b"\0" * (-len(body) % align)
    return body + data
