"""Hostile GGUF files not covered by tests/test_hostile_files.py: metadata that is valid but
would make the reader allocate far more than the file holds, measured as peak RSS in a child."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap

import pytest

from helpers.raw_gguf import ARR, STR, raw_gguf, s_kv

_PEAK = textwrap.dedent("""
    import json, sys
    from nemocpu.gguf_file import GGUFFile
    from nemocpu.errors import GGUFError
    try:
        GGUFFile(sys.argv[1]).close(); kind, msg = "loaded", ""
    except GGUFError as e:
        kind, msg = "GGUFError", str(e)
    # VmHWM, not ru_maxrss: the latter carries over the parent's peak across fork + exec
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"kind": kind, "msg": msg, "peak_kb": peak}))
""")


def load_in_child(path) -> dict:
    r = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.splitlines()[-1])


U8, U64 = 0, 10
N = (1 << 24) + 1           # one past MAX_METADATA_ELEMENTS


@pytest.mark.parametrize("case", ["u8_array", "u64_array", "empty_strings", "split_over_keys"])
def test_metadata_element_bomb_is_refused_cheaply(tmp_path, case):
    """16M one-byte elements would be a 16M-entry Python list (~130 MB+) from a 16 MB file;
    refused before the list is built."""
    if case == "u8_array":
        kvs = [s_kv("k", ARR, struct.pack("<IQ", U8, N) + b"\1" * N)]
    elif case == "u64_array":
        kvs = [s_kv("k", ARR, struct.pack("<IQ", U64, N) + b"\0" * (8 * N))]
    elif case == "empty_strings":
        kvs = [s_kv("k", ARR, struct.pack("<IQ", STR, N) + b"\0" * (8 * N))]
    else:
        half = N // 2 + 1
        kvs = [s_kv(k, ARR, struct.pack("<IQ", U8, half) + b"\1" * half) for k in ("a", "b")]
    p = tmp_path / f"{case}.gguf"
    p.write_bytes(raw_gguf(kvs))
    r = load_in_child(p)
    assert r["kind"] == "GGUFError" and str(p) in r["msg"] and "array elements" in r["msg"], r
    assert r["peak_kb"] < 150_000, r      # the interpreter + numpy, not a giant list


def test_largest_allowed_array_loads(tmp_path):
    """Control: a vocabulary-sized array (1M strings) is fine."""
    n = 1 << 20
    p = tmp_path / "vocab.gguf"
    p.write_bytes(raw_gguf([s_kv("tokenizer.ggml.tokens", ARR, struct.pack("<IQ", STR, n)
                                 + (struct.pack("<Q", 1) + b"a") * n)]))
    assert load_in_child(p)["kind"] == "loaded"


def test_hostile_tokenizer_options_are_a_file_error(tmp_path):
    import gguf

    import nemocpu
    from helpers.synthetic_gguf import write_model
    from nemocpu.errors import ModelFileError

    p = tmp_path / "tok.gguf"
    write_model(p, extra_kv={"nemocpu.tokenizer.hf.model_options": ("[1, 2]", gguf.GGUFValueType.STRING)})
    m = nemocpu.load(p, threads=1, n_ctx=16)
    with pytest.raises(ModelFileError, match=str(p)):
        m.tokenize("hello")
