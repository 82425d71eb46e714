// GradientReducer on the in-process backend (N ranks as threads): bucket layout, DDP averaging,
// ZeRO-1 reduce-scatter ownership + parameter all-gather, and failure propagation.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "collectives/in_process.h"
#include "collectives/reducer.h"

namespace cohort::collectives {
namespace {

using namespace std::chrono_literals;
using Mode = ReducerOptions::Mode;

// Runs body(rank, comm) on n ranks as threads.
void RunRanks(InProcessGroup& group, const std::function<void(int, Communicator&)>& body) {
  std::vector<std::thread> threads;
  for (int r = 0; r < group.size(); ++r) {
    threads.emplace_back([&, r] {
      auto comm = group.Connect(r);
      body(r, *comm);
    });
  }
  for (auto& t : threads) t.join();
}

// A gradient value that differs per rank and element and is exactly representable, so the
// average of N ranks has an exact expected value.
float Grad(int rank, size_t i) { return static_cast<float>((i % 97) * 4 + static_cast<size_t>(rank) * 8); }
float AvgGrad(int world, size_t i) {
  double s = 0;
  for (int r = 0; r < world; ++r) s += Grad(r, i);
  return static_cast<float>(s / world);
}
// Sums are exact; the 1/N scaling may round differently from a division by one ulp.
bool Close(float got, float want) { return std::fabs(got - want) <= 1e-6f * std::max(1.0f, std::fabs(want)); }

TEST(ReducerTest, BucketsCoverTheBufferFromTheEnd) {
  InProcessGroup group(1, 5s);
  auto comm = group.Connect(0);
  std::vector<float> g(1000);
  ReducerOptions o;
  o.bucket_bytes = 300 * sizeof(float);
  auto r = GradientReducer::Create(comm.get(), g.data(), g.size(), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ((*r)->num_buckets(), 4u);
  EXPECT_EQ((*r)->bucket(0).offset, 700u);
  EXPECT_EQ((*r)->bucket(0).size, 300u);
  EXPECT_EQ((*r)->bucket(3).offset, 0u);
  EXPECT_EQ((*r)->bucket(3).size, 100u);
}

TEST(ReducerTest, RejectsBucketSmallerThanOneElementPerRank) {
  InProcessGroup group(4, 5s);
  auto comm = group.Connect(0);
  std::vector<float> g(10);
  ReducerOptions o;
  o.bucket_bytes = 3 * sizeof(float);
  auto r = GradientReducer::Create(comm.get(), g.data(), g.size(), o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), ::testing::HasSubstr("bucket"));
}

class ReducerModeTest : public ::testing::TestWithParam<std::tuple<int, size_t, size_t>> {};

// DDP: after Finish every rank holds the exact average, identical on every rank, whatever the
// order and granularity in which backward reports progress.
TEST_P(ReducerModeTest, AllReduceAveragesEveryBucket) {
  const auto [world, n, bucket_elems] = GetParam();
  InProcessGroup group(world, 30s);
  std::vector<std::vector<float>> grads(static_cast<size_t>(world), std::vector<float>(n));
  std::atomic<int> failures{0};
  RunRanks(group, [&](int rank, Communicator& comm) {
    auto& g = grads[static_cast<size_t>(rank)];
    ReducerOptions o;
    o.bucket_bytes = bucket_elems * sizeof(float);
    auto red = GradientReducer::Create(&comm, g.data(), n, o);
    if (!red.ok()) { ++failures; return; }
    for (int round = 0; round < 3; ++round) {  // the reducer is reused step after step
      for (size_t i = 0; i < n; ++i) g[i] = Grad(rank, i) * static_cast<float>(round + 1);
      (*red)->Begin();
      // Backward "finalizes" the buffer top-down in uneven steps (rank-dependent, as real
      // backward timing would be).
      for (size_t mark = n; mark > 0;) {
        mark = mark > 37u + static_cast<size_t>(rank) ? mark - 37 - static_cast<size_t>(rank) : 0;
        (*red)->MarkFinalFrom(mark);
      }
      Status st = (*red)->Finish();
      if (!st.ok()) { ++failures; return; }
      for (size_t i = 0; i < n; ++i) {
        if (!Close(g[i], AvgGrad(world, i) * static_cast<float>(round + 1))) { ++failures; return; }
      }
      if ((*red)->last_stats().buckets != (*red)->num_buckets()) { ++failures; return; }
    }
  });
  EXPECT_EQ(failures.load(), 0);
  for (int r = 1; r < world; ++r) EXPECT_EQ(grads[static_cast<size_t>(r)], grads[0]);
}

// ZeRO-1: the owned ranges of all ranks partition the buffer; after Finish each rank holds the
// exact average on its owned ranges; AllGatherParams assembles every rank's owned parameters.
TEST_P(ReducerModeTest, ReduceScatterOwnsDisjointChunksAndGathersParams) {
  const auto [world, n, bucket_elems] = GetParam();
  InProcessGroup group(world, 30s);
  std::vector<std::vector<ElementRange>> owned(static_cast<size_t>(world));
  std::vector<std::vector<float>> params(static_cast<size_t>(world), std::vector<float>(n, -1.0f));
  std::atomic<int> failures{0};
  RunRanks(group, [&](int rank, Communicator& comm) {
    std::vector<float> g(n);
    for (size_t i = 0; i < n; ++i) g[i] = Grad(rank, i);
    ReducerOptions o;
    o.mode = Mode::kReduceScatter;
    o.bucket_bytes = bucket_elems * sizeof(float);
    auto red = GradientReducer::Create(&comm, g.data(), n, o);
    if (!red.ok()) { ++failures; return; }
    (*red)->Begin();
    if (!(*red)->Finish().ok()) { ++failures; return; }
    owned[static_cast<size_t>(rank)] = (*red)->owned_ranges();
    auto& p = params[static_cast<size_t>(rank)];
    for (const ElementRange& r : (*red)->owned_ranges()) {
      for (size_t i = r.offset; i < r.offset + r.size; ++i) {
        if (!Close(g[i], AvgGrad(world, i))) { ++failures; return; }
        p[i] = static_cast<float>(i) * 0.5f;  // "the optimizer updated my shard"
      }
    }
    if (!(*red)->AllGatherParams(p.data()).ok()) ++failures;
  });
  ASSERT_EQ(failures.load(), 0);
  std::vector<int> cover(n, 0);
  size_t total = 0;
  for (const auto& ranges : owned) {
    for (const ElementRange& r : ranges) {
      total += r.size;
      for (size_t i = r.offset; i < r.offset + r.size; ++i) ++cover[i];
    }
  }
  EXPECT_EQ(total, n);
  EXPECT_TRUE(std::all_of(cover.begin(), cover.end(), [](int c) { return c == 1; }));
  // Optimizer state per rank is ~1/N of the model (at most one padded chunk per bucket more).
  for (const auto& ranges : owned) {
    size_t mine = 0;
    for (const ElementRange& r : ranges) mine += r.size;
    const size_t buckets = (n + bucket_elems - 1) / bucket_elems;
    EXPECT_LE(mine, n / static_cast<size_t>(world) + buckets);
  }
  for (int r = 0; r < world; ++r) {
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(params[static_cast<size_t>(r)][i], static_cast<float>(i) * 0.5f)
          << "rank " << r << " element " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, ReducerModeTest,
    ::testing::Values(std::make_tuple(1, size_t{1000}, size_t{256}),
                      std::make_tuple(2, size_t{1}, size_t{64}),     // fewer elements than ranks
                      std::make_tuple(2, size_t{1001}, size_t{100}),  // uneven last bucket
                      std::make_tuple(3, size_t{1000}, size_t{7}),    // many tiny buckets
                      std::make_tuple(3, size_t{12345}, size_t{1 << 20}),  // one bucket
                      std::make_tuple(4, size_t{4099}, size_t{512})));

// The point of the reducer: a bucket handed over mid-backward is reduced while the caller goes on
// (here the caller just waits, without calling Finish), not when backward ends.
TEST(ReducerTest, BucketsAreReducedBeforeFinish) {
  InProcessGroup group(2, std::chrono::seconds(30));
  std::atomic<int> early{0};
  RunRanks(group, [&](int rank, Communicator& comm) {
    std::vector<float> g(1000, static_cast<float>(rank));
    ReducerOptions o;
    o.bucket_bytes = 250 * sizeof(float);
    auto red = GradientReducer::Create(&comm, g.data(), g.size(), o);
    ASSERT_TRUE(red.ok());
    (*red)->Begin();
    (*red)->MarkFinalFrom(500);  // "backward" has finished the top half: buckets 0 and 1
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while ((*red)->buckets_done() < 2 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if ((*red)->buckets_done() == 2) ++early;  // reduced while "backward" was still running
    ASSERT_TRUE((*red)->Finish().ok());
    EXPECT_EQ(g[0], 0.5f);
    EXPECT_EQ(g[999], 0.5f);
  });
  EXPECT_EQ(early.load(), 2);
}

TEST(ReducerTest, AbortedGroupFailsFinishPromptly) {
  InProcessGroup group(2, 30s);
  std::vector<Status> results(2);
  const auto start = std::chrono::steady_clock::now();
  RunRanks(group, [&](int rank, Communicator& comm) {
    std::vector<float> g(10000, 1.0f);
    ReducerOptions o;
    o.bucket_bytes = 1000 * sizeof(float);
    auto red = GradientReducer::Create(&comm, g.data(), g.size(), o);
    ASSERT_TRUE(red.ok());
    (*red)->Begin();
    if (rank == 1) {
      group.Abort("rank 1 died");  // a dead peer, as the transport would report it
    }
    results[static_cast<size_t>(rank)] = (*red)->Finish();
  });
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  for (const Status& s : results) {
    EXPECT_EQ(s.code(), Code::kUnavailable) << s.ToString();
    EXPECT_THAT(s.message(), ::testing::HasSubstr("rank 1 died"));
  }
}

TEST(ReducerTest, MissingPeerIsADeadlineNotAHang) {
  InProcessGroup group(2, 300ms);
  auto comm = group.Connect(0);
  std::vector<float> g(100, 1.0f);
  auto red = GradientReducer::Create(comm.get(), g.data(), g.size(), ReducerOptions());
  ASSERT_TRUE(red.ok());
  (*red)->Begin();
  Status st = (*red)->Finish();  // rank 1 never joins
  EXPECT_EQ(st.code(), Code::kDeadlineExceeded) << st.ToString();
  EXPECT_THAT(st.message(), ::testing::HasSubstr("gradient all-reduce"));
}

}  // namespace
}  // namespace cohort::collectives
