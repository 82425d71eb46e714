// Embedding, LayerNorm, linear, bias+GELU and residual kernels.
//
// Column reductions (bias, LayerNorm weight/bias gradients) run as a separate column-parallel
// sweep with double accumulators: each output column is summed by one thread in row order, so
// the result is exact to fp32 rounding of a double sum and identical for any thread count, and no
// per-thread partial buffers are needed.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/check.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/vec_math.h"

namespace cohort::kernels {
namespace {

using internal::kMinParallelElems;

// Columns per block in column-parallel reductions: 64 doubles of accumulators stay in registers
// or L1, and a 256-byte row segment is a whole number of cache lines.
constexpr int kColBlock = 64;

// For each column c < C: out[c] += sum_n fa(n, c), summed in double in row order. Parallel over
// column blocks.
template <typename FA>
void ColumnSums(float* out, int N, int C, FA&& fa) {
  const int blocks = (C + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(N) * C >= kMinParallelElems)
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kColBlock;
    const int nc = std::min(kColBlock, C - c0);
    double acc[kColBlock] = {};
    for (int n = 0; n < N; ++n) {
#pragma omp simd
      for (int j = 0; j < nc; ++j) acc[j] += static_cast<double>(fa(n, c0 + j));
    }
    for (int j = 0; j < nc; ++j) out[c0 + j] += static_cast<float>(acc[j]);
  }
}

}  // namespace

// ---- embedding -------------------------------------------------------------------------------

void EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                      int B, int T, int C) {
  const int64_t N = static_cast<int64_t>(B) * T;
#pragma omp parallel for schedule(static) if (N * C >= kMinParallelElems)
  for (int64_t n = 0; n < N; ++n) {
    const float* te = wte + static_cast<size_t>(tokens[n]) * C;
    const float* pe = wpe + static_cast<size_t>(n % T) * C;
    float* o = out + static_cast<size_t>(n) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = te[c] + pe[c];
  }
}

void EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                       int T, int C) {
  const int64_t N = static_cast<int64_t>(B) * T;
  const bool par = N * C >= kMinParallelElems;
  if (dwte != nullptr) {
    // Scatter-add into token rows. Repeated tokens would race if rows were split across threads,
    // so threads own column blocks instead and walk the positions in order (deterministic).
    const int blocks = (C + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (par)
    for (int blk = 0; blk < blocks; ++blk) {
      const int c0 = blk * kColBlock;
      const int nc = std::min(kColBlock, C - c0);
      for (int64_t n = 0; n < N; ++n) {
        float* d = dwte + static_cast<size_t>(tokens[n]) * C + c0;
        const float* g = dout + static_cast<size_t>(n) * C + c0;
#pragma omp simd
        for (int j = 0; j < nc; ++j) d[j] += g[j];
      }
    }
  }
  if (dwpe != nullptr) {
#pragma omp parallel for schedule(static) if (par)
    for (int t = 0; t < T; ++t) {
      float* d = dwpe + static_cast<size_t>(t) * C;
      for (int b = 0; b < B; ++b) {
        const float* g = dout + (static_cast<size_t>(b) * T + t) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) d[c] += g[c];
      }
    }
  }
}

// ---- LayerNorm -------------------------------------------------------------------------------

void LayerNormForward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                      const float* bias, int N, int C) {
  constexpr float kEps = 1e-5f;
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(N) * C >= kMinParallelElems)
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    float* o = out + static_cast<size_t>(n) * C;
    // Two passes (mean, then centered second moment): no cancellation, like torch.
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; ++c) sum += x[c];
    const float m = sum / C;
    float var = 0.0f;
#pragma omp simd reduction(+ : var)
    for (int c = 0; c < C; ++c) var += (x[c] - m) * (x[c] - m);
    const float s = 1.0f / std::sqrt(var / C + kEps);
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * weight[c] + bias[c];
    mean[n] = m;
    rstd[n] = s;
  }
}

void LayerNormBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean,
                       const float* rstd, int N, int C) {
  const bool par = static_cast<int64_t>(N) * C >= kMinParallelElems;
  // dx = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat)), row-parallel.
#pragma omp parallel for schedule(static) if (par)
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    const float* dy = dout + static_cast<size_t>(n) * C;
    float* dx = dinp + static_cast<size_t>(n) * C;
    const float m = mean[n];
    const float s = rstd[n];
    float sum_g = 0.0f, sum_gx = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
    for (int c = 0; c < C; ++c) {
      const float g = weight[c] * dy[c];
      sum_g += g;
      sum_gx += g * (x[c] - m) * s;
    }
    const float mg = sum_g / C;
    const float mgx = sum_gx / C;
#pragma omp simd
    for (int c = 0; c < C; ++c) {
      const float xhat = (x[c] - m) * s;
      dx[c] += s * (weight[c] * dy[c] - mg - xhat * mgx);
    }
  }
  if (dweight != nullptr) {
    ColumnSums(dweight, N, C, [&](int n, int c) {
      const size_t i = static_cast<size_t>(n) * C + c;
      return dout[i] * ((inp[i] - mean[n]) * rstd[n]);
    });
  }
  if (dbias != nullptr) BiasBackward(dbias, dout, N, C);
}

