"""Fuzzing the file entry point (GGUF reader -> model validation -> engine) and the engine entry.

1. A deterministic corpus made from real files at test time: every length/count/offset/shape
   field and every integer/float metadata value (the hyperparameters) set to hostile values, the file cut at every field boundary, one bit
   flipped in every byte of those fields and in every 5th other header byte.
2. atheris (coverage-guided libFuzzer) on tests/fuzz/fuzz_gguf.py, seeded with files we write,
   for NEMOCPU_FUZZ_SECONDS (default 120).
3. The C++ Engine constructor fed absurd hyperparameters and tensor tables that bypass the
   Python validation (hypothesis, NEMOCPU_FUZZ_ENGINE_EXAMPLES, default 300).

Every run is in a subprocess: a crash fails the test with the case it died on. The accepted
outcomes are a clean load or a ModelFileError naming the file (engine: ValueError/TypeError).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.synthetic_gguf import small_hparams, write_model

REPO = Path(__file__).resolve().parents[1]
FUZZ_SECONDS = int(os.environ.get("NEMOCPU_FUZZ_SECONDS", "120"))
ENGINE_EXAMPLES = int(os.environ.get("NEMOCPU_FUZZ_ENGINE_EXAMPLES", "300"))
HOSTILE_U64 = (0, 1, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)
HOSTILE_U32 = (0, 1, 3, 5, 13, 0x7F800000, 0x7FFFFFFF, 0xFFFFFFFF)   # also +inf / NaN as FLOAT32


def _tiny_hparams(**kw):
    return small_hparams(n_embd=32, n_vocab=16, n_head=2, n_head_kv=1, head_dim=16, ssm_n_head=2,
                         ssm_head_dim=16, ssm_d_state=4, ssm_n_group=1, n_ff_exp=32, n_ff_shexp=32, **kw)


def write_seeds(directory: Path) -> list[Path]:
    """Small valid models of every weight type, a tied one, and the header of the embedded model."""
    from nemocpu.data import default_model_path
    from nemocpu.gguf_file import GGUFFile

    directory.mkdir(parents=True, exist_ok=True)
    seeds = []
    for wtype in ("f32", "f16", "bf16", "q8_0", "q4_0", "fp8"):
        p = directory / f"seed-{wtype}.gguf"
        write_model(p, hp=_tiny_hparams(), wtype=wtype)
        seeds.append(p)
    p = directory / "seed-tied.gguf"
    write_model(p, hp=_tiny_hparams(tie_word_embeddings=True), wtype="q8_0")
    seeds.append(p)
    with GGUFFile(default_model_path()) as g:   # real vocabulary, merges and chat template
        head = default_model_path().read_bytes()[:g.data_offset]
    p = directory / "seed-embedded-header.gguf"
    p.write_bytes(head)
    seeds.append(p)
    return seeds


# ------------------------------------------------------------------------------------
# 1. Deterministic structured corpus
# ------------------------------------------------------------------------------------
_MUTATE_AND_LOAD = textwrap.dedent("""
    import json, os, struct, sys, tempfile, collections
    import nemocpu
    from nemocpu.errors import ModelFileError
    from nemocpu.gguf_file import GGUFFile

    base_path, out_dir = sys.argv[1], sys.argv[2]
    base = open(base_path, "rb").read()

    class Recorder(GGUFFile):
        # Every integer field the parser reads: (offset, size, what).
        def _u32(self, what):
            fields.append((self._pos, 4, what)); return super()._u32(what)
        def _u64(self, what):
            fields.append((self._pos, 8, what)); return super()._u64(what)
        def _value(self, vtype, key, depth):
            # scalar metadata values too: hyperparameters that parse but are absurd reach the engine
            size = {4: 4, 5: 4, 6: 4, 10: 8, 11: 8, 12: 8}.get(vtype)
            if size:
                fields.append((self._pos, size, f"value of {key}"))
            return super()._value(vtype, key, depth)
    fields = []
    Recorder(base_path).close()
    head_end = max(p + n for p, n, _ in fields)

    def cases():
        for p, n, what in fields:
            for v in (%(u64)s if n == 8 else %(u32)s):
                b = bytearray(base); b[p:p + n] = v.to_bytes(n, "little")
                yield f"set {what}@{p}={v}", bytes(b)
        for cut in sorted({p for p, _, _ in fields} | {p + n for p, n, _ in fields} | {head_end + 1}):
            yield f"cut@{cut}", base[:cut]
        in_field = {p + k for p, n, _ in fields for k in range(n)}
        for i in range(head_end):           # every byte of a field, every 5th of the rest (strings)
            if i not in in_field and i %% 5:
                continue
            b = bytearray(base); b[i] ^= 1 << (i %% 8)
            yield f"flip byte {i} bit {i %% 8}", bytes(b)

    path = os.path.join(out_dir, "case.gguf")
    kinds = collections.Counter()
    for name, blob in cases():
        print(name, file=sys.stderr, flush=True)   # the last line names a case that crashed
        with open(path, "wb") as f:
            f.write(blob)
        try:
            m = nemocpu.load(path, threads=1, n_ctx=8)
            m.session().eval([0, m.n_vocab - 1])
            kinds["loaded"] += 1
        except ModelFileError as e:
            if path not in str(e):
                print(json.dumps({"bad": name, "msg": str(e)})); sys.exit(0)
            kinds[type(e).__name__] += 1
        except Exception as e:
            print(json.dumps({"bad": name, "msg": f"{type(e).__name__}: {e}"})); sys.exit(0)
    print(json.dumps({"fields": len(fields), "kinds": kinds}))
