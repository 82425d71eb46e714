// Tests for kernels/cpu: every fp32 kernel is "double-checked":
//  1. its forward output is compared with a straightforward double-precision reference, and
//  2. its backward output is compared with central finite differences (h = 1e-6) of that DOUBLE
//     reference applied to the scalar objective sum(out * w) for a random w (w is fed to the
//     backward as dout). In double, the finite-difference error (~1e-9 relative) is negligible,
//     so the tolerance only has to absorb the kernel's fp32 rounding.
// Element-wise criterion (ExpectNear): |got - want| <= rtol * |want| + atol * max|want| with
// rtol = 2e-4 and atol = 2e-5 unless stated: fp32 sums of ~10^2 terms are good to ~1e-6
// relative, so this is tight enough to catch any indexing or formula error (those give O(1)
// relative errors) while tolerating cancellation in small entries.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/vec_math.h"

namespace cohort::kernels {
namespace {

using VecD = std::vector<double>;
using VecF = std::vector<float>;

VecF RandomF(size_t n, uint64_t seed, float scale = 1.0f, float shift = 0.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  VecF v(n);
  for (float& x : v) x = shift + scale * dist(rng);
  return v;
}

VecD ToD(const VecF& v) { return VecD(v.begin(), v.end()); }

void ExpectNear(const VecF& got, const VecD& want, const std::string& what, double rtol = 2e-4,
                double atol = 2e-5) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double maxw = 0;
  for (double w : want) maxw = std::max(maxw, std::abs(w));
  int reported = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = rtol * std::abs(want[i]) + atol * maxw;
    if (!(std::abs(got[i] - want[i]) <= tol)) {
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << " want " << want[i]
                    << " (tol " << tol << ")";
      if (++reported >= 5) return;
    }
  }
}

// Central finite-difference gradient of f at x (double), h = 1e-6 * max(1, |x_i|).
VecD NumericGrad(const std::function<double(const VecD&)>& f, VecD x) {
  VecD g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double orig = x[i];
    const double h = 1e-6 * std::max(1.0, std::abs(orig));
    x[i] = orig + h;
    const double fp = f(x);
    x[i] = orig - h;
    const double fm = f(x);
    x[i] = orig;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

double Dot(const VecD& a, const VecF& w) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * w[i];
  return s;
}

// ---- double references -----------------------------------------------------------------------

VecD RefLayerNorm(const VecD& x, const VecD& w, const VecD& b, int N, int C) {
  VecD out(x.size());
  for (int n = 0; n < N; ++n) {
    double m = 0, v = 0;
    for (int c = 0; c < C; ++c) m += x[n * C + c];
    m /= C;
    for (int c = 0; c < C; ++c) v += (x[n * C + c] - m) * (x[n * C + c] - m);
    v /= C;
    const double s = 1.0 / std::sqrt(v + 1e-5);
    for (int c = 0; c < C; ++c) out[n * C + c] = (x[n * C + c] - m) * s * w[c] + b[c];
  }
  return out;
}

VecD RefLinear(const VecD& x, const VecD& w, const VecD* b, int N, int IC, int OC) {
  VecD out(static_cast<size_t>(N) * OC);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double s = b ? (*b)[o] : 0.0;
      for (int i = 0; i < IC; ++i) s += x[n * IC + i] * w[o * IC + i];
      out[n * OC + o] = s;
    }
  return out;
}

