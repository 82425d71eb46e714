// Checkpoint format (checkpoint/checkpoint.h): shards written and read back at another world size,
// the manifest committed last, corruption and truncation detected with the file named, incomplete
// steps skipped, and a failed write leaving nothing behind.
#include "checkpoint/checkpoint.h"

#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/crc32c.h"
#include "storage/file_util.h"
#include "tests/unit/test_util.h"

namespace cohort::checkpoint {
namespace {

// A small GPT-like table: 2-D weights and 1-D biases, 1,200 floats in all.
std::vector<TensorSpec> Table() {
  std::vector<TensorSpec> t = {{"wte", 0, 400, {40, 10}},           {"wpe", 0, 80, {8, 10}},
                               {"h.0.attn.c_attn.weight", 0, 300, {30, 10}}, {"h.0.attn.c_attn.bias", 0, 30, {30}},
                               {"h.0.mlp.c_fc.weight", 0, 380, {38, 10}},   {"ln_f.bias", 0, 10, {10}}};
  uint64_t off = 0;
  for (auto& x : t) {
    x.offset = off;
    off += x.numel;
  }
  return t;
}
constexpr uint64_t kTotal = 1200;

std::vector<float> Random(uint64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = tmp_.path() + "/ckpt";
    model_ = Random(kTotal, 1);
    m_ = Random(kTotal, 2);
    v_ = Random(kTotal, 3);
  }

  // Writes and commits step `step` from `world` ranks (even split), returns the manifest.
  Manifest Save(int64_t step, int world, bool commit = true) {
    Manifest man;
    man.step = step;
    man.world_size = world;
    man.strategy = "zero1";
    man.job_spec_yaml = "model: {n_layer: 1}\n";
    man.data = {1337, 2, 4242, 99};
    man.optimizer_step = step;
    man.num_parameters = kTotal;
    man.states = {"model", "adam_m", "adam_v"};
    for (int r = 0; r < world; ++r) {
      const uint64_t lo = kTotal * r / world, hi = kTotal * (r + 1) / world;
      ShardWrite w;
      w.rank = r;
      w.world = world;
      w.step = step;
      w.tensors = Table();
      w.ranges = {{lo, hi - lo}};
      w.arrays = {{"model", model_.data() + lo}, {"adam_m", m_.data() + lo}, {"adam_v", v_.data() + lo}};
      auto info = WriteShard(StepDir(root_, step), w);
      EXPECT_TRUE(info.ok()) << info.status().ToString();
      if (info.ok()) man.files.push_back(*info);
    }
    if (commit) {
      Status s = Commit(root_, man);
      EXPECT_TRUE(s.ok()) << s.ToString();
    }
    return man;
  }

  std::string Shard(int64_t step, int rank, int world) { return StepDir(root_, step) + "/" + ShardFileName(rank, world); }

  ::cohort::testing::TempDir tmp_;
  std::string root_;
  std::vector<float> model_, m_, v_;
};

void FlipByte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

// Where dataset `name`'s bytes start in an HDF5 file (contiguous layout).
uint64_t DatasetFileOffset(const std::string& path, const std::string& name) {
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t d = H5Dopen2(f, name.c_str(), H5P_DEFAULT);
  const haddr_t a = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  return a;
}

TEST_F(CheckpointTest, RoundTripAndReadAtAnotherWorldSize) {
  const Manifest saved = Save(100, 3);
  auto m = ReadManifest(StepDir(root_, 100));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->step, 100);
  EXPECT_EQ(m->world_size, 3);
  EXPECT_EQ(m->strategy, "zero1");
  EXPECT_EQ(m->job_spec_yaml, saved.job_spec_yaml);
  EXPECT_EQ(m->data, saved.data);
  EXPECT_EQ(m->states, saved.states);
  ASSERT_EQ(m->files.size(), 3u);
  EXPECT_GT(m->created_unix_ms, 0);
  for (size_t r = 0; r < 3; ++r) {
    EXPECT_EQ(m->files[r].crc32c, saved.files[r].crc32c);
    EXPECT_EQ(m->files[r].size, saved.files[r].size);
  }
  Manifest verified;
  Status v = Verify(StepDir(root_, 100), &verified);
  ASSERT_TRUE(v.ok()) << v.ToString();
  // The whole arrays, then the ranges ranks of a world of 2 and of 4 would load.
  for (const auto& [name, want] : {std::pair{"model", &model_}, {"adam_m", &m_}, {"adam_v", &v_}}) {
    std::vector<float> got(kTotal, -1.0f);
    ASSERT_TRUE(ReadRange(StepDir(root_, 100), *m, name, 0, kTotal, got.data()).ok());
    EXPECT_EQ(got, *want) << name;
    for (const int world : {2, 4, 7}) {
      for (int r = 0; r < world; ++r) {
        const uint64_t lo = kTotal * r / world, hi = kTotal * (r + 1) / world;
        std::vector<float> part(hi - lo);
        ASSERT_TRUE(ReadRange(StepDir(root_, 100), *m, name, lo, hi - lo, part.data()).ok());
        EXPECT_TRUE(std::equal(part.begin(), part.end(), want->begin() + static_cast<ptrdiff_t>(lo)))
            << name << " rank " << r << " of " << world;
      }
    }
  }
  EXPECT_EQ(ReadRange(StepDir(root_, 100), *m, "momentum", 0, 1, model_.data()).code(), Code::kNotFound);
  std::vector<float> x(2);
  EXPECT_EQ(ReadRange(StepDir(root_, 100), *m, "model", kTotal - 1, 2, x.data()).code(), Code::kInvalidArgument);
  auto latest = storage::ReadFileToString(root_ + "/latest");
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(*latest, "step-000000100\n");
}

