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
#include "tests/unit/collectives_conformance.h"

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

class CollectivesTest : public ::testing::TestWithParam<std::tuple<int, size_t>> {
 protected:
  void RunOnAllRanks(Status (*check)(Communicator&, size_t)) {
    auto [n, count] = GetParam();
    InProcessGroup group(n, 30s);
    for (const Status& s : RunRanks(group, [&, count = count](Communicator& c) { return check(c, count); })) {
      EXPECT_TRUE(s.ok()) << s.ToString();
    }
  }
};

TEST_P(CollectivesTest, AllReduceSumAndAvg) { RunOnAllRanks(conformance::AllReduceSumAndAvg); }
TEST_P(CollectivesTest, ReduceScatterThenAllGather) {
  RunOnAllRanks(conformance::ReduceScatterThenAllGather);
}
TEST_P(CollectivesTest, BroadcastFromEveryRoot) { RunOnAllRanks(conformance::BroadcastFromEveryRoot); }

INSTANTIATE_TEST_SUITE_P(Sizes, CollectivesTest,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4),
                                            ::testing::ValuesIn(conformance::Sizes())));

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
