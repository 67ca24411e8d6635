"""A stand-in for nemocpu.Model whose "forward pass" replays a scripted reply, so generation
logic (stops, reasoning, budgets, streaming, prefix reuse) is tested without the engine."""

from __future__ import annotations

import numpy as np

from nemocpu.tokenizer import Tokenizer
from tokenizer_fixtures import SHARED, TINY_DIR, gguf_tokenizer_kv

NANO_TEMPLATE = (SHARED / "reference" / "nemotron-3-nano-chat-template.jinja").read_text(encoding="utf-8")


class FakeSession:
    prefill_step = 256              # as the CPU engine's

    def __init__(self, model, n_ctx):
        self.model, self.n_ctx = model, n_ctx
        self.tokens: list[int] = []
        self.evaluated = 0          # tokens run through eval, all time

    @property
    def n_past(self):
        return len(self.tokens)

    def eval(self, ids, all_logits=False):
        ids = [int(i) for i in ids]
        if not ids or len(self.tokens) + len(ids) > self.n_ctx:
            raise ValueError("bad eval")
        rows = []
        for i in ids:
            self.tokens.append(i)
            rows.append(self.model.logits_after(self.tokens))
        self.evaluated += len(ids)
        return np.stack(rows if all_logits else rows[-1:])

    def snapshot(self):
        return list(self.tokens)

    def restore(self, snap):
        self.tokens = list(snap)

    def reset(self):
        self.tokens = []


class FakeModel:
    """After the last occurrence of ``marker`` (token ids) it says ``reply`` then <|im_end|>."""

    def __init__(self, reply: str, marker_text: str = "<|im_start|>assistant\n", n_ctx: int = 4096):
        kv = gguf_tokenizer_kv(TINY_DIR)
        kv["tokenizer.chat_template"] = NANO_TEMPLATE
        self.metadata = kv
        self.path = "fake.gguf"
        self.tokenizer = Tokenizer.from_gguf_metadata(kv, self.path)
        self.n_vocab = self.tokenizer.n_vocab
        self.n_ctx = n_ctx
        self.set_reply(reply, marker_text)
        self.sessions: list[FakeSession] = []

    def set_reply(self, reply: str, marker_text: str = "<|im_start|>assistant\n"):
        tok = self.tokenizer
        self.reply = tok.encode(reply, parse_special=True) + [tok.token_to_id("<|im_end|>")]
        self.marker = tok.encode(marker_text, parse_special=True)

    def logits_after(self, tokens):
        m = len(self.marker)
        end = None
        for i in range(len(tokens) - m, -1, -1):
            if tokens[i:i + m] == self.marker:
                end = i + m
                break
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        if end is None:
            return logits
        # the reply is aligned so that it starts right after a "<think>\n" or "<think></think>" prefix
        produced = tokens[end:]
        for prefix in (self.tokenizer.encode("<think>\n", parse_special=True),
                       self.tokenizer.encode("<think></think>", parse_special=True)):
            if produced[:len(prefix)] == prefix and not self.reply[:len(prefix)] == prefix:
                produced = produced[len(prefix):]
                break
        k = len(produced)
        target = self.reply[k] if k < len(self.reply) else self.reply[-1]
        logits[target] = 10.0
        return logits

    def session(self, n_ctx=None, kv_type=None):
        s = FakeSession(self, n_ctx or self.n_ctx)
        self.sessions.append(s)
        return s