// Naive causal attention; also returns the probabilities [B,NH,T,T] (zero above the diagonal).
VecD RefAttention(const VecD& qkv, int B, int T, int C, int NH, VecD* probs = nullptr) {
  const int hd = C / NH;
  VecD out(static_cast<size_t>(B) * T * C, 0.0);
  if (probs) probs->assign(static_cast<size_t>(B) * NH * T * T, 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<double> row(T);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int i = 0; i < T; ++i) {
        const double* q = &qkv[(static_cast<size_t>(b) * T + i) * 3 * C + h * hd];
        double mx = -1e300;
        for (int j = 0; j <= i; ++j) {
          const double* k = &qkv[(static_cast<size_t>(b) * T + j) * 3 * C + C + h * hd];
          double s = 0;
          for (int d = 0; d < hd; ++d) s += q[d] * k[d];
          row[j] = s * scale;
          mx = std::max(mx, row[j]);
        }
        double sum = 0;
        for (int j = 0; j <= i; ++j) sum += (row[j] = std::exp(row[j] - mx));
        for (int j = 0; j <= i; ++j) {
          const double p = row[j] / sum;
          if (probs) (*probs)[((static_cast<size_t>(b) * NH + h) * T + i) * T + j] = p;
          const double* v = &qkv[(static_cast<size_t>(b) * T + j) * 3 * C + 2 * C + h * hd];
          for (int d = 0; d < hd; ++d) out[(static_cast<size_t>(b) * T + i) * C + h * hd + d] += p * v[d];
        }
      }
  return out;
}

double RefGelu(double x) {
  const double c = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(c * (x + 0.044715 * x * x * x)));
}

// ---- tests -----------------------------------------------------------------------------------

class KernelsEnv : public ::testing::Environment {
 public:
  void SetUp() override { SetNumThreads(2); }
};
const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new KernelsEnv);

TEST(kernels, ExpFIsAccurateToAFewUlp) {
  double worst = 0;
  for (double x = -87.0; x <= 88.0; x += 0.000731) {
    const float xf = static_cast<float>(x);
    const double want = std::exp(static_cast<double>(xf));
    worst = std::max(worst, std::abs(internal::ExpF(xf) - want) / want);
  }
  EXPECT_LT(worst, 3e-7);  // ~2.5 ulp
  EXPECT_EQ(internal::ExpF(-100.0f), 0.0f);
  EXPECT_EQ(internal::ExpF(0.0f), 1.0f);
  EXPECT_TRUE(std::isfinite(internal::ExpF(1000.0f)));
}

TEST(kernels, ExpFAndGeluHandleNanAndInfinities) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(internal::ExpF(nan)));
  EXPECT_TRUE(std::isnan(internal::ExpF(-nan)));
  EXPECT_EQ(internal::ExpF(inf), inf);
  EXPECT_EQ(internal::ExpF(-inf), 0.0f);
  // Large finite arguments saturate (documented) rather than overflow.
  EXPECT_EQ(internal::ExpF(1e30f), internal::ExpF(88.3f));
  EXPECT_TRUE(std::isfinite(internal::ExpF(1e30f)));
  // Vectorized (the kernels call ExpF inside `omp simd` loops): NaN lanes stay NaN and do not
  // disturb their neighbours.
  VecF x = {0.5f, nan, -inf, inf, 1e30f, -1e30f, 2.0f, nan, -3.0f, 80.0f, -90.0f, 0.0f,
            1.0f, 2.0f, 3.0f, nan, -inf};
  VecF y(x.size());
#pragma omp simd
  for (size_t i = 0; i < x.size(); ++i) y[i] = internal::ExpF(x[i]);
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(y[i])) << i;
    } else if (x[i] == inf) {
      EXPECT_EQ(y[i], inf) << i;
    } else if (x[i] < -87.3f) {
      EXPECT_EQ(y[i], 0.0f) << i;
    } else {
      const double want = std::exp(static_cast<double>(std::min(x[i], 88.3f)));
      EXPECT_NEAR(y[i], want, 3e-7 * want) << i;
    }
  }
  // GELU: NaN propagates, +inf -> +inf, -inf -> NaN (as torch's tanh GELU: -inf * 0).
  EXPECT_TRUE(std::isnan(internal::GeluF(nan)));
  EXPECT_EQ(internal::GeluF(inf), inf);
  EXPECT_TRUE(std::isnan(internal::GeluF(-inf)));
  EXPECT_TRUE(std::isnan(internal::GeluGradF(nan)));
  EXPECT_EQ(internal::GeluGradF(inf), 1.0f);
  EXPECT_EQ(internal::GeluGradF(-inf), 0.0f);
  // Huge finite inputs (x^2 or x^3 beyond float range) give the exact limits, not garbage or
  // NaN; the tails start where the formula already gives them.
  for (float v : {-3e38f, -1e20f, -1e14f, -1e12f, -1e6f, -50.0f, -10.5f}) {
    EXPECT_EQ(internal::GeluF(v), 0.0f) << v;
    EXPECT_EQ(internal::GeluGradF(v), 0.0f) << v;
  }
  EXPECT_NEAR(internal::GeluF(-10.0f), 0.0f, 1e-35f);
  EXPECT_NEAR(internal::GeluGradF(-10.0f), 0.0f, 1e-34f);
  for (float v : {9.5f, 10.0f, 10.5f, 50.0f, 1e6f, 1e14f, 1e20f, 3e38f}) {
    EXPECT_EQ(internal::GeluF(v), v) << v;
    EXPECT_EQ(internal::GeluGradF(v), 1.0f) << v;
  }
}

