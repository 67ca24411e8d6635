"""Compile check of the CUDA sources (csrc/cuda/) with nvcc, for machines without a GPU (CI):
every .cu file compiles for sm_90 with the flags CMake uses, and the pybind11 glue compiles
with the host compiler. Skipped when nvcc is not installed. The GPU tests are test_cuda_engine.py."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
