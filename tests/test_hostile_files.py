"""Hostile and broken GGUF files: each must give a GGUFError/ModelFileError naming the file and
the problem -- never a crash, a hang, a huge allocation or silent garbage.

The loads run in ONE subprocess per test (a segfault then fails the test instead of killing
pytest); the child prints one JSON line per case.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers.raw_gguf import ARR, BOOL, STR, U32, raw_gguf, s_kv, s_str, s_tensor
from helpers.synthetic_gguf import small_hparams, write_model

# ------------------------------------------------------------------------------------
# Child process: load every file, report what happened
# ------------------------------------------------------------------------------------
_RUNNER = textwrap.dedent("""
    import json, sys
    import nemocpu
    from nemocpu.errors import ModelFileError
    from nemocpu import _core
    if hasattr(_core, "Engine"):
        load = lambda p: nemocpu.load(p, threads=1, n_ctx=16)
    else:  # engine not built: validation is everything before it
        from nemocpu.model_file import open_model_file as load
    for case, path in json.loads(sys.stdin.read()):
        try:
            load(path)
            r = {"case": case, "kind": "loaded"}
        except ModelFileError as e:
            r = {"case": case, "kind": type(e).__name__, "msg": str(e)}
        except Exception as e:
            r = {"case": case, "kind": "other:" + type(e).__name__, "msg": str(e)}
        print(json.dumps(r), flush=True)
