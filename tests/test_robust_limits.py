"""Limits decided before any allocation (context, threads, sizes), and a GGUF whose chat
template is hostile code: the public API refuses cleanly and in bounded time."""

from __future__ import annotations

import struct
import sys
import time

import numpy as np
import pytest

import nemocpu
from nemocpu.data import default_model_path
from nemocpu.errors import NemocpuError
from nemocpu.model import MAX_THREADS, kv_cache_bytes, physical_memory_bytes


@pytest.fixture(scope="module")
def model():
    return nemocpu.load(threads=1, n_ctx=32)


def test_prompt_longer_than_n_ctx(model):
    s = model.session(n_ctx=16)
    with pytest.raises(ValueError, match="n_ctx"):
        s.eval(list(range(3, 20)))
    assert s.n_past == 0
    s.eval(list(range(3, 19)))                      # exactly n_ctx fits
    with pytest.raises(ValueError, match="n_ctx"):
        s.eval([5])
    assert s.n_past == 16


@pytest.mark.parametrize("n_ctx", [0, -1, -2**63, 1.5, "64", None, True])
def test_bad_n_ctx(model, n_ctx):
    if n_ctx is not None:
        with pytest.raises(NemocpuError, match="n_ctx"):
            model.session(n_ctx=n_ctx)
    with pytest.raises(NemocpuError, match="n_ctx"):
        nemocpu.load(n_ctx=n_ctx, threads=1)


def test_n_ctx_beyond_memory_is_refused_up_front(model):
    ram = physical_memory_bytes()
    per_token = kv_cache_bytes(model.config, 1, "f16")
    too_long = ram // per_token + 1
    for make in (lambda: model.session(n_ctx=too_long), lambda: nemocpu.load(n_ctx=too_long, threads=1),
                 lambda: model.session(n_ctx=2**62, kv_type="f32")):
        t0 = time.monotonic()
        with pytest.raises(NemocpuError, match="GiB of .* KV cache"):
            make()
        assert time.monotonic() - t0 < 5
    # the largest context that fits is accepted (the cache grows with use, nothing is reserved)
    s = model.session(n_ctx=ram // per_token)
    assert s.nbytes < 64 << 20


@pytest.mark.parametrize("threads", [0, -1, MAX_THREADS + 1, 10**9, 2.5, "2", True])
def test_bad_threads(model, threads):
    with pytest.raises(NemocpuError, match="threads"):
        nemocpu.load(threads=threads)
    with pytest.raises(NemocpuError, match="threads"):
        model.set_threads(threads)
    assert model.threads == 1
    assert model.session().eval([3, 4]).shape == (1, model.n_vocab)


def test_bad_kv_type_and_tokens(model):
    with pytest.raises(NemocpuError, match="kv_type"):
        model.session(kv_type="q8_0")
    s = model.session()
    for bad in ([], [-1], [model.n_vocab], [2**31 + 3], [[1, 2], [3, 4]], [1.5], ["7"], 7):
        with pytest.raises(ValueError):
            s.eval(bad)
    assert s.n_past == 0


# ------------------------------------------------------------------------------------
# Hostile chat templates in a real file
# ------------------------------------------------------------------------------------
def _with_chat_template(src, dst, template: str) -> None:
    """Copy a GGUF with tokenizer.chat_template replaced: the header is re-serialized around
    the new string and re-padded; tensor offsets are relative to the data section, so the
    data is copied unchanged."""
    from nemocpu.gguf_file import GGUFFile

    blob = src.read_bytes()
    with GGUFFile(src) as g:
        data_offset, alignment = g.data_offset, g.alignment
        end_of_infos = _end_of_tensor_infos(g)
    key = b"tokenizer.chat_template"
    k = blob.index(struct.pack("<Q", len(key)) + key)
    v = k + 8 + len(key)
    assert struct.unpack_from("<I", blob, v)[0] == 8          # a STRING value
    n = struct.unpack_from("<Q", blob, v + 4)[0]
    new = template.encode()
    head = blob[:v + 4] + struct.pack("<Q", len(new)) + new + blob[v + 12 + n:end_of_infos]
    head += b"\0" * (-len(head) % alignment)
    dst.write_bytes(head + blob[data_offset:])


def _end_of_tensor_infos(g) -> int:
    return g._pos            # the parser's cursor after the last tensor info


HOSTILE_TEMPLATES = {
    "endless": ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", "did not finish"),
    "python_internals": ("{{ messages.__class__.__mro__[-1].__subclasses__() }}", "chat template"),
    "globals": ("{{ raise_exception.__globals__['os'].system('touch /tmp/nemocpu-pwned') }}", "chat template"),
    "namespace_underscore": ("{% set ns = namespace(__class__=1) %}{{ ns }}", "underscore"),
    "huge_output": ("{% for i in range(1000) %}{% for j in range(1000) %}{{ 'x' * 100 }}{% endfor %}{% endfor %}", "exceeds"),
    # single C-level steps that hold the GIL: only killing the renderer process stops them
    "big_power": ("{% set e = 99999999 %}{{ 9 ** e }}", "did not finish"),
    "constant_folded_power": ("{{ 9 ** 99999999 }}", "did not finish"),     # jinja folds it while compiling
    "list_compare": ("{% set a = ['a' * 1000000] * 100000 %}{% set b = ['a' * 1000000] * 100000 %}{{ a == b }}",
                     "did not finish"),
    "memory": ("{{ 'a' * 10**10 }}", "memory" if sys.platform == "linux" else "chat template"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_hostile_chat_template_in_file(tmp_path, name):
    from nemocpu.chat_template import ChatTemplateError

    template, want = HOSTILE_TEMPLATES[name]
    path = tmp_path / f"{name}.gguf"
    _with_chat_template(default_model_path(), path, template)
    m = nemocpu.load(path, threads=1, n_ctx=64)
    assert m.metadata["tokenizer.chat_template"] == template
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError, match=want):
        m.chat([{"role": "user", "content": "hi"}], max_tokens=2)
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "nemocpu-pwned").exists()


def test_template_splice_keeps_the_model_intact(tmp_path):
    """Control for the helper above: a benign template in the copied file renders, and the
    weights read back identical (same logits)."""
    path = tmp_path / "plain.gguf"
    _with_chat_template(default_model_path(), path, "{% for m in messages %}{{ m.content }}{% endfor %}")
    m = nemocpu.load(path, threads=1, n_ctx=64)
    ref = nemocpu.load(threads=1, n_ctx=64)
    from nemocpu.generate import render_chat
    assert render_chat(m, [{"role": "user", "content": "hello"}], add_generation_prompt=False) == "hello"
    ids = [3, 328, 209, 860]
    np.testing.assert_array_equal(m.session().eval(ids), ref.session().eval(ids))


def test_str_format_cannot_reach_attributes(tmp_path):
    """str.format is the classic sandbox escape: in the sandbox an unsafe field formats as empty."""
    from nemocpu.generate import render_chat

    path = tmp_path / "fmt.gguf"
    _with_chat_template(default_model_path(), path, "[{{ '{0.__class__}{0.__init__}'.format(messages) }}]")
    m = nemocpu.load(path, threads=1, n_ctx=64)
    assert render_chat(m, [{"role": "user", "content": "hi"}]) == "[]"


def test_generate_prompt_longer_than_context(model):
    with pytest.raises(ValueError, match="context holds 32"):
        model.generate(list(range(3, 40)), max_tokens=4)


def test_generate_refuses_negative_max_tokens(model):
    with pytest.raises((ValueError, NemocpuError)):
        model.generate("hello", max_tokens=-5)
