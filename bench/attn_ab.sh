#!/bin/sh
# Build bench/attn_ab.cpp against csrc/kernels/attention.cpp at git REF ("old": one query head
# per call; default 2f95363, the last commit before the grouped kernel - a REF that already has
# the grouped kernel does not fit the harness's old-side calls) and in the working tree ("new":
# grouped + split-K), avx2 flags, -O3 like the Release build; then run it:
#   sh bench/attn_ab.sh [REF] && /tmp/attn_ab 16384 2      # decode at 16k keys, 2 threads
# The old file is compiled against REF's own kernels.h, its AttnArgs renamed OldAttnArgs.
set -e
ref=${1:-2f95363}
root=$(git rev-parse --show-toplevel)
out=${TMPDIR:-/tmp}/attn_ab_build
rm -rf "$out" && mkdir -p "$out/old/nemocpu" "$out/old/kernels"
F="-O3 -mavx2 -mfma -mf16c -mbmi2 -std=gnu++17 -pthread"
git -C "$root" show "$ref:csrc/include/nemocpu/kernels.h" > "$out/old/nemocpu/kernels.h"
git -C "$root" show "$ref:csrc/include/nemocpu/ggml_types.h" > "$out/old/nemocpu/ggml_types.h"
git -C "$root" show "$ref:csrc/kernels/common.h" > "$out/old/kernels/common.h"
git -C "$root" show "$ref:csrc/kernels/attention.cpp" > "$out/old/kernels/attention.cpp"
g++ $F -I"$out/old" -DAttnArgs=OldAttnArgs -DNEMOCPU_VARIANT=oldv -c "$out/old/kernels/attention.cpp" -o "$out/old.o"
g++ $F -I"$root/csrc/include" -DNEMOCPU_VARIANT=newv -c "$root/csrc/kernels/attention.cpp" -o "$out/new.o"
g++ $F -I"$root/csrc/include" -I"$root/csrc" "$root/bench/attn_ab.cpp" "$root/csrc/cpu/thread_pool.cpp" \
    "$out/old.o" "$out/new.o" -o "${TMPDIR:-/tmp}/attn_ab"
echo "built ${TMPDIR:-/tmp}/attn_ab (old = $ref, new = working tree)"
