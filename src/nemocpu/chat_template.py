"""Rendering the chat template stored in a GGUF file (``tokenizer.chat_template``).

The environment reproduces transformers' ``apply_chat_template`` (5.23,
``utils/chat_template_utils.py``): a jinja2 ``ImmutableSandboxedEnvironment`` with
trim_blocks + lstrip_blocks and loop controls, its ``tojson`` (no HTML escaping, unicode
kept), ``raise_exception``, ``strftime_now``, restricted ``dict``/``namespace``; messages
without None-valued keys, reasoning aliased to ``reasoning_content``; the tokenizer's
special-token strings (``bos_token``, ...) as variables. Templates are code from strangers:
rendering runs with a time limit and an output size limit.
"""

from __future__ import annotations

import ctypes
import json
import re
import threading
from datetime import datetime
from typing import Any, Mapping

from .errors import ModelFileError, NemocpuError

DEFAULT_TIMEOUT_S = 5.0
MAX_OUTPUT_CHARS = 50_000_000

# Names a message's reasoning is passed under; templates read the first (transformers 5.23).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(NemocpuError):
    """The template failed: a raise_exception() call, a jinja error, or the time limit."""


class _RenderTimeout(BaseException):
    # BaseException so that template code cannot swallow it with a generic handler.
    pass