// Tensors inside a shard's range keep their name and shape (h5py / h5dump show the model); a
// tensor cut by the range is a 1-D piece that records its place.
TEST_F(CheckpointTest, ShardsAreNamedShapedHdf5) {
  Save(7, 3);
  const std::string path = Shard(7, 0, 3);  // elements [0, 400): exactly wte
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  const hid_t d = H5Dopen2(f, "/model/wte", H5P_DEFAULT);
  ASSERT_GE(d, 0);
  const hid_t s = H5Dget_space(d);
  hsize_t dims[2] = {0, 0};
  ASSERT_EQ(H5Sget_simple_extent_ndims(s), 2);
  H5Sget_simple_extent_dims(s, dims, nullptr);
  EXPECT_EQ(dims[0], 40u);
  EXPECT_EQ(dims[1], 10u);
  std::vector<float> wte(400);
  ASSERT_GE(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, wte.data()), 0);
  EXPECT_TRUE(std::equal(wte.begin(), wte.end(), model_.begin()));
  H5Sclose(s);
  H5Dclose(d);
  H5Fclose(f);
  // Rank 1 holds [400, 800): wpe and c_attn.weight whole, and the first 20 of c_attn.bias's 30
  // (it spans [780, 810)).
  const hid_t f1 = H5Fopen(Shard(7, 1, 3).c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t piece = H5Dopen2(f1, "/adam_v/h.0.attn.c_attn.bias@0", H5P_DEFAULT);
  ASSERT_GE(piece, 0);
  const hid_t ps = H5Dget_space(piece);
  EXPECT_EQ(H5Sget_simple_extent_npoints(ps), 20);
  EXPECT_GT(H5Aexists(piece, "tensor_offset"), 0);
  EXPECT_GT(H5Aexists(piece, "tensor_shape"), 0);
  H5Sclose(ps);
  H5Dclose(piece);
  H5Fclose(f1);
  // The whole thing through the command-line tool users have.
  const std::string cmd = "h5dump -H " + path + " > " + tmp_.path() + "/dump.txt 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  auto dump = storage::ReadFileToString(tmp_.path() + "/dump.txt");
  ASSERT_TRUE(dump.ok());
  EXPECT_NE(dump->find("DATASET \"wte\""), std::string::npos) << *dump;
  EXPECT_NE(dump->find("( 40, 10 )"), std::string::npos) << *dump;
}

// The datasets' data is written while the rest of the shard is still being built (ImageWriter);
// the metadata and the blocks shared with it at the end. A large table of odd sizes (blocks shared
// between datasets, pieces cut by the ranks' ranges, more metadata than the one block sized for it)
// written twice through one reused arena: each file on disk must hold exactly the image whose CRC
// the shard reports, and every value must read back.
TEST_F(CheckpointTest, ShardsWrittenWhileBuiltAreExact) {
  std::mt19937_64 rng(11);
  std::vector<TensorSpec> table;
  uint64_t total = 0;
  for (int i = 0; i < 700; ++i) {
    // Mostly small (metadata heavy), some of a few hundred KB; sizes rarely a multiple of 4 KiB.
    const uint64_t n = (i % 50 == 0) ? 60000 + rng() % 40000 : 1 + rng() % 700;
    // Long names: more metadata per dataset than WriteShard sizes its metadata block for.
    table.push_back({"h." + std::to_string(i) + "." + std::string(200, 'w'), total, n, {static_cast<int64_t>(n)}});
    total += n;
  }
  const std::vector<float> model = Random(total, 21), moment = Random(total, 22);
  const int world = 3;
  ImageBuffer arena;  // reused by every shard, as the writer thread does
  for (const int64_t step : {1, 2}) {
    Manifest man;
    man.step = step;
    man.world_size = world;
    man.num_parameters = total;
    man.states = {"model", "adam_m"};
    for (int r = 0; r < world; ++r) {
      const uint64_t lo = total * r / world, hi = total * (r + 1) / world;
      ShardWrite w;
      w.rank = r;
      w.world = world;
      w.step = step;
      w.tensors = table;
      w.ranges = {{lo, hi - lo}};
      w.arrays = {{"model", model.data() + lo}, {"adam_m", moment.data() + lo}};
      w.scratch = &arena;
      auto info = WriteShard(StepDir(root_, step), w);
      ASSERT_TRUE(info.ok()) << info.status().ToString();
      // The file's bytes are the image's: its size and CRC32C, read back from the disk.
      auto bytes = storage::ReadFileToString(StepDir(root_, step) + "/" + info->name);
      ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
      EXPECT_EQ(bytes->size(), info->size);
      EXPECT_EQ(Crc32c(bytes->data(), bytes->size()), info->crc32c) << info->name;
      man.files.push_back(*info);
    }
    ASSERT_TRUE(Commit(root_, man).ok());
    Manifest m;
    Status v = Verify(StepDir(root_, step), &m);  // every dataset's CRC too
    ASSERT_TRUE(v.ok()) << v.ToString();
    std::vector<float> got(total);
    ASSERT_TRUE(ReadRange(StepDir(root_, step), m, "model", 0, total, got.data()).ok());
    EXPECT_EQ(got, model);
    ASSERT_TRUE(ReadRange(StepDir(root_, step), m, "adam_m", 0, total, got.data()).ok());
    EXPECT_EQ(got, moment);
  }
}

