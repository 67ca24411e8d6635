#!/bin/sh
# Build bench/matmul_ab.cpp against csrc/kernels/matmul.cpp at git REF (default HEAD, "old")
# and in the working tree ("new"), avx2 flags, -O3 like the Release build; then run it:
#   sh bench/matmul_ab.sh [REF] && /tmp/matmul_ab 2 1 200000    # Q4_0 decode, 300 MB of weights
#   /tmp/matmul_ab 8 1 100000 24                             # old Q8_0 vs new FP8, same run
set -e
ref=${1:-HEAD}
root=$(git rev-parse --show-toplevel)
out=${TMPDIR:-/tmp}
F="-O3 -mavx2 -mfma -mf16c -mbmi2 -std=gnu++17 -I$root/csrc/include -I$root/csrc/kernels"
git -C "$root" show "$ref:csrc/kernels/matmul.cpp" > "$out/matmul_ab_old.cpp"
g++ $F -DNEMOCPU_VARIANT=oldv -c "$out/matmul_ab_old.cpp" -o "$out/matmul_ab_old.o"
g++ $F -DNEMOCPU_VARIANT=newv -c "$root/csrc/kernels/matmul.cpp" -o "$out/matmul_ab_new.o"
g++ $F "$root/bench/matmul_ab.cpp" "$out/matmul_ab_old.o" "$out/matmul_ab_new.o" -o "$out/matmul_ab"
echo "built $out/matmul_ab (old = $ref, new = working tree)"
