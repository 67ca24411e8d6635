#!/bin/bash
# Hardware counters of one FP8 decode step on the GPU machine (after bench/cuda_device_run.sh
# has built the core): Nsight Compute on the matrix-vector, router and norm kernels of a
# graph-replayed step, and the SASS of the FP8 and Q8_0 decode kernels.
#   bench/cuda_ncu.sh [launch-skip] [launch-count]
set -u
OUT=${OUT:-/tmp/nemocpu-out}
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1
so=$(ls src/nemocpu/_core*.so)
cuobjdump -sass "$so" > /tmp/sass.txt
python3 - <<'PY' > "$OUT/sass_gemv.txt"
import re
text = open("/tmp/sass.txt").read().split("\n\t\tFunction : ")
for part in text:
    name = part.split("\n", 1)[0]
    if re.search(r"gemv_kernelILi(24|8)ELi1E", name):
        print("Function :", part[:400000])
PY
timeout 420 ncu --clock-control none --kernel-name regex:"gemv_kernel|route_kernel|rmsnorm_kernel" \
  --launch-skip "${1:-420}" --launch-count "${2:-205}" \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --csv --page details python3 bench/cuda_bench.py --types fp8 --prefill --decode-steps 8 \
  > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
echo "ncu rc=$? $(wc -l < "$OUT/ncu.csv") lines"; tail -3 "$OUT/ncu.err"