// The asynchronous checkpointer's path: the data copied straight to the planned places of a file
// image (PlanShard), HDF5's metadata added around it (WriteShardImage). Whatever the image held
// before (an earlier shard's bytes) must not reach the file: two images, one full of stale bytes,
// written a second apart, give byte-identical files, and every value reads back.
TEST_F(CheckpointTest, ShardImagesWrittenInPlaceAreExactWhateverTheImageHeld) {
  ShardWrite w;
  w.rank = 1;
  w.world = 2;
  w.step = 5;
  w.tensors = Table();
  w.ranges = {{100, 350}, {700, 420}};  // cuts wte, wpe, h.0.attn.c_attn.weight and h.0.mlp.c_fc.weight
  w.arrays = {{"model", nullptr}, {"adam_m", nullptr}};
  auto layout = PlanShard(w);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  // Two arrays; the first range touches 2 tensors, the second 3: 10 datasets.
  ASSERT_EQ(layout->extents.size(), 10u);
  const std::vector<float>* arrays[] = {&model_, &m_};
  auto place = [&](ImageBuffer& image) {
    for (const ShardLayout::Extent& e : layout->extents) {
      // Element e.element over the ranges: the first range's 350, then the second's.
      const uint64_t flat = e.element < 350 ? 100 + e.element : 700 + (e.element - 350);
      std::memcpy(image.data() + e.offset, arrays[e.array]->data() + flat, e.count * sizeof(float));
    }
  };
  ImageBuffer stale, fresh;
  ASSERT_TRUE(stale.Reserve(layout->file_size) && fresh.Reserve(layout->file_size));
  std::memset(stale.data(), 0xAB, stale.capacity());
  std::memset(fresh.data(), 0, fresh.capacity());
  place(stale);
  place(fresh);
  const std::string a = root_ + "/a", b = root_ + "/b";
  auto info_a = WriteShardImage(StepDir(a, 5), w, *layout, &stale);
  // In another second: no time stamps in the file either (its bytes depend on its contents only).
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  auto info_b = WriteShardImage(StepDir(b, 5), w, *layout, &fresh);
  ASSERT_TRUE(info_a.ok()) << info_a.status().ToString();
  ASSERT_TRUE(info_b.ok()) << info_b.status().ToString();
  auto bytes_a = storage::ReadFileToString(StepDir(a, 5) + "/" + info_a->name);
  auto bytes_b = storage::ReadFileToString(StepDir(b, 5) + "/" + info_b->name);
  ASSERT_TRUE(bytes_a.ok() && bytes_b.ok());
  EXPECT_EQ(bytes_a->size(), layout->file_size);
  EXPECT_TRUE(*bytes_a == *bytes_b) << "the stale image's bytes reached the file";
  EXPECT_EQ(Crc32c(bytes_a->data(), bytes_a->size()), info_a->crc32c);
  // The shard reads back through the format's own reader, checksums included.
  Manifest man;
  man.step = 5;
  man.world_size = 2;
  man.num_parameters = kTotal;
  man.states = {"model", "adam_m"};
  ShardWrite w0 = w;
  w0.rank = 0;
  w0.ranges = {{0, 100}, {450, 250}, {1120, 80}};
  w0.arrays = {{"model", nullptr}, {"adam_m", nullptr}};
  std::vector<float> p0, m0;
  for (const Range& r : w0.ranges) {
    p0.insert(p0.end(), model_.begin() + r.offset, model_.begin() + r.offset + r.size);
    m0.insert(m0.end(), m_.begin() + r.offset, m_.begin() + r.offset + r.size);
  }
  w0.arrays = {{"model", p0.data()}, {"adam_m", m0.data()}};
  auto info_0 = WriteShard(StepDir(a, 5), w0);
  ASSERT_TRUE(info_0.ok()) << info_0.status().ToString();
  man.files = {*info_0, *info_a};
  ASSERT_TRUE(Commit(a, man).ok());
  Manifest m;
  ASSERT_TRUE(Verify(StepDir(a, 5), &m).ok());
  std::vector<float> got(kTotal);
  ASSERT_TRUE(ReadRange(StepDir(a, 5), m, "model", 0, kTotal, got.data()).ok());
  EXPECT_EQ(got, model_);
  ASSERT_TRUE(ReadRange(StepDir(a, 5), m, "adam_m", 0, kTotal, got.data()).ok());
  EXPECT_EQ(got, m_);
}

