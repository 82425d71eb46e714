// Fused fp32 CPU kernels for GPT-2 training (forward, backward, optimizer), in the spirit of llm.c.
//
// Conventions shared by every kernel below:
//  - All tensors are dense, row-major float32 (token ids int32). "N" is the number of rows
//    (usually B*T positions), "C" a channel count. Linear weights are stored [out, in] like
//    torch.nn.Linear, so a linear layer computes y = x @ W^T + b.
//  - Parameter gradients (dweight, dbias, dwte, ...) are always ACCUMULATED (+=), so gradient
//    accumulation over micro-steps needs no extra work; the caller zeroes them once per step.
//    Activation gradients are overwritten or accumulated as each function states.
//  - Work is parallelized with OpenMP over the calling thread's team size (see SetNumThreads).
//    GEMMs are partitioned across the OpenMP threads, each calling single-threaded OpenBLAS, so
//    there is exactly one pool of worker threads (two pools spinning on the same cores slow
//    each other down). Every kernel gives bit-identical results for any thread count: reductions
//    are split by fixed chunks or by output column, never by thread, and GEMMs only by rows of
//    C (which leaves OpenBLAS's per-element arithmetic unchanged; kernels_test checks this).
//  - Output buffers must not alias inputs unless a function says so. Sizes are trusted: the
//    model validates shapes and token ids before calling in (the kernels only COHORT_CHECK
//    cheap invariants). Each int argument must fit in int (GEMM dimensions and leading
//    dimensions go to BLAS as int, so e.g. 3C for attention), but products of them (N*C,
//    B*NH, B*NH*T*T, N*V) may exceed 2^31: every size and offset is computed in 64 bits.
//  - Non-finite inputs never cause undefined behaviour; NaN propagates to the outputs (a NaN
//    logit gives a NaN loss), and infinities follow IEEE / torch semantics (see vec_math.h and
//    CrossEntropyForward).
//  - Thread safety: the kernels keep no state; distinct calls on distinct buffers may run
//    concurrently from different threads (each then uses its own OpenMP team).
#pragma once

#include <cstddef>
#include <cstdint>

namespace cohort::kernels {

// ---- threading -------------------------------------------------------------------------------

// Sets the number of threads the kernels use: the OpenMP team size of parallel regions started
// by the calling thread (OpenMP semantics: the setting is per calling thread), and the OpenBLAS
// thread count, which is pinned to 1 because the kernels partition each GEMM across the OpenMP
// threads themselves. n <= 0 means "all cores" (omp_get_num_procs()).
void SetNumThreads(int n);

// The team size the kernels will use when called from this thread.
int NumThreads();

// ---- GEMM ------------------------------------------------------------------------------------

// C[M,N] = alpha * op(A) @ op(B) + beta * C, row-major, op(X) = X^T when trans_X. Leading
// dimensions are in elements. Partitioned over rows of C across the OpenMP team (bit-identical
// results for any team size); must be called from outside a parallel region.
void Gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc);

// Same contract, single-threaded: for use inside an OpenMP parallel region (OpenBLAS must be
// single-threaded, which SetNumThreads and every other BLAS-using kernel here ensure).
void GemmSerial(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                int lda, const float* B, int ldb, float beta, float* C, int ldc);

// ---- embedding -------------------------------------------------------------------------------

// out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:].  out [B,T,C], tokens [B,T] (each in [0, V)),
// wte [V,C], wpe [>=T, C].
void EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                      int B, int T, int C);

// dwte[tokens[b,t],:] += dout[b,t,:];  dwpe[t,:] += sum_b dout[b,t,:].  Either may be null.
void EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                       int T, int C);

// ---- LayerNorm (eps = 1e-5, biased variance, as torch.nn.LayerNorm) --------------------------

// out[n,:] = (inp[n,:] - mean[n]) * rstd[n] * weight + bias.  Saves mean[N] and rstd[N] for the
// backward pass. out [N,C] may alias inp.
void LayerNormForward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                      const float* bias, int N, int C);

// dinp += d/dinp; dweight += sum_n dout * xhat; dbias += sum_n dout.  dinp accumulates so the
// residual stream's gradient flows through unchanged.
void LayerNormBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean,
                       const float* rstd, int N, int C);

// ---- linear ----------------------------------------------------------------------------------

// out[N,OC] = residual + inp[N,IC] @ weight[OC,IC]^T + bias[OC].  bias and residual may be null;
// residual may alias out (then the product is accumulated into out).
void LinearForward(float* out, const float* inp, const float* weight, const float* bias,
                   const float* residual, int N, int IC, int OC);

