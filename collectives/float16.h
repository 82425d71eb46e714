// IEEE binary16 (fp16) and bfloat16 <-> binary32 conversions, round to nearest even, portable
// (no F16C needed). Used by the host backends, which reduce 16-bit buffers in fp32.
//  - Widening is exact.
//  - Narrowing rounds to nearest, ties to even; overflow gives +-inf; NaN stays NaN (quiet).
//    fp16 keeps subnormals.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace cohort::collectives {

inline float Bf16ToFloat(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

inline uint16_t FloatToBf16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in fp32
    const float f = static_cast<float>(man) * 0x1p-24f;
    return sign ? -f : f;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));  // inf / NaN
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (man << 13));
}

inline uint16_t FloatToHalf(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u >= 0x7f800000u) return sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u);  // NaN / inf
  if (u >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (u < 0x38800000u) {
    // Below the smallest normal (2^-14): a subnormal m * 2^-24; a * 2^24 is exact, and
    // nearbyint rounds it to nearest even (m = 1024 is the smallest normal's encoding).
    const float a = std::bit_cast<float>(u);
    return sign | static_cast<uint16_t>(std::nearbyint(a * 0x1p24f));
  }
  const uint32_t r = u - 0x38000000u;  // rebias the exponent from 127 to 15
  return sign | static_cast<uint16_t>((r + 0xfffu + ((r >> 13) & 1u)) >> 13);
}

}  // namespace cohort::collectives
