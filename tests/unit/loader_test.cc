// The prefetching loader (ordering, bounded read-ahead, errors, shutdown, resume at another world
// size) and the token-shard sample source over real shard files.
#include "dataloader/loader.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include "dataloader/source.h"
#include "dataloader/token_shard.h"
#include "storage/file_util.h"
#include "tests/unit/test_util.h"

namespace cohort::data {
namespace {

using namespace std::chrono_literals;

// A source of n samples whose tokens encode their index: sample i is [i, i+1, ..., i+T] (mod
// vocab). It can fail at one index and hold reads at another until released, and counts reads.
class ScriptedSource final : public SampleSource {
 public:
  ScriptedSource(uint64_t n, int T) : n_(n), T_(T), files_{{"mem://scripted", n + T, n}} {}
  int seq_len() const override { return T_; }
  uint64_t num_samples() const override { return n_; }
  uint32_t vocab_size() const override { return 1u << 30; }
  const std::vector<SourceFileInfo>& files() const override { return files_; }
  std::string kind() const override { return "scripted samples"; }

  Status Read(uint64_t index, int32_t* out) const override {
    reads_++;
    if (index == hold_at_) {
      std::unique_lock<std::mutex> lk(mu_);
      held_ = true;
      cv_.notify_all();
      cv_.wait(lk, [&] { return released_; });
    }
    if (index == delay_at_) std::this_thread::sleep_for(delay_);
    if (index == fail_at_) return DataLoss("scripted.bin: byte offset 4242: injected failure at sample " + std::to_string(index));
    for (int k = 0; k <= T_; ++k) out[k] = static_cast<int32_t>(index + static_cast<uint64_t>(k));
    return Status::Ok();
  }

  void FailAt(uint64_t i) { fail_at_ = i; }
  void HoldAt(uint64_t i) { hold_at_ = i; }
  void DelayAt(uint64_t i, std::chrono::milliseconds d) {
    delay_at_ = i;
    delay_ = d;
  }
  void WaitHeld() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return held_; });
  }
  bool WaitHeldFor(std::chrono::milliseconds d) {
    std::unique_lock<std::mutex> lk(mu_);
    return cv_.wait_for(lk, d, [&] { return held_; });
  }
  void Release() {
    std::lock_guard<std::mutex> lk(mu_);
    released_ = true;
    cv_.notify_all();
  }
  uint64_t reads() const { return reads_; }

 private:
  uint64_t n_;
  int T_;
  std::vector<SourceFileInfo> files_;
  uint64_t fail_at_ = UINT64_MAX;
  uint64_t hold_at_ = UINT64_MAX;
  uint64_t delay_at_ = UINT64_MAX;
  std::chrono::milliseconds delay_{0};
  mutable std::atomic<uint64_t> reads_{0};
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  mutable bool held_ = false;
  bool released_ = false;
};

LoaderOptions Options(int B, int rank, int world, uint64_t seed = 11) {
  LoaderOptions o;
  o.batch_size = B;
  o.rank = rank;
  o.world = world;
  o.start = {seed, 0, 0};
  o.depth = 3;
  o.threads = 4;
  return o;
}

TEST(DataLoaderTest, DeliversThisRanksRowsOfEachGlobalBatchInOrder) {
  const int T = 5, B = 4, world = 3, rank = 1;
  auto src = std::make_shared<ScriptedSource>(1001, T);
  auto loader = DataLoader::Create(src, Options(B, rank, world));
  ASSERT_TRUE(loader.ok()) << loader.status().ToString();
  const GlobalSampler sampler(1001, 11, true);
  for (int k = 0; k < 200; ++k) {  // 200 * 12 positions: more than two epochs
    auto batch = (*loader)->Next();
    ASSERT_TRUE(batch.ok()) << batch.status().ToString();
    ASSERT_EQ(batch->position, static_cast<uint64_t>(k) * world * B);
    std::vector<uint64_t> want(B);
    sampler.RankSlice(batch->position, world, rank, want);
    for (int b = 0; b < B; ++b) {
      for (int t = 0; t < T; ++t) {
        ASSERT_EQ(batch->inputs[static_cast<size_t>(b * T + t)], static_cast<int32_t>(want[b] + t));
        ASSERT_EQ(batch->targets[static_cast<size_t>(b * T + t)], static_cast<int32_t>(want[b] + t + 1));
      }
    }
    const DataState s = (*loader)->state();
    EXPECT_EQ(sampler.Position(s), static_cast<uint64_t>(k + 1) * world * B);
  }
  EXPECT_EQ((*loader)->batches_delivered(), 200u);
}

