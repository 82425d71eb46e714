// Internal to kernels/cpu: vectorizable scalar math used inside `#pragma omp simd` loops.
//
// glibc's expf/tanhf are not auto-vectorized without -ffast-math, and the attention softmax,
// cross-entropy and GELU evaluate ~10^8 of them per GPT-2 124M step, so these are written with
// plain float arithmetic and bit manipulation that GCC turns into AVX2/AVX-512 code.
#pragma once

#include <bit>
#include <cstdint>

namespace cohort::kernels::internal {

// e^x with ~1-2 ulp relative error for x in [-87.3, 88.3] (Cephes expf: range reduction by
// ln 2 in two parts, degree-5 minimax polynomial, scale by 2^n via the exponent bits).
// Returns 0 below -87.3 (true result is denormal) and saturates at e^88.3 above.
inline float ExpF(float x) {
  const bool underflow = x < -87.3f;
  x = x > 88.3f ? 88.3f : x;
  x = x < -87.3f ? -87.3f : x;
  // n = round(x / ln2) via the 1.5 * 2^23 trick (exact under round-to-nearest, no libm call).
  const float t = x * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  const float result = y * std::bit_cast<float>(bits);
  return underflow ? 0.0f : result;
}

inline constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)
inline constexpr float kGeluA = 0.044715f;

// GELU, tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
// Evaluated as x * sigmoid(2u) (identical mathematically; no cancellation for negative x).
inline float GeluF(float x) {
  const float u = kGeluC * (x + kGeluA * x * x * x);
  return x / (1.0f + ExpF(-2.0f * u));
}

// d gelu / dx = s + x * 2 s (1 - s) * u',  s = sigmoid(2u),  u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
inline float GeluGradF(float x) {
  const float u = kGeluC * (x + kGeluA * x * x * x);
  const float e = ExpF(-2.0f * u);
  const float s = 1.0f / (1.0f + e);
  const float one_minus_s = e * s;  // = e / (1 + e); no cancellation when s is close to 1
  const float du = kGeluC * (1.0f + 3.0f * kGeluA * x * x);
  return s + 2.0f * x * s * one_minus_s * du;
}

}  // namespace cohort::kernels::internal
