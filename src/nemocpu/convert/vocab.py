"""Tokenizer metadata: llama.cpp's gpt2/BPE keys plus nemocpu's exact ``tokenizer.json`` parts.

The token list, token types and padding follow llama.cpp's ``NemotronHModel.set_vocab``;
merges, special token ids, add_bos/add_eos and the chat template come from gguf-py's
``SpecialVocab`` (the code llama.cpp's converter itself uses).

``tokenizer.ggml.pre``: llama.cpp identifies the pre-tokenizer by hashing the token ids of
a probe text against a table of known models; nemocpu instead compares the Split regex of
``tokenizer.json`` with the regexes llama.cpp implements, and falls back to "default". The
nemocpu runtime does not depend on this name: it reads the ``nemocpu.tokenizer.hf.*`` keys.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gguf

from ..errors import ConversionError
from .checkpoint import read_json

log = logging.getLogger(__name__)

HF_KEY_PREFIX = "nemocpu.tokenizer.hf."

# tokenizer.json Split regex -> llama.cpp pre-tokenizer name (regexes quoted in llama-vocab.cpp).
_PRE_BY_REGEX = {
    # Qwen2 (also the tiny test model's regex): single digits
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    # Llama 3: digits in groups of up to three
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    # Mistral Tekken (Nemotron 3 Nano); llama.cpp's hash table names this vocabulary "pixtral"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+": "pixtral",
}


def _split_regexes(pre: dict | None) -> list[str]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [r for p in pre.get("pretokenizers", []) for r in _split_regexes(p)]
    if pre.get("type") == "Split":
        pat = pre.get("pattern") or {}
        return [pat["Regex"]] if "Regex" in pat else []
    return []


def pre_tokenizer_name(tok: dict) -> str:
    regexes = _split_regexes(tok.get("pre_tokenizer"))
    if len(regexes) == 1 and regexes[0] in _PRE_BY_REGEX:
        return _PRE_BY_REGEX[regexes[0]]
    log.warning("pre-tokenizer not known to llama.cpp's table; writing tokenizer.ggml.pre = 'default' "
                "(nemocpu itself uses the exact tokenizer.json rules)")
    return "default"


def _looks_special(token: str) -> bool:
    """llama.cpp's does_token_look_special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def add_tokenizer(writer: gguf.GGUFWriter, hf_dir: Path, n_vocab_config: int) -> int:
    """Write every tokenizer key; return the (padded) token count."""
    path = hf_dir / "tokenizer.json"
    tok = read_json(path)
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ConversionError(path, f"expected a BPE tokenizer, got model type {model.get('type')!r}")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {a["content"]: a for a in tok.get("added_tokens") or []}
    for a in added.values():
        vocab[a["content"]] = a["id"]
    n_vocab = -(n_vocab_config // -8) * 8          # llama.cpp pads to a multiple of 8
    if max(vocab.values()) >= n_vocab:
        raise ConversionError(path, f"token id {max(vocab.values())} >= vocab_size {n_vocab_config} of config.json")
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif t in added:
            if added[t].get("special") or _looks_special(t):
                types.append(gguf.TokenType.CONTROL)
            else:
                t = t.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
            tokens.append(t)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.NORMAL)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tok))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)

    options = {k: model.get(k) for k in ("ignore_merges", "byte_fallback", "fuse_unk", "dropout",
                                          "continuing_subword_prefix", "end_of_word_suffix")}
    for key, value in (("pre_tokenizer", tok.get("pre_tokenizer")), ("normalizer", tok.get("normalizer")),
                       ("decoder", tok.get("decoder")), ("post_processor", tok.get("post_processor")),
                       ("added_tokens", tok.get("added_tokens") or []), ("model_options", options)):
        writer.add_string(HF_KEY_PREFIX + key, _json(value))
    return n_vocab
