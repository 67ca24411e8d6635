"""Rendering the chat template stored in a GGUF file (``tokenizer.chat_template``).

The environment reproduces transformers' ``apply_chat_template`` (5.23,
``utils/chat_template_utils.py``): a jinja2 ``ImmutableSandboxedEnvironment`` with
trim_blocks + lstrip_blocks and loop controls, its ``tojson`` (no HTML escaping, unicode
kept), ``raise_exception``, ``strftime_now``, restricted ``dict``/``namespace``; messages
without None-valued keys, reasoning aliased to ``reasoning_content``; the tokenizer's
special-token strings (``bos_token``, ...) as variables. Templates are code from strangers:
they are compiled and rendered in a child process (template_worker.py says why) that is killed
when the time limit passes, under a memory limit and an output size limit. The parent only
parses the source, to report syntax errors when the model loads.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import queue
import re
import struct
import subprocess
import sys
import threading
import time
import warnings
from typing import Any, Mapping

from . import template_worker
from .errors import ModelFileError, NemocpuError
from .template_worker import build_environment, read_exact, render_reply

DEFAULT_TIMEOUT_S = 5.0
MAX_OUTPUT_CHARS = 50_000_000

# Names a message's reasoning is passed under; templates read the first (transformers 5.23).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(NemocpuError):
    """The template failed: a raise_exception() call, a jinja error, or the time limit."""


class _RenderTimeout(BaseException):
    # BaseException so that template code cannot swallow it with a generic handler.
    pass


class _RenderProcess:
    """The child process that renders templates (one per nemocpu process, shared by all
    templates and threads; requests are serialized). Started on first use, killed on a
    timeout and started again by the next render."""

    START_TIMEOUT_S = 60.0

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._replies: queue.Queue | None = None

    def available(self) -> bool:
        # A frozen application's sys.executable is the application, not a Python.
        return os.environ.get("NEMOCPU_TEMPLATE_PROCESS", "1") != "0" and not getattr(sys, "frozen", False) \
            and bool(sys.executable)

    def _start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if isinstance(p, str) and p))
        kw = {"start_new_session": True} if os.name == "posix" else \
            {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
        # its own session: a Ctrl-C at the terminal is the chat's to handle, not the renderer's
        self._proc = subprocess.Popen([sys.executable, "-s", template_worker.__file__], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, **kw)
        self._replies = queue.Queue()
        threading.Thread(target=self._read_replies, args=(self._proc.stdout, self._replies),
                         name="nemocpu-chat-template-replies", daemon=True).start()
        try:
            ready = self._replies.get(timeout=self.START_TIMEOUT_S)
        except queue.Empty:
            ready = None
        if ready != b"":
            self._stop()
            raise OSError("the chat template renderer process did not start")

    @staticmethod
    def _read_replies(f, replies: queue.Queue) -> None:
        while True:
            head = read_exact(f, 8)
            data = None if head is None else read_exact(f, struct.unpack("<Q", head)[0])
            replies.put(data)
            if data is None:
                return

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass

    def forget(self) -> None:
        """In a forked child: the process and its pipes belong to the parent."""
        self._lock = threading.Lock()
        self._proc = None

    def _wait_for_reply(self, timeout_s: float):
        # in short slices: a Ctrl-C is only delivered between them (a lock wait does not return for it)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._replies.get(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    raise

    def render(self, source: str, variables: dict, timeout_s: float, max_chars: int) -> str:
        payload = pickle.dumps({"source": source, "variables": variables, "max_chars": max_chars},
                               protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._stop()
                self._start()
            try:
                self._proc.stdin.write(struct.pack("<Q", len(payload)) + payload)
                self._proc.stdin.flush()
                data = self._wait_for_reply(timeout_s)
            except queue.Empty:
                self._stop()
                raise ChatTemplateError(f"chat template did not finish within {timeout_s} s") from None
            except OSError:
                data = None
            except BaseException:   # Ctrl-C while waiting: its late reply must not answer the next request
                self._stop()
                raise
            if data is None:    # it died: the kernel's OOM killer, a crash of the interpreter
                self._stop()
                raise ChatTemplateError("the chat template's renderer process died while rendering")
        return _text_of(json.loads(data))


def _text_of(reply: dict) -> str:
    if "error" in reply:
        raise ChatTemplateError(reply["error"])
    return reply["text"]


_render_process = _RenderProcess()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_render_process.forget)
_warned_in_process = False


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
        try:   # parse only: compiling folds constants, which is running the template's code
            build_environment().parse(source)
        except jinja2.TemplateSyntaxError as e:
            raise ModelFileError(path, f"chat template has a syntax error at line {e.lineno}: {e.message}") from None
        except Exception as e:      # e.g. an integer literal too long to convert
            raise ModelFileError(path, f"chat template cannot be parsed: {type(e).__name__}: {e}") from None
        self._template = None       # compiled on first use only where rendering stays in-process

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
        global _warned_in_process
        if _render_process.available():
            try:
                return _render_process.render(self.source, variables, self.timeout_s, MAX_OUTPUT_CHARS)
            except OSError as e:
                reason = str(e)
        else:
            reason = "NEMOCPU_TEMPLATE_PROCESS=0 or a frozen application"
        if not _warned_in_process:
            _warned_in_process = True
            warnings.warn(f"nemocpu: chat templates render in this process ({reason}): the time limit "
                          "cannot stop a single long C-level operation", RuntimeWarning, stacklevel=3)
        return self._render_in_thread(variables)

    def _compiled(self):
        if self._template is None:
            self._template = build_environment().from_string(self.source)
        return self._template

    def _render_in_thread(self, variables: dict) -> str:
        result: dict[str, Any] = {}

        def work():
            try:
                result.update(render_reply(self._compiled, variables, MAX_OUTPUT_CHARS))
            except _RenderTimeout:
                result["error"] = f"chat template did not finish within {self.timeout_s} s"

        worker = threading.Thread(target=work, name="nemocpu-chat-template", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        while worker.is_alive():
            # Jinja compiles to Python bytecode, so an asynchronous exception stops any loop.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(_RenderTimeout))
            worker.join(0.1)
        return _text_of(result)


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