// Many readers racing over a small ring, with a consumer that sometimes lags and sometimes
// outruns them: every batch arrives once, in order, with its own rows.
TEST(DataLoaderTest, StaysOrderedUnderContention) {
  const int T = 2, B = 3;
  auto src = std::make_shared<ScriptedSource>(5003, T);
  for (const int depth : {1, 2, 5}) {
    for (const int threads : {1, 3, 8}) {
      auto o = Options(B, 0, 1);
      o.depth = depth;
      o.threads = threads;
      auto loader = DataLoader::Create(src, o);
      ASSERT_TRUE(loader.ok());
      const GlobalSampler sampler(5003, 11, true);
      std::vector<uint64_t> want(B);
      for (int k = 0; k < 3000; ++k) {
        if (k % 500 < 20) std::this_thread::sleep_for(50us);  // lag: the ring fills up
        auto batch = (*loader)->Next();
        ASSERT_TRUE(batch.ok()) << batch.status().ToString();
        ASSERT_EQ(batch->position, static_cast<uint64_t>(k) * B);
        sampler.RankSlice(batch->position, 1, 0, want);
        for (int b = 0; b < B; ++b) {
          ASSERT_EQ(batch->inputs[static_cast<size_t>(b * T)], static_cast<int32_t>(want[b]))
              << "depth " << depth << " threads " << threads << " batch " << k;
          ASSERT_EQ(batch->targets[static_cast<size_t>(b * T + T - 1)], static_cast<int32_t>(want[b] + T));
        }
      }
    }
  }
}

// A later batch failing while an earlier one is still being read does not cut the earlier one
// short: the trainer gets every batch before the failed one, then the error.
TEST(DataLoaderTest, ALaterFailureWaitsForTheBatchesBeforeIt) {
  const int B = 2;
  auto src = std::make_shared<ScriptedSource>(500, 3);
  auto o = Options(B, 0, 1);
  o.shuffle = false;
  o.threads = 2;
  src->HoldAt(1);  // batch 0
  src->FailAt(3);  // batch 1
  auto loader = DataLoader::Create(src, o);
  ASSERT_TRUE(loader.ok());
  std::thread releaser([&] {
    src->WaitHeld();
    std::this_thread::sleep_for(150ms);  // the other reader fails batch 1 meanwhile
    src->Release();
  });
  auto first = (*loader)->Next();
  releaser.join();
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->inputs[3], 1);  // row 1 = sample 1
  auto second = (*loader)->Next();
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kDataLoss) << second.status().ToString();
}

// The trainer is woken once a few batches are ready; a batch that is ready while the ones after it
// are stuck in a slow read still reaches it (not only at the timeout).
TEST(DataLoaderTest, AReadyBatchIsDeliveredWhileTheNextOneIsStuck) {
  auto src = std::make_shared<ScriptedSource>(1000, 3);
  auto o = Options(2, 0, 1);
  o.shuffle = false;
  o.depth = 8;  // the trainer would like 4 batches ready before it wakes
  o.threads = 3;
  o.timeout = 20s;
  src->DelayAt(0, 100ms);  // batch 0 comes late: the trainer is asleep by then
  src->HoldAt(2);          // batch 1 never finishes until released
  auto loader = DataLoader::Create(src, o);
  ASSERT_TRUE(loader.ok());
  const auto t0 = std::chrono::steady_clock::now();
  auto first = (*loader)->Next();
  const auto waited = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->inputs[0], 0);
  EXPECT_GE(waited, 90ms);
  EXPECT_LT(waited, 2s);
  src->Release();
  auto second = (*loader)->Next();
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(second->inputs[0], 2);
}

TEST(DataLoaderTest, ReadsAtMostDepthBatchesAhead) {
  const int B = 6;
  auto src = std::make_shared<ScriptedSource>(100000, 3);
  auto o = Options(B, 0, 1);
  o.depth = 5;
  auto loader = DataLoader::Create(src, o);
  ASSERT_TRUE(loader.ok());
  std::this_thread::sleep_for(200ms);  // the readers fill every buffer, then must stop
  EXPECT_EQ(src->reads(), 5u * B);
  ASSERT_TRUE((*loader)->Next().ok());  // holds batch 0: nothing is freed yet
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(src->reads(), 5u * B);
  // Readers waiting for buffers resume once half the ring (here 2 of 5) is free, not after every
  // batch: one buffer handed back reads nothing yet, the second lets two more batches in.
  ASSERT_TRUE((*loader)->Next().ok());  // hands batch 0's buffer back
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(src->reads(), 5u * B);
  ASSERT_TRUE((*loader)->Next().ok());  // hands batch 1's buffer back
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(src->reads(), 7u * B);
  // Batches 0..42 delivered, 42 held: at most batches 43..46 are read ahead (42 + 5 buffers in
  // all), and at least all but the last (readers resume once two buffers are free).
  for (int k = 0; k < 40; ++k) ASSERT_TRUE((*loader)->Next().ok());
  std::this_thread::sleep_for(100ms);
  EXPECT_LE(src->reads(), 47u * B);
  EXPECT_GE(src->reads(), 46u * B);
}