""") % {"u64": HOSTILE_U64, "u32": HOSTILE_U32}


@pytest.mark.parametrize("wtype", ["q8_0", "fp8"])
def test_structured_corpus(tmp_path, wtype):
    base = tmp_path / "base.gguf"
    write_model(base, hp=_tiny_hparams(), wtype=wtype)
    r = subprocess.run([sys.executable, "-c", _MUTATE_AND_LOAD, str(base), str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"loader died (rc {r.returncode}) on: {r.stderr.splitlines()[-1:]}\n{r.stderr[-2000:]}"
    result = json.loads(r.stdout.splitlines()[-1])
    assert "bad" not in result, result
    kinds = result["kinds"]
    n = sum(kinds.values())
    print(f"{wtype}: {n} files from {result['fields']} fields: {kinds}")
    assert result["fields"] > 100 and set(kinds) <= {"loaded", "GGUFError", "ModelFileError"}
    assert kinds["GGUFError"] > n // 2          # most of these mutations must be caught


# ------------------------------------------------------------------------------------
# 2. Coverage-guided fuzzing with atheris
# ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_atheris_finds_nothing(tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    write_seeds(corpus)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    cmd = [sys.executable, str(REPO / "tests" / "fuzz" / "fuzz_gguf.py"), str(corpus),
           f"-max_total_time={FUZZ_SECONDS}", "-timeout=10", "-rss_limit_mb=3072", "-print_final_stats=1",
           f"-artifact_prefix={artifacts}/", "-seed=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=FUZZ_SECONDS + 300, cwd=tmp_path)
    log = r.stdout + r.stderr
    findings = sorted(p.name for p in artifacts.iterdir())
    assert r.returncode == 0 and not findings, f"fuzzer finding(s) {findings}:\n{log[-5000:]}"
    runs = int(re.search(r"stat::number_of_executed_units:\s*(\d+)", log).group(1))
    new = int(re.search(r"stat::new_units_added:\s*(\d+)", log).group(1))
    print(f"atheris: {runs} executions in {FUZZ_SECONDS} s, {new} new coverage units, no findings")
    assert new > 0, "no coverage feedback: the harness is not instrumented"
    assert runs > 20 * FUZZ_SECONDS // 10


# ------------------------------------------------------------------------------------
# 3. The engine entry with absurd hyperparameters / tensor tables
# ------------------------------------------------------------------------------------
_ENGINE_FUZZ = textwrap.dedent("""
    import math, sys
    import numpy as np
    from hypothesis import given, settings, strategies as st, HealthCheck
    import nemocpu._core as core
    sys.path.insert(0, "tests")
    from oracle import random_gguf_tensors, tiny_hparams

    HP = tiny_hparams("MEM*EME*M")
    BASE = HP.as_dict()
    TENSORS, _ = random_gguf_tensors(HP, 0, "Q8_0")
    INTS = st.sampled_from([0, 1, 2, 3, 7, 64, -1, -2**31, 2**31 - 1, 2**31, 2**40, 2**62, 2**63 - 1])
    FLOATS = st.sampled_from([0.0, -1.0, 1e-45, 1e38, float("inf"), float("-inf"), float("nan")])
    KINDS = st.text(alphabet="ME*-X", max_size=12) | st.just("M" * 5000)
    counts = {"built": 0, "refused": 0, "evals": 0}

    def hp_edit(key):
        v = BASE[key]
        if isinstance(v, bool):
            return st.booleans()
        if isinstance(v, int):
            return INTS
        if isinstance(v, float):
            return FLOATS
        if key == "layer_kinds":
            return KINDS
        return st.sampled_from(["", "llama", "nemotron_h"])

    hp_edits = st.dictionaries(st.sampled_from(sorted(BASE)), st.none(), min_size=1, max_size=3).flatmap(
        lambda d: st.fixed_dictionaries({k: hp_edit(k) for k in d}))
    tensor_edits = st.lists(st.tuples(st.sampled_from(sorted(TENSORS)),
                                      st.sampled_from(["drop", "ne", "type", "short", "ne0"])), max_size=2)

    @settings(max_examples=int(sys.argv[1]), deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(hp_edits, tensor_edits, st.sampled_from([1, 2]))
    def fuzz(edits, tedits, n_tok):
        hp = dict(BASE, **edits)
        tensors = dict(TENSORS)
        for name, how in tedits:
            if name not in tensors:
                continue
            data, typ, ne = tensors[name]
            if how == "drop":
                del tensors[name]
            elif how == "ne":
                tensors[name] = (data, typ, tuple(reversed(ne)) + (2,))
            elif how == "ne0":
                tensors[name] = (data, typ, (2**40,) + tuple(ne[1:]))
            elif how == "type":
                tensors[name] = (data, {0: 8, 8: 30, 30: 2, 2: 24, 24: 0, 1: 0}.get(typ, 0), ne)
            else:
                tensors[name] = (data[:len(data) // 2], typ, ne)
        print(repr((edits, tedits)), file=sys.stderr, flush=True)   # the last line names a crashing case
        try:
            eng = core.Engine(hp, tensors, 1, 0.0)
        except (ValueError, TypeError, OverflowError):
            counts["refused"] += 1
            return
        counts["built"] += 1
        s = eng.new_state(4, "f32")
        try:
            out = eng.eval(s, np.arange(n_tok, dtype=np.int32) % eng.n_vocab, True)
            assert out.shape == (n_tok, eng.n_vocab)
            counts["evals"] += 1
        except ValueError:
            pass

    fuzz()
    print(counts)
""")


def test_engine_entry_with_absurd_inputs():
    r = subprocess.run([sys.executable, "-c", _ENGINE_FUZZ, str(ENGINE_EXAMPLES)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (f"engine fuzz died (rc {r.returncode}) on: {r.stderr.splitlines()[-1:]}\n"
                               f"{r.stderr[-3000:]}")
    counts = eval(r.stdout.splitlines()[-1], {})   # a dict literal printed by the child
    print("engine fuzz:", counts)
    assert counts["refused"] > 0 and counts["built"] + counts["refused"] >= ENGINE_EXAMPLES // 2
