"""The aarch64 NEON kernel variant, cross-compiled and checked under qemu-aarch64.

No Mac or ARM machine is available, so csrc/kernels/*.cpp are compiled twice with Debian's
aarch64-linux-gnu-g++ exactly as CMakeLists.txt does on aarch64 (namespaces generic and neon,
the neon copy with -march=armv8.2-a+fp16+dotprod), linked statically with the standalone
harness tests/neon/kernel_check.cpp (every kernel vs double precision and vs the scalar
spec), and run with qemu-aarch64 user emulation.

The toolchain (g++-aarch64-linux-gnu, qemu-user) is installed with apt-get when missing and
the test runs as root with CI=true; otherwise the test skips and says why.
Env: NEMOCPU_NEON_CACHE (build cache, default ~/.cache/nemocpu/neon), NEMOCPU_NEON_SKIP=1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "neon" / "kernel_check.cpp"
CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"
CXXFLAGS = ["-O2", "-std=c++17", f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc'}"]
# must match nemocpu_add_cpu_variant(...) for aarch64 in CMakeLists.txt
VARIANT_FLAGS = {"generic": [], "neon": ["-march=armv8.2-a+fp16+dotprod"]}


def _sources():
    return sorted((ROOT / "csrc" / "kernels").glob("*.cpp"))


# baseline (not per-variant) code the harness links: the engine's load-time repack
SHARED_SOURCES = [ROOT / "csrc" / "model" / "repack.cpp"]


def _digest() -> str:
    h = hashlib.sha256(repr((CXXFLAGS[:2], VARIANT_FLAGS)).encode())
    files = [HARNESS, *_sources(), *SHARED_SOURCES, ROOT / "csrc" / "model" / "repack.h", *sorted((ROOT / "csrc" / "kernels").glob("*.h")),
             *sorted((ROOT / "csrc" / "include").rglob("*.h"))]
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _ensure_toolchain():
    if shutil.which(CXX) and shutil.which(QEMU):
        return
    if os.environ.get("CI") == "true" and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "g++-aarch64-linux-gnu", "qemu-user"]):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        assert shutil.which(CXX) and shutil.which(QEMU), "apt-get installed the packages but the tools are missing"
        return
    pytest.skip(f"{CXX} / {QEMU} not installed (apt-get install g++-aarch64-linux-gnu qemu-user; "
                "the test installs them itself only as root with CI=true)")


def _build(out: Path) -> Path:
    exe = out / "kernel_check"
    if exe.exists():
        return exe
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    jobs = [[CXX, *CXXFLAGS, f"-DNEMOCPU_VARIANT={v}", f"-DNEMOCPU_VARIANT_{v}=1", *flags,
             "-c", str(src), "-o", str(tmp / f"{v}_{src.stem}.o")]
            for v, flags in VARIANT_FLAGS.items() for src in _sources()]

    def compile_one(cmd):
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(max_workers=2) as pool:     # the CI machine has 2 cores
        for cmd, r in zip(jobs, pool.map(compile_one, jobs)):
            assert r.returncode == 0, f"aarch64 compile failed: {' '.join(cmd)}\n{r.stderr[-4000:]}"
    objs = sorted(str(p) for p in tmp.glob("*.o"))
    r = subprocess.run([CXX, *CXXFLAGS, "-static", str(HARNESS), *map(str, SHARED_SOURCES), *objs,
                        "-o", str(tmp / "kernel_check")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"aarch64 link failed:\n{r.stderr[-4000:]}"
    if out.exists():    # a concurrent run published the same build first
        shutil.rmtree(tmp)
    else:               # publish atomically: a half-built directory is never used
        tmp.rename(out)
    return exe


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="qemu user emulation is Linux-only")
@pytest.mark.skipif(os.environ.get("NEMOCPU_NEON_SKIP") == "1", reason="NEMOCPU_NEON_SKIP=1")
def test_neon_kernels_under_qemu():
    _ensure_toolchain()
    cache = Path(os.environ.get("NEMOCPU_NEON_CACHE", Path.home() / ".cache" / "nemocpu" / "neon"))
    exe = _build(cache / _digest())
    r = subprocess.run([QEMU, str(exe)], capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    lines = out.strip().splitlines()
    assert r.returncode == 0, out[-4000:]
    assert lines and lines[0].startswith("checking variant neon"), out[-4000:]
    passed, failed = lines[-1].replace(",", "").split()[0::2]
    assert int(failed) == 0 and int(passed) > 1000, out[-4000:]
