// The global sampler: which sample every rank reads at every step, as a pure function of
// (seed, epoch, position), independent of the number of ranks.
//
// The data of a job is one stream of sample indexes: global position p = epoch * n + i (n =
// samples in the dataset, 0 <= i < n) holds sample Permutation(n, seed, epoch)(i). Every
// micro-step consumes the next global batch of N * B consecutive positions; data-parallel rank r
// of N reads positions [start + r*B, start + (r+1)*B) of it. So the union of the ranks' samples is
// exactly the batch one rank with N * B rows would read, and the data state a checkpoint needs is
// three integers (seed, epoch, cursor = i of the next unread position), the same at any N:
// resuming at another world size continues the same stream from the same position.
//
// The permutation is a keyed Feistel network on the smallest even number of bits covering n, with
// cycle walking (values >= n are encrypted again until they fall in [0, n)): a bijection on
// [0, n) computed in O(1) expected time (fewer than 4 rounds of walking on average) and O(1)
// memory, so no rank ever holds an O(dataset) table, and seeking to any position is constant time.
//
// All types here are immutable values: thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace cohort::data {

// A pseudo-random bijection on [0, n), keyed by (seed, epoch). n >= 1.
class Permutation {
 public:
  Permutation(uint64_t n, uint64_t seed, uint64_t epoch);
  uint64_t size() const { return n_; }
  // The image of i (i < size()); CHECK-fails otherwise.
  uint64_t operator()(uint64_t i) const;
  // The preimage: Inverse(operator()(i)) == i.
  uint64_t Inverse(uint64_t x) const;

 private:
  static constexpr int kRounds = 6;
  uint64_t Encrypt(uint64_t x) const;
  uint64_t Decrypt(uint64_t x) const;
  uint64_t Round(int r, uint64_t half) const;

  uint64_t n_;
  int half_bits_;
  uint64_t half_mask_;
  uint64_t keys_[kRounds];
};

// Where a job is in its data stream. The same at every world size.
struct DataState {
  uint64_t seed = 0;
  uint64_t epoch = 0;
  uint64_t cursor = 0;  // position within the epoch of the next sample to read, < num_samples
  bool operator==(const DataState&) const = default;
};
std::string ToString(const DataState& s);  // "epoch 3, sample 1200 of 45000 (seed 1337)"-style

class GlobalSampler {
 public:
  // shuffle = false gives the identity order in every epoch (validation: the same batches at
  // every evaluation). n >= 1.
  GlobalSampler(uint64_t num_samples, uint64_t seed, bool shuffle);

  uint64_t num_samples() const { return n_; }
  uint64_t seed() const { return seed_; }
  bool shuffle() const { return shuffle_; }

  // The sample at global position p (epoch p / n, index p % n).
  uint64_t SampleAt(uint64_t position) const;

  // Rank `rank` of `world` reading the global batch of world * out.size() positions that starts
  // at `start`: out[b] = SampleAt(start + rank * out.size() + b).
  void RankSlice(uint64_t start, int world, int rank, std::span<uint64_t> out) const;

  // Conversions between a global position and a DataState of this sampler.
  uint64_t Position(const DataState& s) const { return s.epoch * n_ + s.cursor; }
  DataState StateAt(uint64_t position) const { return {seed_, position / n_, position % n_}; }

 private:
  uint64_t n_;
  uint64_t seed_;
  bool shuffle_;
};

}  // namespace cohort::data