TEST(DataLoaderTest, AReadErrorReachesTheTrainerAtItsBatchAndStays) {
  const int B = 4;
  auto src = std::make_shared<ScriptedSource>(500, 3);
  // Unshuffled: batch k holds samples [4k, 4k+4); sample 22 is in batch 5.
  auto o = Options(B, 0, 1);
  o.shuffle = false;
  src->FailAt(22);
  auto loader = DataLoader::Create(src, o);
  ASSERT_TRUE(loader.ok());
  for (int k = 0; k < 5; ++k) ASSERT_TRUE((*loader)->Next().ok()) << k;
  for (int again = 0; again < 2; ++again) {
    auto bad = (*loader)->Next();
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.status().code(), Code::kDataLoss);
    EXPECT_NE(bad.status().message().find("scripted.bin: byte offset 4242"), std::string::npos)
        << bad.status().ToString();
  }
  // The readers stayed within the ring (depth 3 past the consumer).
  EXPECT_LE(src->reads(), 6u * B + 3u * B);
}

// Once a batch has failed, no reader claims another: with a deep ring, a reader that would go on
// would read ahead up to the depth for nothing. One reader fails in batch 0; the other is held
// inside batch 1 until the failure has reached the consumer, then finishes that batch and stops.
TEST(DataLoaderTest, NoBatchIsClaimedAfterAFailure) {
  const int B = 4;
  auto src = std::make_shared<ScriptedSource>(1000, 3);
  auto o = Options(B, 0, 1);
  o.shuffle = false;
  o.depth = 64;
  o.threads = 2;
  src->FailAt(2);  // batch 0
  src->HoldAt(4);  // batch 1's first sample
  auto loader = DataLoader::Create(src, o);
  ASSERT_TRUE(loader.ok());
  auto bad = (*loader)->Next();
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kDataLoss);
  // The other reader holds in batch 1, unless it saw the failure before claiming it.
  const bool held = src->WaitHeldFor(std::chrono::milliseconds(300));
  src->Release();
  loader->reset();  // waits for the readers
  // (Not held within the wait: the reader may still have claimed batch 1 before the failure and
  // been descheduled; it reads that batch, and no more.)
  EXPECT_LE(src->reads(), 3u + B) << "a reader went on claiming batches after the failure (held: " << held << ")";
}

TEST(DataLoaderTest, DestroyingWhileReadersWaitForBuffersIsPrompt) {
  auto src = std::make_shared<ScriptedSource>(1000, 3);
  const auto t0 = std::chrono::steady_clock::now();
  {
    auto loader = DataLoader::Create(src, Options(2, 0, 1));
    ASSERT_TRUE(loader.ok());
    std::this_thread::sleep_for(50ms);  // every reader is now blocked on a full ring
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
}

TEST(DataLoaderTest, StopUnblocksATrainerWaitingForAStalledRead) {
  auto src = std::make_shared<ScriptedSource>(1000, 3);
  auto o = Options(2, 0, 1);
  o.shuffle = false;
  src->HoldAt(0);  // the very first read never finishes on its own
  auto loader = DataLoader::Create(src, o);
  ASSERT_TRUE(loader.ok());
  src->WaitHeld();
  std::thread stopper([&] {
    std::this_thread::sleep_for(100ms);
    (*loader)->Stop();
  });
  const auto t0 = std::chrono::steady_clock::now();
  auto r = (*loader)->Next();
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCancelled);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  stopper.join();
  src->Release();  // the reader finishes its one read, sees the stop and exits
  loader->reset();
}

TEST(DataLoaderTest, AStalledReadEndsNextAtTheTimeoutNamingTheSample) {
  auto src = std::make_shared<ScriptedSource>(1000, 3);
  auto o = Options(2, 0, 1);
  o.shuffle = false;
  o.timeout = 300ms;
  src->HoldAt(0);  // a storage read that does not come back
  auto loader = DataLoader::Create(src, o);
  ASSERT_TRUE(loader.ok());
  const auto t0 = std::chrono::steady_clock::now();
  auto r = (*loader)->Next();
  const auto waited = std::chrono::steady_clock::now() - t0;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDeadlineExceeded);
  EXPECT_NE(r.status().message().find("is reading sample 0"), std::string::npos) << r.status().ToString();
  EXPECT_GE(waited, 290ms);
  EXPECT_LT(waited, 3s);
  EXPECT_EQ((*loader)->Next().status().code(), Code::kDeadlineExceeded);  // sticky
  // Destroying the loader does not wait for the stuck read: the reader is left behind.
  const auto t1 = std::chrono::steady_clock::now();
  loader->reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t1, 4s);
  src->Release();  // the left-behind reader finishes on the state it co-owns
  std::this_thread::sleep_for(50ms);
}

