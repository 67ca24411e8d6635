"""Text generation: raw completion (``generate``), chat turns (``chat``) and multi-turn
conversations (``Conversation``), with streaming, stop conditions, reasoning parsing and a
thinking budget.

Multi-turn chats do not re-process the conversation: each prompt resumes from the longest
cached prefix (``nemocpu.prefix_cache``), with a snapshot taken where the conversation so far
ends, before the generation prompt.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .chat_template import ChatTemplate, encode_marked, mark_control_tokens, unmark
from .prefix_cache import PrefixCache
from .sampling import Sampler, SamplingParams, recommended_params
from .tool_calls import ToolCall, parse_tool_calls, strip_tool_calls

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# After the thinking budget is spent, wait this many tokens for a line end before forcing </think>.
THINKING_GRACE_TOKENS = 32
_UNUSED_TOKEN_TYPE = 5


# ------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------
@dataclass
class Chunk:
    kind: str      # "reasoning" | "content"
    text: str


@dataclass
class GenerationResult:
    text: str                          # the answer, without reasoning and tool-call blocks
    reasoning: str | None = None       # None when the model was not in reasoning mode
    content: str = ""                  # the answer as generated (tool-call blocks included)
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"        # "stop" | "length" | "cancelled" | "error"
    token_ids: list[int] = field(default_factory=list)   # generated ids (stop token included)
    prompt_tokens: int = 0             # tokens in the prompt
    prompt_tokens_evaluated: int = 0   # of those, how many had to be run (the rest came from the cache)
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    prompt_time_s: float = 0.0
    generation_time_s: float = 0.0

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_tokens_evaluated / self.prompt_time_s if self.prompt_time_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.generation_time_s if self.generation_time_s > 0 else 0.0


def _model_cache(model) -> PrefixCache:
    """The model's default cache, so repeated ``model.chat`` calls on a growing conversation reuse work."""
    cache = model.__dict__.get("_nemocpu_prefix_cache")
    if cache is None:
        cache = PrefixCache(model.session())
        model.__dict__["_nemocpu_prefix_cache"] = cache
    return cache


def chat_template(model) -> ChatTemplate:
    tpl = model.__dict__.get("_nemocpu_chat_template")
    if tpl is None:
        tpl = ChatTemplate.from_metadata(model.metadata, model.tokenizer, model.path)
        model.__dict__["_nemocpu_chat_template"] = tpl
    return tpl


def _banned_ids(model) -> np.ndarray:
    types = model.metadata.get("tokenizer.ggml.token_type") or []
    ids = [i for i, t in enumerate(types) if t == _UNUSED_TOKEN_TYPE]
    ids += range(model.tokenizer.n_vocab, model.n_vocab)   # logits rows past the vocabulary
    return np.asarray(ids, dtype=np.int64)


# ------------------------------------------------------------------------------------
# Text assembly helpers
# ------------------------------------------------------------------------------------
class _Strip:
    """Streaming str.strip(): drops leading whitespace, holds trailing whitespace back
    until more text follows."""

    def __init__(self):
        self.started, self.pending = False, ""

    def feed(self, s: str) -> str:
        if not self.started:
            s = s.lstrip()
            if not s:
                return ""
            self.started = True
        s = self.pending + s
        body = s.rstrip()
        self.pending = s[len(body):]
        return body


