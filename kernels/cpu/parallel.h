// Internal to kernels/cpu: helpers for splitting work across the OpenMP team.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace cohort::kernels::internal {

// Below this many flops a GEMM runs on the calling thread: a parallel region costs a few
// microseconds, which is all a GEMM this small takes.
inline constexpr double kMinParallelFlops = 1 << 18;
// GEMMs are split across threads by rows of C only, in multiples of kGemmGrain rows. Row-major
// rows are OpenBLAS's (column-major) N dimension; a split there, at a multiple of the kernel's
// N register tile, leaves every element's computation unchanged, so results do not depend on the
// thread count. (A split along our N, OpenBLAS's M, does change results: its edge kernels sum in
// a different order.) 48 is a multiple of every x86 sgemm N-tile (2, 4, 6, 8, 12, 16, 24).
inline constexpr int kGemmGrain = 48;
// Element-wise loops with fewer elements than this stay on the calling thread.
inline constexpr int64_t kMinParallelElems = 1 << 14;

// Pins OpenBLAS to one thread (cheap when it already is): kernels call single-threaded GEMMs from
// inside their own OpenMP regions, and a multi-threaded OpenBLAS there would oversubscribe the
// cores. Called at the start of every kernel that uses BLAS, so callers that never called
// SetNumThreads are protected too. Call outside parallel regions.
void EnsureBlasSingleThreaded();

// Calls fn(lo, hi) (both int64_t) on every thread of a new team with disjoint ranges covering
// [0, extent), split in multiples of `grain` (the last range may be shorter). With
// parallel == false, calls fn(0, extent) on the calling thread. The split depends only on the
// team size, and callers use it only where the results do not depend on where the split falls.
// Requires grain >= 1; all arithmetic is 64-bit, so any extent up to 2^62 is fine.
template <typename F>
void ParallelSplit(int64_t extent, int64_t grain, bool parallel, F&& fn) {
  const int64_t units = (extent + grain - 1) / grain;
  const int parts = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), units));
  if (!parallel || parts <= 1) {
    if (extent > 0) fn(int64_t{0}, extent);
    return;
  }
#pragma omp parallel num_threads(parts)
  {
    const int64_t p = omp_get_thread_num();
    const int64_t np = omp_get_num_threads();
    const int64_t lo = std::min(extent, units * p / np * grain);
    const int64_t hi = std::min(extent, units * (p + 1) / np * grain);
    if (hi > lo) fn(lo, hi);
  }
}

}  // namespace cohort::kernels::internal
