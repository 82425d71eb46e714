#include "dataloader/sampler.h"

#include <algorithm>
#include <bit>

#include "common/check.h"
#include "common/hash.h"

namespace cohort::data {

// Domain: 2 * half_bits_ bits, the smallest even width with 2^width >= n (at least 2 bits, so a
// Feistel half is never empty). Then 2^width < 4n and cycle walking takes < 4 encryptions on
// average.
Permutation::Permutation(uint64_t n, uint64_t seed, uint64_t epoch) : n_(n) {
  COHORT_CHECK(n >= 1) << "permutation of an empty set";
  const int bits = n <= 1 ? 1 : std::bit_width(n - 1);  // bits needed for n - 1
  half_bits_ = std::max(1, (bits + 1) / 2);
  half_mask_ = half_bits_ >= 64 ? ~uint64_t{0} : (uint64_t{1} << half_bits_) - 1;
  // Round keys from (seed, epoch): a new epoch is an unrelated permutation. The constant keeps
  // these keys apart from the other users of HashCombine(seed, ...) (weights, dropout).
  const uint64_t base = HashCombine(HashCombine(SplitMix64(seed ^ 0x5A3D1E6C0F7B2948ULL), epoch), n);
  for (int r = 0; r < kRounds; ++r) keys_[r] = HashCombine(base, static_cast<uint64_t>(r));
}

uint64_t Permutation::Round(int r, uint64_t half) const {
  return SplitMix64(keys_[r] ^ half) & half_mask_;
}

uint64_t Permutation::Encrypt(uint64_t x) const {
  uint64_t left = x >> half_bits_, right = x & half_mask_;
  for (int r = 0; r < kRounds; ++r) {
    const uint64_t next = left ^ Round(r, right);
    left = right;
    right = next;
  }
  return (left << half_bits_) | right;
}

uint64_t Permutation::Decrypt(uint64_t x) const {
  uint64_t left = x >> half_bits_, right = x & half_mask_;
  for (int r = kRounds - 1; r >= 0; --r) {
    const uint64_t prev = right ^ Round(r, left);
    right = left;
    left = prev;
  }
  return (left << half_bits_) | right;
}

// Cycle walking: Encrypt permutes [0, 2^width); following the cycle of i from i until the first
// value below n gives a bijection on [0, n), since each cycle visits its members below n in a
// fixed order and maps each to the next one.
uint64_t Permutation::operator()(uint64_t i) const {
  COHORT_CHECK(i < n_) << "permutation index " << i << " out of range [0, " << n_ << ")";
  uint64_t x = Encrypt(i);
  while (x >= n_) x = Encrypt(x);
  return x;
}

uint64_t Permutation::Inverse(uint64_t x) const {
  COHORT_CHECK(x < n_) << "permutation value " << x << " out of range [0, " << n_ << ")";
  uint64_t i = Decrypt(x);
  while (i >= n_) i = Decrypt(i);
  return i;
}

std::string ToString(const DataState& s) {
  return "epoch " + std::to_string(s.epoch) + ", cursor " + std::to_string(s.cursor) + " (seed " +
         std::to_string(s.seed) + ")";
}

GlobalSampler::GlobalSampler(uint64_t num_samples, uint64_t seed, bool shuffle)
    : n_(num_samples), seed_(seed), shuffle_(shuffle) {
  COHORT_CHECK(num_samples >= 1) << "sampler over an empty dataset";
}

uint64_t GlobalSampler::SampleAt(uint64_t position) const {
  const uint64_t epoch = position / n_, i = position % n_;
  if (!shuffle_) return i;
  // Building the permutation costs 7 hashes; callers reading whole batches stay within one or two
  // epochs, so this is not worth caching.
  return Permutation(n_, seed_, epoch)(i);
}

void GlobalSampler::RankSlice(uint64_t start, int world, int rank, std::span<uint64_t> out) const {
  COHORT_CHECK(world >= 1 && rank >= 0 && rank < world) << "rank " << rank << " of " << world;
  const uint64_t first = start + static_cast<uint64_t>(rank) * out.size();
  if (!shuffle_) {
    for (size_t b = 0; b < out.size(); ++b) out[b] = (first + b) % n_;
    return;
  }
  // One permutation per epoch the slice touches.
  uint64_t epoch = first / n_;
  Permutation perm(n_, seed_, epoch);
  for (size_t b = 0; b < out.size(); ++b) {
    const uint64_t p = first + b;
    if (p / n_ != epoch) {
      epoch = p / n_;
      perm = Permutation(n_, seed_, epoch);
    }
    out[b] = perm(p % n_);
  }
}

}  // namespace cohort::data
