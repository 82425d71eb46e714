// Token shard format (write/read, corruption detection), the file helpers under it
// (storage/file_util.h). Reading shards for training: loader_test.cc.
#include "dataloader/token_shard.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <thread>
#include <numeric>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "storage/file_util.h"
#include "tests/unit/test_util.h"

namespace cohort::data {
namespace {

using storage::IsDirectory;
using storage::ListDirectory;
using storage::MakeDirectories;
using storage::MakeTempDirectory;
using storage::OpenRegularFile;
using storage::ReadFileToString;
using storage::ScopedFd;
using storage::SyncDirectory;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;
using ::testing::HasSubstr;

std::vector<uint32_t> Iota(size_t n, uint32_t start = 0) {
  std::vector<uint32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

TEST(TokenShard, RoundTripTwoByteTokens) {
  TempDir dir;
  std::string path = dir / "s.bin";
  std::vector<uint32_t> tokens = {0, 1, 50256, 65535 % 50257, 12345, 7};
  ASSERT_TRUE(WriteTokenShard(path, tokens, 50257, "gpt2").ok());
  EXPECT_EQ(std::filesystem::file_size(path), 64u + 2 * tokens.size());

  auto shard = ReadTokenShard(path);
  ASSERT_TRUE(shard.ok()) << shard.status().ToString();
  EXPECT_EQ(shard->tokens, tokens);
  EXPECT_EQ(shard->header.version, 1u);
  EXPECT_EQ(shard->header.token_width, 2u);
  EXPECT_EQ(shard->header.token_count, tokens.size());
  EXPECT_EQ(shard->header.vocab_size, 50257u);
  EXPECT_EQ(shard->header.tokenizer, "gpt2");

  auto header = ReadTokenShardHeader(path);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(header->token_count, tokens.size());
  EXPECT_EQ(header->payload_crc32c, shard->header.payload_crc32c);

  // The layout is little-endian at fixed offsets.
  std::string raw = ReadFile(path);
  EXPECT_EQ(raw.substr(0, 8), "COHORTTK");
  EXPECT_EQ(static_cast<unsigned char>(raw[12]), 2);
  EXPECT_EQ(static_cast<unsigned char>(raw[16]), tokens.size());
  EXPECT_EQ(raw.substr(28, 5), std::string("gpt2\0", 5));
  EXPECT_EQ(static_cast<unsigned char>(raw[64 + 4]), 50256 & 0xFF);
  EXPECT_EQ(static_cast<unsigned char>(raw[64 + 5]), 50256 >> 8);
  // No temporary file is left behind.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);
}

TEST(TokenShard, RoundTripFourByteTokens) {
  TempDir dir;
  std::string path = dir / "s.bin";
  std::vector<uint32_t> tokens = {0, 65535, 65536, 99999, 70000, 3};
  ASSERT_TRUE(WriteTokenShard(path, tokens, 100000, "").ok());
  EXPECT_EQ(std::filesystem::file_size(path), 64u + 4 * tokens.size());
  auto shard = ReadTokenShard(path);
  ASSERT_TRUE(shard.ok()) << shard.status().ToString();
  EXPECT_EQ(shard->tokens, tokens);
  EXPECT_EQ(shard->header.token_width, 4u);
  EXPECT_EQ(shard->header.tokenizer, "");
  EXPECT_EQ(TokenWidthForVocab(65536), 2u);
  EXPECT_EQ(TokenWidthForVocab(65537), 4u);
}

TEST(TokenShard, RoundTripEmptyAndLarge) {
  TempDir dir;
  ASSERT_TRUE(WriteTokenShard(dir / "empty.bin", {}, 257, "byte").ok());
  auto empty = ReadTokenShard(dir / "empty.bin");
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_TRUE(empty->tokens.empty());

  std::vector<uint32_t> big(300000);  // several write chunks
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint32_t>((i * 2654435761u) % 50257);
  ASSERT_TRUE(WriteTokenShard(dir / "big.bin", big, 50257, "gpt2").ok());
  auto read = ReadTokenShard(dir / "big.bin");
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(read->tokens, big);
}

TEST(TokenShard, WriterRejectsBadInput) {
  TempDir dir;
  std::vector<uint32_t> tokens = {1, 2, 257};
  Status s = WriteTokenShard(dir / "s.bin", tokens, 257, "byte");
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(dir / "s.bin"));
  EXPECT_THAT(s.message(), HasSubstr("token 2"));
  EXPECT_EQ(WriteTokenShard(dir / "s.bin", {}, 257, "a-very-long-tokenizer-name").code(), Code::kInvalidArgument);
  EXPECT_EQ(WriteTokenShard(dir / "s.bin", {}, 0, "byte").code(), Code::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(dir / "s.bin"));
  Status no_dir = WriteTokenShard(dir / "missing-dir/s.bin", {}, 257, "byte");
  EXPECT_EQ(no_dir.code(), Code::kNotFound);  // ErrnoError(ENOENT)
  EXPECT_THAT(no_dir.message(), HasSubstr(dir / "missing-dir/s.bin"));
}

// Writes a valid shard, applies `mutate` to its bytes, and returns ReadTokenShard's status.
class CorruptShardTest : public ::testing::Test {
 protected:
  Status ReadMutated(const std::function<void(std::string&)>& mutate) {
    std::vector<uint32_t> tokens = Iota(1000);
    EXPECT_TRUE(WriteTokenShard(path_, tokens, 50257, "gpt2").ok());
    std::string raw = ReadFile(path_);
    mutate(raw);
    WriteFile(path_, raw);
    return ReadTokenShard(path_).status();
  }
  void ExpectError(const Status& s, std::string_view needle) {
    EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr(path_)) << "the error must name the file";
    EXPECT_THAT(s.message(), HasSubstr(std::string(needle)));
  }