TEST(kernels, GemmAllTransposesMatchNaiveAndAreThreadCountInvariant) {
  const int M = 83, N = 301, K = 37;  // M and N both > 48 rows: both split and unsplit paths
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (int big_n = 0; big_n < 2; ++big_n) {
        const int m = big_n ? M : N, n = big_n ? N : M;  // exercise both split directions
        const int lda = ta ? m + 3 : K + 2, ldb = tb ? K + 1 : n + 5, ldc = n + 7;
        VecF A = RandomF(static_cast<size_t>(ta ? K : m) * lda, 1);
        VecF Bm = RandomF(static_cast<size_t>(tb ? n : K) * ldb, 2);
        VecF C0 = RandomF(static_cast<size_t>(m) * ldc, 3);
        VecD want(static_cast<size_t>(m) * n);
        for (int i = 0; i < m; ++i)
          for (int j = 0; j < n; ++j) {
            double s = 0;
            for (int k = 0; k < K; ++k) {
              const double a = ta ? A[k * lda + i] : A[i * lda + k];
              const double b = tb ? Bm[j * ldb + k] : Bm[k * ldb + j];
              s += a * b;
            }
            want[i * n + j] = 0.5 * s + 0.25 * C0[i * ldc + j];
          }
        // 1..4 threads: 301 rows are 7 units of 48 rows, split at row 144 (2 threads), 96 and
        // 192 (3), and 48, 144 and 240 (4), so the split points move between team sizes.
        VecF results[4];
        for (int threads = 1; threads <= 4; ++threads) {
          SetNumThreads(threads);
          VecF C = C0;
          Gemm(ta, tb, m, n, K, 0.5f, A.data(), lda, Bm.data(), ldb, 0.25f, C.data(), ldc);
          VecF got(static_cast<size_t>(m) * n);
          for (int i = 0; i < m; ++i)
            for (int j = 0; j < n; ++j) got[i * n + j] = C[i * ldc + j];
          ExpectNear(got, want, "gemm ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
          results[threads - 1] = C;
        }
        for (int t = 1; t < 4; ++t) {
          EXPECT_EQ(0, std::memcmp(results[0].data(), results[t].data(), results[0].size() * 4))
              << "GEMM result with " << t + 1 << " threads differs from 1 thread: ta=" << ta
              << " tb=" << tb << " big_n=" << big_n;
        }
      }
  SetNumThreads(2);
}

TEST(kernels, EmbeddingForwardBackward) {
  const int B = 2, T = 5, C = 70, V = 7;
  std::vector<int32_t> tok = {3, 0, 6, 3, 3, 1, 2, 6, 0, 5};
  VecF wte = RandomF(V * C, 4), wpe = RandomF(T * C, 5);
  VecF out(B * T * C);
  EmbeddingForward(out.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
  VecD want(out.size());
  for (int n = 0; n < B * T; ++n)
    for (int c = 0; c < C; ++c) want[n * C + c] = double(wte[tok[n] * C + c]) + wpe[(n % T) * C + c];
  ExpectNear(out, want, "embedding out", 1e-7, 0);

  const VecF w = RandomF(out.size(), 6);
  VecF dwte(V * C, 0.5f), dwpe(T * C, -0.25f);  // gradients accumulate onto existing values
  EmbeddingBackward(dwte.data(), dwpe.data(), w.data(), tok.data(), B, T, C);
  auto f_wte = [&](const VecD& x) {
    double s = 0;
    for (int n = 0; n < B * T; ++n)
      for (int c = 0; c < C; ++c) s += (x[tok[n] * C + c] + wpe[(n % T) * C + c]) * w[n * C + c];
    return s;
  };
  VecD g = NumericGrad(f_wte, ToD(wte));
  for (double& x : g) x += 0.5;
  ExpectNear(dwte, g, "dwte");
  auto f_wpe = [&](const VecD& x) {
    double s = 0;
    for (int n = 0; n < B * T; ++n)
      for (int c = 0; c < C; ++c) s += (wte[tok[n] * C + c] + x[(n % T) * C + c]) * w[n * C + c];
    return s;
  };
  g = NumericGrad(f_wpe, ToD(wpe));
  for (double& x : g) x -= 0.25;
  ExpectNear(dwpe, g, "dwpe");
}

TEST(kernels, LayerNormForwardBackward) {
  const int N = 6, C = 37;
  VecF x = RandomF(N * C, 7, 2.0f, 0.5f), w = RandomF(C, 8, 0.3f, 1.0f), b = RandomF(C, 9, 0.2f);
  VecF out(N * C), mean(N), rstd(N);
  LayerNormForward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  ExpectNear(out, RefLayerNorm(ToD(x), ToD(w), ToD(b), N, C), "ln out", 1e-5, 1e-6);

  const VecF dout = RandomF(N * C, 10);
  VecF dx(N * C, 0.125f), dw(C, 0.0f), db(C, 1.0f);
  LayerNormBackward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                    rstd.data(), N, C);
  VecD gx = NumericGrad([&](const VecD& v) { return Dot(RefLayerNorm(v, ToD(w), ToD(b), N, C), dout); }, ToD(x));
  for (double& v : gx) v += 0.125;  // dinp accumulates
  ExpectNear(dx, gx, "ln dinp");
  ExpectNear(dw, NumericGrad([&](const VecD& v) { return Dot(RefLayerNorm(ToD(x), v, ToD(b), N, C), dout); }, ToD(w)), "ln dweight");
  VecD gb = NumericGrad([&](const VecD& v) { return Dot(RefLayerNorm(ToD(x), ToD(w), v, N, C), dout); }, ToD(b));
  for (double& v : gb) v += 1.0;
  ExpectNear(db, gb, "ln dbias");
}

TEST(kernels, LinearForwardBackwardWithBiasResidualAndAccumulation) {
  // Big enough for the partitioned path (2*N*IC*OC > 2^18) in both split directions.
  for (int shape = 0; shape < 2; ++shape) {
    const int N = shape ? 40 : 130, IC = 33, OC = shape ? 150 : 45;
    VecF x = RandomF(N * IC, 11), w = RandomF(OC * IC, 12, 0.2f), b = RandomF(OC, 13);
    VecF res = RandomF(N * OC, 14);
    VecD want = RefLinear(ToD(x), ToD(w), nullptr, N, IC, OC);
    VecF out(N * OC);
    LinearForward(out.data(), x.data(), w.data(), nullptr, nullptr, N, IC, OC);
    ExpectNear(out, want, "linear out (no bias)", 1e-5, 1e-6);
    VecD bd = ToD(b);
    want = RefLinear(ToD(x), ToD(w), &bd, N, IC, OC);
    LinearForward(out.data(), x.data(), w.data(), b.data(), nullptr, N, IC, OC);
    ExpectNear(out, want, "linear out (bias)", 1e-5, 1e-6);
    for (size_t i = 0; i < want.size(); ++i) want[i] += res[i];
    LinearForward(out.data(), x.data(), w.data(), b.data(), res.data(), N, IC, OC);
    ExpectNear(out, want, "linear out (bias + residual)", 1e-5, 1e-6);
    VecF inplace = res;  // residual aliasing out
    LinearForward(inplace.data(), x.data(), w.data(), b.data(), inplace.data(), N, IC, OC);
    ExpectNear(inplace, want, "linear out (in-place residual)", 1e-5, 1e-6);

    const VecF dout = RandomF(N * OC, 15);
    VecF dx(N * IC, 3.0f), dw(OC * IC, 0.5f), db(OC, -1.0f);
    LinearBackward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), N, IC, OC,
                   /*accumulate_dinp=*/true);
    auto obj = [&](const VecD& xx, const VecD& ww, const VecD& bb) {
      return Dot(RefLinear(xx, ww, &bb, N, IC, OC), dout);
    };
    VecD g = NumericGrad([&](const VecD& v) { return obj(v, ToD(w), bd); }, ToD(x));
    for (double& v : g) v += 3.0;
    ExpectNear(dx, g, "linear dinp (accumulated)");
    g = NumericGrad([&](const VecD& v) { return obj(ToD(x), v, bd); }, ToD(w));
    for (double& v : g) v += 0.5;
    ExpectNear(dw, g, "linear dweight");
    g = NumericGrad([&](const VecD& v) { return obj(ToD(x), ToD(w), v); }, bd);
    for (double& v : g) v -= 1.0;
    ExpectNear(db, g, "linear dbias");
    // Overwriting dinp.
    VecF dx2(N * IC, 99.0f), dw2(OC * IC, 0.0f);
    LinearBackward(dx2.data(), dw2.data(), nullptr, dout.data(), x.data(), w.data(), N, IC, OC);
    for (size_t i = 0; i < dx2.size(); ++i) ASSERT_NEAR(dx2[i], dx[i] - 3.0f, 1e-4) << i;
  }
}

