"""Choosing the next token from logits.

Order as in transformers' logits processors: penalties on the raw logits, then temperature,
then top-k, top-p and min-p filtering, then a draw from the remaining distribution.
Temperature 0 is greedy (argmax, first index on ties, like torch.argmax). A seed makes the
draws reproducible: the same seed, prompt and settings give the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

import numpy as np

# NVIDIA's recommendation for Nemotron 3 Nano in reasoning mode (reference §5.3); without
# reasoning the model is run greedily.
REASONING_DEFAULTS = {"temperature": 0.6, "top_p": 0.95}
DIRECT_DEFAULTS = {"temperature": 0.0}

# llama.cpp's standard GGUF keys for a model's recommended sampling.
_GGUF_SAMPLING_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_k": "top_k",
                       "general.sampling.top_p": "top_p", "general.sampling.min_p": "min_p",
                       "general.sampling.penalty_repeat": "repetition_penalty",
                       "general.sampling.penalty_last_n": "penalty_last_n"}


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0                    # 0 = off
    top_p: float = 1.0                # 1 = off
    min_p: float = 0.0                # 0 = off
    repetition_penalty: float = 1.0   # CTRL-style: divide positive logits, multiply negative ones
    presence_penalty: float = 0.0     # OpenAI-style: minus this once per token seen
    frequency_penalty: float = 0.0    # OpenAI-style: minus this per occurrence
    penalty_last_n: int = 64          # penalties look at this many recent tokens (-1 = all)
    seed: int | None = None

    def __post_init__(self):
        checks = [(self.temperature >= 0, "temperature must be >= 0"),
                  (self.top_k >= 0, "top_k must be >= 0"),
                  (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
                  (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
                  (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
                  (self.penalty_last_n >= -1, "penalty_last_n must be >= -1")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def recommended_params(metadata: Mapping | None, reasoning: bool, **overrides) -> SamplingParams:
    """The model's recommended settings (GGUF ``general.sampling.*`` keys when the file has
    them, NVIDIA's defaults otherwise), with the caller's non-None overrides applied."""
    base = dict(REASONING_DEFAULTS if reasoning else DIRECT_DEFAULTS)
    for key, name in _GGUF_SAMPLING_KEYS.items():
        if metadata and metadata.get(key) is not None:
            base[name] = metadata[key]
    base.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(base) - set(SamplingParams.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
    return SamplingParams(**base)


@dataclass
class Sampler:
    """Stateful sampler: owns the random generator, so successive draws follow the seed."""

    params: SamplingParams
    banned: np.ndarray | None = None          # token ids that must never be produced
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self):
        self._rng = np.random.default_rng(self.params.seed)

    def with_params(self, **changes) -> "Sampler":
        return Sampler(replace(self.params, **changes), self.banned)

    def sample(self, logits: np.ndarray, history: Iterable[int] = ()) -> int:
        """One token id from a [n_vocab] (or [1, n_vocab]) logits row."""
        x = np.array(logits, dtype=np.float64).reshape(-1)
        if self.banned is not None and len(self.banned):
            x[self.banned] = -np.inf
        x = apply_penalties(x, history, self.params)
        p = self.params
        if p.greedy:
            return int(np.argmax(x))
        x = x / p.temperature
        cand = _candidates(x, p.top_k, p.top_p, p.min_p)
        xc = x if cand is None else x[cand]   # None: every token kept, skip the gather
        # float32 exp is several times faster over a 131k vocabulary; the cdf sums in float64
        cdf = np.cumsum(np.exp((xc - xc.max()).astype(np.float32)).astype(np.float64))
        i = min(int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right")), len(cdf) - 1)
        return i if cand is None else int(cand[i])


def apply_penalties(x: np.ndarray, history: Iterable[int], p: SamplingParams) -> np.ndarray:
    if p.repetition_penalty == 1 and p.presence_penalty == 0 and p.frequency_penalty == 0:
        return x
    hist = np.fromiter(history, dtype=np.int64)
    if p.penalty_last_n >= 0:
        hist = hist[len(hist) - p.penalty_last_n:] if p.penalty_last_n else hist[:0]
    hist = hist[(hist >= 0) & (hist < len(x))]
    if not hist.size:
        return x
    ids, counts = np.unique(hist, return_counts=True)
    x = x.copy()
    if p.repetition_penalty != 1:
        v = x[ids]
        x[ids] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
    x[ids] -= p.presence_penalty + p.frequency_penalty * counts
    return x


def candidates(x: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """Ids that survive top-k, top-p and min-p (see ``_candidates``)."""
    cand = _candidates(x, top_k, top_p, min_p)
    return np.arange(len(x)) if cand is None else cand


def _candidates(x: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray | None:
    """Ids that survive top-k, then top-p (the smallest set, best first, whose probability
    reaches top_p), then min-p (probability at least min_p times the largest), best first
    where an order was needed, or None for "every token". Always keeps the best token.

    Sorting a 131k vocabulary for every token would cost more than the forward pass of a small
    model, so only as many of the best tokens as top-p needs are sorted (partition first)."""
    n = len(x)
    best = int(np.argmax(x))
    finite = np.isfinite(x)
    pool = None if finite.all() else np.flatnonzero(finite)   # None = every token
    if top_k and top_k < n:
        src = np.arange(n) if pool is None else pool
        k = min(top_k, len(src))
        pool = src[np.argpartition(-x[src], k - 1)[:k]] if k < len(src) else src
    if top_p < 1.0:
        src = np.arange(n) if pool is None else pool
        xs = x if pool is None else x[src]
        # the normaliser over the whole vocabulary in float32 exp (fast), float64 sum
        total = float(np.exp((xs - x[best]).astype(np.float32)).sum(dtype=np.float64))
        m = min(len(src), 256)
        while True:
            part = np.argpartition(-xs, m - 1)[:m] if m < len(src) else np.arange(len(src))
            part = part[np.argsort(-xs[part], kind="stable")]
            zp = np.exp(xs[part] - x[best])
            # keep a token while the mass of the strictly better ones is below top_p
            before = (np.cumsum(zp) - zp) / total
            keep = before < top_p
            if not keep.all() or m == len(src):
                pool = src[part[keep]]
                break
            m = min(len(src), 4 * m)
    if min_p > 0.0:
        keep = x - x[best] >= np.log(min_p) if pool is None else x[pool] - x[best] >= np.log(min_p)
        pool = np.flatnonzero(keep) if pool is None else pool[keep]
    if pool is None:
        return None            # every token, in id order
    if best not in pool:
        pool = np.append(pool, best)
    return pool


def filter_mask(x: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """``candidates`` as a boolean mask over the vocabulary."""
    keep = np.zeros(len(x), dtype=bool)
    keep[candidates(x, top_k, top_p, min_p)] = True
    return keep