  TempDir dir_;
  std::string path_ = dir_ / "shard.bin";
};

TEST_F(CorruptShardTest, BadMagic) {
  ExpectError(ReadMutated([](std::string& r) { r[0] = 'X'; }), "byte offset 0 (magic)");
}

TEST_F(CorruptShardTest, WrongVersion) {
  ExpectError(ReadMutated([](std::string& r) { r[8] = 2; }), "byte offset 8 (version)");
}

TEST_F(CorruptShardTest, HeaderChecksumMismatch) {
  // A flipped bit in the vocab size field.
  ExpectError(ReadMutated([](std::string& r) { r[25] ^= 0x04; }), "byte offset 48 (header checksum)");
  ExpectError(ReadMutated([](std::string& r) { r[49] ^= 0x01; }), "byte offset 48 (header checksum)");
}

TEST_F(CorruptShardTest, ReservedNotZero) {
  ExpectError(ReadMutated([](std::string& r) { r[60] = 1; }), "byte offset 60 (reserved)");
}

TEST_F(CorruptShardTest, FlippedPayloadBit) {
  ExpectError(ReadMutated([](std::string& r) { r[64 + 777] ^= 0x10; }), "fails its checksum");
  // The header-only reader does not read the payload.
  EXPECT_TRUE(ReadTokenShardHeader(path_).ok());
}

TEST_F(CorruptShardTest, Truncated) {
  ExpectError(ReadMutated([](std::string& r) { r.resize(r.size() - 1); }), "(truncated)");
  EXPECT_EQ(ReadTokenShardHeader(path_).status().code(), Code::kDataLoss);
  ExpectError(ReadMutated([](std::string& r) { r.resize(40); }), "shorter than the 64-byte header");
  ExpectError(ReadMutated([](std::string& r) { r += "x"; }), "(trailing bytes)");
}

TEST(TokenShard, MissingFile) {
  TempDir dir;
  auto r = ReadTokenShard(dir / "nope.bin");
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr(dir / "nope.bin"));
}

// ---- non-regular files and the file helpers ----------------------------------------------------