void CheckAttention(int B, int T, int C, int NH, size_t fd_samples) {
  SCOPED_TRACE("B=" + std::to_string(B) + " T=" + std::to_string(T) + " C=" + std::to_string(C) +
               " NH=" + std::to_string(NH));
  const VecF qkv = RandomF(static_cast<size_t>(B) * T * 3 * C, 16, 1.5f);
  VecF out(static_cast<size_t>(B) * T * C);
  VecF att(static_cast<size_t>(B) * NH * T * T, 7.0f);
  AttentionForward(out.data(), att.data(), qkv.data(), B, T, C, NH);
  VecD probs;
  const VecD want = RefAttention(ToD(qkv), B, T, C, NH, &probs);
  ExpectNear(out, want, "attention out", 1e-4, 1e-5);
  VecF lower(att.size(), 0.0f);
  for (size_t r = 0; r < static_cast<size_t>(B) * NH * T; ++r)
    for (int j = 0; j <= static_cast<int>(r % T); ++j) lower[r * T + j] = att[r * T + j];
  ExpectNear(lower, probs, "attention probs", 1e-4, 1e-6);

  const VecF dout = RandomF(out.size(), 17);
  VecF dqkv(qkv.size(), 123.0f), datt(att.size());
  AttentionBackward(dqkv.data(), datt.data(), dout.data(), qkv.data(), att.data(), B, T, C, NH);
  auto f = [&](const VecD& v) { return Dot(RefAttention(v, B, T, C, NH), dout); };
  VecD x = ToD(qkv);
  if (fd_samples >= x.size()) {
    ExpectNear(dqkv, NumericGrad(f, x), "attention dqkv");
    return;
  }
  // Large shapes: finite differences on a random sample of inputs (each costs 2 reference runs).
  std::mt19937_64 rng(18);
  VecF got;
  VecD num;
  for (size_t s = 0; s < fd_samples; ++s) {
    const size_t i = rng() % x.size();
    const double orig = x[i], h = 1e-6 * std::max(1.0, std::abs(orig));
    x[i] = orig + h;
    const double fp = f(x);
    x[i] = orig - h;
    const double fm = f(x);
    x[i] = orig;
    num.push_back((fp - fm) / (2 * h));
    got.push_back(dqkv[i]);
  }
  ExpectNear(got, num, "attention dqkv (sampled)");
}

