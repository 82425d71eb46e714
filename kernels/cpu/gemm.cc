// Threading control and the partitioned GEMM wrapper over single-threaded OpenBLAS.
//
// Why partition GEMMs ourselves instead of letting OpenBLAS thread them: Debian's OpenBLAS is the
// pthread build, whose worker pool busy-waits after each call, while libgomp's workers also spin
// after each parallel region. Alternating GEMMs with fused OpenMP loops then has two pools
// fighting for the same cores. With OpenBLAS pinned to one thread and every GEMM split across the
// OpenMP team, there is one pool, and attention can run whole (batch, head) problems per thread.
// Splits are by rows of C only (see kGemmGrain), which keeps results independent of the thread
// count.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "common/check.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/parallel.h"

extern "C" {
// Declared by OpenBLAS's cblas.h on most versions; repeated here for headers that lack them.
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
}

namespace cohort::kernels {

void internal::EnsureBlasSingleThreaded() {
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}

void SetNumThreads(int n) {
  if (n <= 0) n = omp_get_num_procs();
  omp_set_num_threads(n);
  openblas_set_num_threads(1);
}

int NumThreads() { return omp_get_max_threads(); }

void GemmSerial(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // C = beta * C, with BLAS's convention that beta == 0 overwrites (even NaN).
    for (int64_t i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        float& c = C[i * ldc + j];
        c = beta == 0.0f ? 0.0f : beta * c;
      }
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void Gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  COHORT_CHECK(!omp_in_parallel()) << "Gemm called inside a parallel region; use GemmSerial";
  internal::EnsureBlasSingleThreaded();
  const double flops = 2.0 * M * N * static_cast<double>(K);
  internal::ParallelSplit(M, internal::kGemmGrain, flops >= internal::kMinParallelFlops,
                          [&](int64_t lo, int64_t hi) {
    // Rows lo..hi of C come from rows (or, transposed, columns) lo..hi of op(A).
    const float* a = trans_a ? A + lo : A + lo * lda;
    GemmSerial(trans_a, trans_b, static_cast<int>(hi - lo), N, K, alpha, a, lda, B, ldb, beta,
               C + lo * ldc, ldc);
  });
}

}  // namespace cohort::kernels
