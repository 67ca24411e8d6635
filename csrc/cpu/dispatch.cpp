// Compiled at baseline flags only: this file must run on any CPU of the architecture.
#include "cpu/dispatch.h"

#include "nemocpu_variants.h"  // generated: NEMOCPU_FOR_EACH_VARIANT(X)

#include <cstdlib>
#include <mutex>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define NEMOCPU_X86 1
#elif defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#define NEMOCPU_ARM64 1
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#define NEMOCPU_ARM64_APPLE 1
#endif

namespace nemocpu {

NEMOCPU_FOR_EACH_VARIANT(NEMOCPU_DECLARE_VARIANT)

namespace {

#if defined(NEMOCPU_X86)
unsigned long long xgetbv0() {
  unsigned eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((unsigned long long)edx << 32) | eax;
}
#endif

std::map<std::string, bool> detect() {
  std::map<std::string, bool> f;
#if defined(NEMOCPU_X86)
  unsigned a, b, c, d;
  __cpuid(1, a, b, c, d);
  const bool osxsave = c & (1u << 27);
  f["sse4_2"] = c & (1u << 20);
  f["fma"] = c & (1u << 12);
  f["f16c"] = c & (1u << 29);
  f["avx"] = c & (1u << 28);
  const unsigned long long xcr0 = osxsave ? xgetbv0() : 0;
  // The OS must save YMM (bits 1,2) and for AVX-512 also opmask/ZMM (bits 5,6,7).
  f["os_ymm"] = (xcr0 & 0x6) == 0x6;
  f["os_zmm"] = (xcr0 & 0xe6) == 0xe6;
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f["avx2"] = b & (1u << 5);
    f["bmi2"] = b & (1u << 8);
    f["avx512f"] = b & (1u << 16);
    f["avx512dq"] = b & (1u << 17);
    f["avx512bw"] = b & (1u << 30);
    f["avx512vl"] = b & (1u << 31);
    f["avx512vnni"] = c & (1u << 11);
    __cpuid_count(7, 1, a, b, c, d);
    f["avx512bf16"] = a & (1u << 5);
  }
#elif defined(NEMOCPU_ARM64)
  const unsigned long hw = getauxval(AT_HWCAP);
  f["asimd"] = hw & HWCAP_ASIMD;
  f["fphp"] = hw & HWCAP_FPHP;
  f["asimdhp"] = hw & HWCAP_ASIMDHP;
  f["asimddp"] = hw & HWCAP_ASIMDDP;
#elif defined(NEMOCPU_ARM64_APPLE)
  // macOS has no hwcaps: it reports ARM features through sysctl (every Apple Silicon chip has
  // FP16 and DotProd, but ask rather than assume).
  auto has = [](const char* name) {
    int v = 0;
    size_t n = sizeof v;
    return sysctlbyname(name, &v, &n, nullptr, 0) == 0 && v != 0;
  };
  f["asimd"] = true;  // Advanced SIMD is mandatory on arm64
  f["fphp"] = f["asimdhp"] = has("hw.optional.arm.FEAT_FP16") || has("hw.optional.neon_fp16");
  f["asimddp"] = has("hw.optional.arm.FEAT_DotProd");
#endif
  return f;
}

bool can_run(const std::string& v, std::map<std::string, bool>& f) {
  if (v == "generic") return true;
  if (v == "avx2") return f["avx"] && f["avx2"] && f["fma"] && f["f16c"] && f["bmi2"] && f["os_ymm"];
  if (v == "avx512")
    return can_run("avx2", f) && f["avx512f"] && f["avx512bw"] && f["avx512vl"] && f["avx512dq"] &&
           f["avx512vnni"] && f["os_zmm"];  // no BF16 instruction is used: Ice Lake / Cascade Lake qualify
  if (v == "neon") return f["asimd"] && f["fphp"] && f["asimdhp"] && f["asimddp"];
  return false;
}

// Compiled variants in build order (generic first). A table is filled only once its
// variant is known to be runnable: fill_kernel_table itself is compiled with that
// variant's flags (the avx512 one stores the table with ZMM registers).
struct Compiled {
  const char* name;
  void (*fill)(KernelTable&);
};

const std::vector<Compiled>& compiled() {
  static const std::vector<Compiled> v = {
#define NEMOCPU_COMPILED(v) {#v, &v::fill_kernel_table},
      NEMOCPU_FOR_EACH_VARIANT(NEMOCPU_COMPILED)
#undef NEMOCPU_COMPILED
  };
  return v;
}

}  // namespace

std::map<std::string, bool> cpu_features() {
  static const std::map<std::string, bool> f = detect();
  return f;
}

std::vector<std::string> compiled_variants() {
  std::vector<std::string> out;
  for (auto& c : compiled()) out.push_back(c.name);
  return out;
}

std::vector<std::string> usable_variants() {
  auto f = cpu_features();
  std::vector<std::string> out;
  for (auto& c : compiled())
    if (can_run(c.name, f)) out.push_back(c.name);
  return out;
}

const KernelTable& kernel_table(const std::string& name) {
  auto f = cpu_features();
  static std::mutex mu;
  static std::map<std::string, KernelTable> filled;  // node-based: references stay valid
  for (auto& c : compiled()) {
    if (name != c.name) continue;
    if (!can_run(name, f))
      throw std::invalid_argument("CPU variant '" + name + "' is compiled in but this CPU cannot run it");
    std::lock_guard<std::mutex> lk(mu);
    auto it = filled.find(name);
    if (it == filled.end()) {
      KernelTable t;
      c.fill(t);
      it = filled.emplace(name, t).first;
    }
    return it->second;
  }
  std::string known;
  for (auto& v : compiled_variants()) known += (known.empty() ? "" : ", ") + v;
  throw std::invalid_argument("unknown CPU variant '" + name + "' (compiled: " + known + ")");
}

const KernelTable& active_kernels() {
  const char* forced = std::getenv("NEMOCPU_ISA");
  if (forced && *forced) {
    try {
      return kernel_table(forced);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("NEMOCPU_ISA=") + forced + ": " + e.what());
    }
  }
  static const std::string best = usable_variants().back();
  return kernel_table(best);
}

}  // namespace nemocpu