// Runs `read` on a thread and returns its Status. `read` opens the FIFO at `fifo`; an open(2) for
// reading without O_NONBLOCK waits for a writer forever. So if `read` has not returned after 10 s,
// this reports the hang as a failure and plays the writer (open + close, after which the reader
// sees EOF) until `read` returns, so the test fails instead of hanging.
Status CallWithFifo(const std::string& fifo, const std::function<Status()>& read) {
  std::packaged_task<Status()> task(read);
  std::future<Status> result = task.get_future();
  std::thread thread(std::move(task));
  if (result.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    ADD_FAILURE() << "reading " << fifo << " blocked for 10 s (opened without O_NONBLOCK?)";
    while (result.wait_for(std::chrono::milliseconds(10)) != std::future_status::ready) {
      int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) ::close(fd);
    }
  }
  thread.join();
  return result.get();
}

void ExpectNotRegular(const Status& s, const std::string& path, std::string_view type) {
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr(path));
  EXPECT_THAT(s.message(), HasSubstr("not a regular file (" + std::string(type) + ")"));
}

TEST(FileUtil, FifoIsRejectedWithoutBlocking) {
  TempDir dir;
  const std::string fifo = dir / "fifo.bin";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  ExpectNotRegular(CallWithFifo(fifo, [&] { return ReadFileToString(fifo).status(); }), fifo, "a FIFO");
  ExpectNotRegular(CallWithFifo(fifo, [&] { return ReadTokenShardHeader(fifo).status(); }), fifo, "a FIFO");
  ExpectNotRegular(CallWithFifo(fifo, [&] { return ReadTokenShard(fifo).status(); }), fifo, "a FIFO");
  ExpectNotRegular(ReadTokenShardHeader(dir.path()).status(), dir.path(), "a directory");
  ExpectNotRegular(ReadFileToString("/dev/null").status(), "/dev/null", "a character device");
}

TEST(FileUtil, OpenRegularFileGivesABlockingFdAndClosesIt) {
  TempDir dir;
  WriteFile(dir / "f", "12345");
  uint64_t size = 0;
  int raw = -1;
  {
    auto fd = OpenRegularFile(dir / "f", &size);
    ASSERT_TRUE(fd.ok()) << fd.status().ToString();
    raw = fd->get();
    EXPECT_EQ(size, 5u);
    const int flags = ::fcntl(raw, F_GETFL);
    ASSERT_GE(flags, 0);
    EXPECT_EQ(flags & O_NONBLOCK, 0);
    EXPECT_NE(::fcntl(raw, F_GETFD) & FD_CLOEXEC, 0);
    ScopedFd moved = std::move(fd).value();
    EXPECT_EQ(moved.get(), raw);
  }
  errno = 0;
  EXPECT_EQ(::fcntl(raw, F_GETFD), -1) << "the fd was not closed";
  EXPECT_EQ(errno, EBADF);

  auto missing = OpenRegularFile(dir / "nope");
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir / "nope"));
}

TEST(FileUtil, ListDirectoryTakesNamesLiterally) {
  TempDir dir;
  const std::string odd = dir / "out[1]*?";
  ASSERT_TRUE(MakeDirectories(odd + "/sub").ok());
  WriteFile(odd + "/b", "");
  WriteFile(odd + "/a", "");
  WriteFile(odd + "/.hidden", "");
  auto names = ListDirectory(odd);
  ASSERT_TRUE(names.ok()) << names.status().ToString();
  EXPECT_EQ(*names, (std::vector<std::string>{".hidden", "a", "b", "sub"}));
  EXPECT_EQ(ListDirectory(dir / "nope").status().code(), Code::kNotFound);

  auto tmp = MakeTempDirectory(odd, ".stage.");
  ASSERT_TRUE(tmp.ok()) << tmp.status().ToString();
  EXPECT_TRUE(tmp->starts_with(odd + "/.stage."));
  EXPECT_TRUE(IsDirectory(*tmp));
  EXPECT_TRUE(SyncDirectory(odd).ok());
}

}  // namespace
}  // namespace cohort::data
