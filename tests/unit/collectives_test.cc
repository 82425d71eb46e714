// Conformance suite for the Communicator contract, run here on the in-process backend (N ranks as
// threads). The MPI/Gloo backends will run the same checks under real launchers.
#include <immintrin.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <chrono>
#include <functional>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "collectives/float16.h"
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
TEST_P(CollectivesTest, AllReduceIdenticalEverywhere) {
  RunOnAllRanks(conformance::AllReduceIdenticalEverywhere);
}
TEST_P(CollectivesTest, ReduceScatterThenAllGather) {
  RunOnAllRanks(conformance::ReduceScatterThenAllGather);
}
TEST_P(CollectivesTest, BroadcastFromEveryRoot) { RunOnAllRanks(conformance::BroadcastFromEveryRoot); }
TEST_P(CollectivesTest, SixteenBitBuffers) { RunOnAllRanks(conformance::SixteenBit); }

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

// ---- fp16 / bf16 conversions ----

TEST(Float16Test, EveryHalfRoundTripsThroughFloat) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(f)))) << h;
    } else {
      EXPECT_EQ(FloatToHalf(f), h) << "half 0x" << std::hex << h;
    }
    const float b = Bf16ToFloat(static_cast<uint16_t>(h));
    if (!std::isnan(b)) {
      EXPECT_EQ(FloatToBf16(b), h) << "bf16 0x" << std::hex << h;
    }
  }
}

TEST(Float16Test, RoundsToNearestEvenAndSaturatesToInfinity) {
  EXPECT_EQ(HalfToFloat(FloatToHalf(65504.0f)), 65504.0f);  // the largest half
  EXPECT_EQ(HalfToFloat(FloatToHalf(65519.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(HalfToFloat(FloatToHalf(65520.0f))));  // halfway to 65536: even = inf
  EXPECT_EQ(HalfToFloat(FloatToHalf(1.0f + 0x1p-11f)), 1.0f);   // tie -> even mantissa
  EXPECT_EQ(HalfToFloat(FloatToHalf(1.0f + 3 * 0x1p-11f)), 1.0f + 0x1p-9f);
  EXPECT_EQ(HalfToFloat(FloatToHalf(0x1p-24f)), 0x1p-24f);      // smallest subnormal
  EXPECT_EQ(HalfToFloat(FloatToHalf(0x1p-25f)), 0.0f);          // tie -> even (zero)
  EXPECT_EQ(HalfToFloat(FloatToHalf(3 * 0x1p-25f)), 0x1p-23f);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + 0x1p-8f)), 1.0f);    // tie -> even
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
  EXPECT_TRUE(std::isinf(Bf16ToFloat(FloatToBf16(3.4e38f))));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::nanf("")))));
}

#if defined(__F16C__)
// Where the CPU converts in hardware, the portable code must agree with it bit for bit.
TEST(Float16Test, MatchesF16CHardware) {
  uint64_t state = 12345;
  for (int i = 0; i < 2000000; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const float f = std::bit_cast<float>(static_cast<uint32_t>(state >> 32));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToHalf(f), _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)) << f;
  }
}
#endif

}  // namespace
}  // namespace cohort::collectives