// A layout that does not match what HDF5 builds (planned for another table) is refused, and
// nothing is left behind; one that does not fit its own file is refused up front.
TEST_F(CheckpointTest, AShardImageWhoseLayoutNoLongerFitsIsRefused) {
  ShardWrite w;
  w.tensors = Table();
  w.ranges = {{0, kTotal}};
  w.arrays = {{"model", nullptr}};
  auto layout = PlanShard(w);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  ImageBuffer image;
  ASSERT_TRUE(image.Reserve(layout->file_size));
  // An extent outside the file is rejected before anything is written.
  ShardLayout outside = *layout;
  outside.extents.back().offset = layout->file_size - 4;
  auto bad = WriteShardImage(StepDir(root_, 3), w, outside, &image);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument) << bad.status().ToString();
  ShardLayout moved = *layout;
  moved.extents[2].offset += 8;
  auto info = WriteShardImage(StepDir(root_, 3), w, moved, &image);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), Code::kInternal) << info.status().ToString();
  EXPECT_NE(info.status().message().find("/model/h.0.attn.c_attn.weight"), std::string::npos) << info.status().ToString();
  EXPECT_NE(info.status().message().find("layout changed"), std::string::npos) << info.status().ToString();
  auto left = storage::ListDirectory(StepDir(root_, 3));
  ASSERT_TRUE(left.ok());
  EXPECT_TRUE(left->empty()) << (*left)[0];
}

// ZeRO-1 ranks own a chunk of every gradient bucket: several ranges per shard, tensors cut more
// than once. Read back whole and at other world sizes.
TEST_F(CheckpointTest, ShardsOfSeveralRangesEach) {
  const int world = 3;
  // Buckets [0, 500), [500, 1000), [1000, 1200), each split in 3 chunks.
  const std::vector<std::pair<uint64_t, uint64_t>> buckets = {{0, 500}, {500, 1000}, {1000, 1200}};
  Manifest man;
  man.step = 8;
  man.world_size = world;
  man.num_parameters = kTotal;
  man.states = {"model", "adam_m"};
  for (int r = 0; r < world; ++r) {
    ShardWrite w;
    w.rank = r;
    w.world = world;
    w.step = 8;
    w.tensors = Table();
    std::vector<float> mine_p, mine_m;
    for (auto [lo, hi] : buckets) {
      const uint64_t a = lo + (hi - lo) * r / world, b = lo + (hi - lo) * (r + 1) / world;
      w.ranges.push_back({a, b - a});
      mine_p.insert(mine_p.end(), model_.begin() + static_cast<ptrdiff_t>(a), model_.begin() + static_cast<ptrdiff_t>(b));
      mine_m.insert(mine_m.end(), m_.begin() + static_cast<ptrdiff_t>(a), m_.begin() + static_cast<ptrdiff_t>(b));
    }
    w.arrays = {{"model", mine_p.data()}, {"adam_m", mine_m.data()}};
    auto info = WriteShard(StepDir(root_, 8), w);
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    EXPECT_EQ(info->ranges, w.ranges);
    man.files.push_back(*info);
  }
  ASSERT_TRUE(Commit(root_, man).ok());
  Manifest m;
  Status v = Verify(StepDir(root_, 8), &m);
  ASSERT_TRUE(v.ok()) << v.ToString();
  EXPECT_EQ(m.files[1].ranges.size(), 3u);
  std::vector<float> got(kTotal);
  ASSERT_TRUE(ReadRange(StepDir(root_, 8), m, "adam_m", 0, kTotal, got.data()).ok());
  EXPECT_EQ(got, m_);
  std::vector<float> part(333);
  ASSERT_TRUE(ReadRange(StepDir(root_, 8), m, "model", 444, 333, part.data()).ok());
  EXPECT_TRUE(std::equal(part.begin(), part.end(), model_.begin() + 444));
  // A manifest whose ranges leave a gap is refused.
  Manifest gap = man;
  gap.files[2].ranges.pop_back();
  EXPECT_EQ(Commit(root_, gap).code(), Code::kDataLoss);
}

TEST_F(CheckpointTest, AFlippedBitIsDetectedNamingTheFileAndTensor) {
  Save(5, 2);
  const std::string shard = Shard(5, 1, 2);  // [600, 1200): the tail of c_attn.weight onward
  FlipByte(shard, DatasetFileOffset(shard, "/adam_m/h.0.mlp.c_fc.weight") + 17);
  Status v = Verify(StepDir(root_, 5));
  EXPECT_EQ(v.code(), Code::kDataLoss) << v.ToString();
  EXPECT_NE(v.message().find(shard), std::string::npos) << v.ToString();
  EXPECT_NE(v.message().find("checksum mismatch"), std::string::npos) << v.ToString();
  // Loading reads the tensors themselves: the bad one is named.
  auto m = ReadManifest(StepDir(root_, 5));
  ASSERT_TRUE(m.ok());
  std::vector<float> all(kTotal);
  Status r = ReadRange(StepDir(root_, 5), *m, "adam_m", 0, kTotal, all.data());
  EXPECT_EQ(r.code(), Code::kDataLoss) << r.ToString();
  EXPECT_NE(r.message().find("/adam_m/h.0.mlp.c_fc.weight"), std::string::npos) << r.ToString();
  // The other arrays of the same file are intact.
  EXPECT_TRUE(ReadRange(StepDir(root_, 5), *m, "model", 0, kTotal, all.data()).ok());
}

