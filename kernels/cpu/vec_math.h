// Internal to kernels/cpu: vectorizable scalar math used inside `#pragma omp simd` loops.
//
// glibc's expf/tanhf are not auto-vectorized without -ffast-math, and the attention softmax,
// cross-entropy and GELU evaluate ~10^8 of them per GPT-2 124M step, so these are written with
// plain float arithmetic and bit manipulation that GCC turns into AVX2/AVX-512 code.
#pragma once

#include <bit>
#include <cstdint>
#include <limits>

namespace cohort::kernels::internal {

// e^x with ~1-2 ulp relative error for x in [-87.3, 88.3] (Cephes expf: range reduction by
// ln 2 in two parts, degree-5 minimax polynomial, scale by 2^n via the exponent bits).
// Outside that range: 0 for x < -87.3 (the true result is denormal), including -inf; finite x
// above 88.3 saturate at e^88.3 (never overflow to inf); +inf gives +inf; NaN gives NaN, so a
// diverging run's NaN logits surface as a NaN loss. There is no float -> int conversion (which
// is undefined behaviour for NaN): 2^n is built from the integer that the rounding trick leaves
// in the mantissa, in unsigned arithmetic. Branch-free (selects only), so it vectorizes inside
// `omp simd` loops; for finite x the results are bit-identical to the earlier float -> int form.
inline float ExpF(float x) {
  // Clamp to [-87.3, 88.3]. Written as (c < x ? c : x): a comparison with NaN is false, so NaN
  // passes through (and makes y NaN below) instead of being clamped to a finite value.
  float xc = 88.3f < x ? 88.3f : x;
  xc = -87.3f > xc ? -87.3f : xc;
  // n = round(xc / ln2) via the 1.5 * 2^23 trick (exact under round-to-nearest, no libm call):
  // `shifted` is 1.5 * 2^23 + n, whose bit pattern is 0x4B400000 + n.
  const float t = xc * 1.44269504088896341f;
  const float shifted = t + 12582912.0f;
  const float n = shifted - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  // 2^n: biased exponent n + 127, in [1, 254] for finite xc (n in [-126, 127]).
  const uint32_t bits = (std::bit_cast<uint32_t>(shifted) - 0x4B400000u + 127u) << 23;
  const float result = x < -87.3f ? 0.0f : y * std::bit_cast<float>(bits);
  return x == std::numeric_limits<float>::infinity() ? x : result;
}

inline constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)
inline constexpr float kGeluA = 0.044715f;

// Beyond |x| = kGeluTail, GELU is x (resp. -0) and its derivative 1 (resp. 0) to float
// precision (at x = 10, 2u = 87.3: ExpF(-2u) is already 0). There the results are selected
// instead of computed: the formula's x^2 and x^3 overflow for |x| > ~1e13 and its sigmoid
// saturates, which turned finite inputs into garbage or NaN (0 * inf) gradients. Inside the
// range the results are unchanged. (The formula is still evaluated for every lane and the result
// selected afterwards: clamping x before it made GCC mask the whole computation per lane, which
// was ~40% slower.)
inline constexpr float kGeluTail = 10.0f;

// GELU, tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
// Evaluated as x * sigmoid(2u) (identical mathematically; no cancellation for negative x).
// NaN -> NaN, +inf -> +inf, -inf -> NaN (-inf * 0, as torch's tanh GELU); x < -kGeluTail -> -0.
inline float GeluF(float x) {
  const float u = kGeluC * (x + kGeluA * x * x * x);
  const float y = x / (1.0f + ExpF(-2.0f * u));
  return x < -kGeluTail ? x * 0.0f : y;
}

// d gelu / dx = s + x * 2 s (1 - s) * u',  s = sigmoid(2u),  u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
// NaN -> NaN; x > kGeluTail -> 1 (including +inf); x < -kGeluTail -> 0 (including -inf).
inline float GeluGradF(float x) {
  const float u = kGeluC * (x + kGeluA * x * x * x);
  const float e = ExpF(-2.0f * u);
  const float s = 1.0f / (1.0f + e);
  const float one_minus_s = e * s;  // = e / (1 + e); no cancellation when s is close to 1
  const float du = kGeluC * (1.0f + 3.0f * kGeluA * x * x);
  const float g = s + 2.0f * x * s * one_minus_s * du;
  const float g_hi = x > kGeluTail ? 1.0f : g;
  return x < -kGeluTail ? 0.0f : g_hi;
}

}  // namespace cohort::kernels::internal
