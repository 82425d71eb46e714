// The global sampler: a bijective, epoch-keyed order over the whole dataset, sliced per rank, and
// a data state that resumes the same stream at any world size.
#include "dataloader/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <set>
#include <vector>

namespace cohort::data {
namespace {

std::vector<uint64_t> Image(const Permutation& p) {
  std::vector<uint64_t> out(p.size());
  for (uint64_t i = 0; i < p.size(); ++i) out[i] = p(i);
  return out;
}

TEST(PermutationTest, IsABijectionOnEverySize) {
  for (uint64_t n : {1ull, 2ull, 3ull, 4ull, 5ull, 7ull, 8ull, 100ull, 1000ull, 4095ull, 4096ull,
                     4097ull, 65536ull, 100003ull}) {
    for (uint64_t seed : {0ull, 1337ull}) {
      const Permutation p(n, seed, /*epoch=*/3);
      std::vector<uint64_t> img = Image(p);
      for (uint64_t i = 0; i < n; ++i) {
        ASSERT_LT(img[i], n) << "n=" << n;
        ASSERT_EQ(p.Inverse(img[i]), i) << "n=" << n;
      }
      std::sort(img.begin(), img.end());
      for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(img[i], i) << "n=" << n << " seed=" << seed;
    }
  }
}

// Counts positions i with |p(i) - i| <= 1: a shuffle leaves few samples (nearly) in place.
uint64_t NearlyFixed(const Permutation& p) {
  uint64_t k = 0;
  for (uint64_t i = 0; i < p.size(); ++i) k += (p(i) + 1 >= i && p(i) <= i + 1);
  return k;
}

TEST(PermutationTest, ShufflesAndReshufflesEachEpoch) {
  const uint64_t n = 10000;
  const Permutation e0(n, 7, 0), e0_again(n, 7, 0), e1(n, 7, 1), other_seed(n, 8, 0);
  EXPECT_EQ(Image(e0), Image(e0_again));  // a pure function of (seed, epoch)
  EXPECT_LT(NearlyFixed(e0), 20u);        // ~3 expected for a uniform permutation
  uint64_t same_e1 = 0, same_seed = 0;
  for (uint64_t i = 0; i < n; ++i) {
    same_e1 += e0(i) == e1(i);
    same_seed += e0(i) == other_seed(i);
  }
  EXPECT_LT(same_e1, 20u);  // a new epoch is an unrelated order (~1 agreement expected)
  EXPECT_LT(same_seed, 20u);
  // Consecutive positions are not neighbouring samples.
  uint64_t adjacent = 0;
  for (uint64_t i = 0; i + 1 < n; ++i) adjacent += (e0(i + 1) == e0(i) + 1);
  EXPECT_LT(adjacent, 20u);
  // Roughly uniform: each tenth of the positions draws about a tenth of each tenth of the samples.
  for (uint64_t part = 0; part < 10; ++part) {
    uint64_t low = 0;
    for (uint64_t i = part * n / 10; i < (part + 1) * n / 10; ++i) low += e0(i) < n / 10;
    EXPECT_GT(low, 60u);
    EXPECT_LT(low, 140u);
  }
}

TEST(PermutationTest, HugeDatasetsInConstantTimeAndMemory) {
  const uint64_t n = 3'000'000'000'017ull;  // ~3e12 samples: no table could hold this
  const Permutation p(n, 42, 5);
  for (uint64_t i : {uint64_t{0}, uint64_t{1}, uint64_t{1'000'000'000}, n / 2, n - 1}) {
    const uint64_t x = p(i);
    ASSERT_LT(x, n);
    ASSERT_EQ(p.Inverse(x), i);
  }
}

TEST(GlobalSamplerTest, RankSlicesUnionToTheOneRankBatch) {
  const uint64_t n = 1009;  // prime: batches straddle epoch boundaries at odd places
  const GlobalSampler s(n, 1337, /*shuffle=*/true);
  const int B = 5;
  for (int world : {1, 2, 3, 4}) {
    for (uint64_t start : {uint64_t{0}, uint64_t{17}, uint64_t{1000}, 5 * n - 3}) {
      std::vector<uint64_t> one(static_cast<size_t>(world * B)), got;
      s.RankSlice(start, 1, 0, one);
      for (int r = 0; r < world; ++r) {
        std::vector<uint64_t> slice(B);
        s.RankSlice(start, world, r, slice);
        got.insert(got.end(), slice.begin(), slice.end());
      }
      EXPECT_EQ(got, one) << "world " << world << " start " << start;
      for (size_t k = 0; k < one.size(); ++k) EXPECT_EQ(one[k], s.SampleAt(start + k));
    }
  }
}

TEST(GlobalSamplerTest, EveryEpochVisitsEverySampleOnce) {
  const uint64_t n = 777;
  const GlobalSampler s(n, 3, true);
  for (uint64_t epoch = 0; epoch < 3; ++epoch) {
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < n; ++i) seen.insert(s.SampleAt(epoch * n + i));
    EXPECT_EQ(seen.size(), n);
  }
  EXPECT_NE(s.SampleAt(0), s.SampleAt(n));  // reshuffled (a fixed seed: checked, not by chance)
}

TEST(GlobalSamplerTest, UnshuffledIsTheIdentityOrder) {
  const GlobalSampler s(10, 99, /*shuffle=*/false);
  std::vector<uint64_t> slice(4);
  s.RankSlice(8, 2, 1, slice);  // positions 12..15
  EXPECT_EQ(slice, (std::vector<uint64_t>{2, 3, 4, 5}));
}

// Trains "steps" at one world size, saves the state, and continues at others: the concatenated
// global batches must be exactly the uninterrupted stream.
TEST(GlobalSamplerTest, ResumeAtAnotherWorldSizeContinuesTheSameStream) {
  const uint64_t n = 503;
  const GlobalSampler s(n, 2024, true);
  std::vector<uint64_t> consumed;
  DataState state{2024, 0, 0};
  // (world, per-rank batch, micro-steps): 2 ranks, then 3 ranks, then 4, then 1.
  const int plan[][3] = {{2, 8, 40}, {3, 5, 70}, {4, 4, 33}, {1, 16, 20}};
  for (const auto& [world, B, steps] : plan) {
    // A fresh sampler per "run", as after a restart: only the state carries over.
    const GlobalSampler run(n, state.seed, true);
    uint64_t pos = run.Position(state);
    for (int step = 0; step < steps; ++step) {
      for (int r = 0; r < world; ++r) {
        std::vector<uint64_t> slice(B);
        run.RankSlice(pos, world, r, slice);
        consumed.insert(consumed.end(), slice.begin(), slice.end());
      }
      pos += static_cast<uint64_t>(world * B);
    }
    state = run.StateAt(pos);
    EXPECT_LT(state.cursor, n);
  }
  ASSERT_EQ(consumed.size(), 2u * 8 * 40 + 3 * 5 * 70 + 4 * 4 * 33 + 16 * 20);
  for (size_t p = 0; p < consumed.size(); ++p) ASSERT_EQ(consumed[p], s.SampleAt(p)) << "position " << p;
  EXPECT_EQ(state.epoch, consumed.size() / n);
  EXPECT_EQ(state.cursor, consumed.size() % n);
}

}  // namespace
}  // namespace cohort::data