TEST(kernels, AttentionForwardBackwardSmall) {
  CheckAttention(2, 5, 8, 2, SIZE_MAX);
  CheckAttention(1, 7, 12, 3, SIZE_MAX);
  CheckAttention(3, 1, 4, 1, SIZE_MAX);  // single position
}

TEST(kernels, AttentionForwardBackwardAcrossRowBlocks) {
  // T > the 128-row causal block, not a multiple of it: exercises the block-triangular GEMMs.
  CheckAttention(1, 300, 8, 2, 120);
  CheckAttention(2, 129, 4, 1, 80);
}

TEST(kernels, BiasGeluForwardBackward) {
  const int N = 5, C = 41;
  VecF pre = RandomF(N * C, 19, 2.0f), bias = RandomF(C, 20, 0.5f);
  VecF h = pre, out(N * C);
  BiasGeluForward(out.data(), h.data(), bias.data(), N, C);
  VecD want(N * C), hw(N * C);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) {
      hw[n * C + c] = double(pre[n * C + c]) + bias[c];
      want[n * C + c] = RefGelu(hw[n * C + c]);
    }
  ExpectNear(h, hw, "gelu pre (biased)", 1e-7, 0);
  ExpectNear(out, want, "gelu out", 1e-5, 1e-7);

  const VecF dout = RandomF(N * C, 21);
  VecF dpre(N * C), dbias(C, 0.5f);
  BiasGeluBackward(dpre.data(), dbias.data(), dout.data(), h.data(), N, C);
  auto f = [&](const VecD& p, const VecD& b) {
    double s = 0;
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c) s += RefGelu(p[n * C + c] + b[c]) * dout[n * C + c];
    return s;
  };
  ExpectNear(dpre, NumericGrad([&](const VecD& v) { return f(v, ToD(bias)); }, ToD(pre)), "gelu dpre");
  VecD gb = NumericGrad([&](const VecD& v) { return f(ToD(pre), v); }, ToD(bias));
  for (double& v : gb) v += 0.5;
  ExpectNear(dbias, gb, "gelu dbias");
  // In place (dpre aliases dout).
  VecF inplace = dout;
  BiasGeluBackward(inplace.data(), nullptr, inplace.data(), h.data(), N, C);
  EXPECT_EQ(0, std::memcmp(inplace.data(), dpre.data(), dpre.size() * 4));
}

