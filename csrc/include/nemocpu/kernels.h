// The kernel table: one function pointer per kernel. Every CPU variant (generic, avx2,
// avx512, neon) fills one from csrc/kernels/*.cpp compiled with that variant's flags;
// csrc/cpu/dispatch.cpp picks one at run time. The model calls kernels only through it.
#pragma once

namespace nemocpu {

struct KernelTable {
  const char* variant = nullptr;  // "generic", "avx2", ...
};

// Defined in csrc/kernels/variant.cpp, once per compiled variant (namespace nemocpu::<v>).
#define NEMOCPU_DECLARE_VARIANT(v) namespace v { void fill_kernel_table(KernelTable& t); }

}  // namespace nemocpu