// dweight[OC,IC] += dout^T @ inp;  dbias[OC] += column sums of dout (if non-null);
// dinp[N,IC] = dout @ weight (or += when accumulate_dinp; skipped when dinp is null).
void LinearBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                    const float* inp, const float* weight, int N, int IC, int OC,
                    bool accumulate_dinp = false);

// dbias[C] += sum over rows of x[N,C]. Deterministic (column-parallel).
void BiasBackward(float* dbias, const float* x, int N, int C);

// ---- causal multi-head self-attention --------------------------------------------------------
//
// qkv [B,T,3C] holds q | k | v along the last axis; head h uses channels [h*hd, (h+1)*hd) of each
// (hd = C/NH), exactly as GPT-2's c_attn output split into heads. Scores are scaled by 1/sqrt(hd).

// out [B,T,C] = softmax(mask(q k^T / sqrt(hd))) v, heads re-merged.  Saves the probabilities in
// att [B,NH,T,T]; only entries j <= i of row i are meaningful (the strictly upper triangle is
// partly zero, partly left untouched).
void AttentionForward(float* out, float* att, const float* qkv, int B, int T, int C, int NH);

// dqkv [B,T,3C] = gradient w.r.t. qkv (overwritten).  datt [B,NH,T,T] is scratch: on return its
// meaningful entries (j <= i) hold dL/d(q.k) = (1/sqrt(hd)) * dL/d(scores).  att is the forward's
// saved probabilities (read only).
void AttentionBackward(float* dqkv, float* datt, const float* dout, const float* qkv,
                       const float* att, int B, int T, int C, int NH);

// ---- bias + GELU (tanh approximation, as GPT-2) ----------------------------------------------

// pre[N,C] += bias (in place: afterwards pre is GELU's input, kept for the backward pass);
// out[N,C] = gelu(pre).  bias may be null.
void BiasGeluForward(float* out, float* pre, const float* bias, int N, int C);

// dpre[N,C] = dout * gelu'(pre) (dpre may alias dout);  dbias += column sums of dpre (if
// non-null).  pre is the biased pre-activation saved by BiasGeluForward.
void BiasGeluBackward(float* dpre, float* dbias, const float* dout, const float* pre, int N,
                      int C);

// ---- residual --------------------------------------------------------------------------------

// out[i] = a[i] + b[i] for i < n.  out may alias a or b.
void ResidualForward(float* out, const float* a, const float* b, size_t n);

// ---- softmax cross-entropy -------------------------------------------------------------------

// losses[n] = -log softmax(logits[n,:])[targets[n]] for logits [N,V], targets in [0,V).
// Non-finite logits, as torch.nn.functional.cross_entropy: a row containing NaN or +inf gives a
// NaN loss; a -inf logit has probability 0 (loss +inf if it is the target; a row of only -inf
// gives NaN). Other rows are unaffected.
void CrossEntropyForward(float* losses, const float* logits, const int32_t* targets, int N,
                         int V);

// Fused: the same losses and, in the same sweep over each row, dlogits[n,:] = (softmax(logits[n,:])
// - onehot(targets[n])) * dloss_scale.  dlogits is a separate buffer; logits stay intact.
// For the gradient of mean(losses) * s, pass dloss_scale = s / N.
void CrossEntropyForwardBackward(float* losses, float* dlogits, const float* logits,
                                 const int32_t* targets, int N, int V, float dloss_scale);

// ---- optimizer -------------------------------------------------------------------------------

struct AdamWHyper {
  float lr = 0.0f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // applied as given; pass 0 for tensors without decay
  int64_t step = 1;           // 1-based step count after this update (for bias correction)
};

// One torch.optim.AdamW update of n elements, in torch's operation order:
//   p *= 1 - lr * wd
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   p -= (lr / (1 - beta1^step)) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
// (bias corrections computed in double, then rounded to float like torch's scalars).
void AdamWUpdate(float* params, const float* grads, float* m, float* v, size_t n,
                 const AdamWHyper& h);

// sum_i x[i]^2, accumulated in double over fixed-size chunks (deterministic for any thread count).
double SumOfSquares(const float* x, size_t n);

// x[i] *= s.
void Scale(float* x, size_t n, float s);

// x[i] = value (parallel memset for big buffers).
void Fill(float* x, size_t n, float value);

// dst[i] = src[i] (parallel memcpy for big buffers: a checkpoint snapshot blocks training, so it
// uses every compute thread; one thread alone is bound well below the memory bandwidth).
void Copy(float* dst, const float* src, size_t n);

}  // namespace cohort::kernels