TEST(DataLoaderTest, TheTimeoutStaysTheAnswerWhenTheStuckReadFinishesLater) {
  auto src = std::make_shared<ScriptedSource>(1000, 3);
  auto o = Options(2, 0, 1);
  o.shuffle = false;
  o.timeout = 100ms;
  src->HoldAt(0);
  auto loader = DataLoader::Create(src, o);
  ASSERT_TRUE(loader.ok());
  EXPECT_EQ((*loader)->Next().status().code(), Code::kDeadlineExceeded);
  src->Release();  // the read completes after the loader gave up on it
  std::this_thread::sleep_for(100ms);
  const Status again = (*loader)->Next().status();
  EXPECT_EQ(again.code(), Code::kDeadlineExceeded) << again.ToString();
}

TEST(DataLoaderTest, MeasuresTheTrainersWaitTime) {
  auto src = std::make_shared<ScriptedSource>(1000, 3);
  auto o = Options(2, 0, 1);
  o.shuffle = false;
  src->HoldAt(0);
  auto loader = DataLoader::Create(src, o);
  ASSERT_TRUE(loader.ok());
  std::thread releaser([&] {
    src->WaitHeld();
    std::this_thread::sleep_for(150ms);
    src->Release();
  });
  ASSERT_TRUE((*loader)->Next().ok());
  releaser.join();
  EXPECT_GE((*loader)->last_wait_seconds(), 0.1);
  EXPECT_GE((*loader)->total_wait_seconds(), (*loader)->last_wait_seconds());
}

TEST(DataLoaderTest, ResumingAtAnotherWorldSizeContinuesTheStream) {
  const int T = 2;
  const uint64_t n = 211;
  auto src = std::make_shared<ScriptedSource>(n, T);
  // Uninterrupted: 1 rank, global batches of 12, 40 batches.
  std::vector<int32_t> want;
  {
    auto l = DataLoader::Create(src, Options(12, 0, 1, 99));
    ASSERT_TRUE(l.ok());
    for (int k = 0; k < 40; ++k) {
      auto b = (*l)->Next();
      ASSERT_TRUE(b.ok());
      for (int r = 0; r < 12; ++r) want.push_back(b->inputs[static_cast<size_t>(r * T)]);
    }
  }
  // 2 ranks x 6 rows for 15 batches, then 3 ranks x 4 rows for 10, then 4 ranks x 3 for 15.
  std::vector<int32_t> got;
  DataState state{99, 0, 0};
  for (auto [world, B, batches] : {std::tuple{2, 6, 15}, std::tuple{3, 4, 10}, std::tuple{4, 3, 15}}) {
    std::vector<std::unique_ptr<DataLoader>> ranks;
    for (int r = 0; r < world; ++r) {
      auto o = Options(B, r, world);
      o.start = state;
      auto l = DataLoader::Create(src, o);
      ASSERT_TRUE(l.ok());
      ranks.push_back(std::move(*l));
    }
    for (int k = 0; k < batches; ++k) {
      for (auto& l : ranks) {
        auto b = l->Next();
        ASSERT_TRUE(b.ok());
        for (int r = 0; r < B; ++r) got.push_back(b->inputs[static_cast<size_t>(r * T)]);
      }
    }
    state = ranks[0]->state();
    for (auto& l : ranks) EXPECT_EQ(l->state(), state);  // the same on every rank
  }
  EXPECT_EQ(got, want);
}

TEST(DataLoaderTest, RejectsBadOptions) {
  auto src = std::make_shared<ScriptedSource>(10, 3);
  auto o = Options(2, 0, 1);
  o.depth = 0;
  EXPECT_FALSE(DataLoader::Create(src, o).ok());
  o = Options(2, 2, 2);
  EXPECT_FALSE(DataLoader::Create(src, o).ok());
  o = Options(2, 0, 1);
  o.timeout = std::chrono::milliseconds(0);
  EXPECT_FALSE(DataLoader::Create(src, o).ok());
  o = Options(2, 0, 1);
  o.start.cursor = 10;
  auto r = DataLoader::Create(src, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("cursor 10"), std::string::npos);
  // An epoch whose stream position (epoch * samples + cursor) does not fit 64 bits would wrap to
  // another place in the stream (a damaged data state).
  o = Options(2, 0, 1);
  o.start.epoch = UINT64_MAX / 10;
  o.start.cursor = 9;
  r = DataLoader::Create(src, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("epoch"), std::string::npos) << r.status().ToString();
  o.start.epoch = ((uint64_t{1} << 63) - 9) / 10;  // the last epoch with room to read on (below 2^63)
  EXPECT_TRUE(DataLoader::Create(src, o).ok());
}