TEST(kernels, ResidualAndBiasBackward) {
  const size_t n = 100003;  // parallel path
  VecF a = RandomF(n, 22), b = RandomF(n, 23), out(n);
  ResidualForward(out.data(), a.data(), b.data(), n);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], a[i] + b[i]);
  ResidualForward(a.data(), a.data(), b.data(), n);  // aliasing
  EXPECT_EQ(0, std::memcmp(a.data(), out.data(), n * 4));

  const int N = 513, C = 131;
  VecF x = RandomF(N * C, 24);
  VecF db(C, 2.0f);
  BiasBackward(db.data(), x.data(), N, C);
  VecD want(C, 2.0);
  for (int r = 0; r < N; ++r)
    for (int c = 0; c < C; ++c) want[c] += x[r * C + c];
  ExpectNear(db, want, "bias grad", 1e-6, 1e-7);
}

TEST(kernels, CrossEntropyFusedLossAndGradient) {
  const int N = 7, V = 1001;
  VecF logits = RandomF(N * V, 25, 3.0f);
  logits[3 * V + 17] = 60.0f;  // a dominant logit: exercises the max subtraction
  std::vector<int32_t> targets = {0, 1000, 17, 17, 500, 3, 999};
  const VecF logits_copy = logits;
  const float scale = 0.37f;
  VecF losses(N), losses_fwd(N), dlogits(N * V, 42.0f);
  CrossEntropyForwardBackward(losses.data(), dlogits.data(), logits.data(), targets.data(), N, V, scale);
  CrossEntropyForward(losses_fwd.data(), logits.data(), targets.data(), N, V);
  EXPECT_EQ(0, std::memcmp(logits.data(), logits_copy.data(), logits.size() * 4)) << "logits modified";
  EXPECT_EQ(0, std::memcmp(losses.data(), losses_fwd.data(), N * 4));
  auto ref = [&](const VecD& x, VecD* per_row) {
    double total = 0;
    for (int n = 0; n < N; ++n) {
      double mx = -1e300, s = 0;
      for (int j = 0; j < V; ++j) mx = std::max(mx, x[n * V + j]);
      for (int j = 0; j < V; ++j) s += std::exp(x[n * V + j] - mx);
      const double l = std::log(s) + mx - x[n * V + targets[n]];
      if (per_row) (*per_row)[n] = l;
      total += l;
    }
    return total;
  };
  VecD want(N);
  ref(ToD(logits), &want);
  ExpectNear(losses, want, "losses", 1e-6, 1e-7);
  VecD g = NumericGrad([&](const VecD& x) { return scale * ref(x, nullptr); }, ToD(logits));
  ExpectNear(dlogits, g, "dlogits", 2e-4, 1e-6);
}