""")


def run_cases(cases: dict, timeout=120) -> dict:
    """cases: name -> path. Returns name -> result dict (missing if the child died on it)."""
    items = [[name, str(path)] for name, path in cases.items()]
    proc = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(items),
                          capture_output=True, text=True, timeout=timeout)
    results = {r["case"]: r for r in map(json.loads, proc.stdout.splitlines())}
    if proc.returncode != 0:
        died_on = next((n for n, _ in items if n not in results), "?")
        pytest.fail(f"loader process died (rc {proc.returncode}) on case {died_on!r}:\n{proc.stderr[-2000:]}")
    return results


def assert_rejected(results, cases, expect: dict):
    for name, path in cases.items():
        r = results[name]
        assert r["kind"] in ("GGUFError", "ModelFileError"), f"{name}: {r}"
        assert str(path) in r["msg"], f"{name}: error does not name the file: {r['msg']}"
        want = expect.get(name)
        if want:
            assert want.lower() in r["msg"].lower(), f"{name}: expected {want!r} in {r['msg']!r}"


ONE_TENSOR = [s_tensor("t", (8,), 0, 0)]
DATA32 = np.arange(8, dtype=np.float32).tobytes()


def test_raw_serializer_makes_a_valid_file(tmp_path):
    """The hostile cases below are one defect away from this file, which must load as GGUF."""
    from nemocpu.gguf_file import GGUFFile

    p = tmp_path / "ok.gguf"
    p.write_bytes(raw_gguf([s_kv("a", U32, struct.pack("<I", 7))], ONE_TENSOR, DATA32))
    g = GGUFFile(p)
    assert g.metadata == {"a": 7}
    assert np.array_equal(g.data("t").view(np.float32), np.arange(8, dtype=np.float32))


CONTAINER_CASES = {
    # name: (bytes, expected words in the message)
    "empty": (b"", "too small"),
    "wrong_magic": (raw_gguf(magic=b"GGML"), "not a GGUF"),
    "version_1": (raw_gguf(version=1), "version"),
    "version_4": (raw_gguf(version=4), "version"),
    "big_endian": (raw_gguf(version=0x03000000), "big-endian"),
    "absurd_kv_count": (raw_gguf(n_kv=1 << 60), "absurd"),
    "absurd_tensor_count": (raw_gguf(n_tensors=1 << 40), "absurd"),
    "absurd_key_length": (raw_gguf([struct.pack("<Q", 1 << 62) + b"xx"], n_kv=1), "truncated"),
    "absurd_string_value": (raw_gguf([s_str("k") + struct.pack("<IQ", STR, 1 << 61)]), "truncated"),
    "absurd_array_count": (raw_gguf([s_kv("k", ARR, struct.pack("<IQ", U32, 1 << 61))]), "absurd"),
    "absurd_string_array": (raw_gguf([s_kv("k", ARR, struct.pack("<IQ", STR, 1 << 59))]), "absurd"),
    "string_in_array_too_long": (raw_gguf([s_kv("k", ARR, struct.pack("<IQ", STR, 1) + struct.pack("<Q", 999))]),
                                 "past the end"),
    "deep_nested_arrays": (raw_gguf([s_kv("k", ARR, struct.pack("<IQ", ARR, 1) * 20 + struct.pack("<IQ", U32, 0))]),
                           "nested"),
    "unknown_value_type": (raw_gguf([s_kv("k", 77, b"\0" * 8)]), "unknown value type"),
    "unknown_array_type": (raw_gguf([s_kv("k", ARR, struct.pack("<IQ", 77, 1))]), "unknown array element"),
    "bool_value_2": (raw_gguf([s_kv("k", BOOL, b"\x02")]), "bool"),
    "bad_utf8_key": (raw_gguf([s_kv(b"\xff\xfe", U32, b"\0" * 4)]), "utf-8"),
    "duplicate_key": (raw_gguf([s_kv("k", U32, b"\0" * 4), s_kv("k", U32, b"\1\0\0\0")]), "duplicate metadata key"),
    "alignment_not_pow2": (raw_gguf([s_kv("general.alignment", U32, struct.pack("<I", 24))]), "power of two"),
    "alignment_zero": (raw_gguf([s_kv("general.alignment", U32, struct.pack("<I", 0))]), "power of two"),
    "n_dims_5": (raw_gguf(tensors=[s_tensor("t", (1, 1, 1, 1, 1), 0, 0)], data=DATA32), "dimensions"),
    "n_dims_0": (raw_gguf(tensors=[s_tensor("t", (), 0, 0)], data=DATA32), "dimensions"),
    "zero_dim": (raw_gguf(tensors=[s_tensor("t", (8, 0), 0, 0)], data=DATA32), "non-positive"),
    "ne_overflow": (raw_gguf(tensors=[s_tensor("t", (1 << 40, 1 << 40), 0, 0)], data=DATA32), "overflow"),
    "unknown_tensor_type": (raw_gguf(tensors=[s_tensor("t", (8,), 99, 0)], data=DATA32), "unknown ggml type"),
    "bad_block_multiple": (raw_gguf(tensors=[s_tensor("t", (16,), 8, 0)], data=DATA32), "multiple of 32"),
    "offset_past_end": (raw_gguf(tensors=[s_tensor("t", (8,), 0, 1 << 20)], data=DATA32), "past the end"),
    "offset_huge": (raw_gguf(tensors=[s_tensor("t", (8,), 0, (1 << 64) - 32)], data=DATA32), "past the end"),
    "data_truncated": (raw_gguf(tensors=[s_tensor("t", (64,), 0, 0)], data=DATA32), "past the end"),
    "offset_unaligned": (raw_gguf(tensors=[s_tensor("t", (8,), 0, 4)], data=DATA32 * 2), "aligned"),
    "duplicate_tensor": (raw_gguf(tensors=[s_tensor("t", (8,), 0, 0), s_tensor("t", (8,), 0, 32)], data=DATA32 * 2),
                         "duplicate tensor"),
    "overlapping_tensors": (raw_gguf(tensors=[s_tensor("a", (16,), 0, 0), s_tensor("b", (8,), 0, 32)],
                                     data=DATA32 * 2), "overlap"),
    "tensors_no_metadata": (raw_gguf(tensors=ONE_TENSOR, data=DATA32), "architecture"),
}


def test_container_defects_are_named(tmp_path):
    cases = {}
    for name, (blob, _) in CONTAINER_CASES.items():
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(blob)
        cases[name] = p
    results = run_cases(cases)
    assert_rejected(results, cases, {n: w for n, (_, w) in CONTAINER_CASES.items()})


def test_truncated_everywhere(tmp_path):
    full = tmp_path / "full.gguf"
    write_model(full, wtype="q8_0")
    blob = full.read_bytes()
    from nemocpu.gguf_file import GGUFFile
    with GGUFFile(full) as g:
        data_start = g.data_offset
    # dense through the header, KVs and tensor infos; sparse through the data
    cuts = sorted(set(list(range(0, min(data_start, 200))) + list(np.linspace(200, data_start, 60, dtype=int))
                      + list(np.linspace(data_start, len(blob) - 1, 25, dtype=int))))
    cases = {}
    for n in cuts:
        p = tmp_path / f"cut{n}.gguf"
        p.write_bytes(blob[:n])
        cases[f"cut{n}"] = p
    results = run_cases(cases)
    assert_rejected(results, cases, {})
    # a cut in the data names the tensor that runs past the end
    assert "past the end" in results[f"cut{len(blob) - 1}"]["msg"]


def _model_cases():
    import gguf
    qt, vt = gguf.GGMLQuantizationType, gguf.GGUFValueType

    def drop(target):
        return lambda n, a, t: None if n == target else (n, a, t)

    def retype_norm(n, a, t):
        return (n, a.astype(np.float16), qt.F16) if n == "blk.0.attn_norm.weight" else (n, a, t)

    def reshape(n, a, t):
        return (n, a.reshape(a.shape[0] // 2, -1), t) if n == "blk.0.ssm_in.weight" else (n, a, t)

    def q5_0(n, a, t):
        return (n, gguf.quants.quantize(a, qt.Q5_0), qt.Q5_0) if n == "blk.2.attn_q.weight" else (n, a, t)

    def f32_to_q8(n, a, t):
        return (n, gguf.quants.quantize(a, qt.Q8_0), qt.Q8_0) if n == "blk.1.ffn_gate_inp.weight" else (n, a, t)

    specs = {
        "missing_tensor": (dict(tensor_hook=drop("blk.1.ffn_down_exps.weight")), "missing tensor 'blk.1.ffn_down_exps.weight'"),
        "norm_not_f32": (dict(tensor_hook=retype_norm), "unsupported type F16 for tensor 'blk.0.attn_norm.weight'"),
        "router_quantized": (dict(tensor_hook=f32_to_q8), "unsupported type Q8_0 for tensor 'blk.1.ffn_gate_inp.weight'"),
        "wrong_shape": (dict(tensor_hook=reshape), "tensor 'blk.0.ssm_in.weight' has shape"),
        "unsupported_type": (dict(tensor_hook=q5_0), "unsupported type Q5_0 for tensor 'blk.2.attn_q.weight'"),
        "wrong_arch": (dict(extra_kv={}), None),  # filled below
        "missing_key": (dict(skip_kv={"nemotron_h_moe.ssm.state_size"}), "nemotron_h_moe.ssm.state_size"),
        "key_wrong_type": (dict(skip_kv={"nemotron_h_moe.embedding_length"},
                                extra_kv={"nemotron_h_moe.embedding_length": (64, vt.INT32)}),
                           "'nemotron_h_moe.embedding_length' has type INT32"),
        "bad_hparams": (dict(hp=small_hparams(ssm_n_group=3, ssm_n_head=4)), "not divisible"),
        "fp8_wrong_format": (None, None),
        "fp8_bad_scale": (dict(wtype="fp8", tensor_hook=lambda n, a, t: (n, a[:3], t)
                               if n == "blk.0.ssm_out.weight_scale" else (n, a, t)), "needs 1, 1 or 64"),
        "fp8_missing_scale": (dict(wtype="fp8", tensor_hook=drop("blk.0.ssm_out.weight_scale")),
                              "has no scale tensor 'blk.0.ssm_out.weight_scale'"),
    }
    return specs


def test_model_level_defects_are_named(tmp_path, monkeypatch):
    from helpers import synthetic_gguf

    specs = _model_cases()
    cases, expect = {}, {}
    for name, (kw, want) in specs.items():
        p = tmp_path / f"{name}.gguf"
        if name == "wrong_arch":
            write_model(p, hp=small_hparams(arch="nemotron_h_moe"))
            blob = bytearray(p.read_bytes())  # same-length rename of the architecture value
            i = blob.index(b"nemotron_h_moe", blob.index(b"general.architecture"))
            blob[i:i + 14] = b"nemotron_h_mox"
            p.write_bytes(bytes(blob))
            want = "unsupported architecture"
        elif name == "fp8_wrong_format":
            monkeypatch.setattr(synthetic_gguf.arch, "FP8_FORMAT", "e5m2")  # write a wrong marker
            write_model(p, wtype="fp8")
            monkeypatch.undo()
            want = "'nemocpu.fp8.format' is 'e5m2'"
        else:
            write_model(p, **kw)
        cases[name], expect[name] = p, want
    # an extra tensor next to all the right ones (llama.cpp: "wrong number of tensors")
    p = tmp_path / "extra_tensor.gguf"
    orig_specs = synthetic_gguf.arch.tensor_specs

    def with_extra(h):
        return orig_specs(h) + [synthetic_gguf.arch.TensorSpec("blk.0.ffn_gate.weight", (64, 32), "matrix")]
    monkeypatch.setattr(synthetic_gguf.arch, "tensor_specs", with_extra)
    write_model(p)
    monkeypatch.undo()
    cases["extra_tensor"], expect["extra_tensor"] = p, "unexpected tensor(s) 'blk.0.ffn_gate.weight'"

    results = run_cases(cases)
    assert_rejected(results, cases, expect)


def test_valid_synthetic_files_load(tmp_path):
    """Control: the defect-free versions of the files above are accepted."""
    cases = {}
    for t in ("f32", "f16", "bf16", "q8_0", "q4_0", "fp8"):
        p = tmp_path / f"ok_{t}.gguf"
        write_model(p, wtype=t)
        cases[t] = p
    results = run_cases(cases)
    for t in cases:
        assert results[t]["kind"] == "loaded", results[t]


def test_random_corruption_never_crashes(tmp_path):
    """Random bytes overwritten in the header, metadata and tensor infos: the file either still
    describes a valid model or is rejected with a ModelFileError -- no other exception, no crash."""
    from nemocpu.gguf_file import GGUFFile

    full = tmp_path / "full.gguf"
    write_model(full, wtype="q4_0")
    blob = full.read_bytes()
    with GGUFFile(full) as g:
        head = g.data_offset
    rng = np.random.default_rng(1234)
    cases = {}
    for i in range(80):
        b = bytearray(blob)
        for pos in rng.integers(0, head, rng.integers(1, 4)):
            b[pos] = int(rng.integers(0, 256))
        p = tmp_path / f"corrupt{i}.gguf"
        p.write_bytes(bytes(b))
        cases[p.stem] = p
    results = run_cases(cases)
    kinds = {r["kind"] for r in results.values()}
    assert kinds <= {"loaded", "GGUFError", "ModelFileError"}, [r for r in results.values()
                                                                 if r["kind"].startswith("other")][:3]
    for name, r in results.items():
        if r["kind"] != "loaded":
            assert str(cases[name]) in r["msg"]