// ---- token shards as a sample source -----------------------------------------------------------

class TokenShardSourceTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = tmp_.path(); }

  // Writes a shard of `n` tokens t_k = (base + k) % 251 and returns its path.
  std::string Write(const std::string& name, uint32_t base, size_t n, uint32_t vocab = 257) {
    std::vector<uint32_t> tokens(n);
    for (size_t k = 0; k < n; ++k) tokens[k] = (base + static_cast<uint32_t>(k)) % 251;
    const std::string path = dir_ + "/" + name;
    EXPECT_TRUE(WriteTokenShard(path, tokens, vocab, "byte").ok());
    return path;
  }
  SourceOptions Opts(int T) {
    SourceOptions o;
    o.patterns = {dir_ + "/train-*.bin"};
    o.seq_len = T;
    o.vocab_size = 257;
    o.tokenizer = "byte";
    return o;
  }
  void FlipByte(const std::string& path, long offset) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(offset);
    char c = 0;
    f.get(c);
    f.seekp(offset);
    f.put(static_cast<char>(c ^ 0x5a));
  }
  ::cohort::testing::TempDir tmp_;
  std::string dir_;
};

TEST_F(TokenShardSourceTest, WindowsAtStrideTWithinEachFileInSortedOrder) {
  const int T = 8;
  Write("train-002.bin", 100, 30);  // 3 samples (29 / 8)
  Write("train-000.bin", 0, 17);    // 2 samples: [0,9), [8,17)
  Write("train-001.bin", 50, 8);    // shorter than T+1: none
  auto src = OpenSampleSource(Opts(T));
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  EXPECT_EQ((*src)->num_samples(), 5u);
  ASSERT_EQ((*src)->files().size(), 3u);
  EXPECT_NE((*src)->files()[0].uri.find("train-000.bin"), std::string::npos);
  EXPECT_EQ((*src)->files()[1].samples, 0u);
  std::vector<int32_t> s(T + 1);
  const std::pair<uint64_t, int32_t> first_token[] = {{0, 0}, {1, 8}, {2, 100}, {3, 108}, {4, 116}};
  for (auto [i, t0] : first_token) {
    ASSERT_TRUE((*src)->Read(i, s.data()).ok());
    for (int k = 0; k <= T; ++k) EXPECT_EQ(s[static_cast<size_t>(k)], t0 + k) << "sample " << i;
  }
  EXPECT_FALSE((*src)->Read(5, s.data()).ok());
  EXPECT_NE((*src)->Locate(3).find("train-002.bin byte offset 80"), std::string::npos) << (*src)->Locate(3);
  EXPECT_NE((*src)->Describe().find("5 samples of 9 tokens"), std::string::npos) << (*src)->Describe();
}

TEST_F(TokenShardSourceTest, FingerprintChangesWithTheData) {
  Write("train-000.bin", 0, 100);
  auto a = OpenSampleSource(Opts(8));
  ASSERT_TRUE(a.ok());
  auto same = OpenSampleSource(Opts(8));
  auto other_t = OpenSampleSource(Opts(9));
  EXPECT_EQ((*a)->Fingerprint(), (*same)->Fingerprint());
  EXPECT_NE((*a)->Fingerprint(), (*other_t)->Fingerprint());
  Write("train-001.bin", 0, 100);
  auto more = OpenSampleSource(Opts(8));
  EXPECT_NE((*a)->Fingerprint(), (*more)->Fingerprint());
}

TEST_F(TokenShardSourceTest, CorruptPayloadIsRefusedAtOpenNamingTheFile) {
  const std::string p = Write("train-000.bin", 0, 1000);
  FlipByte(p, 64 + 700);
  auto src = OpenSampleSource(Opts(8));
  ASSERT_FALSE(src.ok());
  EXPECT_EQ(src.status().code(), Code::kDataLoss);
  EXPECT_NE(src.status().message().find(p), std::string::npos) << src.status().ToString();
  EXPECT_NE(src.status().message().find("checksum"), std::string::npos);
}

TEST_F(TokenShardSourceTest, VerifyFilesChecksEveryNthFile) {
  Write("train-000.bin", 0, 500);
  const std::string bad = Write("train-001.bin", 0, 500);
  Write("train-002.bin", 0, 500);
  FlipByte(bad, 64 + 300);
  auto o = Opts(8);
  o.verify_checksums = false;
  auto src = OpenSampleSource(o);
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  EXPECT_TRUE((*src)->VerifyFiles(0, 2).ok());  // files 0 and 2
  const Status st = (*src)->VerifyFiles(1, 2);  // file 1
  EXPECT_EQ(st.code(), Code::kDataLoss);
  EXPECT_NE(st.message().find(bad), std::string::npos) << st.ToString();
  EXPECT_FALSE((*src)->VerifyFiles(0, 1).ok());
  EXPECT_TRUE((*src)->VerifyFiles(3, 4).ok());  // no file of its own
  EXPECT_FALSE((*src)->VerifyFiles(2, 2).ok());
}