def _build_environment():
    import jinja2
    import jinja2.ext
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class TemplateDict:
        # Only construction: no attribute access into the dict type from templates.
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        # Namespaces reject underscore attributes (a path to CPython internals).
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"templates cannot set underscore attribute {name!r}")

    class GenerationTag(jinja2.ext.Extension):
        # transformers' {% generation %} marks assistant text for training masks; rendering ignores it.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_passthrough"), [], [], body).set_lineno(lineno)

        def _passthrough(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


def _plain(value: Any) -> Any:
    """Rebuild inputs from plain JSON types, as transformers does, so the sandbox only sees data."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    item = getattr(value, "item", None)   # numpy scalars
    if callable(item):
        return _plain(item())
    return f"<{type(value).__name__}>"


def _prepare_messages(messages) -> list[dict]:
    out = []
    for m in messages:
        if not isinstance(m, Mapping):
            raise TypeError(f"chat messages must be dicts, got {m!r}")
        m = {k: v for k, v in _plain(m).items() if v is not None}
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


class ChatTemplate:
    """A compiled chat template. ``render(messages, ...)`` -> prompt text."""

    def __init__(self, source: str, *, special_tokens: Mapping[str, str] | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, path=None):
        import jinja2

        self.source = source
        self.path = path
        self.timeout_s = timeout_s
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = _build_environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ModelFileError(path, f"chat template has a syntax error at line {e.lineno}: {e.message}") from None

    @classmethod
    def from_metadata(cls, kv: Mapping, tokenizer=None, path=None, **kw) -> "ChatTemplate":
        source = kv.get("tokenizer.chat_template")
        if not isinstance(source, str) or not source.strip():
            raise ModelFileError(path, "the file has no chat template (tokenizer.chat_template)")
        special = {}
        if tokenizer is not None:
            for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                              ("pad_token", "padding"), ("sep_token", "seperator"), ("cls_token", "cls"),
                              ("mask_token", "mask")):
                tid = kv.get(f"tokenizer.ggml.{key}_token_id")
                if tid is not None and tokenizer.id_to_token(int(tid)) is not None:
                    special[name] = tokenizer.id_to_token(int(tid))
        return cls(source, special_tokens=special, path=path, **kw)

    def render(self, messages, *, tools=None, documents=None, add_generation_prompt: bool = True,
               **kwargs) -> str:
        """The prompt text, exactly as transformers' ``apply_chat_template(..., tokenize=False)``.
        Extra keyword arguments (``enable_thinking``, ``truncate_history_thinking``, ...) are
        template variables."""
        if not messages:
            raise ValueError("cannot render an empty conversation")
        variables = dict(self.special_tokens)
        variables.update(_plain(kwargs))
        variables.update(messages=_prepare_messages(messages), tools=_plain(tools),
                         documents=_plain(documents), add_generation_prompt=add_generation_prompt)
        return self._render_with_limits(variables)

    # ---- limits -----------------------------------------------------------------------
    def _render_with_limits(self, variables: dict) -> str:
        import jinja2

        result: dict[str, Any] = {}

        def work():
            try:
                parts, n = [], 0
                for chunk in self._template.generate(**variables):
                    n += len(chunk)
                    if n > MAX_OUTPUT_CHARS:
                        raise ChatTemplateError(f"chat template output exceeds {MAX_OUTPUT_CHARS} characters")
                    parts.append(chunk)
                result["text"] = "".join(parts)
            except _RenderTimeout:
                result["error"] = ChatTemplateError(f"chat template did not finish within {self.timeout_s} s")
            except ChatTemplateError as e:
                result["error"] = e
            except jinja2.TemplateError as e:
                result["error"] = ChatTemplateError(f"chat template error: {e}")
            except Exception as e:  # template code can raise anything (TypeError on bad data, ...)
                result["error"] = ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}")

        worker = threading.Thread(target=work, name="nemocpu-chat-template", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        while worker.is_alive():
            # Jinja compiles to Python bytecode, so an asynchronous exception stops any loop.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(_RenderTimeout))
            worker.join(0.1)
        if "error" in result:
            raise result["error"]
        return result["text"]


# ------------------------------------------------------------------------------------
# Control tokens in user text (transformers' ``sanitize_control_tokens``): a user who types
# "<|im_end|>" must not end their own turn. Occurrences in the caller's strings are wrapped
# in private-use markers before rendering; when encoding, marked pieces become plain text and
# the template's own control tokens stay special.
# ------------------------------------------------------------------------------------
_MARK_START, _MARK_END = "\U000f0000", "\U000f0001"


def _control_patterns(control_tokens) -> tuple[re.Pattern, re.Pattern]:
    longest_first = sorted(set(control_tokens), key=len, reverse=True)
    tokens_re = re.compile("|".join(map(re.escape, longest_first)) or "(?!)")
    markers_re = re.compile(f"{_MARK_START}({tokens_re.pattern}){_MARK_END}|[{_MARK_START}{_MARK_END}]")
    return tokens_re, markers_re


def mark_control_tokens(obj, control_tokens):
    """A copy of ``obj`` (str, or nested lists/dicts) with control tokens wrapped in markers."""
    tokens_re, _ = _control_patterns(tuple(control_tokens))

    def mark(o):
        if isinstance(o, str):
            # drop markers already present so they cannot be used to forge a marked token
            o = o.replace(_MARK_START, "").replace(_MARK_END, "")
            return tokens_re.sub(f"{_MARK_START}\\g<0>{_MARK_END}", o)
        if isinstance(o, Mapping):
            return {k: mark(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [mark(v) for v in o]
        return o
    return mark(obj)


def unmark(text: str) -> str:
    return text.replace(_MARK_START, "").replace(_MARK_END, "")


def encode_marked(tokenizer, text: str, control_tokens) -> list[int]:
    """Token ids of a chat rendered from marked inputs: marked control tokens as plain text,
    everything else (the template's control tokens included) parsed normally."""
    _, markers_re = _control_patterns(tuple(control_tokens))
    pieces = markers_re.split(text)    # [text, token, text, token, ...]; None for a lone marker
    newline = tokenizer.encode("\n", parse_special=True)
    ids = tokenizer.encode(pieces[0], parse_special=True)
    for i, piece in enumerate(pieces[1:], start=1):
        if not piece:
            continue
        as_text = i % 2 == 1
        # encode after a newline so SentencePiece adds no prefix space mid-chat, then drop it
        piece_ids = tokenizer.encode("\n" + piece, parse_special=not as_text)
        piece_ids = piece_ids[len(newline):] if piece_ids[:len(newline)] == newline else \
            tokenizer.encode(piece, parse_special=not as_text)
        ids += piece_ids
    return ids