// Datasets larger than one read (4 Mi floats) are read in pieces, by rows for a 2-D one: the
// values across the pieces' boundaries, and a flipped bit in a later piece.
TEST_F(CheckpointTest, LargeDatasetsAreReadInPiecesExactly) {
  const uint64_t rows = 1100, cols = 4000, flat = (uint64_t{1} << 22) + 12345;
  std::vector<TensorSpec> table = {{"big.weight", 0, rows * cols, {static_cast<int64_t>(rows), static_cast<int64_t>(cols)}},
                                   {"big.bias", rows * cols, flat, {static_cast<int64_t>(flat)}}};
  const uint64_t total = rows * cols + flat;
  const std::vector<float> model = Random(total, 31);
  ShardWrite w;
  w.step = 3;
  w.tensors = table;
  w.ranges = {{0, total}};
  w.arrays = {{"model", model.data()}};
  auto info = WriteShard(StepDir(root_, 3), w);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  Manifest man;
  man.step = 3;
  man.num_parameters = total;
  man.states = {"model"};
  man.files = {*info};
  ASSERT_TRUE(Commit(root_, man).ok());
  ASSERT_TRUE(Verify(StepDir(root_, 3)).ok());
  // A window across the 2-D tensor's first read boundary (row 1048), and one across the 1-D one's.
  for (const uint64_t at : {uint64_t{1048} * cols - 3000, rows * cols + (uint64_t{1} << 22) - 5000}) {
    std::vector<float> got(10000);
    ASSERT_TRUE(ReadRange(StepDir(root_, 3), man, "model", at, got.size(), got.data()).ok());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), model.begin() + static_cast<ptrdiff_t>(at))) << "at " << at;
  }
  const std::string shard = Shard(3, 0, 1);
  FlipByte(shard, DatasetFileOffset(shard, "/model/big.bias") + 4 * ((uint64_t{1} << 22) + 100));
  std::vector<float> head(100);
  Status r = ReadRange(StepDir(root_, 3), man, "model", rows * cols, head.size(), head.data());
  EXPECT_EQ(r.code(), Code::kDataLoss) << r.ToString();
  EXPECT_NE(r.message().find("/model/big.bias"), std::string::npos) << r.ToString();
}

// Each dataset's CRC covers its data only: a damaged flat_offset attribute would put intact data
// in the wrong place. Loading checks that the datasets tile the shard's ranges from the manifest.
TEST_F(CheckpointTest, ADatasetClaimingAnotherPlaceIsRefusedWhenLoading) {
  Save(6, 1);
  const std::string shard = Shard(6, 0, 1);
  {
    const hid_t file = H5Fopen(shard.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    const hid_t ds = H5Dopen2(file, "/model/wpe", H5P_DEFAULT);
    const hid_t attr = ds >= 0 ? H5Aopen(ds, "flat_offset", H5P_DEFAULT) : -1;
    const uint64_t elsewhere = 0;  // wte's place: the element count still adds up
    const bool written = attr >= 0 && H5Awrite(attr, H5T_NATIVE_UINT64, &elsewhere) >= 0;
    if (attr >= 0) H5Aclose(attr);
    if (ds >= 0) H5Dclose(ds);
    H5Fclose(file);
    ASSERT_TRUE(written);
  }
  auto m = ReadManifest(StepDir(root_, 6));
  ASSERT_TRUE(m.ok());
  std::vector<float> all(kTotal);
  Status r = ReadRange(StepDir(root_, 6), *m, "model", 0, kTotal, all.data());
  EXPECT_EQ(r.code(), Code::kDataLoss) << r.ToString();
  EXPECT_NE(r.message().find(shard), std::string::npos) << r.ToString();
  EXPECT_NE(r.message().find("/model"), std::string::npos) << r.ToString();
  EXPECT_TRUE(ReadRange(StepDir(root_, 6), *m, "adam_m", 0, kTotal, all.data()).ok());
}

// Writing a step that was committed before (a re-save after resuming from an older step)
// withdraws the old commit first: until the new commit the step does not exist, and a crash in
// between never leaves the old manifest over new shards.
TEST_F(CheckpointTest, RewritingACommittedStepWithdrawsItsCommitFirst) {
  Save(7, 1);
  ASSERT_TRUE(Verify(StepDir(root_, 7)).ok());
  std::vector<float> newer = Random(kTotal, 9);
  ShardWrite w;
  w.step = 7;
  w.tensors = Table();
  w.ranges = {{0, kTotal}};
  w.arrays = {{"model", newer.data()}, {"adam_m", m_.data()}, {"adam_v", v_.data()}};
  auto info = WriteShard(StepDir(root_, 7), w);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  auto entries = List(root_);
  ASSERT_TRUE(entries.ok());
  ASSERT_EQ(entries->size(), 1u);
  EXPECT_FALSE((*entries)[0].has_manifest);
  EXPECT_FALSE((*entries)[0].complete);
  EXPECT_EQ(FindLatest(root_).status().code(), Code::kNotFound);
}

// Once the manifest is in place the checkpoint is committed: failing to move `latest` afterwards
// is a warning, not a failure (a failure would make the caller remove the shards under it).
TEST_F(CheckpointTest, ACommitStandsWhenLatestCannotBeMoved) {
  ASSERT_TRUE(storage::MakeDirectories(root_ + "/latest/in-the-way").ok());  // a rename cannot replace it
  Manifest man = Save(9, 1, /*commit=*/false);
  std::string warning;
  Status c = Commit(root_, man, &warning);
  ASSERT_TRUE(c.ok()) << c.ToString();
  EXPECT_NE(warning.find("latest"), std::string::npos) << warning;
  EXPECT_TRUE(Verify(StepDir(root_, 9)).ok());
  auto latest = FindLatest(root_);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->step, 9);
}

