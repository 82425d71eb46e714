// Non-cryptographic 64-bit hashing for counter-based randomness (weight initialization, data
// order): any element can be drawn independently from (seed, index), so results never depend on
// the thread count, the world size or the order of evaluation. Pure functions, thread-safe.
// Not for anything adversarial (no secrecy, no collision resistance against chosen inputs).
#pragma once

#include <cstdint>

namespace cohort {

// The golden-ratio increment of splitmix64: 2^64 / phi, rounded to odd.
inline constexpr uint64_t kSplitMix64Gamma = 0x9E3779B97F4A7C15ULL;

// One step of Vigna's splitmix64 generator (the reference splitmix64.c next()), taking the
// state as an argument:
//   x += 0x9e3779b97f4a7c15;
//   z = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9;
//   z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
//   return z ^ (z >> 31);
// (all arithmetic mod 2^64). A bijection on uint64_t with full avalanche. Example values:
// SplitMix64(0) == 0xE220A8397B1DCDAF, SplitMix64(1) == 0x910A2DEC89025CC1. The k-th output
// (k = 1, 2, ...) of a splitmix64 generator seeded with s is SplitMix64(s + (k - 1) * gamma).
// Never change: data order and initial weights of existing jobs depend on these exact bits.
constexpr uint64_t SplitMix64(uint64_t x) {
  x += kSplitMix64Gamma;
  uint64_t z = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Mixes v into seed: SplitMix64(seed + v * 0x9e3779b97f4a7c15) (mod 2^64), i.e. output number
// v + 1 of a splitmix64 generator seeded with `seed`. So HashCombine(s, 0), HashCombine(s, 1), ...
// is exactly the splitmix64 stream from s (a well-tested counter-based generator), and for a
// fixed v it is a bijection of seed. It is not symmetric (HashCombine(a, b) != HashCombine(b, a)
// in general); for a fixed seed, distinct v give distinct results. Chain it to key by several
// values: HashCombine(HashCombine(SplitMix64(seed), a), b). Never change (see SplitMix64).
constexpr uint64_t HashCombine(uint64_t seed, uint64_t v) {
  return SplitMix64(seed + v * kSplitMix64Gamma);
}

}  // namespace cohort
