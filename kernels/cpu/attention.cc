// Causal multi-head attention with GEMMs per (batch, head) and fused softmax loops.
//
// Parallelism: one (batch, head) problem per OpenMP thread at a time, with single-threaded GEMMs
// inside. A whole head's working set (q, k, v slices and its T x T probabilities) then stays in
// one core's caches, and there is no synchronization between the GEMMs and the softmax.
//
// Causality: rows are processed in blocks of kRowBlock; block [r0, r1) only needs key columns
// [0, r1), so the QK^T, PV and backward GEMMs skip the masked upper-right part of the T x T
// matrix (work ~ T^2/2 + T*kRowBlock/2 instead of T^2). Within a block, entries j in (i, r1) are
// set to 0 so the block GEMMs can treat them as ordinary entries; entries j >= r1 are never read.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/check.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/vec_math.h"

namespace cohort::kernels {
namespace {

constexpr int kRowBlock = 128;

}  // namespace

void AttentionForward(float* out, float* att, const float* qkv, int B, int T, int C, int NH) {
  COHORT_CHECK(NH > 0 && C % NH == 0) << "C=" << C << " NH=" << NH;
  // 3C is a BLAS leading dimension (int).
  COHORT_CHECK(C <= std::numeric_limits<int>::max() / 3) << "C=" << C;
  const int hd = C / NH;
  const int C3 = 3 * C;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // 64-bit: B * NH alone can exceed 2^31 (the model allows B*T up to 2^24 and NH up to 1024).
  const int64_t problems = static_cast<int64_t>(B) * NH;
  const bool par = problems * T * T >= (1 << 12);
  internal::EnsureBlasSingleThreaded();
#pragma omp parallel for schedule(static) if (par)
  for (int64_t p = 0; p < problems; ++p) {
    const int64_t b = p / NH;
    const int h = static_cast<int>(p % NH);
    const float* q = qkv + static_cast<size_t>(b) * T * C3 + h * hd;
    const float* k = q + C;
    const float* v = q + 2 * C;
    float* P = att + static_cast<size_t>(p) * T * T;
    float* o = out + static_cast<size_t>(b) * T * C + h * hd;
    for (int r0 = 0; r0 < T; r0 += kRowBlock) {
      const int r1 = std::min(T, r0 + kRowBlock);
      // S[r0:r1, 0:r1] = scale * Q[r0:r1] K[0:r1]^T
      GemmSerial(false, true, r1 - r0, r1, hd, scale, q + static_cast<size_t>(r0) * C3, C3, k,
                 C3, 0.0f, P + static_cast<size_t>(r0) * T, T);
      for (int i = r0; i < r1; ++i) {
        float* row = P + static_cast<size_t>(i) * T;
        const int len = i + 1;
        float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < len; ++j) mx = std::max(mx, row[j]);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < len; ++j) {
          const float e = internal::ExpF(row[j] - mx);
          row[j] = e;
          sum += e;
        }
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int j = 0; j < len; ++j) row[j] *= inv;
        for (int j = len; j < r1; ++j) row[j] = 0.0f;
      }
      // Y[r0:r1] = P[r0:r1, 0:r1] V[0:r1]
      GemmSerial(false, false, r1 - r0, hd, r1, 1.0f, P + static_cast<size_t>(r0) * T, T, v, C3,
                 0.0f, o + static_cast<size_t>(r0) * C, C);
    }
  }
}

void AttentionBackward(float* dqkv, float* datt, const float* dout, const float* qkv,
                       const float* att, int B, int T, int C, int NH) {
  COHORT_CHECK(NH > 0 && C % NH == 0) << "C=" << C << " NH=" << NH;
  // 3C is a BLAS leading dimension (int).
  COHORT_CHECK(C <= std::numeric_limits<int>::max() / 3) << "C=" << C;
  const int hd = C / NH;
  const int C3 = 3 * C;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // 64-bit: B * NH alone can exceed 2^31 (the model allows B*T up to 2^24 and NH up to 1024).
  const int64_t problems = static_cast<int64_t>(B) * NH;
  const bool par = problems * T * T >= (1 << 12);
  internal::EnsureBlasSingleThreaded();
#pragma omp parallel for schedule(static) if (par)
  for (int64_t p = 0; p < problems; ++p) {
    const int64_t b = p / NH;
    const int h = static_cast<int>(p % NH);
    const size_t qoff = static_cast<size_t>(b) * T * C3 + h * hd;
    const float* q = qkv + qoff;
    const float* k = q + C;
    const float* v = q + 2 * C;
    float* dq = dqkv + qoff;
    float* dk = dq + C;
    float* dv = dq + 2 * C;
    const float* dO = dout + static_cast<size_t>(b) * T * C + h * hd;
    const float* P = att + static_cast<size_t>(p) * T * T;
    float* dS = datt + static_cast<size_t>(p) * T * T;
    for (int r0 = 0; r0 < T; r0 += kRowBlock) {
      const int r1 = std::min(T, r0 + kRowBlock);
      // dP[r0:r1, 0:r1] = dY[r0:r1] V[0:r1]^T
      GemmSerial(false, true, r1 - r0, r1, hd, 1.0f, dO + static_cast<size_t>(r0) * C, C, v, C3,
                 0.0f, dS + static_cast<size_t>(r0) * T, T);
      // Softmax backward, with the 1/sqrt(hd) of the scores folded in:
      // dS_ij = scale * P_ij (dP_ij - sum_k P_ik dP_ik).
      for (int i = r0; i < r1; ++i) {
        const float* prow = P + static_cast<size_t>(i) * T;
        float* drow = dS + static_cast<size_t>(i) * T;
        const int len = i + 1;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int j = 0; j < len; ++j) dot += prow[j] * drow[j];
#pragma omp simd
        for (int j = 0; j < len; ++j) drow[j] = scale * prow[j] * (drow[j] - dot);
        for (int j = len; j < r1; ++j) drow[j] = 0.0f;
      }
      // dQ[r0:r1] = dS[r0:r1, 0:r1] K[0:r1]
      GemmSerial(false, false, r1 - r0, hd, r1, 1.0f, dS + static_cast<size_t>(r0) * T, T, k, C3,
                 0.0f, dq + static_cast<size_t>(r0) * C3, C3);
    }
    // Key/value rows c0..c1 receive gradient from query rows i >= c0 only.
    for (int c0 = 0; c0 < T; c0 += kRowBlock) {
      const int c1 = std::min(T, c0 + kRowBlock);
      const size_t diag = static_cast<size_t>(c0) * T + c0;
      // dK[c0:c1] = dS[c0:T, c0:c1]^T Q[c0:T]
      GemmSerial(true, false, c1 - c0, hd, T - c0, 1.0f, dS + diag, T,
                 q + static_cast<size_t>(c0) * C3, C3, 0.0f, dk + static_cast<size_t>(c0) * C3,
                 C3);
      // dV[c0:c1] = P[c0:T, c0:c1]^T dY[c0:T]
      GemmSerial(true, false, c1 - c0, hd, T - c0, 1.0f, P + diag, T,
                 dO + static_cast<size_t>(c0) * C, C, 0.0f, dv + static_cast<size_t>(c0) * C3,
                 C3);
    }
  }
}

}  // namespace cohort::kernels