// A diverging run's NaN logits must give a NaN loss (the trainer stops on a non-finite loss),
// without undefined behaviour in ExpF; infinities follow torch.nn.functional.cross_entropy.
TEST(kernels, CrossEntropyPropagatesNanAndHandlesInfinities) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int V = 37;  // > a SIMD width, not a multiple of one: vector body and scalar tail
  const VecF base = RandomF(V, 31);
  // Row kinds: 0 finite, 1 NaN (not the target), 2 NaN at the target, 3 +inf (not the target),
  // 4 -inf (not the target), 5 -inf at the target, 6 all -inf, 7 finite again.
  const int N = 8;
  VecF logits;
  for (int n = 0; n < N; ++n) logits.insert(logits.end(), base.begin(), base.end());
  std::vector<int32_t> targets = {3, 3, 20, 3, 3, 9, 3, 3};
  logits[1 * V + 30] = nan;
  logits[2 * V + 20] = nan;
  logits[3 * V + 5] = inf;
  logits[4 * V + 9] = -inf;
  logits[5 * V + 9] = -inf;
  for (int j = 0; j < V; ++j) logits[6 * V + j] = -inf;
  // Reference for a finite row, and for base with entry 9 removed.
  auto ref = [&](int skip, int t) {
    double mx = -1e300, s = 0;
    for (int j = 0; j < V; ++j)
      if (j != skip) mx = std::max(mx, double(base[j]));
    for (int j = 0; j < V; ++j)
      if (j != skip) s += std::exp(base[j] - mx);
    return std::log(s) + mx - base[t];
  };
  const float scale = 0.5f;
  VecF losses(N, -1.0f), losses_fb(N, -1.0f), dlogits(static_cast<size_t>(N) * V, 7.0f);
  CrossEntropyForward(losses.data(), logits.data(), targets.data(), N, V);
  CrossEntropyForwardBackward(losses_fb.data(), dlogits.data(), logits.data(), targets.data(), N,
                              V, scale);
  for (int n = 0; n < N; ++n) {
    SCOPED_TRACE("row " + std::to_string(n));
    // Both entry points agree, NaNs included.
    EXPECT_TRUE(losses[n] == losses_fb[n] || (std::isnan(losses[n]) && std::isnan(losses_fb[n])))
        << losses[n] << " vs " << losses_fb[n];
  }
  EXPECT_NEAR(losses[0], ref(-1, 3), 1e-5);
  EXPECT_TRUE(std::isnan(losses[1]));
  EXPECT_TRUE(std::isnan(losses[2]));
  EXPECT_TRUE(std::isnan(losses[3]));             // torch: NaN
  EXPECT_NEAR(losses[4], ref(9, 3), 1e-5);        // -inf logit: probability 0, ignored
  EXPECT_EQ(losses[5], inf);                      // target has probability 0
  EXPECT_TRUE(std::isnan(losses[6]));             // no distribution at all
  EXPECT_EQ(losses[7], losses[0]);                // rows are independent
  auto row = [&](int n) { return VecF(dlogits.begin() + n * V, dlogits.begin() + (n + 1) * V); };
  for (float d : row(1)) EXPECT_TRUE(std::isnan(d));
  for (float d : row(3)) EXPECT_TRUE(std::isnan(d));
  // -inf entries get exactly zero gradient; the rest is softmax - onehot over the finite ones.
  for (int n : {4, 5}) {
    const VecF d = row(n);
    double mx = -1e300, s = 0;
    for (int j = 0; j < V; ++j)
      if (j != 9) mx = std::max(mx, double(base[j]));
    for (int j = 0; j < V; ++j)
      if (j != 9) s += std::exp(base[j] - mx);
    for (int j = 0; j < V; ++j) {
      const double p = j == 9 ? 0.0 : std::exp(base[j] - mx) / s;
      const double want = scale * (p - (j == targets[n] ? 1.0 : 0.0));
      EXPECT_NEAR(d[j], want, 1e-6) << "row " << n << " j " << j;
    }
  }
  EXPECT_EQ(0, std::memcmp(row(0).data(), row(7).data(), V * 4));
  for (float d : row(0)) EXPECT_TRUE(std::isfinite(d));
}

