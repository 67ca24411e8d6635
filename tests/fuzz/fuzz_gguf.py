"""atheris (libFuzzer) harness for the GGUF reader, model validation and the engine behind them.

    python tests/fuzz/fuzz_gguf.py CORPUS_DIR [libFuzzer flags, e.g. -max_total_time=120]

Each input is written to a file and opened as a model (``model_file.open_model_file``, the
path ``nemocpu.load`` takes). A GGUFError / ModelFileError is the correct answer to a bad
file; any other exception, a crash, a hang (-timeout) or a memory blow-up (-rss_limit_mb) is
a finding. Inputs that validate are handed to the C++ engine, which evaluates two tokens:
mutated weights must give numbers (or NaN), never a crash. tests/test_robust_fuzz.py seeds the
corpus with real files and runs this for a bounded time.
"""

from __future__ import annotations

import inspect
import os
import sys
import tempfile

import atheris

import numpy as np

from nemocpu import arch, gguf_file, model_file
from nemocpu.errors import ModelFileError


def _instrument(module) -> None:
    """Coverage feedback for every function and method of a module. (atheris.instrument_imports
    sees nothing here: the editable install imports nemocpu through its own loader.)"""
    for obj in list(vars(module).values()):
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            atheris.instrument_func(obj)
        elif inspect.isclass(obj):
            for attr in vars(obj).values():
                fn = getattr(attr, "__func__", attr)
                if inspect.isfunction(fn):
                    atheris.instrument_func(fn)


for _m in (gguf_file, model_file, arch):
    _instrument(_m)

# An unlinked temp file reopened through /proc: nothing is left behind however libFuzzer exits.
_fd, _tmp = tempfile.mkstemp(prefix="nemocpu-fuzz-", suffix=".gguf", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
os.unlink(_tmp)
_PATH = f"/proc/self/fd/{_fd}"
RUN_ENGINE = os.environ.get("NEMOCPU_FUZZ_ENGINE", "1") == "1"


def _write(data: bytes) -> None:
    os.ftruncate(_fd, 0)
    os.pwrite(_fd, data, 0)


def TestOneInput(data: bytes) -> None:
    _write(data)
    try:
        mf = model_file.open_model_file(_PATH)
    except ModelFileError as e:
        if _PATH not in str(e):
            raise AssertionError(f"error does not name the file: {e}") from None
        return
    try:
        if RUN_ENGINE:
            _run_engine(mf)
    finally:
        mf.gguf.close()


def _run_engine(mf) -> None:
    from nemocpu import _core

    hp = mf.hparams
    # The validated tensors fix the sizes, so this is bounded by the (small) input.
    try:
        eng = _core.Engine(hp.as_dict(), mf.tensors, 1, 0.0)
    except ValueError:
        return                                     # the engine's own checks: a clean refusal
    st = eng.new_state(8, "f32")
    ids = np.array([0, hp.n_vocab - 1], dtype=np.int32)
    out = eng.eval(st, ids, True)
    assert out.shape == (2, hp.n_vocab)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
