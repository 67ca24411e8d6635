"""GGUF files made by llama.cpp's OWN converter (from the llama-cpp-python 0.3.36 sdist, fetched
and cached by bench/compat_converter.py, never vendored) load in nemocpu and give the
reference greedy continuations of the tiny model.

Such files lack nemocpu's tokenizer.hf.* keys, so this also covers the tokenizer path that
works from ``tokenizer.ggml.pre`` alone.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import nemocpu
from test_model_tiny import agreement, greedy

REPO = Path(__file__).resolve().parents[1]


def _compat_module():
    path = REPO / "bench" / "compat_converter.py"
    if not path.is_file():
        pytest.skip("bench/compat_converter.py not present")
    spec = importlib.util.spec_from_file_location("compat_converter", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def llamacpp_gguf(tmp_path_factory, tiny_dir):
    compat = _compat_module()
    try:
        compat.llamacpp_dir()           # downloads the sdist into bench/cache on first use
    except Exception as e:  # noqa: BLE001 - any failure to fetch means: no network here
        pytest.skip(f"llama-cpp-python 0.3.36 sdist not available (offline?): {e}")
    root = tmp_path_factory.mktemp("llamacpp")
    made = {}

    def get(outtype):
        if outtype not in made:
            out = root / f"tiny-llamacpp-{outtype}.gguf"
            compat.run_llamacpp(tiny_dir, outtype, out, "qwen2")
            made[outtype] = out
        return made[outtype]
    return get


def test_llamacpp_f32_file_reproduces_reference(llamacpp_gguf, tiny_reference):
    model = nemocpu.load(llamacpp_gguf("f32"), threads=2, n_ctx=2048)
    assert "nemocpu.tokenizer.hf.pre_tokenizer" not in model.metadata
    for p in tiny_reference["prompts"]:
        assert model.tokenize(p["prompt_text"], parse_special=True) == p["prompt_token_ids"], p["name"]
        assert greedy(model, p["prompt_token_ids"], tiny_reference["max_new_tokens"]) == p["greedy_token_ids"], \
            p["name"]


def test_llamacpp_q8_0_file_matches_ours(llamacpp_gguf, tiny_reference):
    theirs = nemocpu.load(llamacpp_gguf("q8_0"), threads=2, n_ctx=2048)
    ours = nemocpu.load(threads=2, n_ctx=2048)   # embedded file = nemocpu convert --outtype q8_0
    same = total = 0
    for p in tiny_reference["prompts"]:
        a = greedy(theirs, p["prompt_token_ids"], tiny_reference["max_new_tokens"])
        assert a == greedy(ours, p["prompt_token_ids"], tiny_reference["max_new_tokens"]), p["name"]
        s, n = agreement(theirs, p["prompt_token_ids"], p["greedy_token_ids"])
        same, total = same + s, total + n
    assert same / total >= 0.95
