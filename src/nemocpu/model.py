"""nemocpu's Python API: ``load`` a GGUF model, open ``Session``s on it, tokenize, generate.

The weights stay in the memory-mapped file: ``load`` validates the file
(``model_file.open_model_file``) and hands zero-copy views to the C++ engine, so loading
costs the metadata parse, not a pass over the weights. The tokenizer is built on first use
because a 131k-token vocabulary takes longer to build than the rest of ``load``.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from functools import cached_property

import numpy as np

from .errors import GGUFError, NemocpuError

KV_TYPES = ("f16", "f32")
_KV_BYTES = {"f16": 2, "f32": 4}
MAX_THREADS = 1024        # far above any CPU; the C++ pool would try to start whatever it is given


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def load(path=None, threads=None, n_ctx=4096, kv_type="f16", dt_floor=0.0, device="cpu",
         repack=None) -> "Model":
    """Load a Nemotron-H GGUF (``path=None``: the embedded tiny demo model).

    threads: worker threads (default: the CPUs this process may use); n_ctx: context length
    of new sessions; kv_type: "f16" or "f32" attention cache; dt_floor: Mamba dt lower clamp
    applied only in prefill, to mirror transformers (0.0 = NVIDIA/vLLM semantics);
    device: "cpu", or "cuda" / "cuda:N" with a core built with NEMOCPU_CUDA (docs/cuda.md);
    repack (CPU): repack Q8_0/Q4_0 matrices into the 8-row interleaved layout the kernels run
    fastest on, each on its first use or all by ``Model.warm_up()`` (default True; False or
    NEMOCPU_REPACK=0 reads the file's layout in place); the file's pages of a repacked matrix are
    released, so memory holds one copy of the weights."""
    if path is None:
        from .data import default_model_path
        path = default_model_path()
    if kv_type not in KV_TYPES:
        raise NemocpuError(f"kv_type must be one of {KV_TYPES}, got {kv_type!r}")
    n_ctx = _check_n_ctx(n_ctx)
    threads = _check_threads(default_threads() if threads is None else threads)
    from .cuda import engine_class
    from .model_file import open_model_file
    make_engine = engine_class(device)            # a missing GPU is not a file problem either
    active_variant()                              # a bad NEMOCPU_ISA is not a file problem
    mf = open_model_file(path)
    try:
        check_kv_fits(mf.hparams, n_ctx, kv_type)
    except NemocpuError:
        mf.gguf.close()
        raise
    options = {}
    if device == "cpu":
        if repack is None:
            repack = os.environ.get("NEMOCPU_REPACK", "1") != "0"
        # the tensors are views of the file's read-only mapping (gguf_file.py)
        options = dict(repack=bool(repack), release_mapped=True)
    try:
        engine = make_engine(mf.hparams.as_dict(), mf.tensors, threads, float(dt_floor), **options)
    except ValueError as e:  # the engine's own checks: still a problem with this file
        mf.gguf.close()
        raise GGUFError(mf.path, str(e)) from None
    except RuntimeError as e:  # CUDA: out of device memory, driver errors
        mf.gguf.close()
        raise NemocpuError(f"{device}: {e}") from None
    return Model(mf, engine, int(n_ctx), kv_type, threads)


def _whole(v) -> int | None:
    """v as an int if it is a whole number (not a bool), else None."""
    try:
        return None if isinstance(v, bool) or int(v) != v else int(v)
    except (TypeError, ValueError, OverflowError):
        return None


def _check_n_ctx(n_ctx) -> int:
    n = _whole(n_ctx)
    if n is None or n < 1:
        raise NemocpuError(f"n_ctx must be a positive integer, got {n_ctx!r}")
    return n


def _check_threads(threads) -> int:
    n = _whole(threads)
    if n is None or not 1 <= n <= MAX_THREADS:
        raise NemocpuError(f"threads must be an integer in 1..{MAX_THREADS}, got {threads!r}")
    return n


def physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def kv_cache_bytes(hp, n_ctx: int, kv_type: str) -> int:
    """Bytes of the attention KV cache once a session holds n_ctx tokens (K and V per layer)."""
    return n_ctx * hp.layer_kinds.count("*") * 2 * hp.n_head_kv * hp.head_dim * _KV_BYTES[kv_type]


def check_kv_fits(hp, n_ctx: int, kv_type: str) -> None:
    """The cache grows as tokens arrive, so an n_ctx beyond RAM would fail deep into a long
    generation; refuse it up front instead."""
    need, have = kv_cache_bytes(hp, n_ctx, kv_type), physical_memory_bytes()
    if have is not None and need > have:
        raise NemocpuError(f"n_ctx {n_ctx} needs {need / 2**30:.1f} GiB of {kv_type} KV cache at full length; "
                           f"this machine has {have / 2**30:.1f} GiB of memory")


def active_variant() -> str:
    """The CPU kernel variant in use; NemocpuError if NEMOCPU_ISA asks for one this CPU lacks."""
    from . import _core
    try:
        return _core.active_variant()
    except ValueError as e:
        raise NemocpuError(str(e)) from None


class Model:
    def __init__(self, model_file, engine, n_ctx: int, kv_type: str, threads: int):
        self._file = model_file
        self._engine = engine
        self.n_ctx = n_ctx
        self.kv_type = kv_type
        self.threads = threads

    # ---- what the file says -------------------------------------------------------
    @property
    def config(self):
        """The model's hyperparameters (nemocpu.arch.HParams)."""
        return self._file.hparams

    @property
    def metadata(self) -> dict:
        return self._file.metadata

    @property
    def path(self) -> str:
        return self._file.path

    @property
    def n_vocab(self) -> int:
        return self._engine.n_vocab

    @property
    def variant(self) -> str:
        """The CPU kernel variant the engine runs (generic, avx2, avx512, neon)."""
        return self._engine.variant

    def memory_report(self) -> dict:
        report = dict(self._engine.memory_report())
        report.setdefault("file_bytes", self._file.gguf.file_size)
        return report

    def warm_up(self) -> None:
        """Repack every Q8_0/Q4_0 matrix now. Otherwise each one is repacked the first time a
        token needs it (loading stays instant; experts never routed to cost no memory), which
        makes the first tokens slower: call this before timing anything."""
        self._engine.repack_all()

    def set_threads(self, n: int) -> None:
        n = _check_threads(n)
        self._engine.set_threads(n)
        self.threads = n

    # ---- tokens -------------------------------------------------------------------
    @cached_property
    def tokenizer(self):
        from .tokenizer import Tokenizer
        return Tokenizer.from_gguf_metadata(self.metadata, path=self.path)

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    # ---- running ------------------------------------------------------------------
    def session(self, n_ctx: int | None = None, kv_type: str | None = None) -> "Session":
        return Session(self, self.n_ctx if n_ctx is None else n_ctx, kv_type or self.kv_type)

    def generate(self, *args, **kwargs):
        """Raw completion; see nemocpu.generate.generate."""
        from . import generate as _generate
        return _generate.generate(self, *args, **kwargs)

    def chat(self, *args, **kwargs):
        """A chat turn through the model's template; see nemocpu.generate.chat."""
        from . import generate as _generate
        return _generate.chat(self, *args, **kwargs)

    def __repr__(self):
        hp = self.config
        return (f"<nemocpu.Model {os.path.basename(self.path)!r} {hp.arch} {hp.n_layer} layers "
                f"({hp.layer_kinds}), vocab {hp.n_vocab}, {self.threads} threads>")


class SessionBusyError(NemocpuError):
    """A Session was used from a second thread while a call on it was still running."""


class Session:
    """One sequence's state (attention KV cache + Mamba conv/SSM state) on a Model.

    Sessions of one Model may run in different threads (the engine takes them in turn); one
    Session is a single sequence, so a call on it while another is running raises
    SessionBusyError instead of interleaving tokens into the same state."""

    def __init__(self, model: Model, n_ctx: int, kv_type: str):
        if kv_type not in KV_TYPES:
            raise NemocpuError(f"kv_type must be one of {KV_TYPES}, got {kv_type!r}")
        n_ctx = _check_n_ctx(n_ctx)
        check_kv_fits(model.config, n_ctx, kv_type)
        self.model = model
        self._busy = threading.Lock()
        self._state = model._engine.new_state(n_ctx, kv_type)

    @contextmanager
    def _exclusive(self, what: str):
        if not self._busy.acquire(blocking=False):
            raise SessionBusyError(f"Session.{what}() called while another thread is using this session")
        try:
            yield
        finally:
            self._busy.release()

    @property
    def n_past(self) -> int:
        return self._state.n_past

    @property
    def n_ctx(self) -> int:
        return self._state.n_ctx

    @property
    def nbytes(self) -> int:
        return self._state.nbytes

    @property
    def prefill_step(self) -> int:
        """Tokens per internal prefill chunk: evals split at multiples of it do the same arithmetic."""
        return self.model._engine.prefill_step

    def eval(self, ids, all_logits: bool = False) -> np.ndarray:
        """Append tokens; return float32 logits [1, n_vocab] for the last one, or [T, n_vocab]."""
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise ValueError(f"token ids must be a 1-D sequence of integers, got shape {arr.shape} of {arr.dtype}")
        # int64 so the engine range-checks every id before its own int32 cast (no wrap-around)
        arr = np.ascontiguousarray(arr, dtype=np.int64)
        with self._exclusive("eval"):
            return self.model._engine.eval(self._state, arr, bool(all_logits))

    def snapshot(self):
        """An independent copy of the state, for restore()."""
        with self._exclusive("snapshot"):
            return self._state.snapshot()

    def restore(self, snap) -> None:
        with self._exclusive("restore"):
            self._state.restore(snap)

    def reset(self) -> None:
        with self._exclusive("reset"):
            self._state.reset()
