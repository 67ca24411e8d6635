#!/bin/sh
# Build bench/matmul_ab.cpp against csrc/kernels/matmul.cpp (+ matmul_x8.cpp where it exists)
# at git REF (default HEAD, "old") and in the working tree ("new"), avx2 flags, -O3 like the
# Release build; the working tree's csrc/model/repack.cpp makes the X8 copies. Then run it:
#   sh bench/matmul_ab.sh [REF] && /tmp/matmul_ab 2 1 200000    # Q4_0 decode, 300 MB of weights
#   /tmp/matmul_ab 8x8 1 100000 24                           # old Q8_0 (repacked x8) vs new FP8
set -e
ref=${1:-HEAD}
root=$(git rev-parse --show-toplevel)
out=${TMPDIR:-/tmp}
F="-O3 -mavx2 -mfma -mf16c -mbmi2 -std=gnu++17 -I$root/csrc/include -I$root/csrc/kernels -I$root/csrc"
objs=""
for f in matmul matmul_x8; do
  if git -C "$root" cat-file -e "$ref:csrc/kernels/$f.cpp" 2>/dev/null; then
    git -C "$root" show "$ref:csrc/kernels/$f.cpp" > "$out/matmul_ab_old_$f.cpp"
    g++ $F -DNEMOCPU_VARIANT=oldv -c "$out/matmul_ab_old_$f.cpp" -o "$out/matmul_ab_old_$f.o"
    objs="$objs $out/matmul_ab_old_$f.o"
  fi
  if [ -f "$root/csrc/kernels/$f.cpp" ]; then
    g++ $F -DNEMOCPU_VARIANT=newv -c "$root/csrc/kernels/$f.cpp" -o "$out/matmul_ab_new_$f.o"
    objs="$objs $out/matmul_ab_new_$f.o"
  fi
done
g++ $F "$root/bench/matmul_ab.cpp" "$root/csrc/model/repack.cpp" $objs -o "$out/matmul_ab"
echo "built $out/matmul_ab (old = $ref, new = working tree)"
