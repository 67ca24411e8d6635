"""Reusing model state across prompts that share a beginning.

A ``PrefixCache`` wraps a Session and knows which tokens its state holds, plus snapshots
taken at chosen token counts. ``prefill(ids)`` resumes from the longest of those that is a
prefix of ``ids`` and evaluates only the rest. Mamba state cannot be rewound token by token,
so snapshots are the only way back: a chat turn's prompt diverges from the state left by the
previous turn (the template drops old reasoning), but it shares everything up to the end of
the previous user message, where a snapshot was taken.
"""

from __future__ import annotations

import threading

import numpy as np

class PrefixCache:
    """A Session plus the tokens its state holds and snapshots at known prefixes."""

    def __init__(self, session, max_snapshots: int = 8):
        self.session = session
        self.chunk = session.prefill_step
        self.max_snapshots = max_snapshots
        self.tokens: list[int] = []          # what the session state currently holds
        self._snaps: list[tuple[tuple[int, ...], object]] = []
        self._dirty = False                  # an eval was interrupted: self.tokens is unreliable
        self.epoch = 0                       # bumped by every prefill: older generations must stop
        self.lock = threading.RLock()

    @property
    def n_ctx(self) -> int:
        return self.session.n_ctx

    def eval(self, ids, all_logits: bool = False) -> np.ndarray:
        # In chunks: a C++ eval cannot be interrupted, and Python delivers a Ctrl-C only when it
        # returns, so a long prompt would otherwise keep a chat deaf to Ctrl-C for minutes. The
        # chunk is the engine's own prefill step, so the arithmetic is the same.
        ids = [int(i) for i in ids]
        outs = []
        for i in range(0, max(len(ids), 1), self.chunk):
            part = ids[i:i + self.chunk]
            self._dirty = True
            out = self.session.eval(part, all_logits)
            self.tokens.extend(part)
            self._dirty = False
            outs.append(out)
        return np.concatenate(outs) if all_logits and len(outs) > 1 else out

    def snapshot_here(self) -> None:
        key = tuple(self.tokens)
        self._snaps = [(k, s) for k, s in self._snaps if k != key]
        self._snaps.append((key, self.session.snapshot()))
        del self._snaps[:-self.max_snapshots]

    def clear(self) -> None:
        self.session.reset()
        self.tokens, self._snaps, self._dirty = [], [], False

    def prefill(self, ids: list[int], boundaries=()) -> tuple[np.ndarray, int]:
        """Bring the state to ``ids`` and return (logits of the last token, tokens reused).
        Snapshots are taken at each boundary (a token count) crossed on the way."""
        ids = [int(i) for i in ids]
        n = len(ids)
        self.epoch += 1
        if n == 0:
            raise ValueError("empty prompt")
        if n > self.n_ctx:
            raise ValueError(f"prompt has {n} tokens, the context holds {self.n_ctx}")
        start, source = 0, None
        # at least one token must be evaluated to get logits, hence the strict < n
        if not self._dirty and len(self.tokens) < n and ids[:len(self.tokens)] == self.tokens:
            start, source = len(self.tokens), "live"
        for key, snap in self._snaps:
            if start < len(key) < n and tuple(ids[:len(key)]) == key:
                start, source = len(key), (key, snap)
        if source is None:
            self.session.reset()
            self.tokens, self._dirty = [], False
        elif source != "live":
            key, snap = source
            self.session.restore(snap)
            self.tokens, self._dirty = list(key), False
            self._snaps.remove(source)
            self._snaps.append(source)   # most recently used last
        pos = start
        for b in sorted(set(b for b in boundaries if start < b < n)):
            self.eval(ids[pos:b])
            self.snapshot_here()
            pos = b
        return self.eval(ids[pos:]), start
