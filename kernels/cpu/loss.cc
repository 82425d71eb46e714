// Fused softmax cross-entropy over rows of logits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/vec_math.h"

namespace cohort::kernels {
namespace {

float RowMax(const float* x, int V) {
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int j = 0; j < V; ++j) mx = std::max(mx, x[j]);
  return mx;
}

}  // namespace

void CrossEntropyForward(float* losses, const float* logits, const int32_t* targets, int N,
                         int V) {
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(N) * V >= (1 << 14))
  for (int n = 0; n < N; ++n) {
    const float* x = logits + static_cast<size_t>(n) * V;
    const float mx = RowMax(x, V);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; ++j) sum += internal::ExpF(x[j] - mx);
    losses[n] = std::log(sum) + mx - x[targets[n]];
  }
}

void CrossEntropyForwardBackward(float* losses, float* dlogits, const float* logits,
                                 const int32_t* targets, int N, int V, float dloss_scale) {
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(N) * V >= (1 << 14))
  for (int n = 0; n < N; ++n) {
    const float* x = logits + static_cast<size_t>(n) * V;
    float* d = dlogits + static_cast<size_t>(n) * V;
    const float mx = RowMax(x, V);
    // Write the exponentials into the gradient row while summing; the rescale pass then reads
    // them back from cache instead of recomputing exp.
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; ++j) {
      const float e = internal::ExpF(x[j] - mx);
      d[j] = e;
      sum += e;
    }
    const int t = targets[n];
    losses[n] = std::log(sum) + mx - x[t];
    const float s = dloss_scale / sum;
#pragma omp simd
    for (int j = 0; j < V; ++j) d[j] *= s;
    d[t] -= dloss_scale;
  }
}

}  // namespace cohort::kernels