TEST_F(CheckpointTest, IncompleteStepsAreSkippedForTheLatestCompleteOne) {
  Save(10, 2);
  Save(20, 2);
  Save(30, 2, /*commit=*/false);  // an interrupted save: shards, no manifest
  Save(40, 2);
  ASSERT_EQ(::truncate(Shard(40, 0, 2).c_str(), 1000), 0);  // a truncated shard
  auto entries = List(root_);
  ASSERT_TRUE(entries.ok()) << entries.status().ToString();
  ASSERT_EQ(entries->size(), 4u);
  EXPECT_TRUE((*entries)[0].complete);
  EXPECT_TRUE((*entries)[1].complete);
  EXPECT_FALSE((*entries)[2].complete);
  EXPECT_NE((*entries)[2].problem.find("no manifest"), std::string::npos) << (*entries)[2].problem;
  EXPECT_FALSE((*entries)[3].complete);
  EXPECT_NE((*entries)[3].problem.find(Shard(40, 0, 2)), std::string::npos) << (*entries)[3].problem;
  auto latest = FindLatest(root_);
  ASSERT_TRUE(latest.ok()) << latest.status().ToString();
  EXPECT_EQ(latest->step, 20);
  // A corrupt manifest is named too, and also skipped.
  const std::string man = StepDir(root_, 20) + "/manifest.pb";
  FlipByte(man, 12);
  auto bad = ReadManifest(StepDir(root_, 20));
  EXPECT_EQ(bad.status().code(), Code::kDataLoss) << bad.status().ToString();
  EXPECT_NE(bad.status().message().find(man), std::string::npos);
  latest = FindLatest(root_);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->step, 10);
  // Nothing at all: NotFound saying why each was skipped.
  ASSERT_EQ(::unlink((StepDir(root_, 10) + "/manifest.pb").c_str()), 0);
  latest = FindLatest(root_);
  EXPECT_EQ(latest.status().code(), Code::kNotFound);
  EXPECT_NE(latest.status().message().find("step-000000040 skipped"), std::string::npos) << latest.status().ToString();
  EXPECT_EQ(FindLatest(root_ + "/nope").status().code(), Code::kNotFound);
}

TEST_F(CheckpointTest, CommitRefusesMissingOrMismatchedShards) {
  Manifest m = Save(3, 2, /*commit=*/false);
  Manifest wrong = m;
  wrong.files[1].size += 1;
  Status s = Commit(root_, wrong);
  EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
  EXPECT_NE(s.message().find(Shard(3, 1, 2)), std::string::npos);
  wrong = m;
  wrong.files.pop_back();
  EXPECT_FALSE(Commit(root_, wrong).ok());
  EXPECT_EQ(ReadManifest(StepDir(root_, 3)).status().code(), Code::kNotFound);
  EXPECT_FALSE(storage::RegularFileSize(root_ + "/latest").ok());  // latest never moved
  EXPECT_TRUE(Commit(root_, m).ok());
}

TEST_F(CheckpointTest, BadShardRequestsAreRejected) {
  ShardWrite w;
  w.tensors = Table();
  w.ranges = {{0, kTotal}};
  w.arrays = {{"model", model_.data()}};
  w.rank = 2;
  w.world = 2;
  EXPECT_EQ(WriteShard(StepDir(root_, 1), w).status().code(), Code::kInvalidArgument);
  w.rank = 0;
  w.ranges = {{0, kTotal + 1}};
  EXPECT_EQ(WriteShard(StepDir(root_, 1), w).status().code(), Code::kInvalidArgument);
  w.ranges = {{0, 100}, {50, 100}};  // overlapping
  EXPECT_EQ(WriteShard(StepDir(root_, 1), w).status().code(), Code::kInvalidArgument);
  w.ranges = {{0, kTotal}};
  w.arrays = {{"../x", model_.data()}};
  EXPECT_EQ(WriteShard(StepDir(root_, 1), w).status().code(), Code::kInvalidArgument);
  w.arrays = {{"model", model_.data()}};
  w.tensors[1].offset += 1;
  EXPECT_EQ(WriteShard(StepDir(root_, 1), w).status().code(), Code::kInvalidArgument);
  // A shape that does not hold the tensor's elements, or that the reader could not read back
  // (rows over 4 Mi elements): refused when writing, naming the tensor.
  w.tensors = Table();
  w.tensors[0].shape = {1, 400};
  EXPECT_TRUE(WriteShard(StepDir(root_, 1), w).ok());
  w.tensors[0].shape = {41, 10};
  auto off_by = WriteShard(StepDir(root_, 1), w);
  EXPECT_EQ(off_by.status().code(), Code::kInvalidArgument);
  EXPECT_NE(off_by.status().message().find("\"wte\""), std::string::npos) << off_by.status().ToString();
  const int64_t wide_row = (int64_t{1} << 22) + 1;
  w.tensors = {{"wide", 0, static_cast<uint64_t>(2 * wide_row), {2, wide_row}}};
  w.ranges = {{0, static_cast<uint64_t>(2 * wide_row)}};
  auto wide = WriteShard(StepDir(root_, 1), w);  // refused before any data is read
  EXPECT_EQ(wide.status().code(), Code::kInvalidArgument);
  EXPECT_NE(wide.status().message().find("\"wide\""), std::string::npos) << wide.status().ToString();
}

