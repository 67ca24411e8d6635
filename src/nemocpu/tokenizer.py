"""The tokenizer, rebuilt from GGUF metadata alone.

We construct a Hugging Face ``tokenizers.Tokenizer`` (the library the original models
were tokenized with) from the vocabulary, merges and token types stored in the file:

* files written by nemocpu carry the source ``tokenizer.json`` pipeline verbatim in
  ``nemocpu.tokenizer.hf.*`` keys (pre-tokenizer, normalizer, decoder, post-processor,
  added tokens, BPE options), so the result is the original tokenizer, exactly;
* files written by llama.cpp only name their pre-tokenizer (``tokenizer.ggml.pre``);
  we map that name to the regex llama.cpp uses for it (see ``_PRE_TOKENIZER_REGEXES``
  and docs/tokenizer.md). An unknown name is an error, never a silent fallback;
* SentencePiece vocabularies (``tokenizer.ggml.model = "llama"``) become a BPE with
  byte fallback whose merges are ordered by the SentencePiece scores, which is how
  transformers converts them too.
"""

from __future__ import annotations

import json
import threading
from typing import Iterable

from .errors import ModelFileError

# llama.cpp's token types (gguf-py ``TokenType``).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

HF_KEY_PREFIX = "nemocpu.tokenizer.hf."

# ------------------------------------------------------------------------------------
# llama.cpp pre-tokenizer names -> regexes (src/llama-vocab.cpp, llm_tokenizer_bpe).
# Several regexes mean "split with each in turn", as llama.cpp's unicode_regex_split does.
# Where llama.cpp rewrote a regex only to avoid features its own engine lacks
# (case-insensitive groups, \p{Lu} classes), we use the original from tokenizer.json,
# which is what the Hugging Face tokenizer (the reference for both) runs.
# ------------------------------------------------------------------------------------
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")
_STARCODER = (r"\p{N}", _GPT2)

# name -> (regexes, ignore_merges, add_bos default)
_PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool, bool]] = {}
for _names, _spec in [
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
     ((_LLAMA3,), True, True)),
    (("dbrx", "smaug-bpe"), ((_LLAMA3,), False, False)),
    (("qwen2", "deepseek-r1-qwen", "kormo", "stablelm2", "megrez", "hunyuan", "grok-2"), ((_QWEN2,), False, False)),
    (("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
      "exaone4", "mpt", "olmo", "jais", "trillion", "granite-docling"), ((_GPT2,), False, False)),
    (("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"), (_STARCODER, False, False)),
    (("tekken",), ((_TEKKEN,), True, True)),
    (("default",), (_DEFAULT, False, False)),
]:
    for _n in _names:
        _PRE_TOKENIZERS[_n] = _spec

SUPPORTED_PRE_TOKENIZERS = tuple(sorted(_PRE_TOKENIZERS))


