#!/bin/bash
# One call on the GPU machine (the `device` tool): probe, build the core with NEMOCPU_CUDA=ON
# (cmake + ninja directly; the image has pybind11, cmake, ninja, nvcc), run the GPU tests,
# then the benchmarks. Needs .whl/ (gguf wheel) and .devcarry/shared (the tiny model) carried.
#   bench/cuda_device_run.sh [tests|bench|all] [extra cuda_bench.py args...]
set -u
what=${1:-all}; shift || true
OUT=${OUT:-/tmp/nemocpu-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader
python3 -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"
nvcc --version | tail -1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
[ -e ../shared ] || ln -s "$PWD/.devcarry/shared" ../shared
t0=$(date +%s)
cmake -S . -B build/dev -G Ninja -DNEMOCPU_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" -DSKBUILD_PROJECT_VERSION=0.0.0 > "$OUT/cmake.log" 2>&1 \
  || { tail -30 "$OUT/cmake.log"; exit 1; }
ninja -C build/dev -j16 > "$OUT/build.log" 2>&1 || { grep -A5 -E "error|FAILED" "$OUT/build.log" | head -60; exit 1; }
cp build/dev/_core*.so src/nemocpu/ && export PYTHONPATH="$PWD/src:$PYTHONPATH"
echo "build: $(( $(date +%s) - t0 )) s"
export PYTHONUNBUFFERED=1
if [ "$what" != bench ]; then
  python3 -m pytest -q -s -p no:cacheprovider tests/test_cuda_engine.py 2>&1 | tee "$OUT/tests.log" | grep -E "tiny|passed|failed|Error|^E " | head -40
fi
if [ "$what" != tests ]; then
  python3 bench/cuda_bench.py --json "$OUT/cuda_bench.json" "$@" 2>&1 | tee "$OUT/bench.log" | grep -v '^ \|^{\|^}'
fi
