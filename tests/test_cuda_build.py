"""Compile check of the CUDA sources (csrc/cuda/) with nvcc, for machines without a GPU (CI):
every .cu file compiles for sm_90 with the flags CMake uses, and the pybind11 glue compiles
with the host compiler. The GPU weight decoder (csrc/cuda/decode.cuh, host and device code)
also runs on the CPU against numpy / ml_dtypes for every code of every type. Skipped when nvcc
is not installed. The GPU tests are test_cuda_engine.py."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CUDA_DIR = REPO / "csrc" / "cuda"
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not installed")


def _cuda_include() -> Path:
    import os
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), Path(NVCC).resolve().parents[1],
                 "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_runtime.h").is_file():
            return Path(root) / "include"
    pytest.skip("cuda_runtime.h not found next to nvcc (set CUDA_HOME)")


def _compile(cmd: list[str]) -> tuple[int, str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout + p.stderr


def test_cuda_sources_compile_with_nvcc(tmp_path):
    sources = sorted(CUDA_DIR.glob("*.cu"))
    assert sources, "csrc/cuda has no .cu files"
    cmds = [[NVCC, "-c", "-std=c++17", "-O3", "-gencode=arch=compute_90,code=sm_90", "--expt-relaxed-constexpr",
             "-Werror", "all-warnings", f"-I{REPO / 'csrc'}", f"-I{REPO / 'csrc' / 'include'}", str(src),
             "-o", str(tmp_path / (src.stem + ".o"))] for src in sources]
    with ThreadPoolExecutor(2) as pool:  # CI has 2 cores
        results = list(pool.map(_compile, cmds))
    for src, (rc, log) in zip(sources, results):
        assert rc == 0, f"{src.name}:\n{log[-3000:]}"


def test_cuda_bindings_compile():
    pybind11 = pytest.importorskip("pybind11")
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    rc, log = _compile([cxx, "-std=c++17", "-fsyntax-only", f"-I{REPO / 'csrc'}", f"-I{REPO / 'csrc' / 'include'}",
                        f"-I{_cuda_include()}", f"-I{pybind11.get_include()}",
                        f"-I{sysconfig.get_paths()['include']}", str(CUDA_DIR / "bindings.cpp")])
    assert rc == 0, log[-3000:]


GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0, GGML_I8, GGML_BF16 = 0, 1, 2, 8, 24, 30


def _byte_words() -> np.ndarray:
    """Words whose four byte positions each take all 256 values."""
    b = np.arange(256, dtype=np.uint32)
    return b | ((b + 67) % 256) << 8 | ((b + 131) % 256) << 16 | ((b + 199) % 256) << 24


def _reference(wtype: int, words: np.ndarray) -> np.ndarray:
    """Element values of each word in the GPU layout (decode.cuh's header), float64."""
    import ml_dtypes

    by = words.astype("<u4").view(np.uint8).reshape(-1, 4)
    if wtype == GGML_F32:
        return words.astype("<u4").view(np.float32).astype(np.float64).reshape(-1, 1)
    if wtype == GGML_F16:
        return words.astype("<u4").view(np.float16).astype(np.float64).reshape(-1, 2)
    if wtype == GGML_BF16:
        return words.astype("<u4").view(ml_dtypes.bfloat16).astype(np.float64).reshape(-1, 2)
    if wtype == GGML_I8:
        return by.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    if wtype == GGML_Q8_0:
        return by.view(np.int8).astype(np.float64)
    return np.concatenate([(by & 15).astype(np.float64) - 8, (by >> 4).astype(np.float64) - 8], axis=1)


@pytest.fixture(scope="module")
def decode_check(tmp_path_factory):
    exe = tmp_path_factory.mktemp("decode") / "decode_check"
    rc, log = _compile([NVCC, "-std=c++17", "-O2", f"-I{REPO / 'csrc'}", f"-I{REPO / 'csrc' / 'include'}",
                        str(REPO / "tests" / "cuda" / "decode_check.cu"), "-o", str(exe)])
    assert rc == 0, log[-3000:]
    return exe


@pytest.mark.parametrize("wtype", [GGML_F32, GGML_F16, GGML_BF16, GGML_I8, GGML_Q8_0, GGML_Q4_0])
def test_gpu_weight_decoder_is_exact(decode_check, wtype):
    if wtype in (GGML_F16, GGML_BF16):  # every 16-bit pattern in both halves
        h = np.arange(65536, dtype=np.uint32)
        words = h | (h[::-1] << 16)
    elif wtype == GGML_F32:
        words = np.random.default_rng(0).integers(0, 2**32, 100000, dtype=np.uint64).astype(np.uint32)
        words[:4] = [0, 0x80000000, 0x00000001, 0x7F7FFFFF]  # zeros, smallest subnormal, largest finite
    else:
        words = _byte_words()
    out = subprocess.run([str(decode_check), str(wtype)], input=words.astype("<u4").tobytes(),
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with np.errstate(invalid="ignore"):  # NaN patterns cast to float64
        ref = _reference(wtype, words)
        got = np.frombuffer(out.stdout, np.float32).astype(np.float64).reshape(ref.shape)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan], ref[~nan])  # exact, signed zeros included by value