// ---- linear ----------------------------------------------------------------------------------

void LinearForward(float* out, const float* inp, const float* weight, const float* bias,
                   const float* residual, int N, int IC, int OC) {
  COHORT_CHECK(!omp_in_parallel()) << "LinearForward inside a parallel region";
  internal::EnsureBlasSingleThreaded();
  const double flops = 2.0 * N * static_cast<double>(IC) * OC;
  const bool has_init = bias != nullptr || residual != nullptr;
  // Each thread writes its rows of out = residual + bias (cache-hot), then accumulates its rows
  // of the GEMM into them (beta = 1): no separate bias pass and no temporary.
  internal::ParallelSplit(N, internal::kGemmGrain, flops >= internal::kMinParallelFlops,
                          [&](int64_t r0, int64_t r1) {
    if (has_init) {
      for (int64_t r = r0; r < r1; ++r) {
        float* o = out + static_cast<size_t>(r) * OC;
        const float* res = residual ? residual + static_cast<size_t>(r) * OC : nullptr;
        if (res != nullptr && bias != nullptr) {
#pragma omp simd
          for (int c = 0; c < OC; ++c) o[c] = res[c] + bias[c];
        } else if (res != nullptr) {
          if (res != o) std::memcpy(o, res, sizeof(float) * OC);
        } else {
#pragma omp simd
          for (int c = 0; c < OC; ++c) o[c] = bias[c];
        }
      }
    }
    GemmSerial(false, true, static_cast<int>(r1 - r0), OC, IC, 1.0f,
               inp + static_cast<size_t>(r0) * IC, IC, weight, IC, has_init ? 1.0f : 0.0f,
               out + static_cast<size_t>(r0) * OC, OC);
  });
}

void LinearBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                    const float* inp, const float* weight, int N, int IC, int OC,
                    bool accumulate_dinp) {
  // dW[OC,IC] += dY^T[OC,N] @ X[N,IC]
  Gemm(true, false, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
  if (dbias != nullptr) BiasBackward(dbias, dout, N, OC);
  // dX[N,IC] (+)= dY[N,OC] @ W[OC,IC]
  if (dinp != nullptr) {
    Gemm(false, false, N, IC, OC, 1.0f, dout, OC, weight, IC, accumulate_dinp ? 1.0f : 0.0f,
         dinp, IC);
  }
}

void BiasBackward(float* dbias, const float* x, int N, int C) {
  ColumnSums(dbias, N, C, [&](int n, int c) { return x[static_cast<size_t>(n) * C + c]; });
}

// ---- bias + GELU -----------------------------------------------------------------------------

void BiasGeluForward(float* out, float* pre, const float* bias, int N, int C) {
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(N) * C >= kMinParallelElems)
  for (int n = 0; n < N; ++n) {
    float* h = pre + static_cast<size_t>(n) * C;
    float* o = out + static_cast<size_t>(n) * C;
    if (bias != nullptr) {
#pragma omp simd
      for (int c = 0; c < C; ++c) {
        const float x = h[c] + bias[c];
        h[c] = x;
        o[c] = internal::GeluF(x);
      }
    } else {
#pragma omp simd
      for (int c = 0; c < C; ++c) o[c] = internal::GeluF(h[c]);
    }
  }
}

void BiasGeluBackward(float* dpre, float* dbias, const float* dout, const float* pre, int N,
                      int C) {
  const int64_t total = static_cast<int64_t>(N) * C;
#pragma omp parallel for schedule(static) if (total >= kMinParallelElems)
  for (int n = 0; n < N; ++n) {
    const size_t base = static_cast<size_t>(n) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) dpre[base + c] = dout[base + c] * internal::GeluGradF(pre[base + c]);
  }
  if (dbias != nullptr) BiasBackward(dbias, dpre, N, C);
}

// ---- residual --------------------------------------------------------------------------------

void ResidualForward(float* out, const float* a, const float* b, size_t n) {
  const int64_t total = static_cast<int64_t>(n);
#pragma omp parallel for simd schedule(static) if (total >= kMinParallelElems)
  for (int64_t i = 0; i < total; ++i) out[i] = a[i] + b[i];
}

}  // namespace cohort::kernels
