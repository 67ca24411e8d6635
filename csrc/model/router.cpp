#include "model/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace nemocpu {

namespace {
// "a ranks before b": larger score first, lower index on ties.
struct ByScore {
  const float* s;
  bool operator()(int a, int b) const { return s[a] > s[b] || (s[a] == s[b] && a < b); }
};
}  // namespace

void route_token(const RouterConfig& c, const float* logits, const float* bias, int32_t* idx, float* weight) {
  const int E = c.n_expert;
  std::vector<float> s(E), sel(E);
  for (int e = 0; e < E; ++e) {
    s[e] = 1.0f / (1.0f + std::exp(-logits[e]));
    sel[e] = s[e] + (bias ? bias[e] : 0.0f);
    // NaN (from broken weights) would break the sort's ordering: rank it last instead.
    if (std::isnan(sel[e])) sel[e] = -std::numeric_limits<float>::infinity();
  }
  if (c.n_group > 1) {
    // Group score = sum of its top-2 selection scores; experts outside the best groups are out.
    const int gs = E / c.n_group;
    std::vector<float> gscore(c.n_group);
    for (int g = 0; g < c.n_group; ++g) {
      std::vector<float> v(sel.begin() + g * gs, sel.begin() + (g + 1) * gs);
      const int top = std::min(2, gs);
      std::partial_sort(v.begin(), v.begin() + top, v.end(), std::greater<float>());
      gscore[g] = 0.0f;
      for (int i = 0; i < top; ++i) gscore[g] += v[i];
    }
    std::vector<int> order(c.n_group);
    for (int g = 0; g < c.n_group; ++g) order[g] = g;
    std::stable_sort(order.begin(), order.end(), ByScore{gscore.data()});
    for (int r = c.n_group_used; r < c.n_group; ++r)
      for (int e = order[r] * gs; e < (order[r] + 1) * gs; ++e) sel[e] = -std::numeric_limits<float>::infinity();
  }
  std::vector<int> order(E);
  for (int e = 0; e < E; ++e) order[e] = e;
  std::partial_sort(order.begin(), order.begin() + c.n_used, order.end(), ByScore{sel.data()});
  float sum = 0.0f;
  for (int j = 0; j < c.n_used; ++j) {
    idx[j] = order[j];
    weight[j] = s[order[j]];
    sum += weight[j];
  }
  for (int j = 0; j < c.n_used; ++j) {
    if (c.norm) weight[j] /= (sum + 1e-20f);
    weight[j] *= c.scale;
  }
}

}  // namespace nemocpu
