// Fills this variant's KernelTable. This file is compiled once per CPU variant with that
// variant's -m flags; NEMOCPU_VARIANT names the namespace.
#include "nemocpu/kernels.h"

#define NEMOCPU_STR2(x) #x
#define NEMOCPU_STR(x) NEMOCPU_STR2(x)

namespace nemocpu {
namespace NEMOCPU_VARIANT {

void fill_kernel_table(KernelTable& t) {
  t.variant = NEMOCPU_STR(NEMOCPU_VARIANT);
}

}  // namespace NEMOCPU_VARIANT
}  // namespace nemocpu
