// Run-time choice of the kernel variant: CPUID + XCR0 (x86) or hwcaps (arm) decide which
// compiled variants this CPU can run; NEMOCPU_ISA forces one. Chosen once, at first use.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "nemocpu/kernels.h"

namespace nemocpu {

std::map<std::string, bool> cpu_features();
std::vector<std::string> compiled_variants();
std::vector<std::string> usable_variants();       // generic first, best last
// Table of a named variant; std::invalid_argument if unknown or not runnable here.
const KernelTable& kernel_table(const std::string& name);
// The variant in use: NEMOCPU_ISA if set (error if unusable), else the best usable one.
const KernelTable& active_kernels();

}  // namespace nemocpu
