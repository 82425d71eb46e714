// AdamW update and the reductions behind global-norm gradient clipping.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/check.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/parallel.h"

namespace cohort::kernels {
namespace {

using internal::kMinParallelElems;

// SumOfSquares adds chunks in double, then the chunk sums in order. The chunking depends only on
// n (at most kMaxChunks chunks of at least kMinChunk elements), so the result does not depend on
// the thread count (an OpenMP reduction's association would), and the partial sums fit on the
// stack (no allocation per optimizer step).
constexpr size_t kMinChunk = 1 << 15;
constexpr size_t kMaxChunks = 1024;

}  // namespace

void AdamWUpdate(float* params, const float* grads, float* m, float* v, size_t n,
                 const AdamWHyper& h) {
  // step 0 would divide by a zero bias correction (inf/NaN parameters).
  COHORT_CHECK(h.step >= 1) << "AdamW step " << h.step;
  // torch computes the bias corrections as Python floats (double) and passes them to the
  // tensor ops as scalars, which the float kernels round to float.
  const double bc1 = 1.0 - std::pow(static_cast<double>(h.beta1), static_cast<double>(h.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(h.beta2), static_cast<double>(h.step));
  const float step_size = static_cast<float>(static_cast<double>(h.lr) / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = static_cast<float>(1.0 - static_cast<double>(h.lr) * h.weight_decay);
  const float b1 = h.beta1, b2 = h.beta2, eps = h.eps;
  const float one_minus_b1 = static_cast<float>(1.0 - static_cast<double>(h.beta1));
  const float one_minus_b2 = static_cast<float>(1.0 - static_cast<double>(h.beta2));
  const bool apply_decay = h.weight_decay != 0.0f;
  const int64_t total = static_cast<int64_t>(n);
#pragma omp parallel for simd schedule(static) if (total >= kMinParallelElems)
  for (int64_t i = 0; i < total; ++i) {
    const float g = grads[i];
    float p = params[i];
    if (apply_decay) p *= decay;
    const float mi = m[i] * b1 + one_minus_b1 * g;
    const float vi = v[i] * b2 + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / bc2_sqrt + eps;
    params[i] = p - step_size * mi / denom;
  }
}

double SumOfSquares(const float* x, size_t n) {
  const size_t chunk = std::max(kMinChunk, (n + kMaxChunks - 1) / kMaxChunks);
  const size_t chunks = (n + chunk - 1) / chunk;
  double partial[kMaxChunks];
  const int64_t nc = static_cast<int64_t>(chunks);
#pragma omp parallel for schedule(static) if (n >= static_cast<size_t>(kMinParallelElems))
  for (int64_t c = 0; c < nc; ++c) {
    const size_t lo = static_cast<size_t>(c) * chunk;
    const size_t hi = std::min(n, lo + chunk);
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (size_t i = lo; i < hi; ++i) acc += static_cast<double>(x[i]) * x[i];
    partial[c] = acc;
  }
  double total = 0.0;
  for (size_t c = 0; c < chunks; ++c) total += partial[c];
  return total;
}

void Scale(float* x, size_t n, float s) {
  const int64_t total = static_cast<int64_t>(n);
#pragma omp parallel for simd schedule(static) if (total >= kMinParallelElems)
  for (int64_t i = 0; i < total; ++i) x[i] *= s;
}

void Copy(float* dst, const float* src, size_t n) {
  internal::ParallelSplit(static_cast<int64_t>((n + 16383) / 16384), 1, n >= (size_t{1} << 20),
                          [&](int64_t lo, int64_t hi) {
                            const size_t a = static_cast<size_t>(lo) * 16384;
                            const size_t b = std::min(n, static_cast<size_t>(hi) * 16384);
                            std::memcpy(dst + a, src + a, sizeof(float) * (b - a));
                          });
}

void Fill(float* x, size_t n, float value) {
  const int64_t total = static_cast<int64_t>(n);
  if (value == 0.0f) {
    // Parallel memset in contiguous per-thread ranges (memset beats a scalar loop).
    internal::ParallelSplit(static_cast<int64_t>((n + 4095) / 4096), 1, total >= (1 << 20),
                            [&](int64_t lo, int64_t hi) {
                              const size_t a = static_cast<size_t>(lo) * 4096;
                              const size_t b = std::min(n, static_cast<size_t>(hi) * 4096);
                              std::memset(x + a, 0, sizeof(float) * (b - a));
                            });
    return;
  }
#pragma omp parallel for simd schedule(static) if (total >= kMinParallelElems)
  for (int64_t i = 0; i < total; ++i) x[i] = value;
}

}  // namespace cohort::kernels