TEST(kernels, AdamWUpdateMatchesFormula) {
  const size_t n = 40000;
  VecF p = RandomF(n, 26, 0.1f), g = RandomF(n, 27, 0.01f), m = RandomF(n, 28, 0.001f);
  VecF v = RandomF(n, 29, 1e-5f);
  for (float& x : v) x = std::abs(x);
  AdamWHyper h;
  h.lr = 0.01f;
  h.beta1 = 0.8f;
  h.beta2 = 0.95f;
  h.eps = 1e-6f;
  h.weight_decay = 0.1f;
  h.step = 3;
  VecD wp(n), wm(n), wv(n);
  for (size_t i = 0; i < n; ++i) {
    const double b1 = h.beta1, b2 = h.beta2;
    wm[i] = b1 * m[i] + (1 - b1) * g[i];
    wv[i] = b2 * v[i] + (1 - b2) * double(g[i]) * g[i];
    const double mhat = wm[i] / (1 - std::pow(b1, 3)), vhat = wv[i] / (1 - std::pow(b2, 3));
    wp[i] = p[i] * (1 - double(h.lr) * h.weight_decay) - h.lr * mhat / (std::sqrt(vhat) + h.eps);
  }
  AdamWUpdate(p.data(), g.data(), m.data(), v.data(), n, h);
  ExpectNear(m, wm, "adam m", 1e-6, 1e-6);
  ExpectNear(v, wv, "adam v", 1e-6, 1e-6);
  // p is a difference of two terms of similar size: absolute floor relative to the largest p.
  ExpectNear(p, wp, "adam p", 1e-6, 1e-6);
}

TEST(kernels, SumOfSquaresScaleFillAreThreadCountInvariant) {
  const size_t n = 300007;
  VecF x = RandomF(n, 30);
  double want = 0;
  for (float v : x) want += double(v) * v;
  SetNumThreads(1);
  const double s1 = SumOfSquares(x.data(), n);
  for (int threads : {3, 4, 2}) {
    SetNumThreads(threads);
    EXPECT_EQ(SumOfSquares(x.data(), n), s1) << threads << " threads";
  }
  const double s2 = SumOfSquares(x.data(), n);
  EXPECT_NEAR(s2, want, 1e-10 * want);
  Scale(x.data(), n, 0.5f);
  EXPECT_NEAR(SumOfSquares(x.data(), n), want / 4, 1e-10 * want);
  Fill(x.data(), n, 0.0f);
  EXPECT_EQ(SumOfSquares(x.data(), n), 0.0);
  Fill(x.data(), n, 2.0f);
  EXPECT_EQ(SumOfSquares(x.data(), n), 4.0 * n);
}

TEST(kernels, SetNumThreadsControlsTheTeam) {
  SetNumThreads(1);
  EXPECT_EQ(NumThreads(), 1);
  SetNumThreads(2);
  EXPECT_EQ(NumThreads(), 2);
  SetNumThreads(0);
  EXPECT_EQ(NumThreads(), omp_get_num_procs());
  SetNumThreads(2);
}

}  // namespace
}  // namespace cohort::kernels