class _StopStrings:
    """Finds stop strings in streamed text; holds back a possible partial match."""

    def __init__(self, stops):
        self.stops = [s for s in (stops or []) if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buf = ""
        self.hit = False

    def feed(self, s: str) -> str:
        if not self.stops:
            return s
        self.buf += s
        cut = min((i for i in (self.buf.find(t) for t in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            out, self.buf = self.buf[:cut], ""
            return out
        safe = max(0, len(self.buf) - self.hold)
        out, self.buf = self.buf[:safe], self.buf[safe:]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


class _Segment:
    """One part of the output (reasoning or content): ids -> text, stripped, stop strings cut."""

    def __init__(self, kind, tokenizer, strip: bool, stops):
        self.kind = kind
        self.decoder = tokenizer.stream()
        self.strip = _Strip() if strip else None
        self.stop = _StopStrings(stops)
        self.parts: list[str] = []

    def _emit(self, s: str) -> str:
        s = self.stop.feed(s) if not self.stop.hit else ""
        if self.strip is not None:
            s = self.strip.feed(s)
        self.parts.append(s)
        return s

    def push(self, token_id: int) -> str:
        return self._emit(self.decoder.push(token_id))

    def close(self) -> str:
        tail = self._emit(self.decoder.flush())
        rest = self.stop.flush() if not self.stop.hit else ""
        if self.strip is not None:
            rest = self.strip.feed(rest)
        self.parts.append(rest)
        return tail + rest

    @property
    def text(self) -> str:
        return "".join(self.parts)


# ------------------------------------------------------------------------------------
# The decode loop
# ------------------------------------------------------------------------------------
class Generation:
    """An in-progress generation. Iterate for ``Chunk``s; ``result`` is set when it ends.
    Closing the iterator early (or Ctrl-C) ends it with finish_reason "cancelled"."""

    def __init__(self, model, cache: PrefixCache, prompt_ids: list[int], sampler: Sampler, *,
                 max_tokens: int | None, stop: list[str] | None, stop_token_ids, reasoning: bool,
                 parse_reasoning: bool, thinking_budget: int | None, boundaries=(), tools=None):
        check_count("max_tokens", max_tokens)
        self.model, self.cache, self.prompt_ids, self.sampler = model, cache, list(prompt_ids), sampler
        self.max_tokens, self.stop, self.stop_ids = max_tokens, stop, set(stop_token_ids)
        self.reasoning, self.parse_reasoning = reasoning, parse_reasoning
        self.thinking_budget, self.boundaries, self.tools = thinking_budget, boundaries, tools
        self.result: GenerationResult | None = None
        self._it = self._run()

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        return next(self._it)

    def close(self) -> None:
        self._it.close()

    def finish(self) -> GenerationResult:
        for _ in self:
            pass
        return self.result

    def _run(self) -> Iterator[Chunk]:
        tok = self.model.tokenizer
        think_open = tok.token_to_id(THINK_OPEN) if self.parse_reasoning else None
        think_close = tok.token_to_id(THINK_CLOSE) if self.parse_reasoning else None
        strip = self.parse_reasoning
        reasoning_seg = _Segment("reasoning", tok, strip, self.stop) if self.reasoning else None
        content_seg = _Segment("content", tok, strip, self.stop)
        seg = reasoning_seg or content_seg
        res = GenerationResult(text="", prompt_tokens=len(self.prompt_ids))
        generated: list[int] = []
        forced: list[int] = []
        finish = "length"
        with self.cache.lock:
            try:
                t0 = time.perf_counter()
                logits, reused = self.cache.prefill(self.prompt_ids, self.boundaries)
                epoch = self.cache.epoch
                res.prompt_tokens_evaluated = len(self.prompt_ids) - reused
                res.prompt_time_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                history = list(self.prompt_ids)
                last_text = tok.decode(self.prompt_ids[-1:])
                while True:
                    if self.max_tokens is not None and len(generated) >= self.max_tokens:
                        break
                    if seg is reasoning_seg and not forced and self._budget_spent(res, last_text):
                        forced = ([] if last_text.endswith("\n") else tok.encode("\n")) + [think_close]
                    t = forced.pop(0) if forced else self.sampler.sample(logits[-1], history)
                    generated.append(t)
                    history.append(t)
                    if t in self.stop_ids:
                        finish = "stop"
                        break
                    if seg is reasoning_seg and t == think_close:
                        piece = reasoning_seg.close()
                        if piece:
                            yield Chunk("reasoning", piece)
                        seg = content_seg
                    elif (seg is content_seg and t == think_open and reasoning_seg is None
                          and not content_seg.text and len(generated) == 1):
                        reasoning_seg = seg = _Segment("reasoning", tok, strip, self.stop)
                    else:
                        if seg is reasoning_seg:
                            res.reasoning_tokens += 1
                        piece = seg.push(t)
                        if piece:
                            yield Chunk(seg.kind, piece)
                        if seg.stop.hit:
                            finish = "stop"
                            break
                    last_text = tok.decode([t])
                    if len(self.cache.tokens) >= self.cache.n_ctx:
                        break
                    if self.cache.epoch != epoch:
                        raise RuntimeError("this generation was superseded by a newer one on the same session")
                    logits = self.cache.eval([t])
            except (GeneratorExit, KeyboardInterrupt):
                finish = "cancelled"
                raise
            except BaseException:
                finish = "error"
                raise
            finally:
                res.generation_time_s = time.perf_counter() - t0 if res.prompt_time_s else 0.0
                tails = []
                for s in (reasoning_seg, content_seg):
                    if s is not None:
                        tails.append((s.kind, s.close()))
                res.finish_reason = finish
                res.token_ids = generated
                res.completion_tokens = len(generated)
                res.reasoning = reasoning_seg.text if reasoning_seg is not None else None
                res.content = content_seg.text
                res.tool_calls = parse_tool_calls(res.content, self.tools) if self.parse_reasoning else []
                res.text = strip_tool_calls(res.content) if res.tool_calls else res.content
                self.result = res
        if finish != "cancelled":
            for kind, piece in tails:
                if piece:
                    yield Chunk(kind, piece)

    def _budget_spent(self, res: GenerationResult, last_text: str) -> bool:
        b = self.thinking_budget
        if b is None or res.reasoning_tokens < b:
            return False
        return last_text.endswith("\n") or res.reasoning_tokens >= b + THINKING_GRACE_TOKENS


# ------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------
def check_count(name: str, value) -> None:
    """max_tokens / thinking_budget: None or an integer >= 0 (a bool is not a count)."""
    if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")


SAMPLING_ARGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty", "penalty_last_n", "seed")


def _sampler(model, reasoning: bool, sampling: dict) -> Sampler:
    params = sampling.pop("params", None)
    unknown = set(sampling) - set(SAMPLING_ARGS)
    if unknown:
        raise TypeError(f"unknown argument(s): {', '.join(sorted(unknown))}")
    if params is None:
        params = recommended_params(model.metadata, reasoning, **sampling)
    elif not isinstance(params, SamplingParams):
        raise TypeError("params must be a SamplingParams")
    return Sampler(params, _banned_ids(model))


def generate(model, prompt, *, max_tokens: int | None = 256, stop=None, stop_token_ids=None,
             stream: bool = False, add_special: bool = True, parse_special: bool = True,
             cache: PrefixCache | None = None, **sampling):
    """Raw completion of ``prompt`` (text, tokenized with the model's BOS rule, or token ids).
    Returns a GenerationResult, or with ``stream=True`` a Generation yielding Chunks."""
    tok = model.tokenizer
    ids = tok.encode(prompt, add_special=add_special, parse_special=parse_special) if isinstance(prompt, str) \
        else [int(i) for i in prompt]
    stop_ids = tok.eos_ids if stop_token_ids is None else set(stop_token_ids)
    gen = Generation(model, cache or _model_cache(model), ids, _sampler(model, False, sampling),
                     max_tokens=max_tokens, stop=stop, stop_token_ids=stop_ids, reasoning=False,
                     parse_reasoning=False, thinking_budget=None)
    return gen if stream else gen.finish()


def prompt_has_open_think(prompt_text: str) -> bool:
    """True when the prompt leaves the model inside <think> (reasoning mode)."""
    return prompt_text.rfind(THINK_OPEN) > prompt_text.rfind(THINK_CLOSE)


def render_chat(model, messages, *, enable_thinking=True, tools=None, add_generation_prompt=True,
                **template_kwargs) -> str:
    return chat_template(model).render(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                       enable_thinking=enable_thinking, **template_kwargs)


def encode_chat(model, messages, *, sanitize: bool = True, **render_kwargs) -> tuple[str, list[int]]:
    """(prompt text, prompt ids). With ``sanitize`` control tokens typed in messages, tools or
    template variables (say "<|im_end|>") are plain text, as transformers'
    ``apply_chat_template(..., sanitize_control_tokens=True)``; the template's own stay special."""
    tok = model.tokenizer
    if not sanitize:
        text = render_chat(model, messages, **render_kwargs)
        return text, tok.encode(text, parse_special=True)
    control = [tok.id_to_token(i) for i in sorted(tok.special_ids)]
    marked = render_chat(model, mark_control_tokens(messages, control),
                         **mark_control_tokens(render_kwargs, control))
    return unmark(marked), encode_marked(tok, marked, control)


def chat(model, messages, enable_thinking: bool = True, thinking_budget: int | None = None, tools=None,
         stream: bool = False, *, max_tokens: int | None = None, stop=None, stop_token_ids=None,
         cache: PrefixCache | None = None, template_kwargs: dict | None = None, sanitize: bool = True,
         **sampling):
    """One assistant turn for ``messages`` through the model's chat template.

    Returns a GenerationResult (``.text``, ``.reasoning``, ``.tool_calls``, counts, timings)
    or, with ``stream=True``, a Generation yielding Chunk(kind="reasoning"|"content", text).
    Sampling defaults to the model's recommendation for the mode the prompt ends in.
    Control tokens inside messages are plain text unless ``sanitize=False``. Generation ends
    at the model's end-of-turn tokens and at ``stop_token_ids``, if given, too."""
    check_count("thinking_budget", thinking_budget)   # here: Generation only sees it when reasoning
    tok = model.tokenizer
    kw = dict(template_kwargs or {}, enable_thinking=enable_thinking, tools=tools)
    text, ids = encode_chat(model, messages, sanitize=sanitize, **kw)
    # Snapshot where the conversation so far ends, before the generation prompt: the next
    # turn's prompt shares exactly that prefix.
    _, history = encode_chat(model, messages, sanitize=sanitize, add_generation_prompt=False, **kw)
    boundaries = [len(history)] if ids[:len(history)] == history else []
    reasoning = prompt_has_open_think(text) and tok.token_to_id(THINK_CLOSE) is not None
    gen = Generation(model, cache or _model_cache(model), ids, _sampler(model, reasoning, sampling),
                     max_tokens=max_tokens, stop=stop, stop_token_ids={*tok.eos_ids, *(stop_token_ids or ())},
                     reasoning=reasoning,
                     parse_reasoning=True, thinking_budget=thinking_budget if reasoning else None,
                     boundaries=boundaries, tools=tools)
    return gen if stream else gen.finish()


class Conversation:
    """A multi-turn chat that remembers its messages and reuses the model state between turns."""

    def __init__(self, model, *, system: str | None = None, enable_thinking: bool = True,
                 thinking_budget: int | None = None, tools=None, n_ctx: int | None = None, **sampling):
        self.model = model
        self.system = system
        self.enable_thinking = enable_thinking
        self.thinking_budget = thinking_budget
        self.tools = tools
        self.sampling = {k: v for k, v in sampling.items() if v is not None}
        self.messages: list[dict] = []
        self.cache = PrefixCache(model.session(n_ctx=n_ctx))
        self.last_result: GenerationResult | None = None

    def full_messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def send(self, user_text: str, stream: bool = False, **overrides):
        self.messages.append({"role": "user", "content": user_text})
        try:
            return self._reply(stream, overrides)
        except BaseException:     # refused before anything was generated (bad argument, template)
            self.messages.pop()
            raise

    def regenerate(self, stream: bool = False, **overrides):
        """Drop the last assistant reply and answer the last user message again."""
        while self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        if not self.messages:
            raise ValueError("nothing to regenerate")
        return self._reply(stream, overrides)

    def reset(self) -> None:
        self.messages.clear()
        self.last_result = None

    def _reply(self, stream, overrides):
        args = dict(self.sampling, **overrides)
        gen = chat(self.model, self.full_messages(), enable_thinking=args.pop("enable_thinking", self.enable_thinking),
                   thinking_budget=args.pop("thinking_budget", self.thinking_budget), tools=self.tools,
                   stream=True, cache=self.cache, **args)
        it = self._record(gen)
        if stream:
            return it
        for _ in it:
            pass
        return self.last_result

    def _record(self, gen: Generation):
        try:
            yield from gen
        finally:
            gen.close()
            res = gen.result
            if res is None or res.finish_reason == "error" or (
                    res.finish_reason == "cancelled" and not res.completion_tokens):
                # nothing was said (the prompt no longer fits, or Ctrl-C during the prompt):
                # forget the unanswered message
                if self.messages and self.messages[-1]["role"] == "user":
                    self.messages.pop()
            else:
                self.last_result = res
                msg = {"role": "assistant", "content": res.content}
                if res.reasoning:
                    msg["reasoning_content"] = res.reasoning
                self.messages.append(msg)
