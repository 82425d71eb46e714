// Conformance suite for the Communicator contract, run here on the in-process backend (N ranks as
// threads). The MPI/Gloo backends will run the same checks under real launchers.
#include <atomic>
#include <chrono>
#include <functional>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "collectives/in_process.h"

namespace cohort::collectives {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

// Runs body(comm) on `n` ranks as threads; returns each rank's Status.
std::vector<Status> RunRanks(InProcessGroup& group,
                             const std::function<Status(Communicator&)>& body) {
  std::vector<Status> results(static_cast<size_t>(group.size()));
  std::vector<std::thread> threads;
  for (int r = 0; r < group.size(); ++r) {
    threads.emplace_back([&, r] {
      auto comm = group.Connect(r);
      results[static_cast<size_t>(r)] = body(*comm);
    });
  }
  for (auto& t : threads) t.join();
  return results;
}

// A value whose sums over up to 4 ranks are exact in float.
float Value(int rank, size_t i) { return static_cast<float>((rank + 1) * static_cast<int>(i % 97)) + 0.5f; }
float SumOver(int n, size_t i) {
  float s = 0;
  for (int r = 0; r < n; ++r) s += Value(r, i);
  return s;
}

class CollectivesTest : public ::testing::TestWithParam<std::tuple<int, size_t>> {};

TEST_P(CollectivesTest, AllReduceSumAndAvg) {
  auto [n, count] = GetParam();
  InProcessGroup group(n, 30s);
  auto results = RunRanks(group, [&, n = n, count = count](Communicator& c) -> Status {
    std::vector<float> buf(count);
    for (size_t i = 0; i < count; ++i) buf[i] = Value(c.rank(), i);
    RETURN_IF_ERROR(c.AllReduce(buf.data(), count, DataType::kFloat32, ReduceOp::kSum));
    for (size_t i = 0; i < count; ++i) {
      if (buf[i] != SumOver(n, i)) return Internal("sum mismatch at " + std::to_string(i));
    }
    for (size_t i = 0; i < count; ++i) buf[i] = Value(c.rank(), i);
    RETURN_IF_ERROR(c.AllReduce(buf.data(), count, DataType::kFloat32, ReduceOp::kAvg));
    for (size_t i = 0; i < count; ++i) {
      if (buf[i] != SumOver(n, i) * (1.0f / n)) return Internal("avg mismatch at " + std::to_string(i));
    }
    return Status::Ok();
  });
  for (auto& s : results) EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST_P(CollectivesTest, ReduceScatterAndAllGatherRoundTrip) {
  auto [n, count] = GetParam();
  InProcessGroup group(n, 30s);
  auto results = RunRanks(group, [&, n = n, count = count](Communicator& c) -> Status {
    std::vector<float> in(count * n), shard(count), all(count * n);
    for (size_t i = 0; i < in.size(); ++i) in[i] = Value(c.rank(), i);
    RETURN_IF_ERROR(c.ReduceScatter(in.data(), shard.data(), count, DataType::kFloat32, ReduceOp::kSum));
    for (size_t i = 0; i < count; ++i) {
      if (shard[i] != SumOver(n, c.rank() * count + i)) return Internal("reduce-scatter mismatch");
    }
    RETURN_IF_ERROR(c.AllGather(shard.data(), all.data(), count, DataType::kFloat32));
    for (size_t i = 0; i < all.size(); ++i) {
      if (all[i] != SumOver(n, i)) return Internal("all-gather mismatch at " + std::to_string(i));
    }
    return Status::Ok();
  });
  for (auto& s : results) EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST_P(CollectivesTest, BroadcastFromEveryRoot) {
  auto [n, count] = GetParam();
  InProcessGroup group(n, 30s);
  auto results = RunRanks(group, [&, n = n, count = count](Communicator& c) -> Status {
    for (int root = 0; root < n; ++root) {
      std::vector<float> buf(count);
      for (size_t i = 0; i < count; ++i) buf[i] = Value(c.rank(), i);
      RETURN_IF_ERROR(c.Broadcast(buf.data(), count * sizeof(float), root));
      for (size_t i = 0; i < count; ++i) {
        if (buf[i] != Value(root, i)) return Internal("broadcast mismatch");
      }
    }
    return c.Barrier();
  });
  for (auto& s : results) EXPECT_TRUE(s.ok()) << s.ToString();
}

INSTANTIATE_TEST_SUITE_P(Sizes, CollectivesTest,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4),
                                            ::testing::Values(size_t{1}, size_t{7}, size_t{1000},
                                                              size_t{(1 << 20) + 3})));

TEST(CollectivesFailureTest, MissingPeerTimesOutAndNamesIt) {
  InProcessGroup group(3, 300ms);
  const auto start = std::chrono::steady_clock::now();
  auto results = RunRanks(group, [](Communicator& c) -> Status {
    if (c.rank() == 2) return Status::Ok();  // rank 2 never joins the collective
    float x = 1;
    return c.AllReduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
  });
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_LT(elapsed, 5s);  // bounded by the timeout, not a hang
  int deadline = 0, unavailable = 0;
  for (int r = 0; r < 2; ++r) {
    const Status& s = results[static_cast<size_t>(r)];
    ASSERT_FALSE(s.ok());
    EXPECT_THAT(s.message(), HasSubstr("rank(s) 2"));
    deadline += s.code() == Code::kDeadlineExceeded;
    unavailable += s.code() == Code::kUnavailable;
  }
  EXPECT_GE(deadline, 1);
  EXPECT_EQ(deadline + unavailable, 2);
}

TEST(CollectivesFailureTest, AbortWakesEveryWaiter) {
  InProcessGroup group(2, 60s);
  std::atomic<bool> rank0_waiting{false};
  std::thread aborter([&] {
    while (!rank0_waiting) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(50ms);
    group.Abort("rank 1 exited with status 9");
  });
  auto comm = group.Connect(0);
  rank0_waiting = true;
  float x = 1;
  Status s = comm->AllReduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
  aborter.join();
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("rank 1 exited with status 9"));
  // The group stays failed.
  EXPECT_EQ(comm->Barrier().code(), Code::kUnavailable);
}

TEST(CollectivesFailureTest, ResultsAreIdenticalOnEveryRank) {
  // Values whose float sum depends on the order of addition: every rank must still agree.
  InProcessGroup group(4, 30s);
  std::vector<std::vector<float>> out(4);
  auto results = RunRanks(group, [&](Communicator& c) -> Status {
    std::vector<float> buf(4096);
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = 1.0f / static_cast<float>(1 + i + 7 * c.rank());
    RETURN_IF_ERROR(c.AllReduce(buf.data(), buf.size(), DataType::kFloat32, ReduceOp::kSum));
    out[static_cast<size_t>(c.rank())] = buf;
    return Status::Ok();
  });
  for (auto& s : results) ASSERT_TRUE(s.ok()) << s.ToString();
  for (int r = 1; r < 4; ++r) EXPECT_EQ(out[0], out[static_cast<size_t>(r)]);
}

}  // namespace
}  // namespace cohort::collectives
