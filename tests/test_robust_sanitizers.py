"""The C++ core under AddressSanitizer + UndefinedBehaviorSanitizer.

Builds the extension with -DNEMOCPU_SANITIZE=ON (cmake + ninja, -j2) into a cache directory
keyed by the sources, then runs the kernel, engine and tiny-model tests in a subprocess with
that build imported as nemocpu._core (tests/fuzz/sanitized_core_plugin.py). Any sanitizer
report fails the test: UBSan halts on the first error, ASan aborts on its own.

Env: NEMOCPU_SANITIZE_CACHE (build cache dir, default ~/.cache/nemocpu/sanitize),
NEMOCPU_SANITIZE_TESTS (space-separated test files/node ids, default below),
NEMOCPU_SANITIZE_EXAMPLES (hypothesis examples for tests without their own @settings),
NEMOCPU_SANITIZE_SKIP=1 to skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# kernels vs float64 references, the engine vs the oracle (every weight type, every usable variant),
# the engine's refusals, the trained tiny model (embedded Q8_0 file) and two sessions in two threads.
# Chosen to stay ~5 min on 2 cores: the sanitized core runs several times slower.
DEFAULT_TESTS = ("tests/test_kernels_matmul.py tests/test_kernels_matmul_x8.py tests/test_kernels_ssm.py "
                 "tests/test_kernels_attention_router.py "
                 "tests/test_engine.py tests/test_engine_errors.py "
                 "tests/test_model_tiny.py::test_embedded_default_model_runs "
                 "tests/test_robust_concurrency.py::test_two_sessions_in_two_threads_equal_sequential")
SANITIZER_REPORT_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                            "SUMMARY: UndefinedBehaviorSanitizer")

CANARY_SOURCE = REPO / "tests" / "fuzz" / "sanitizer_canary.cpp"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="sanitizer runtime preloading is Linux-only"),
              pytest.mark.skipif(os.environ.get("NEMOCPU_SANITIZE_SKIP") == "1", reason="NEMOCPU_SANITIZE_SKIP=1")]


def _source_digest() -> str:
    """Hash of what the CPU build compiles (csrc/cuda/ is built only with NEMOCPU_CUDA=ON)."""
    csrc = REPO / "csrc"
    sources = [p for p in csrc.rglob("*") if p.is_file() and p.relative_to(csrc).parts[0] != "cuda"]
    h = hashlib.sha256()
    for p in sorted([REPO / "CMakeLists.txt", CANARY_SOURCE, *sources]):
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _runtime_libs() -> list[str]:
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(path) or not os.path.exists(path):
            pytest.skip(f"gcc has no {name}")
        libs.append(path)
    return libs


def _build() -> Path:
    for tool in ("cmake", "ninja", "gcc", "g++"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found")
    pybind11 = pytest.importorskip("pybind11")
    cache = Path(os.environ.get("NEMOCPU_SANITIZE_CACHE", Path.home() / ".cache" / "nemocpu" / "sanitize"))
    build = cache / _source_digest()
    found = sorted(build.glob("_core*.so"))
    if found:
        return found[0]
    shutil.rmtree(build, ignore_errors=True)
    configure = ["cmake", "-S", str(REPO), "-B", str(build), "-G", "Ninja", "-DNEMOCPU_SANITIZE=ON",
                 "-DCMAKE_BUILD_TYPE=Debug", "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
                 f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"]
    for cmd in (configure, ["ninja", "-C", str(build), "-j2"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
        assert r.returncode == 0, f"{' '.join(cmd[:3])} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return sorted(build.glob("_core*.so"))[0]


def _sanitized_env(libs: list[str], so: Path) -> dict:
    return dict(os.environ,
                LD_PRELOAD=" ".join(libs),
                # CPython's arenas are never freed at exit: leak checking would only report them
                ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1",
                UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
                NEMOCPU_SANITIZED_CORE=str(so),
                PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "fuzz"), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.parametrize("bug, report", [
    ("canary_heap_overflow(8)", "ERROR: AddressSanitizer: heap-buffer-overflow"),
    ("canary_signed_overflow(1 << 20)", "runtime error: signed integer overflow"),
])
def test_planted_bug_is_reported(bug, report):
    """The run below counts "no report" as a pass; that only means something if a bug in code built
    this way, loaded into a Python started this way, does produce one."""
    libs = _runtime_libs()
    so = _build()
    canary = next(so.parent.glob("*sanitizer_canary*.so"))
    code = f"import ctypes; ctypes.CDLL({str(canary)!r}).{bug}"
    r = subprocess.run([sys.executable, "-c", code], env=_sanitized_env(libs, so),
                       capture_output=True, text=True, timeout=120)
    assert report in r.stderr, r.stderr[-3000:]
    assert r.returncode != 0


def test_core_tests_pass_under_asan_and_ubsan():
    libs = _runtime_libs()
    so = _build()

    # every C++ translation unit -- the per-variant kernel OBJECT libraries included -- is instrumented
    commands = json.loads((so.parent / "compile_commands.json").read_text())
    assert any("/csrc/kernels/" in c["file"] for c in commands)
    unsanitized = [c["file"] for c in commands if "-fsanitize=address,undefined" not in c["command"]]
    assert not unsanitized, f"compiled without sanitizers: {unsanitized}"

    env = _sanitized_env(libs, so)
    tests = os.environ.get("NEMOCPU_SANITIZE_TESTS", DEFAULT_TESTS).split()
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "sanitized_core_plugin", "-p", "no:cacheprovider",
                        "-q", "-x", "-m", "not slow", *tests],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    out = r.stdout + r.stderr
    assert f"nemocpu._core (sanitized): {so}" in out, out[-3000:]
    reports = [m for m in SANITIZER_REPORT_MARKERS if m in out]
    assert not reports, f"sanitizer report(s) {reports}:\n{out[-6000:]}"
    assert r.returncode == 0, out[-6000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, out[-2000:]
    print(f"under ASan+UBSan: {summary}")