TEST_F(TokenShardSourceTest, OutOfVocabTokenIsCaughtOnReadWithItsOffset) {
  const std::string p = Write("train-000.bin", 0, 100);
  // Token 3 (byte offset 64 + 6) becomes 3 ^ 0x5a5a-ish >= 257; skip the CRC pass to reach Read.
  FlipByte(p, 64 + 7);
  auto o = Opts(8);
  o.verify_checksums = false;
  auto src = OpenSampleSource(o);
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  std::vector<int32_t> s(9);
  Status st = (*src)->Read(0, s.data());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Code::kDataLoss);
  EXPECT_NE(st.message().find(p + ": byte offset 70"), std::string::npos) << st.ToString();
}

// The first token of a window is only an input, the last only a target: both are checked.
TEST_F(TokenShardSourceTest, OutOfVocabTokenIsCaughtByReadRowWithItsOffset) {
  for (const int token : {0, 8}) {  // T = 8: token 8 is sample 0's last target, sample 1's first input
    const std::string p = Write("train-000.bin", 0, 100);
    FlipByte(p, 64 + 2 * token + 1);
    auto o = Opts(8);
    o.verify_checksums = false;
    auto src = OpenSampleSource(o);
    ASSERT_TRUE(src.ok()) << src.status().ToString();
    std::vector<int32_t> in(8), tg(8);
    const std::string where = p + ": byte offset " + std::to_string(64 + 2 * token);
    for (const uint64_t sample : {uint64_t{0}, uint64_t{1}}) {
      Status st = (*src)->ReadRow(sample, in.data(), tg.data());
      if (sample == 1 && token == 0) {
        EXPECT_TRUE(st.ok()) << st.ToString();  // the next window is clean
        continue;
      }
      ASSERT_FALSE(st.ok()) << "token " << token << " sample " << sample;
      EXPECT_EQ(st.code(), Code::kDataLoss);
      EXPECT_NE(st.message().find(where), std::string::npos) << st.ToString();
    }
  }
}

// ReadRow decodes straight from the mapping (both token widths); Read is the reference.
TEST_F(TokenShardSourceTest, ReadRowIsReadSplitIntoInputsAndTargets) {
  for (const uint32_t vocab : {257u, 70000u}) {  // 2- and 4-byte tokens
    dir_ = tmp_.path() + "/v" + std::to_string(vocab);
    ASSERT_EQ(::mkdir(dir_.c_str(), 0755), 0);
    Write("train-000.bin", 3, 1000, vocab);
    Write("train-001.bin", 100, 777, vocab);
    for (const int T : {1, 7, 64, 100}) {
      auto o = Opts(T);
      o.vocab_size = vocab;
      auto src = OpenSampleSource(o);
      ASSERT_TRUE(src.ok()) << src.status().ToString();
      std::vector<int32_t> sample(T + 1), in(T, -1), tg(T, -1);
      for (uint64_t i = 0; i < (*src)->num_samples(); ++i) {
        (*src)->Prefetch(i);
        ASSERT_TRUE((*src)->Read(i, sample.data()).ok());
        ASSERT_TRUE((*src)->ReadRow(i, in.data(), tg.data()).ok());
        ASSERT_TRUE(std::equal(in.begin(), in.end(), sample.begin())) << "vocab " << vocab << " T " << T << " i " << i;
        ASSERT_TRUE(std::equal(tg.begin(), tg.end(), sample.begin() + 1)) << "vocab " << vocab << " T " << T << " i " << i;
      }
      EXPECT_EQ((*src)->ReadRow((*src)->num_samples(), in.data(), tg.data()).code(), Code::kOutOfRange);
    }
  }
}

