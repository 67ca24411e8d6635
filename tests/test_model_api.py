"""nemocpu.load / Model / Session behaviour, and the `run` and `info` commands."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import nemocpu
from helpers.engine_cases import greedy_continuation
from nemocpu.data import default_model_path
from nemocpu.errors import NemocpuError


@pytest.fixture(scope="module")
def model():
    return nemocpu.load(threads=2, n_ctx=64)


PROMPT = [3, 328, 209, 860, 231, 30, 26, 27, 362, 231]


def test_load_defaults_to_embedded_model(model):
    assert model.path == str(default_model_path())
    assert model.config.layer_kinds == "MEMEM*EMEMEM*E"
    assert model.metadata["general.architecture"] == "nemotron_h_moe"
    assert model.n_vocab == model.config.n_vocab == 4096
    assert model.variant in nemocpu._core.variants()
    report = model.memory_report()
    assert report["file_bytes"] == default_model_path().stat().st_size
    assert report["weights_copied_bytes"] == 0          # weights stay in the file mapping


def test_session_eval_shapes_and_n_past(model):
    s = model.session()
    assert s.n_past == 0 and s.n_ctx == 64
    last = s.eval(PROMPT)
    assert last.shape == (1, model.n_vocab) and last.dtype == np.float32
    assert s.n_past == len(PROMPT)
    every = model.session().eval(PROMPT, all_logits=True)
    assert every.shape == (len(PROMPT), model.n_vocab)
    np.testing.assert_allclose(every[-1], last[0], rtol=0, atol=1e-5 * np.abs(last).max())
    assert np.all(np.isfinite(every))


def test_bad_eval_leaves_state_untouched(model):
    s = model.session()
    s.eval(PROMPT[:4])
    snap_logits = s.eval(PROMPT[4:5])
    for bad in ([model.n_vocab], [-1], [], list(range(5, 5 + 64))):
        with pytest.raises(ValueError):
            s.eval(bad)
        assert s.n_past == 5
    # still continues exactly as a fresh session fed the same chunks would
    fresh = model.session()
    fresh.eval(PROMPT[:4])
    fresh.eval(PROMPT[4:5])
    np.testing.assert_array_equal(s.eval(PROMPT[5:6]), fresh.eval(PROMPT[5:6]))
    assert snap_logits.shape == (1, model.n_vocab)


def test_snapshot_restore_and_reset(model):
    s = model.session()
    s.eval(PROMPT[:6])
    snap = s.snapshot()
    a = s.eval(PROMPT[6:])
    s.eval([5, 6, 7])
    s.restore(snap)
    assert s.n_past == 6
    np.testing.assert_array_equal(s.eval(PROMPT[6:]), a)
    s.reset()
    assert s.n_past == 0
    np.testing.assert_array_equal(s.eval(PROMPT), model.session().eval(PROMPT))


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(NemocpuError, match="kv_type"):
        nemocpu.load(kv_type="q8")
    with pytest.raises(NemocpuError, match="threads"):
        nemocpu.load(threads=0)
    missing = tmp_path / "nope.gguf"
    with pytest.raises(nemocpu.ModelFileError, match="nope.gguf"):
        nemocpu.load(missing)


def test_tokenize_roundtrip(model):
    ids = model.tokenize("Calculate 401 + 50.")
    assert ids == [860, 231, 30, 26, 27, 362, 231, 31, 26, 24]
    assert model.detokenize(ids) == "Calculate 401 + 50."


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nemocpu", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_run_command_json_is_greedy(model):
    r = _cli("run", "-p", "Calculate 401 + 50.", "-n", "8", "--threads", "2", "--json", "--ignore-eos")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt_ids"] == model.tokenize("Calculate 401 + 50.")
    s = model.session()
    logits = s.eval(out["prompt_ids"])
    want = []
    for _ in range(8):
        want.append(int(np.argmax(logits[0])))
        logits = s.eval(want[-1:])
    assert out["generated_ids"] == want
    assert out["text"] == model.detokenize(want)


def test_run_command_sampling_follows_the_seed():
    args = ("run", "-p", "Calculate 401 + 50.", "-n", "12", "--temp", "1.5", "--threads", "1", "--json",
            "--ignore-eos")
    a, b, c = (json.loads(_cli(*args, "--seed", s).stdout)["generated_ids"] for s in ("7", "7", "8"))
    assert a == b and len(a) == 12
    assert a != c


def test_run_command_streams_text():
    r = _cli("run", "-p", "Hello", "-n", "4", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hello")
    assert "tok/s" in r.stderr


def test_run_command_bad_model_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x07\0\0\0" + b"\0" * 32)
    r = _cli("run", str(bad), "-p", "x")
    assert r.returncode == 1
    assert "bad.gguf" in r.stderr and "version 7" in r.stderr
    assert "Traceback" not in r.stderr


def test_info_command():
    r = _cli("info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["nemocpu"] == nemocpu.__version__
    assert info["active_variant"] in info["variants"]
    m = info["model"]
    assert m["tensor_types"] == {"F32": 63, "Q8_0": 46}
    assert m["hparams"]["layer_kinds"] == "MEMEM*EMEMEM*E"
    r = _cli("info")
    assert r.returncode == 0 and "nemotron_h_moe" in r.stdout


def test_file_without_output_weight_runs_tied(tmp_path):
    """llama.cpp's rule: no output.weight means the lm_head is token_embd. Such a file must give
    exactly the logits of the same model with output.weight = token_embd written out."""
    from helpers.synthetic_gguf import small_hparams, write_model
    from nemocpu.gguf_file import GGUFFile

    embd = {}

    def keep_embd(name, data, raw):
        if name == "token_embd.weight":
            embd["data"] = data
        if name == "output.weight":
            return None if "drop" in embd else (name, embd["data"], raw)
        return name, data, raw

    untied = tmp_path / "explicit.gguf"
    write_model(untied, hp=small_hparams(), tensor_hook=keep_embd)
    embd["drop"] = True
    tied = tmp_path / "tied.gguf"
    write_model(tied, hp=small_hparams(), tensor_hook=keep_embd)
    with GGUFFile(tied) as g:
        assert "output.weight" not in g.tensors
    a = nemocpu.load(untied, threads=1, n_ctx=16)
    b = nemocpu.load(tied, threads=1, n_ctx=16)
    assert b.config.tie_word_embeddings and not a.config.tie_word_embeddings
    ids = [1, 5, 9, 33]
    np.testing.assert_array_equal(a.session().eval(ids, all_logits=True), b.session().eval(ids, all_logits=True))


def test_bad_isa_override_is_a_clear_error():
    import os

    env = dict(os.environ, NEMOCPU_ISA="bogus")
    for args in (("run", "-p", "x", "-n", "1"), ("info",)):
        r = _cli(*args, env=env)
        assert r.returncode == 1, r.stderr
        assert "NEMOCPU_ISA" in r.stderr and "Traceback" not in r.stderr


def test_repacked_and_file_layout_agree_and_the_file_stays_intact(tmp_path):
    """load() repacks Q8_0 matrices (the embedded model is Q8_0) into the 8-row layout and
    releases their mapped pages; load(repack=False) reads the file's rows in place. Both are
    held to transformers elsewhere (test_model_tiny, test_engine); here: the same greedy text
    (logits differ in the last fp32 bits, which can flip an int8 activation rounding), and the
    released pages still read back as the file's bytes."""
    packed = nemocpu.load(threads=2, n_ctx=64)
    if not packed._engine.repacks:
        pytest.skip(f"the {packed.variant} kernels read the file's layout (no x8 kernels faster there)")
    plain = nemocpu.load(threads=2, n_ctx=64, repack=False)
    assert packed.memory_report()["weights_repacked_bytes"] == 0     # nothing is repacked before its first use
    runs = [greedy_continuation(m.session().eval, PROMPT, 24, stop_ids=set()) for m in (packed, plain)]
    assert runs[0] == runs[1]
    used = packed.memory_report()["weights_repacked_bytes"]
    packed.warm_up()
    rp, rf = packed.memory_report(), plain.memory_report()
    assert 0 < used <= rp["weights_repacked_bytes"] and rf["weights_repacked_bytes"] == 0
    assert rp["weights_mapped_bytes"] < rf["weights_mapped_bytes"]
    name = "blk.0.ssm_in.weight"
    with open(packed.path, "rb") as f:
        t = packed._file.gguf.tensors[name]
        f.seek(t.offset)
        assert bytes(packed._file.gguf.data(name)) == f.read(t.nbytes)


def test_repack_can_be_turned_off_by_environment(monkeypatch):
    monkeypatch.setenv("NEMOCPU_REPACK", "0")
    m = nemocpu.load(threads=1, n_ctx=16)
    m.warm_up()
    assert m.memory_report()["weights_repacked_bytes"] == 0
