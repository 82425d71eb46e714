// The HDF5 sample source (dataloader/hdf5_source.cc, OpenHdf5Source in source.h): sample counts and
// contents of 1-D and 2-D datasets, indexing across files, concurrent reads, and every open and
// read error. Fixture files are written with the HDF5 C API.
#include <hdf5.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dataloader/source.h"
#include "dataloader/token_shard.h"
#include "tests/unit/hdf5_test_util.h"
#include "tests/unit/test_util.h"

namespace cohort::data {
namespace {

using testing::TempDir;
using testing::WriteFile;
using testing::H5Writer;
using testing::Write1D;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::vector<int64_t> Iota(int64_t first, size_t n) {
  std::vector<int64_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = first + static_cast<int64_t>(i);
  return v;
}

SourceOptions Options(int seq_len, uint32_t vocab = 5000) {
  SourceOptions o;
  o.seq_len = seq_len;
  o.vocab_size = vocab;
  return o;
}

std::vector<int32_t> ReadSample(const SampleSource& s, uint64_t index) {
  std::vector<int32_t> out(static_cast<size_t>(s.seq_len()) + 1, -1);
  const Status st = s.Read(index, out.data());
  EXPECT_TRUE(st.ok()) << "sample " << index << ": " << st.ToString();
  return out;
}

std::vector<int32_t> Range32(int32_t first, int n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = first + i;
  return v;
}

// Opening `files` fails with `code`; returns the message.
std::string OpenError(const std::vector<std::string>& files, const SourceOptions& options, Code code) {
  auto r = OpenHdf5Source(files, options);
  EXPECT_FALSE(r.ok());
  if (r.ok()) return "";
  EXPECT_EQ(r.status().code(), code) << r.status().ToString();
  return r.status().message();
}

TEST(Hdf5SourceTest, OneDimensionalWindowsAcrossFiles) {
  TempDir dir;
  const int T = 4;
  // a: 23 tokens -> floor(22/4) = 5 samples; tokens 21, 22 are a partial window and dropped.
  // b: 4 tokens < T+1 -> none. c: exactly T+1 -> 1. d: 9 int32 tokens -> 2.
  Write1D(dir / "a.h5", H5T_STD_U16LE, Iota(1000, 23));
  Write1D(dir / "b.h5", H5T_STD_U16LE, Iota(1500, 4));
  Write1D(dir / "c.h5", H5T_STD_I32BE, Iota(2000, 5));
  Write1D(dir / "d.h5", H5T_STD_I32LE, Iota(3000, 9));
  const std::vector<std::string> files = {dir / "a.h5", dir / "b.h5", dir / "c.h5", dir / "d.h5"};
  auto r = OpenHdf5Source(files, Options(T));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const SampleSource& s = **r;

  EXPECT_EQ(s.seq_len(), T);
  EXPECT_EQ(s.vocab_size(), 5000u);
  EXPECT_EQ(s.kind(), "HDF5 dataset 'tokens'");
  EXPECT_EQ(s.num_samples(), 8u);
  ASSERT_EQ(s.files().size(), 4u);
  const uint64_t tokens[] = {23, 4, 5, 9};
  const uint64_t samples[] = {5, 0, 1, 2};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(s.files()[i].uri, files[i]);
    EXPECT_EQ(s.files()[i].tokens, tokens[i]) << i;
    EXPECT_EQ(s.files()[i].samples, samples[i]) << i;
  }

  for (int j = 0; j < 5; ++j) EXPECT_EQ(ReadSample(s, j), Range32(1000 + 4 * j, T + 1)) << j;
  EXPECT_EQ(ReadSample(s, 5), Range32(2000, T + 1));
  EXPECT_EQ(ReadSample(s, 6), Range32(3000, T + 1));
  EXPECT_EQ(ReadSample(s, 7), Range32(3004, T + 1));