// The stored-rows layout hands over each sample's T+1 tokens as the shard stores them (2 or 4
// bytes, little-endian); they decode to the pairs layout's inputs and targets.
TEST_F(TokenShardSourceTest, StoredRowsAreTheShardBytesOfThePairs) {
  for (const uint32_t vocab : {257u, 70000u}) {
    dir_ = tmp_.path() + "/v" + std::to_string(vocab);
    ASSERT_EQ(::mkdir(dir_.c_str(), 0755), 0);
    Write("train-000.bin", 3, 2000, vocab);
    Write("train-001.bin", 100, 1500, vocab);
    const int T = 16, B = 4;
    auto o = Opts(T);
    o.vocab_size = vocab;
    auto opened = OpenSampleSource(o);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    std::shared_ptr<const SampleSource> src = std::move(*opened);
    const int width = vocab <= 65536 ? 2 : 4;
    EXPECT_EQ(src->stored_width(), width);
    auto lo = Options(B, 1, 2, 5);
    lo.layout = Layout::kStoredRows;
    auto rows = DataLoader::Create(src, lo);
    auto pairs = DataLoader::Create(src, Options(B, 1, 2, 5));
    ASSERT_TRUE(rows.ok() && pairs.ok());
    for (int k = 0; k < 40; ++k) {
      auto r = (*rows)->Next();
      auto p = (*pairs)->Next();
      ASSERT_TRUE(r.ok() && p.ok()) << r.status().ToString() << p.status().ToString();
      EXPECT_EQ(r->position, p->position);
      EXPECT_TRUE(r->inputs.empty());
      ASSERT_EQ(r->token_width, width);
      ASSERT_EQ(r->rows.size(), static_cast<size_t>(B * (T + 1) * width));
      for (int b = 0; b < B; ++b) {
        for (int t = 0; t <= T; ++t) {
          uint32_t v = 0;
          for (int byte = 0; byte < width; ++byte) v |= uint32_t{r->rows[(b * (T + 1) + t) * width + byte]} << (8 * byte);
          if (t < T) {
            ASSERT_EQ(static_cast<int32_t>(v), p->inputs[b * T + t]) << k << " " << b << " " << t;
          }
          if (t > 0) {
            ASSERT_EQ(static_cast<int32_t>(v), p->targets[b * T + t - 1]) << k << " " << b << " " << t;
          }
        }
      }
    }
    EXPECT_EQ((*rows)->state(), (*pairs)->state());
  }
}

// Sources without a stored form of their own (HDF5, here a scripted one) give 4-byte rows.
TEST(DataLoaderTest, StoredRowsOfASourceWithoutItsOwnAreFourByteTokens) {
  auto src = std::make_shared<ScriptedSource>(100, 3);
  auto o = Options(2, 0, 1);
  o.shuffle = false;
  o.layout = Layout::kStoredRows;
  auto loader = DataLoader::Create(src, o);
  ASSERT_TRUE(loader.ok());
  auto b = (*loader)->Next();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ASSERT_EQ(b->token_width, 4);
  const unsigned char want[] = {0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0,   // sample 0
                                1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0};  // sample 1
  ASSERT_EQ(b->rows.size(), sizeof want);
  EXPECT_EQ(0, std::memcmp(b->rows.data(), want, sizeof want));
}

// A bad token in the stored layout is the same error, naming the file and offset.
TEST_F(TokenShardSourceTest, OutOfVocabTokenIsCaughtByReadStored) {
  const std::string p = Write("train-000.bin", 0, 100);
  FlipByte(p, 64 + 2 * 8 + 1);  // T = 8: sample 0's last token
  auto o = Opts(8);
  o.verify_checksums = false;
  auto src = OpenSampleSource(o);
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  std::vector<unsigned char> row(9 * 2);
  Status st = (*src)->ReadStored(0, row.data());
  EXPECT_EQ(st.code(), Code::kDataLoss) << st.ToString();
  EXPECT_NE(st.message().find(p + ": byte offset 80"), std::string::npos) << st.ToString();
}

TEST_F(TokenShardSourceTest, BadFilesGetClearErrors) {
  const std::string p = Write("train-000.bin", 0, 100);
  {  // truncated
    ASSERT_EQ(::truncate(p.c_str(), 64 + 150), 0);
    auto src = OpenSampleSource(Opts(8));
    ASSERT_FALSE(src.ok());
    EXPECT_EQ(src.status().code(), Code::kDataLoss);
    EXPECT_NE(src.status().message().find(p), std::string::npos);
    EXPECT_NE(src.status().message().find("truncated"), std::string::npos) << src.status().ToString();
  }
  {  // wrong magic
    Write("train-000.bin", 0, 100);
    FlipByte(p, 0);
    auto src = OpenSampleSource(Opts(8));
    ASSERT_FALSE(src.ok());
    EXPECT_NE(src.status().message().find(p + ": byte offset 0"), std::string::npos) << src.status().ToString();
  }
  {  // nothing matches
    auto o = Opts(8);
    o.patterns = {dir_ + "/val-*.bin"};
    auto src = OpenSampleSource(o);
    ASSERT_FALSE(src.ok());
    EXPECT_EQ(src.status().code(), Code::kNotFound);
    EXPECT_NE(src.status().message().find("val-*.bin"), std::string::npos);
  }
  {  // another tokenizer's shards
    Write("train-000.bin", 0, 100);
    auto o = Opts(8);
    o.tokenizer = "gpt2";
    auto src = OpenSampleSource(o);
    ASSERT_FALSE(src.ok());
    EXPECT_NE(src.status().message().find("tokenizer"), std::string::npos);
  }
  {  // no window of T+1 tokens
    auto src = OpenSampleSource(Opts(200));
    ASSERT_FALSE(src.ok());
    EXPECT_EQ(src.status().code(), Code::kInvalidArgument);
  }
  {  // a vocabulary whose tokens would not fit the int32 the model takes
    auto o = Opts(8);
    o.vocab_size = (1u << 31) + 1;
    auto src = OpenSampleSource(o);
    ASSERT_FALSE(src.ok());
    EXPECT_EQ(src.status().code(), Code::kInvalidArgument);
    EXPECT_NE(src.status().message().find("2^31"), std::string::npos) << src.status().ToString();
  }
  {  // a directory where a shard should be is not a shard
    ASSERT_TRUE(storage::MakeDirectories(dir_ + "/train-999.bin").ok());
    auto src = OpenSampleSource(Opts(8));
    EXPECT_TRUE(src.ok()) << "directories are not objects and are not listed: " << src.status().ToString();
  }
}

