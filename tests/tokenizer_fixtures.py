"""Tokenizer metadata as GGUF files carry it, built from a Hugging Face tokenizer.json the
way llama.cpp's converter (gguf-py ``SpecialVocab`` + ``get_vocab_base``) writes it, plus
the ``nemocpu.tokenizer.hf.*`` keys nemocpu's converter adds. Shared by the tokenizer,
chat and generation tests."""

from __future__ import annotations

import json
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY_DIR = SHARED / "models" / "nemotron-h-tiny"
LLAMA_VOCAB_DIR = SHARED / "fixtures" / "llama-vocab"

CONTROL, USER_DEFINED, NORMAL = 3, 4, 1


def gguf_tokenizer_kv(tokenizer_dir: Path, *, hf_keys: bool = True, pre: str = "pixtral") -> dict:
    tj = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    model = tj["model"]
    n = max(model["vocab"].values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [5] * n
    for t, i in model["vocab"].items():
        tokens[i], types[i] = t, NORMAL
    for a in tj["added_tokens"]:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = CONTROL if a["special"] else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    ids = {a["content"]: a["id"] for a in tj["added_tokens"]}
    kv = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": ids[cfg["bos_token"]],
        "tokenizer.ggml.eos_token_id": ids[cfg["eos_token"]],
        "tokenizer.ggml.unknown_token_id": ids[cfg["unk_token"]],
        "tokenizer.ggml.padding_token_id": ids[cfg["pad_token"]],
        "tokenizer.ggml.add_bos_token": cfg.get("add_bos_token", False),
        "tokenizer.ggml.add_eos_token": cfg.get("add_eos_token", False),
        "tokenizer.chat_template": cfg["chat_template"],
    }
    if hf_keys:
        opts = {k: model.get(k) for k in ("ignore_merges", "byte_fallback", "fuse_unk", "dropout",
                                           "continuing_subword_prefix", "end_of_word_suffix")}
        for name in ("pre_tokenizer", "normalizer", "decoder", "post_processor", "added_tokens"):
            kv[f"nemocpu.tokenizer.hf.{name}"] = json.dumps(tj[name])
        kv["nemocpu.tokenizer.hf.model_options"] = json.dumps(opts)
    return kv


def read_gguf_metadata(path: Path) -> dict:
    try:
        from nemocpu.gguf_file import GGUFFile
    except ImportError:  # pragma: no cover - the runtime's reader is the fast path
        import gguf
        r = gguf.GGUFReader(path)
        return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    g = GGUFFile(path)
    try:
        return dict(g.metadata)
    finally:
        g.close()


def llama_vocab_cases(name: str) -> list[tuple[str, list[int]]]:
    """(text, expected ids) pairs from llama.cpp's test vectors for ggml-vocab-NAME.gguf."""
    base = LLAMA_VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    texts = (base.parent / (base.name + ".inp")).read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    outs = (base.parent / (base.name + ".out")).read_text(encoding="utf-8").split("\n")[:-1]
    assert len(texts) == len(outs), (len(texts), len(outs))
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs)]