  std::vector<int32_t> out(T + 1);
  const Status past = s.Read(8, out.data());
  EXPECT_EQ(past.code(), Code::kOutOfRange) << past.ToString();
}

TEST(Hdf5SourceTest, TwoDimensionalRowsUseTheirFirstTPlusOneTokens) {
  TempDir dir;
  const int T = 4;
  {
    H5Writer w(dir / "a.h5");
    w.Add("tokens", H5T_STD_I64LE, {3, 8}, Iota(0, 24));  // rows 0..7, 8..15, 16..23
  }
  {
    H5Writer w(dir / "b.h5");
    w.Add("tokens", H5T_STD_I64LE, {2, 5}, Iota(100, 10));  // L == T+1
  }
  auto r = OpenHdf5Source({dir / "a.h5", dir / "b.h5"}, Options(T));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const SampleSource& s = **r;
  EXPECT_EQ(s.num_samples(), 5u);
  EXPECT_EQ(s.files()[0].tokens, 24u);
  EXPECT_EQ(s.files()[0].samples, 3u);
  EXPECT_EQ(s.files()[1].tokens, 10u);
  EXPECT_EQ(s.files()[1].samples, 2u);
  EXPECT_EQ(ReadSample(s, 0), Range32(0, 5));
  EXPECT_EQ(ReadSample(s, 1), Range32(8, 5));
  EXPECT_EQ(ReadSample(s, 2), Range32(16, 5));
  EXPECT_EQ(ReadSample(s, 3), Range32(100, 5));
  EXPECT_EQ(ReadSample(s, 4), Range32(105, 5));
}

TEST(Hdf5SourceTest, ChunkedCompressedDatasetInAGroup) {
  TempDir dir;
  const int T = 8;
  {
    H5Writer w(dir / "a.h5");
    w.AddGroup("data");
    w.Add("data/ids", H5T_STD_U32LE, {1000}, Iota(7, 1000), /*chunk=*/37);
  }
  SourceOptions o = Options(T);
  o.hdf5_dataset = "data/ids";
  auto r = OpenHdf5Source({dir / "a.h5"}, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->kind(), "HDF5 dataset 'data/ids'");
  EXPECT_EQ((*r)->num_samples(), 999u / 8);
  for (uint64_t j = 0; j < (*r)->num_samples(); ++j) {
    EXPECT_EQ(ReadSample(**r, j), Range32(7 + 8 * static_cast<int32_t>(j), T + 1)) << j;
  }
}

TEST(Hdf5SourceTest, ConcurrentReadsFromFourThreadsAndTwoSources) {
  TempDir dir;
  const int T = 16;
  Write1D(dir / "a.h5", H5T_STD_U16LE, Iota(0, 1601));        // 100 samples
  Write1D(dir / "b.h5", H5T_STD_I32LE, Iota(2000, 16 * 50 + 1));  // 50 samples
  {
    H5Writer w(dir / "rows.h5");
    w.Add("tokens", H5T_STD_I64LE, {64, 20}, Iota(0, 64 * 20), /*chunk=*/8);
  }
  auto stream = OpenHdf5Source({dir / "a.h5", dir / "b.h5"}, Options(T));
  ASSERT_TRUE(stream.ok()) << stream.status().ToString();
  auto rows = OpenHdf5Source({dir / "rows.h5"}, Options(T));
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ((*stream)->num_samples(), 150u);
  ASSERT_EQ((*rows)->num_samples(), 64u);

  auto expected_stream = [](uint64_t j) {
    return j < 100 ? Range32(static_cast<int32_t>(16 * j), 17) : Range32(2000 + 16 * static_cast<int32_t>(j - 100), 17);
  };
  auto expected_row = [](uint64_t j) { return Range32(static_cast<int32_t>(20 * j), 17); };

  std::vector<int> failures(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<int32_t> out(T + 1);
      uint64_t x = 12345 + static_cast<uint64_t>(t);
      for (int iter = 0; iter < 2000; ++iter) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        const uint64_t pick = x >> 33;
        const bool use_rows = (pick & 1) != 0;
        const SampleSource& s = use_rows ? **rows : **stream;
        const uint64_t j = (pick >> 1) % s.num_samples();
        if (!s.Read(j, out.data()).ok() || out != (use_rows ? expected_row(j) : expected_stream(j))) ++failures[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
}

TEST(Hdf5SourceTest, MissingFileIsNotFound) {
  TempDir dir;
  Write1D(dir / "a.h5", H5T_STD_I32LE, Iota(0, 100));
  const std::string msg = OpenError({dir / "a.h5", dir / "missing.h5"}, Options(4), Code::kNotFound);
  EXPECT_THAT(msg, HasSubstr(dir / "missing.h5"));
}

TEST(Hdf5SourceTest, TextFileIsNotHdf5) {
  TempDir dir;
  WriteFile(dir / "notes.h5", "this is plain text, not an HDF5 file\n");
  ::testing::internal::CaptureStderr();
  const std::string msg = OpenError({dir / "notes.h5"}, Options(4), Code::kInvalidArgument);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "") << "HDF5 printed its error stack";
  EXPECT_THAT(msg, AllOf(HasSubstr(dir / "notes.h5"), HasSubstr("not an HDF5 file")));
}

TEST(Hdf5SourceTest, DirectoryIsInvalid) {
  TempDir dir;
  std::filesystem::create_directory(dir / "sub.h5");
  const std::string msg = OpenError({dir / "sub.h5"}, Options(4), Code::kInvalidArgument);
  EXPECT_THAT(msg, HasSubstr(dir / "sub.h5"));
}

TEST(Hdf5SourceTest, MissingDatasetListsTopLevelNames) {
  TempDir dir;
  {
    H5Writer w(dir / "a.h5");
    w.Add("input_ids", H5T_STD_I32LE, {10}, Iota(0, 10));
    w.Add("labels", H5T_STD_I32LE, {10}, Iota(0, 10));
  }
  ::testing::internal::CaptureStderr();
  const std::string msg = OpenError({dir / "a.h5"}, Options(4), Code::kNotFound);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "") << "HDF5 printed its error stack";
  EXPECT_THAT(msg, AllOf(HasSubstr(dir / "a.h5"), HasSubstr("'tokens'"), HasSubstr("'input_ids'"),
                         HasSubstr("'labels'")));

  // A missing intermediate group is "not found" too, not a library error.
  SourceOptions o = Options(4);
  o.hdf5_dataset = "nogroup/tokens";
  const std::string nested = OpenError({dir / "a.h5"}, o, Code::kNotFound);
  EXPECT_THAT(nested, AllOf(HasSubstr(dir / "a.h5"), HasSubstr("'nogroup/tokens'")));
}

TEST(Hdf5SourceTest, GroupInsteadOfDatasetIsInvalid) {
  TempDir dir;
  {
    H5Writer w(dir / "a.h5");
    w.AddGroup("tokens");
  }
  const std::string msg = OpenError({dir / "a.h5"}, Options(4), Code::kInvalidArgument);
  EXPECT_THAT(msg, AllOf(HasSubstr(dir / "a.h5"), HasSubstr("'tokens'")));
}

TEST(Hdf5SourceTest, NonIntegerTypesAreInvalid) {
  TempDir dir;
  {
    H5Writer w(dir / "float.h5");
    w.Add("tokens", H5T_IEEE_F32LE, {100}, Iota(0, 100));
  }
  {
    H5Writer w(dir / "string.h5");
    const hid_t str = H5Tcopy(H5T_C_S1);
    H5Tset_size(str, 16);
    w.Add("tokens", str, {100});
    H5Tclose(str);
  }
  {
    H5Writer w(dir / "compound.h5");
    const hid_t compound = H5Tcreate(H5T_COMPOUND, 8);
    H5Tinsert(compound, "id", 0, H5T_STD_I32LE);
    H5Tinsert(compound, "mask", 4, H5T_STD_I32LE);
    w.Add("tokens", compound, {100});
    H5Tclose(compound);
  }
  const std::pair<const char*, const char*> cases[] = {
      {"float.h5", "float"}, {"string.h5", "string"}, {"compound.h5", "compound"}};
  for (const auto& [file, type_class] : cases) {
    const std::string msg = OpenError({dir / file}, Options(4), Code::kInvalidArgument);
    EXPECT_THAT(msg, AllOf(HasSubstr(dir / file), HasSubstr("'tokens'"), HasSubstr(type_class)));
  }
}

TEST(Hdf5SourceTest, RankZeroAndThreeAreInvalid) {
  TempDir dir;
  {
    H5Writer w(dir / "scalar.h5");
    w.Add("tokens", H5T_STD_I32LE, {}, {42});
  }
  {
    H5Writer w(dir / "cube.h5");
    w.Add("tokens", H5T_STD_I32LE, {2, 3, 10}, Iota(0, 60));
  }
  EXPECT_THAT(OpenError({dir / "scalar.h5"}, Options(4), Code::kInvalidArgument),
              AllOf(HasSubstr(dir / "scalar.h5"), HasSubstr("'tokens'"), HasSubstr("rank 0")));
  EXPECT_THAT(OpenError({dir / "cube.h5"}, Options(4), Code::kInvalidArgument),
              AllOf(HasSubstr(dir / "cube.h5"), HasSubstr("'tokens'"), HasSubstr("rank 3")));
}

TEST(Hdf5SourceTest, RowsShorterThanASampleAreInvalid) {
  TempDir dir;
  {
    H5Writer w(dir / "rows.h5");
    w.Add("tokens", H5T_STD_I64LE, {4, 3}, Iota(0, 12));
  }
  EXPECT_THAT(OpenError({dir / "rows.h5"}, Options(4), Code::kInvalidArgument),
              AllOf(HasSubstr(dir / "rows.h5"), HasSubstr("'tokens'"), HasSubstr(" 3 "), HasSubstr(" 5 ")));
}

TEST(Hdf5SourceTest, MixedRanksNameBothFiles) {
  TempDir dir;
  Write1D(dir / "a.h5", H5T_STD_I32LE, Iota(0, 100));
  {
    H5Writer w(dir / "b.h5");
    w.Add("tokens", H5T_STD_I32LE, {4, 10}, Iota(0, 40));
  }
  EXPECT_THAT(OpenError({dir / "a.h5", dir / "b.h5"}, Options(4), Code::kInvalidArgument),
              AllOf(HasSubstr(dir / "a.h5"), HasSubstr(dir / "b.h5")));
}

TEST(Hdf5SourceTest, NoSamplesAtAllIsInvalid) {
  TempDir dir;
  Write1D(dir / "a.h5", H5T_STD_I32LE, Iota(0, 3));
  Write1D(dir / "b.h5", H5T_STD_I32LE, Iota(0, 4));
  EXPECT_THAT(OpenError({dir / "a.h5", dir / "b.h5"}, Options(4), Code::kInvalidArgument),
              AllOf(HasSubstr(dir / "a.h5"), HasSubstr("no sample")));
  {
    H5Writer w(dir / "empty_rows.h5");
    w.Add("tokens", H5T_STD_I32LE, {0, 10});
  }
  EXPECT_THAT(OpenError({dir / "empty_rows.h5"}, Options(4), Code::kInvalidArgument), HasSubstr("no sample"));
}

TEST(Hdf5SourceTest, BadOptionsAreInvalid) {
  TempDir dir;
  Write1D(dir / "a.h5", H5T_STD_I32LE, Iota(0, 100));
  OpenError({dir / "a.h5"}, Options(4, /*vocab=*/0), Code::kInvalidArgument);
  OpenError({dir / "a.h5"}, Options(0), Code::kInvalidArgument);
  OpenError({}, Options(4), Code::kInvalidArgument);
  SourceOptions o = Options(4);
  o.hdf5_dataset = "";
  OpenError({dir / "a.h5"}, o, Code::kInvalidArgument);
}

TEST(Hdf5SourceTest, TokenAtOrAboveVocabIsDataLossNamingTheElement) {
  TempDir dir;
  std::vector<int64_t> values = Iota(0, 41);
  values[27] = 70000;
  Write1D(dir / "train.h5", H5T_STD_I32LE, values);
  auto r = OpenHdf5Source({dir / "train.h5"}, Options(10, 50257));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::vector<int32_t> out(11);
  EXPECT_TRUE((*r)->Read(0, out.data()).ok());
  const Status bad = (*r)->Read(2, out.data());  // elements 20 .. 30
  EXPECT_EQ(bad.code(), Code::kDataLoss) << bad.ToString();
  EXPECT_THAT(bad.message(), AllOf(HasSubstr(dir / "train.h5"), HasSubstr("dataset 'tokens' element 27"),
                                   HasSubstr("token 70000 >= vocab size 50257")));

  // A token equal to the vocabulary size is out of range too; 2-D errors name [row, column].
  {
    H5Writer w(dir / "rows.h5");
    std::vector<int64_t> rows = Iota(0, 30);
    rows[10 + 3] = 100;
    w.Add("tokens", H5T_STD_U16LE, {3, 10}, rows);
  }
  auto r2 = OpenHdf5Source({dir / "rows.h5"}, Options(5, 100));
  ASSERT_TRUE(r2.ok()) << r2.status().ToString();
  std::vector<int32_t> out2(6);
  const Status bad2 = (*r2)->Read(1, out2.data());
  EXPECT_EQ(bad2.code(), Code::kDataLoss) << bad2.ToString();
  EXPECT_THAT(bad2.message(), AllOf(HasSubstr(dir / "rows.h5"), HasSubstr("element [1, 3]"),
                                    HasSubstr("token 100 >= vocab size 100")));
}

TEST(Hdf5SourceTest, HugeUnsignedTokenIsReportedUnclipped) {
  TempDir dir;
  {
    H5Writer w(dir / "u64.h5");
    const std::vector<uint64_t> values = {1, 2, 3, (uint64_t{1} << 63) + 5, 4};
    const hid_t space = H5Screate_simple(1, std::vector<hsize_t>{5}.data(), nullptr);
    const hid_t dset = H5Dcreate2(w.id(), "tokens", H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Dwrite(dset, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
    H5Dclose(dset);
    H5Sclose(space);
  }
  auto r = OpenHdf5Source({dir / "u64.h5"}, Options(4));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::vector<int32_t> out(5);
  const Status bad = (*r)->Read(0, out.data());
  EXPECT_EQ(bad.code(), Code::kDataLoss);
  EXPECT_THAT(bad.message(), AllOf(HasSubstr("element 3"), HasSubstr("token 9223372036854775813 >=")));
}

TEST(Hdf5SourceTest, NegativeTokenIsDataLoss) {
  TempDir dir;
  std::vector<int64_t> values = Iota(0, 9);
  values[2] = -3;
  Write1D(dir / "neg.h5", H5T_STD_I16LE, values);
  auto r = OpenHdf5Source({dir / "neg.h5"}, Options(4));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::vector<int32_t> out(5);
  const Status bad = (*r)->Read(0, out.data());
  EXPECT_EQ(bad.code(), Code::kDataLoss) << bad.ToString();
  EXPECT_THAT(bad.message(), AllOf(HasSubstr(dir / "neg.h5"), HasSubstr("element 2"), HasSubstr("-3"),
                                   HasSubstr("negative")));
  EXPECT_TRUE((*r)->Read(1, out.data()).ok());  // elements 4 .. 8
}

TEST(Hdf5SourceTest, TruncatedFileFailsAtOpenNamingIt) {
  TempDir dir;
  Write1D(dir / "cut.h5", H5T_STD_I32LE, Iota(0, 10000));
  const auto size = std::filesystem::file_size(dir / "cut.h5");
  ASSERT_EQ(::truncate((dir / "cut.h5").c_str(), static_cast<off_t>(size / 2)), 0);
  ::testing::internal::CaptureStderr();
  const std::string msg = OpenError({dir / "cut.h5"}, Options(4), Code::kDataLoss);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "") << "HDF5 printed its error stack";
  EXPECT_THAT(msg, AllOf(HasSubstr(dir / "cut.h5"), HasSubstr("truncated")));
}

TEST(Hdf5SourceTest, FileShrunkAfterOpenFailsAtRead) {
  TempDir dir;
  Write1D(dir / "cut.h5", H5T_STD_I32LE, Iota(0, 10000));
  auto r = OpenHdf5Source({dir / "cut.h5"}, Options(4));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const auto size = std::filesystem::file_size(dir / "cut.h5");
  ASSERT_EQ(::truncate((dir / "cut.h5").c_str(), static_cast<off_t>(size / 2)), 0);
  std::vector<int32_t> out(5);
  const Status bad = (*r)->Read((*r)->num_samples() - 1, out.data());
  EXPECT_EQ(bad.code(), Code::kDataLoss) << bad.ToString();
  EXPECT_THAT(bad.message(), HasSubstr(dir / "cut.h5"));
}

TEST(Hdf5SourceTest, FileModifiedAfterOpenFailsAtRead) {
  TempDir dir;
  Write1D(dir / "a.h5", H5T_STD_I32LE, Iota(0, 100));
  auto r = OpenHdf5Source({dir / "a.h5"}, Options(4));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::vector<int32_t> out(5);
  ASSERT_TRUE((*r)->Read(0, out.data()).ok());
  // Set the modification time explicitly: a rewrite within the same clock tick could keep it.
  const auto path = std::filesystem::path(dir / "a.h5");
  std::filesystem::last_write_time(path, std::filesystem::last_write_time(path) - std::chrono::hours(1));
  const Status bad = (*r)->Read(0, out.data());
  EXPECT_EQ(bad.code(), Code::kDataLoss) << bad.ToString();
  EXPECT_THAT(bad.message(), AllOf(HasSubstr(dir / "a.h5"), HasSubstr("modified")));
}

// The same token stream as token shards and as HDF5 (1-D, two files each; and 2-D rows cut from
// the same windows): OpenSampleSource picks the format by extension, and every sample is equal.
TEST(Hdf5SourceTest, ShardsAndHdf5ReadTheSameTokens) {
  TempDir dir;
  const int T = 16;
  std::vector<uint32_t> stream;
  for (uint32_t i = 0; i < 3000; ++i) stream.push_back((i * 7919u + i / 13) % 50257u);
  const size_t half = 1700;
  const std::span<const uint32_t> parts[] = {std::span(stream).first(half), std::span(stream).subspan(half)};
  for (int f = 0; f < 2; ++f) {
    const std::string n = std::to_string(f);
    ASSERT_TRUE(WriteTokenShard(dir / ("train-" + n + ".bin"), parts[f], 50257, "gpt2").ok());
    Write1D(dir / ("train-" + n + ".h5"), H5T_STD_U16LE,
            std::vector<int64_t>(parts[f].begin(), parts[f].end()));
  }
  SourceOptions o = Options(T, 50257);
  o.tokenizer = "gpt2";
  o.patterns = {dir / "train-*.bin"};
  auto shards = OpenSampleSource(o);
  ASSERT_TRUE(shards.ok()) << shards.status().ToString();
  o.patterns = {dir / "train-*.h5"};
  auto h5 = OpenSampleSource(o);
  ASSERT_TRUE(h5.ok()) << h5.status().ToString();
  EXPECT_EQ((*shards)->kind(), "token shards");
  EXPECT_THAT((*h5)->kind(), HasSubstr("HDF5"));
  ASSERT_EQ((*shards)->num_samples(), (*h5)->num_samples());
  ASSERT_EQ((*shards)->num_samples(), (half - 1) / T + (stream.size() - half - 1) / T);
  // 2-D: one row per shard window, each row T+1 tokens plus 3 extra columns that must be ignored.
  std::vector<int64_t> rows;
  for (uint64_t i = 0; i < (*shards)->num_samples(); ++i) {
    const std::vector<int32_t> s = ReadSample(**shards, i);
    rows.insert(rows.end(), s.begin(), s.end());
    rows.insert(rows.end(), {1, 2, 3});
  }
  {
    H5Writer w(dir / "rows.h5");
    w.Add("tokens", H5T_STD_I32LE, {(*shards)->num_samples(), static_cast<hsize_t>(T + 4)}, rows);
  }
  o.patterns = {dir / "rows.h5"};
  auto h5rows = OpenSampleSource(o);
  ASSERT_TRUE(h5rows.ok()) << h5rows.status().ToString();
  ASSERT_EQ((*h5rows)->num_samples(), (*shards)->num_samples());
  for (uint64_t i = 0; i < (*shards)->num_samples(); ++i) {
    const std::vector<int32_t> want = ReadSample(**shards, i);
    ASSERT_EQ(ReadSample(**h5, i), want) << "sample " << i;
    ASSERT_EQ(ReadSample(**h5rows, i), want) << "sample " << i;
  }
}

}  // namespace
}  // namespace cohort::data