def _byte_level_pipeline(regexes: Iterable[str]) -> dict:
    splits = [{"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False}
              for r in regexes]
    return {"type": "Sequence", "pretokenizers": splits + [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


_BYTE_LEVEL_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}

# transformers' LlamaTokenizerFast (legacy SentencePiece behaviour), as in its GGUF converter.
_SPM_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "\u2581"},
    {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
_SPM_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
    {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[list[str]]:
    """BPE merges equivalent to SentencePiece's score-ordered bigram merging: every way of
    splitting a mergeable piece into two pieces is a merge, ranked by the piece's score."""
    mergeable = {t: i for i, t in enumerate(tokens) if types[i] in (TOKEN_NORMAL, TOKEN_USER_DEFINED)}
    found = []
    for piece, pid in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                found.append((-scores[pid], mergeable[left], mergeable[right], left, right))
    found.sort(key=lambda m: m[:3])
    return [[m[3], m[4]] for m in found]


def _json_key(kv: dict, name: str, path):
    """A ``nemocpu.tokenizer.hf.*`` JSON value: an object (or null), a list for added_tokens."""
    raw = kv.get(HF_KEY_PREFIX + name)
    if raw is None:
        return None, False
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as e:
        raise ModelFileError(path, f"metadata key {HF_KEY_PREFIX + name!r} is not valid JSON: {e}") from None
    expected = list if name == "added_tokens" else dict
    if value is not None and not isinstance(value, expected):
        raise ModelFileError(path, f"metadata key {HF_KEY_PREFIX + name!r} must hold a JSON "
                                   f"{'array' if expected is list else 'object'}, not {type(value).__name__}")
    return value, True


# ------------------------------------------------------------------------------------
class Tokenizer:
    """Text <-> token ids. Build with ``Tokenizer.from_gguf_metadata``."""

    def __init__(self, hf, *, bos_id: int | None, eos_ids: set[int], special_ids: set[int], path=None):
        self._hf = hf
        self._lock = threading.Lock()   # encode_special_tokens is a mutable flag on the HF object
        self.bos_id = bos_id
        self.eos_ids = set(eos_ids)
        self.special_ids = frozenset(special_ids)
        self.path = path
        self.n_vocab = hf.get_vocab_size(with_added_tokens=True)

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_gguf_metadata(cls, kv: dict, path=None) -> "Tokenizer":
        import tokenizers

        model = kv.get("tokenizer.ggml.model")
        tokens = kv.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, (list, tuple)) or not tokens:
            raise ModelFileError(path, "no tokenizer vocabulary (tokenizer.ggml.tokens) in the metadata")
        tokens = list(tokens)
        n = len(tokens)
        types = list(kv.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * n)
        if len(types) != n:
            raise ModelFileError(path, f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")

        def special_id(name):
            v = kv.get(f"tokenizer.ggml.{name}_token_id")
            if v is None:
                return None
            v = int(v)
            if not 0 <= v < n:
                raise ModelFileError(path, f"tokenizer.ggml.{name}_token_id = {v} is outside the vocabulary ({n})")
            return v

        bos, eos, unk = special_id("bos"), special_id("eos"), special_id("unknown")
        eot, eom = special_id("eot"), special_id("eom")

        options, has_hf = _json_key(kv, "model_options", path)
        options = dict(options or {})
        pre = kv.get("tokenizer.ggml.pre")
        if model == "gpt2":
            merges = kv.get("tokenizer.ggml.merges")
            if not isinstance(merges, (list, tuple)):
                raise ModelFileError(path, "byte-level BPE vocabulary without tokenizer.ggml.merges")
            merges = [_split_merge(m, path) for m in merges]
            if has_hf:
                pre_tok, _ = _json_key(kv, "pre_tokenizer", path)
                default_add_bos = False
            else:
                if pre is None:
                    pre = "default"
                if pre not in _PRE_TOKENIZERS:
                    raise ModelFileError(
                        path, f"unsupported pre-tokenizer tokenizer.ggml.pre = {pre!r}; nemocpu knows: "
                              f"{', '.join(SUPPORTED_PRE_TOKENIZERS)} (see docs/tokenizer.md)")
                regexes, ignore_merges, default_add_bos = _PRE_TOKENIZERS[pre]
                pre_tok = _byte_level_pipeline(regexes)
                options.setdefault("ignore_merges", ignore_merges)
            normalizer, decoder = None, _BYTE_LEVEL_DECODER
        elif model == "llama":
            scores = kv.get("tokenizer.ggml.scores")
            if not isinstance(scores, (list, tuple)) or len(scores) != n:
                raise ModelFileError(path, "SentencePiece vocabulary without one score per token")
            merges = _spm_merges(tokens, list(scores), types)
            pre_tok, normalizer, decoder = None, _SPM_NORMALIZER, _SPM_DECODER
            if not kv.get("tokenizer.ggml.add_space_prefix", True):
                normalizer = _SPM_NORMALIZER["normalizers"][1]
            options.setdefault("byte_fallback", True)
            options.setdefault("fuse_unk", True)
            default_add_bos = True
        else:
            raise ModelFileError(path, f"unsupported tokenizer model tokenizer.ggml.model = {model!r} "
                                       "(nemocpu reads 'gpt2' byte-level BPE and 'llama' SentencePiece)")

        if has_hf:   # nemocpu-written file: the source pipeline, verbatim
            normalizer, _ = _json_key(kv, "normalizer", path)
            decoder, _ = _json_key(kv, "decoder", path)
            post, _ = _json_key(kv, "post_processor", path)
            added, _ = _json_key(kv, "added_tokens", path)
            added = added or []
        else:
            added = _added_tokens_from_types(tokens, types)
            add_bos = bool(kv.get("tokenizer.ggml.add_bos_token", default_add_bos))
            add_eos = bool(kv.get("tokenizer.ggml.add_eos_token", False))
            post = _bos_eos_processor(tokens, bos if add_bos else None, eos if add_eos else None, path)

        # Duplicate token strings: the last id wins, as in llama.cpp's token_to_id.
        vocab = {t: i for i, t in enumerate(tokens)}
        bpe = {"type": "BPE", "dropout": None, "unk_token": tokens[unk] if unk is not None and model == "llama" else None,
               "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
               "byte_fallback": False, "ignore_merges": False, "vocab": vocab, "merges": merges}
        bpe.update({k: v for k, v in options.items() if k in bpe})
        spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
                "normalizer": normalizer, "pre_tokenizer": pre_tok, "post_processor": post,
                "decoder": decoder, "model": bpe}
        try:
            hf = tokenizers.Tokenizer.from_str(json.dumps(spec))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise ModelFileError(path, f"cannot build the tokenizer from the metadata: {e}") from None

        special = {a["id"] for a in added if a.get("special")}
        eos_ids = {i for i in (eos, eot, eom) if i is not None}
        # nemocpu's converter stores all of generation_config.json's eos ids
        eos_ids.update(int(i) for i in kv.get("nemocpu.tokenizer.eos_token_ids") or [] if 0 <= int(i) < n)
        # Chat models end a turn with <|im_end|> and may emit </s> (Nemotron's generation_config
        # stops on both), whichever of them eos_token_id names.
        for text in ("<|im_end|>", "</s>", "<|eot_id|>", "<|end|>"):
            tid = vocab.get(text)
            if tid is not None and tid in special:
                eos_ids.add(tid)
        return cls(hf, bos_id=bos, eos_ids=eos_ids, special_ids=special, path=path)

    # ---- text <-> ids ---------------------------------------------------------------
    def encode(self, text: str, add_special: bool = False, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``. ``add_special`` adds BOS/EOS as the model's tokenizer would.
        ``parse_special`` lets special tokens such as ``<|im_start|>`` be written as text (for
        template output); without it they are tokenized as plain characters (user input)."""
        with self._lock:
            self._hf.encode_special_tokens = not parse_special
            try:
                return self._hf.encode(text, add_special_tokens=add_special).ids
            finally:
                self._hf.encode_special_tokens = False

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.n_vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{self.n_vocab - 1})")
        return self._hf.decode(ids, skip_special_tokens=skip_special)

    def token_to_id(self, s: str) -> int | None:
        return self._hf.token_to_id(s)

    def id_to_token(self, i: int) -> str | None:
        return self._hf.id_to_token(int(i))

    def stream(self, skip_special: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special)


class StreamDecoder:
    """Turns ids, one at a time, into text pieces that are never broken UTF-8.

    Decodes a short window of recent ids and emits only what is new once the window no
    longer ends in an incomplete character (U+FFFD), so multi-byte characters split over
    several byte tokens come out whole, and decoders that look at neighbours (SentencePiece's
    leading-space strip) stay consistent with a full decode.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tok = tokenizer
        self._skip = skip_special
        self._ids: list[int] = []
        self._prefix = 0   # start of the window
        self._read = 0     # ids before this are already emitted

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        before = self._tok.decode(self._ids[self._prefix:self._read], self._skip)
        now = self._tok.decode(self._ids[self._prefix:], self._skip)
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        before = self._tok.decode(self._ids[self._prefix:self._read], self._skip)
        now = self._tok.decode(self._ids[self._prefix:], self._skip)
        self._prefix = self._read = len(self._ids)
        return now[len(before):]


# ------------------------------------------------------------------------------------
def _split_merge(m, path) -> list[str]:
    # llama.cpp splits at the first space after position 0 (a merge side may start with ' ').
    if isinstance(m, (list, tuple)) and len(m) == 2:
        return [str(m[0]), str(m[1])]
    pos = m.find(" ", 1) if isinstance(m, str) else -1
    if pos < 0:
        raise ModelFileError(path, f"malformed merge {m!r} in tokenizer.ggml.merges")
    return [m[:pos], m[pos + 1:]]


def _added_tokens_from_types(tokens: list[str], types: list[int]) -> list[dict]:
    """llama.cpp's converter marks special added tokens CONTROL and the others USER_DEFINED."""
    out = []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED) or (ty == TOKEN_UNKNOWN and t):
            out.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                        "normalized": False, "special": ty != TOKEN_USER_DEFINED})
    return out


def _bos_eos_processor(tokens, bos, eos, path):
    if bos is None and eos is None:
        return None
    single, pair, special = [], [], {}
    if bos is not None:
        single.append({"SpecialToken": {"id": tokens[bos], "type_id": 0}})
        pair.append({"SpecialToken": {"id": tokens[bos], "type_id": 0}})
        special[tokens[bos]] = {"id": tokens[bos], "ids": [bos], "tokens": [tokens[bos]]}
    single.append({"Sequence": {"id": "A", "type_id": 0}})
    pair.append({"Sequence": {"id": "A", "type_id": 0}})
    if eos is not None:
        single.append({"SpecialToken": {"id": tokens[eos], "type_id": 0}})
        special[tokens[eos]] = {"id": tokens[eos], "ids": [eos], "tokens": [tokens[eos]]}
    pair.append({"Sequence": {"id": "B", "type_id": 1}})
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special}
