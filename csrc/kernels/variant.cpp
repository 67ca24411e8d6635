// Fills this variant's KernelTable. This file is compiled once per CPU variant with that
// variant's -m flags; NEMOCPU_VARIANT names the namespace.
#include "nemocpu/kernels.h"
#include "common.h"

namespace nemocpu {
namespace NEMOCPU_VARIANT {

void matmul(const WeightMatrix&, int64_t, int64_t, const Activations&, float*, int64_t);
void matmul_ref(const WeightMatrix&, int64_t, int64_t, const Activations&, float*, int64_t);
void quantize_q8(const float*, int64_t, BlockQ8Act*);
void dequant_row(const WeightMatrix&, int64_t, float*);
void rmsnorm(const float*, const float*, int64_t, float, float*);
void gated_rmsnorm(const float*, const float*, const float*, int64_t, int64_t, float, float*);
void conv1d_silu(float*, const float*, int64_t, int64_t, const float*, const float*, int64_t, int64_t,
                 int64_t, int64_t, float*, int64_t);
void ssm_scan(const ScanArgs&, int64_t, int64_t);
void attention(const AttnArgs&);
void attention_ref(const AttnArgs&);
void attention_merge(const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t, float*, int64_t);
void to_f16(const float*, int64_t, uint16_t*);

void fill_kernel_table(KernelTable& t) {
  t.variant = NEMOCPU_STR(NEMOCPU_VARIANT);
#if defined(__AVX2__) || defined(__ARM_FEATURE_DOTPROD)
  t.x8_faster = true;
#endif
  t.matmul = matmul;
  t.matmul_ref = matmul_ref;
  t.quantize_q8 = quantize_q8;
  t.dequant_row = dequant_row;
  t.rmsnorm = rmsnorm;
  t.gated_rmsnorm = gated_rmsnorm;
  t.conv1d_silu = conv1d_silu;
  t.ssm_scan = ssm_scan;
  t.attention = attention;
  t.attention_ref = attention_ref;
  t.attention_merge = attention_merge;
  t.to_f16 = to_f16;
}

}  // namespace NEMOCPU_VARIANT
}  // namespace nemocpu
