"""nemocpu.gguf_file against gguf-py (llama.cpp's own Python writer and reader)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gguf
from nemocpu.gguf_file import GGML_TYPES, GGUFFile, tensor_nbytes

VT = gguf.GGUFValueType
LLAMA_VOCAB = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "llama-vocab"

_INT_RANGES = {VT.UINT8: (0, 255), VT.INT8: (-128, 127), VT.UINT16: (0, 65535), VT.INT16: (-32768, 32767),
               VT.UINT32: (0, 2**32 - 1), VT.INT32: (-2**31, 2**31 - 1), VT.UINT64: (0, 2**64 - 1),
               VT.INT64: (-2**63, 2**63 - 1)}


def _scalar(vt):
    if vt in _INT_RANGES:
        return st.integers(*_INT_RANGES[vt])
    if vt == VT.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    if vt == VT.FLOAT64:
        return st.floats(allow_nan=False)
    if vt == VT.BOOL:
        return st.booleans()
    return st.text(max_size=20)


_SCALAR_TYPES = [*_INT_RANGES, VT.FLOAT32, VT.FLOAT64, VT.BOOL, VT.STRING]


@st.composite
def kv_entry(draw):
    vt = draw(st.sampled_from(_SCALAR_TYPES + [VT.ARRAY]))
    if vt != VT.ARRAY:
        return vt, None, draw(_scalar(vt))
    sub = draw(st.sampled_from(_SCALAR_TYPES))
    return vt, sub, draw(st.lists(_scalar(sub), min_size=1, max_size=12))  # gguf-py refuses empty arrays


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(kv_entry(), max_size=8),
       shapes=st.lists(st.tuples(st.sampled_from(["F32", "F16", "Q8_0", "Q4_0", "I8", "BF16"]),
                                 st.lists(st.integers(1, 5), min_size=1, max_size=4)), max_size=4),
       alignment=st.sampled_from([None, 32, 64, 256]))
def test_metadata_and_tensors_match_gguf_py(tmp_path_factory, entries, shapes, alignment):
    path = tmp_path_factory.mktemp("kv") / "f.gguf"
    w = gguf.GGUFWriter(str(path), "testarch")
    if alignment:
        w.add_custom_alignment(alignment)
    expected = {}
    for i, (vt, sub, val) in enumerate(entries):
        key = f"k.{i}"
        w.add_key_value(key, val, vt, sub_type=sub)
        expected[key] = val
    rng = np.random.default_rng(0)
    written = {}
    for j, (tname, ne) in enumerate(shapes):
        t = gguf.GGMLQuantizationType[tname]
        blk, size = gguf.GGML_QUANT_SIZES[t]
        ne = [ne[0] * blk, *ne[1:]]                    # ggml order
        nbytes = math.prod(ne) // blk * size
        raw = rng.integers(0, 256, nbytes, dtype=np.uint8)
        shape_bytes = [*reversed(ne[1:]), ne[0] // blk * size]
        w.add_tensor(f"t{j}", raw.reshape(shape_bytes), raw_dtype=t)
        written[f"t{j}"] = (int(t), tuple(ne), raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    with GGUFFile(path) as g:
        ref = gguf.GGUFReader(str(path))
        assert g.metadata["general.architecture"] == "testarch"
        for key, val in expected.items():
            got = g.metadata[key]
            if isinstance(val, float) or (isinstance(val, list) and val and isinstance(val[0], float)):
                want = ref.fields[key].contents()   # FLOAT32 values are rounded on write
                np.testing.assert_array_equal(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64))
            else:
                assert got == val, key
            assert g.kv_types[key].split("_")[-1] == ref.fields[key].types[-1].name
        assert list(g.tensors) == list(written)
        for name, (t, ne, raw) in written.items():
            info = g.tensors[name]
            rt = next(x for x in ref.tensors if x.name == name)
            assert (info.ggml_type, info.ne, info.nbytes) == (t, ne, len(raw))
            assert info.offset == rt.data_offset
            assert np.array_equal(g.data(name), raw)
            assert g.data(name).base is not None           # a view, not a copy
        assert g.alignment == (alignment or 32)


def test_type_table_matches_gguf_py():
    for tid, (name, blk, size) in GGML_TYPES.items():
        q = gguf.GGMLQuantizationType(tid)
        assert q.name == name
        if name != "Q8_1":  # gguf-py says 40 bytes; ggml-common.h's block_q8_1 is 36
            assert gguf.GGML_QUANT_SIZES[q] == (blk, size), name
    assert tensor_nbytes(2, (64, 3)) == 2 * 3 * 18


@pytest.mark.skipif(not LLAMA_VOCAB.is_dir(), reason="../shared/fixtures/llama-vocab not present")
def test_llama_cpp_vocab_files_read_like_gguf_py():
    # The smallest file (32k strings, scores, types): GGUFReader needs 8-35 s for the others.
    files = [str(LLAMA_VOCAB / "ggml-vocab-llama-spm.gguf")]
    for f in files:
        g = GGUFFile(f)
        ref = gguf.GGUFReader(f)
        keys = [k for k in ref.fields if not k.startswith("GGUF.")]
        assert list(g.metadata) == keys
        for k in keys:
            want = ref.fields[k].contents()
            got = g.metadata[k]
            if isinstance(want, float):
                assert got == pytest.approx(want, rel=0, abs=0)
            else:
                assert got == want, (f, k)


def test_data_view_is_read_only(tmp_path):
    p = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(p), "x")
    w.add_tensor("a", np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    g = GGUFFile(p)
    v = g.data("a")
    with pytest.raises((ValueError, TypeError)):
        v[0] = 1
    g.close()
    assert np.array_equal(v.view(np.float32), np.ones(8, np.float32))  # view keeps the mapping alive


def test_version_2_files_parse(tmp_path):
    """GGUF v2 has v3's layout (64-bit counts); only v1 (32-bit counts) is refused. (Also an
    empty array, which gguf-py cannot write.)"""
    import struct

    from helpers.raw_gguf import ARR, STR, U32, raw_gguf, s_kv, s_str, s_tensor

    data = np.arange(16, dtype=np.float32).tobytes()
    p = tmp_path / "v2.gguf"
    p.write_bytes(raw_gguf([s_kv("n", U32, struct.pack("<I", 3)), s_kv("s", STR, s_str("héllo")),
                            s_kv("e", ARR, struct.pack("<IQ", U32, 0))],
                           [s_tensor("a", (8,), 0, 0), s_tensor("b", (4, 2), 0, 32)], data, version=2))
    with GGUFFile(p) as g:
        assert g.version == 2
        assert g.metadata == {"n": 3, "s": "héllo", "e": []}
        assert g.tensors["b"].ne == (4, 2) and g.tensors["b"].offset == g.data_offset + 32
        assert np.array_equal(g.data("b").view(np.float32), np.arange(8, 16, dtype=np.float32))