// A shard touched while it is read (a scratch-purge script) reads on; one rewritten in place with
// other tokens fails its reads naming it (its payload no longer matches the checksum it was opened
// with).
TEST_F(TokenShardSourceTest, ATouchedShardReadsOnAShardRewrittenInPlaceDoesNot) {
  const std::string path = Write("train-000.bin", 0, 5000);
  auto src = OpenSampleSource(Opts(8));
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  std::vector<int32_t> row(9);
  ASSERT_TRUE((*src)->Read(0, row.data()).ok());
  const struct timespec later[2] = {{1700000000, 0}, {1700000000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), later, 0), 0);
  const uint64_t last = (*src)->num_samples() - 1;  // its file's last page: checked on every read
  ASSERT_TRUE((*src)->Read(last, row.data()).ok());
  // The same file, other tokens (another shard copied over it in place).
  const std::string other = Write("other.bin", 7, 5000);
  {
    auto bytes = storage::ReadFileToString(other);
    ASSERT_TRUE(bytes.ok());
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.write(bytes->data(), static_cast<std::streamsize>(bytes->size()));
  }
  const struct timespec again[2] = {{1700000100, 0}, {1700000100, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), again, 0), 0);
  Status s = (*src)->Read(last, row.data());
  EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
  EXPECT_NE(s.message().find(path), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("modified while being read"), std::string::npos) << s.ToString();
}

// Mapped shards give their file descriptors back: a dataset with more files than the open-file
// limit (often 1024 on clusters; 64 here) opens and reads.
TEST_F(TokenShardSourceTest, MoreShardsThanTheOpenFileLimit) {
  for (int f = 0; f < 200; ++f) {
    char name[32];
    std::snprintf(name, sizeof name, "train-%03d.bin", f);
    Write(name, static_cast<uint32_t>(f), 40);
  }
  struct rlimit saved;
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  struct rlimit low = saved;
  low.rlim_cur = 64;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  auto src = OpenSampleSource(Opts(8));
  Status read = Status::Ok();
  std::vector<int32_t> s(9);
  if (src.ok()) {
    for (uint64_t i = 0; i < (*src)->num_samples() && read.ok(); i += 4) read = (*src)->Read(i, s.data());
  }
  ::setrlimit(RLIMIT_NOFILE, &saved);
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  EXPECT_EQ((*src)->num_samples(), 200u * 4);
  EXPECT_TRUE(read.ok()) << read.ToString();
  ASSERT_TRUE((*src)->Read(4 * 199, s.data()).ok());
  EXPECT_EQ(s[0], 199);  // file 199's first token
}

TEST_F(TokenShardSourceTest, LoaderOverRealShardsMatchesDirectReads) {
  Write("train-000.bin", 0, 5000);
  Write("train-001.bin", 7, 3000);
  auto opened = OpenSampleSource(Opts(16));
  ASSERT_TRUE(opened.ok());
  std::shared_ptr<const SampleSource> src = std::move(*opened);
  auto loader = DataLoader::Create(src, Options(4, 1, 2, 5));
  ASSERT_TRUE(loader.ok());
  const GlobalSampler sampler(src->num_samples(), 5, true);
  std::vector<int32_t> in(4 * 16), tgt(4 * 16);
  for (int k = 0; k < 30; ++k) {
    auto b = (*loader)->Next();
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    ASSERT_TRUE(ReadRows(*src, sampler, b->position, 2, 1, in, tgt).ok());
    EXPECT_TRUE(std::equal(in.begin(), in.end(), b->inputs.begin()));
    EXPECT_TRUE(std::equal(tgt.begin(), tgt.end(), b->targets.begin()));
  }
}

}  // namespace
}  // namespace cohort::data
