"""The tokenizer rebuilt from GGUF metadata must give exactly the ids of the original
Hugging Face tokenizer (tiny model's tokenizer.json, llama.cpp's test vectors)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from nemocpu.errors import ModelFileError
from nemocpu.tokenizer import SUPPORTED_PRE_TOKENIZERS, Tokenizer
from tokenizer_fixtures import (LLAMA_VOCAB_DIR, TINY_DIR, gguf_tokenizer_kv, llama_vocab_cases,
                                read_gguf_metadata)

tokenizers = pytest.importorskip("tokenizers")

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
            "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
CORPUS = [
    "", " ", "  ", "\n", "\n\n\n", "\t", " \t \n  \r\n x", "Hello world", " Hello World!",
    "What is 123 + 4567? 89,000.5 and 3.14159", "0123456789" * 3,
    "def f(x):\n    return x**2  # square\n\n\tif x != 0: print(f'{x!r}')",
    "Äpfel über Straße — naïve café; Ελληνικά; русский; 日本語のテキスト; 한국어; עברית; العربية",
    "emoji 🦙🚀 😶‍🌫️ ✅ flags 🇫🇷", "l'été c'est I'm YOU'LL they'd", "\u00a0nbsp\u2003em\u200bzw",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\nok<|im_end|>",
    # looks like a special token but is not one
    "<|im_start |> <| im_end|> <think > </ think> <tool_call <tool-call> <|im_start <im_end|> <s >",
    "<<|im_start|>> <think><think></think></think> a<s>b</s>c", "x" * 300 + " " * 40 + "y",
] + SPECIALS


@pytest.fixture(scope="module")
def tiny_ref():
    return tokenizers.Tokenizer.from_file(str(TINY_DIR / "tokenizer.json"))


@pytest.fixture(scope="module")
def tiny():
    return Tokenizer.from_gguf_metadata(gguf_tokenizer_kv(TINY_DIR), path="tiny.gguf")


def ref_encode(ref, text, parse_special):
    ref.encode_special_tokens = not parse_special
    try:
        return ref.encode(text, add_special_tokens=False).ids
    finally:
        ref.encode_special_tokens = False


@pytest.mark.parametrize("parse_special", [True, False])
def test_tiny_corpus_matches_hf(tiny, tiny_ref, parse_special):
    for text in CORPUS:
        assert tiny.encode(text, parse_special=parse_special) == ref_encode(tiny_ref, text, parse_special), text


def test_special_tokens_are_single_tokens_only_when_parsed(tiny):
    assert tiny.encode("<|im_start|>", parse_special=True) == [3]
    assert len(tiny.encode("<|im_start|>", parse_special=False)) > 1
    # the think/tool tags are added but not special: HF matches them even in user text
    assert tiny.encode("<think>", parse_special=False) == [5]
    assert tiny.decode([3, 5, 4], skip_special=True) == "<think>"
    assert tiny.eos_ids == {2, 4} and tiny.bos_id == 1
    assert tiny.encode("hi", add_special=True) == tiny.encode("hi")  # add_bos_token false, no post-processor


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), st.sampled_from(SPECIALS),
                          st.sampled_from([" ", "\n", "  ", "7", "12", "'s", "é", "💡"])), max_size=12))
def test_tiny_random_text_matches_hf(tiny, tiny_ref, parts):
    text = "".join(parts)
    for parse_special in (True, False):
        ids = tiny.encode(text, parse_special=parse_special)
        assert ids == ref_encode(tiny_ref, text, parse_special)
        assert tiny.decode(ids) == tiny_ref.decode(ids, skip_special_tokens=False)
    assert tiny.decode(tiny.encode(text)) == text


@pytest.mark.parametrize("pre", ["qwen2", "pixtral"])
def test_llama_cpp_style_file_without_nemocpu_keys(tiny_ref, pre):
    # A llama.cpp-written GGUF only names the pre-tokenizer. The tiny tokenizer's regex is
    # llama.cpp's qwen2 one; pixtral (llama3 regex, digits in runs of up to 3) gives the same
    # ids here only because the tiny vocabulary has no multi-digit tokens.
    tok = Tokenizer.from_gguf_metadata(gguf_tokenizer_kv(TINY_DIR, hf_keys=False, pre=pre), "t.gguf")
    for text in CORPUS:
        assert tok.encode(text, parse_special=True) == ref_encode(tiny_ref, text, True), text
        assert tok.encode(text) == ref_encode(tiny_ref, text, False), text
    # llama.cpp's default for pixtral is add_bos unless the file says otherwise (here: false)
    assert tok.encode("a", add_special=True) == tok.encode("a")


def test_unknown_pre_tokenizer_is_an_error_naming_the_file():
    kv = gguf_tokenizer_kv(TINY_DIR, hf_keys=False, pre="made-up-pre")
    with pytest.raises(ModelFileError, match=r"bad\.gguf.*made-up-pre"):
        Tokenizer.from_gguf_metadata(kv, "bad.gguf")
    assert "pixtral" in SUPPORTED_PRE_TOKENIZERS and "tekken" in SUPPORTED_PRE_TOKENIZERS


def test_bad_metadata_is_a_clear_error():
    kv = gguf_tokenizer_kv(TINY_DIR)
    with pytest.raises(ModelFileError, match="vocabulary"):
        Tokenizer.from_gguf_metadata({k: v for k, v in kv.items() if k != "tokenizer.ggml.tokens"}, "a.gguf")
    with pytest.raises(ModelFileError, match="token_type"):
        Tokenizer.from_gguf_metadata(dict(kv, **{"tokenizer.ggml.token_type": [1, 2]}), "a.gguf")
    with pytest.raises(ModelFileError, match="tokenizer.ggml.model"):
        Tokenizer.from_gguf_metadata(dict(kv, **{"tokenizer.ggml.model": "bert"}), "a.gguf")
    with pytest.raises(ModelFileError, match="JSON"):
        Tokenizer.from_gguf_metadata(dict(kv, **{"nemocpu.tokenizer.hf.decoder": "{not json"}), "a.gguf")
    with pytest.raises(ModelFileError, match="eos_token_id"):
        Tokenizer.from_gguf_metadata(dict(kv, **{"tokenizer.ggml.eos_token_id": 10**6}), "a.gguf")


# ---- streaming ----------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(list("ab 7\n") + ["é", "你", "🦙", "😶‍🌫️", "<think>", "<|im_end|>"]),
                max_size=40))
def test_stream_decoder_never_emits_broken_utf8(tiny, parts):
    text = "".join(parts)
    ids = tiny.encode(text, parse_special=True)
    dec = tiny.stream()
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == tiny.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


def test_stream_decoder_holds_back_partial_characters(tiny):
    ids = tiny.encode("🦙")
    assert len(ids) > 1  # not in the tiny vocab as one token: split into byte tokens
    dec = tiny.stream()
    assert [dec.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert dec.push(ids[-1]) == "🦙"


# ---- llama.cpp's vocab test vectors ------------------------------------------------
@pytest.mark.parametrize("name", ["gpt-2", "llama-bpe", "qwen2", "llama-spm"])
def test_llama_cpp_vocab_vectors(name):
    path = LLAMA_VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    if not path.exists():
        pytest.skip("llama.cpp vocab fixtures not present")
    kv = read_gguf_metadata(path)
    tok = Tokenizer.from_gguf_metadata(kv, path)
    for text, expected in llama_vocab_cases(name):
        assert tok.encode(text) == expected, text
        if name != "llama-spm":  # byte-level BPE round-trips exactly
            assert tok.decode(expected) == text
    if name == "llama-spm":      # SentencePiece files add BOS (add_bos_token = true)
        assert tok.encode("Hello", add_special=True) == [tok.bos_id] + tok.encode("Hello")
    if name == "llama-bpe":      # llama.cpp's default for llama-bpe is add_bos
        assert tok.encode("Hello", add_special=True)[0] == tok.bos_id == 128000


def test_tokenizer_of_the_converted_tiny_gguf_matches_hf(tiny_ref):
    from nemocpu.data import default_model_path
    path = default_model_path()
    tok = Tokenizer.from_gguf_metadata(read_gguf_metadata(path), path)
    for text in CORPUS:
        for parse_special in (True, False):
            assert tok.encode(text, parse_special=parse_special) == ref_encode(tiny_ref, text, parse_special), text
    assert tok.eos_ids == {2, 4}