// What interrupted saves leave is removed before the next run's first save: temporary files, and
// step directories never committed (shards, no manifest). Committed checkpoints stay, and so does
// one whose manifest is damaged (it is reported, not deleted).
TEST_F(CheckpointTest, InterruptedSavesAreCleanedUpCommittedOnesKept) {
  Save(4, 2);                  // committed
  Save(8, 3, /*commit=*/false);  // shards written, killed before the manifest
  Save(12, 1);                 // committed, then its manifest damaged
  {
    std::fstream f(StepDir(root_, 12) + "/manifest.pb", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(3);
    f.put('\x7f');
  }
  const std::string stray_tmp = StepDir(root_, 4) + "/.rank-00000-of-00002.h5.tmp-999";
  { std::ofstream(stray_tmp) << "partial"; }
  { std::ofstream(root_ + "/.latest.tmp.123") << "step-"; }
  EXPECT_EQ(RemoveInterruptedSaves(root_), 3 + 2);  // step 8's three shards, two temporary files
  EXPECT_FALSE(storage::IsDirectory(StepDir(root_, 8)));
  EXPECT_FALSE(storage::RegularFileSize(stray_tmp).ok());
  EXPECT_TRUE(Verify(StepDir(root_, 4)).ok());
  EXPECT_TRUE(storage::RegularFileSize(StepDir(root_, 12) + "/manifest.pb").ok());
  auto entries = List(root_);
  ASSERT_TRUE(entries.ok());
  ASSERT_EQ(entries->size(), 2u);
  EXPECT_TRUE((*entries)[0].complete);
  EXPECT_FALSE((*entries)[1].complete);
  EXPECT_TRUE((*entries)[1].has_manifest);
  EXPECT_EQ(RemoveInterruptedSaves(root_), 0);  // nothing more
  EXPECT_EQ(RemoveInterruptedSaves(root_ + "/missing"), 0);
}

// A write that fails midway (here the file-size limit, as a full disk would) returns an error
// naming the file and leaves no partial file behind. Run in a child process: the limit is
// per process.
TEST_F(CheckpointTest, AFailedWriteLeavesNothingBehind) {
  const std::string dir = StepDir(root_, 9);
  ASSERT_TRUE(storage::MakeDirectories(dir).ok());
  const std::vector<float> big = Random(1 << 20, 4);  // 4 MiB
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = {64 << 10, 64 << 10};
    ::setrlimit(RLIMIT_FSIZE, &lim);
    ShardWrite w;
    w.tensors = {{"wte", 0, big.size(), {1024, 1024}}};
    w.ranges = {{0, big.size()}};
    w.arrays = {{"model", big.data()}};
    auto r = WriteShard(dir, w);
    const bool named = !r.ok() && r.status().message().find(dir) != std::string::npos;
    std::_Exit(r.ok() ? 1 : r.status().code() != Code::kIo ? 2 : !named ? 3 : 0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: the write succeeded, 2: not an I/O error, 3: the file not named";
  auto names = storage::ListDirectory(dir);
  ASSERT_TRUE(names.ok());
  EXPECT_TRUE(names->empty()) << (*names)[0];
}

// The h5py snippet in docs/checkpoint-format.md, run as written (Debian's python3-h5py for
// /usr/bin/python3, installed by scripts/test), rebuilds whole and cut tensors from the shards.
TEST_F(CheckpointTest, TheDocumentedH5pySnippetReadsTheShards) {
  Save(12, 3);
  auto doc = storage::ReadFileToString(::cohort::testing::SourceDir() + "/docs/checkpoint-format.md");
  ASSERT_TRUE(doc.ok()) << doc.status().ToString();
  const size_t a = doc->find("```python\n"), b = doc->find("```", a + 10);
  ASSERT_NE(a, std::string::npos);
  ASSERT_NE(b, std::string::npos);
  std::string script = doc->substr(a + 10, b - a - 10);
  script = script.substr(0, script.find("\nwte = load_tensor"));  // keep the function, not the example call
  // c_attn.bias [780, 810) is cut by ranks 1 and 2 (pieces @0 and @20); wte is whole in rank 0;
  // both must come back
  // exactly, shaped.
  script += "\nimport sys\n"
            "want = np.fromfile(sys.argv[2], dtype='<f4')\n"
            "b = load_tensor(sys.argv[1], 'h.0.attn.c_attn.bias', 'adam_m')\n"
            "w = load_tensor(sys.argv[1], 'wte')\n"
            "assert b.shape == (30,), b.shape\n"
            "assert w.shape == (40, 10), w.shape\n"
            "assert (b == want[780:810]).all()\n"
            "want_w = np.fromfile(sys.argv[3], dtype='<f4')\n"
            "assert (w.ravel() == want_w[0:400]).all()\n"
            "print('h5py ok')\n";
  const std::string py = tmp_.path() + "/read.py", m_bin = tmp_.path() + "/m.bin", w_bin = tmp_.path() + "/w.bin";
  ASSERT_TRUE(storage::WriteFileAtomically(py, script).ok());
  ASSERT_TRUE(storage::WriteFileAtomically(m_bin, std::string_view(reinterpret_cast<const char*>(m_.data()), m_.size() * 4)).ok());
  ASSERT_TRUE(storage::WriteFileAtomically(w_bin, std::string_view(reinterpret_cast<const char*>(model_.data()), model_.size() * 4)).ok());
  std::string out;
  const int rc = ::cohort::testing::RunCommand(
      "/usr/bin/python3 " + py + " " + StepDir(root_, 12) + " " + m_bin + " " + w_bin + " 2>&1", &out);
  EXPECT_EQ(rc, 0) << out << "\n(needs Debian's python3-h5py: scripts/test installs it)";
  EXPECT_NE(out.find("h5py ok"), std::string::npos) << out;
}

// `cohort ckpt list` and `cohort ckpt verify`, through the real binary.
TEST_F(CheckpointTest, CkptCommands) {
  Save(10, 2);
  Save(20, 2);
  Save(30, 2, /*commit=*/false);
  const std::string bin = ::cohort::testing::CohortBin();
  std::string out;
  ASSERT_EQ(::cohort::testing::RunCommand(bin + " ckpt list " + root_, &out), 0) << out;
  EXPECT_NE(out.find("step-000000010   complete"), std::string::npos) << out;
  EXPECT_NE(out.find("step-000000020   complete   (latest"), std::string::npos) << out;
  EXPECT_NE(out.find("step-000000030   INCOMPLETE no manifest"), std::string::npos) << out;
  ASSERT_EQ(::cohort::testing::RunCommand(bin + " ckpt verify " + StepDir(root_, 10), &out), 0) << out;
  EXPECT_NE(out.find("step             10"), std::string::npos) << out;
  EXPECT_NE(out.find("epoch 2, cursor 4242 (seed 1337"), std::string::npos) << out;
  EXPECT_NE(out.find(ShardFileName(1, 2)), std::string::npos) << out;
  EXPECT_NE(out.find("OK: every file and tensor checksum matches"), std::string::npos) << out;
  ASSERT_EQ(::cohort::testing::RunCommand(bin + " ckpt verify " + root_ + " 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("step-000000020"), std::string::npos) << out;  // a root: its latest
  // Export: one safetensors file with every weight under its GPT-2 name; matmul weights transposed
  // to Hugging Face's Conv1D layout by default. Read back with plain Python (json + numpy).
  const std::string st = tmp_.path() + "/model.safetensors";
  ASSERT_EQ(::cohort::testing::RunCommand(bin + " ckpt export " + root_ + " -o " + st + " 2>&1", &out), 0) << out;
  const std::string w_bin = tmp_.path() + "/w.bin";
  ASSERT_TRUE(storage::WriteFileAtomically(w_bin, std::string_view(reinterpret_cast<const char*>(model_.data()), model_.size() * 4)).ok());
  const std::string check =
      "import json, struct, sys, numpy as np\n"
      "raw = open(sys.argv[1], 'rb').read()\n"
      "n = struct.unpack('<Q', raw[:8])[0]\n"
      "head = json.loads(raw[8:8 + n])\n"
      "meta = head.pop('__metadata__')\n"
      "assert meta['step'] == '20' and meta['layout'] == 'hf-gpt2-conv1d', meta\n"
      "want = np.fromfile(sys.argv[2], dtype='<f4')\n"
      "def get(k):\n"
      "    a, b = head[k]['data_offsets']\n"
      "    return np.frombuffer(raw[8 + n + a: 8 + n + b], dtype='<f4').reshape(head[k]['shape'])\n"
      "assert len(head) == 6, list(head)\n"
      "assert (get('wte') == want[0:400].reshape(40, 10)).all()\n"
      "w = get('h.0.attn.c_attn.weight')\n"
      "assert w.shape == (10, 30), w.shape\n"
      "assert (w == want[480:780].reshape(30, 10).T).all()\n"
      "assert (get('h.0.attn.c_attn.bias') == want[780:810]).all()\n"
      "print('safetensors ok')\n";
  ASSERT_TRUE(storage::WriteFileAtomically(tmp_.path() + "/st.py", check).ok());
  ASSERT_EQ(::cohort::testing::RunCommand("/usr/bin/python3 " + tmp_.path() + "/st.py " + st + " " + w_bin + " 2>&1", &out), 0)
      << out;
  EXPECT_NE(out.find("safetensors ok"), std::string::npos) << out;

  const std::string shard = Shard(10, 0, 2);
  FlipByte(shard, DatasetFileOffset(shard, "/model/wte") + 5);
  EXPECT_EQ(::cohort::testing::RunCommand(bin + " ckpt verify " + StepDir(root_, 10) + " 2>&1", &out), 2);
  EXPECT_NE(out.find("error: " + shard), std::string::npos) << out;
  EXPECT_EQ(::cohort::testing::RunCommand(bin + " ckpt list " + root_ + "/missing 2>&1", &out), 2);
  EXPECT_NE(out.find(root_ + "/missing"), std::string::npos) << out;
}

}  // namespace
}  // namespace cohort::checkpoint
