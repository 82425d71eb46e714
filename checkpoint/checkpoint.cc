#include "checkpoint/checkpoint.h"

// hdf5.h is included here only (DESIGN: library headers stay behind our interfaces).
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fcntl.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cctype>
#include <chrono>
#include <cinttypes>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#include "common/crc32c.h"
#include "common/hdf5_lock.h"
#include "proto/checkpoint.pb.h"
#include "storage/file_util.h"

namespace cohort::checkpoint {
namespace {

constexpr char kManifestName[] = "manifest.pb";
// What a shard's reader takes (ReadPiece reads whole rows, at most this many elements at a time);
// WriteShard refuses tensors it could not read back.
constexpr int kMaxTensorRank = 8;
constexpr uint64_t kMaxRowElements = uint64_t{1} << 22;
constexpr char kLatestName[] = "latest";
constexpr char kFormatName[] = "cohort-checkpoint";

std::string Join(const std::string& dir, const std::string& name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

// ---- HDF5 plumbing (every call with Hdf5Mutex() held) -------------------------------------------
// The dataloader's HDF5 source has the same small wrappers; each module keeps its own, since
// DESIGN keeps hdf5.h out of shared headers.

class Hid {
 public:
  using Closer = herr_t (*)(hid_t);
  Hid() = default;
  Hid(hid_t id, Closer close) : id_(id), close_(close) {}
  ~Hid() { Reset(); }
  Hid(Hid&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), close_(o.close_) {}
  Hid& operator=(Hid&& o) noexcept {
    if (this != &o) {
      Reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      close_ = o.close_;
    }
    return *this;
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and reports whether closing worked (a file's close flushes: a full disk shows here).
  bool Close() {
    const bool ok = id_ < 0 || close_ == nullptr || close_(id_) >= 0;
    id_ = H5I_INVALID_HID;
    return ok;
  }
  void Reset() { Close(); }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer close_ = nullptr;
};

// While alive, HDF5 does not print its error stack: failures come back as Status messages.
class QuietHdf5Errors {
 public:
  QuietHdf5Errors() {
    if (H5Eget_auto2(H5E_DEFAULT, &func_, &data_) < 0) func_ = nullptr;
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietHdf5Errors() {
    if (func_ != nullptr) H5Eset_auto2(H5E_DEFAULT, func_, data_);
  }
  QuietHdf5Errors(const QuietHdf5Errors&) = delete;
  QuietHdf5Errors& operator=(const QuietHdf5Errors&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

herr_t KeepInnermost(unsigned n, const H5E_error2_t* err, void* data) {
  if (n != 0) return 0;
  auto* out = static_cast<std::string*>(data);
  if (err->desc != nullptr) *out = err->desc;
  char minor[128];
  if (H5Eget_msg(err->min_num, nullptr, minor, sizeof minor) > 0 && out->find(minor) == std::string::npos) {
    *out += out->empty() ? std::string(minor) : std::string(" (") + minor + ")";
  }
  return 0;
}

// The innermost message of the calling thread's HDF5 error stack (cleared).
std::string TakeHdf5Error() {
  std::string e;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, KeepInnermost, &e);
  H5Eclear2(H5E_DEFAULT);
  return e.empty() ? "unknown HDF5 error" : e;
}

Status WriteError(const std::string& path, const std::string& what) {
  return IoError(path + ": " + what + ": " + TakeHdf5Error() + " (disk full, or the directory not writable?)");
}
Status ReadError(const std::string& path, const std::string& what) {
  return DataLoss(path + ": " + what + ": " + TakeHdf5Error());
}

Hid Scalar() { return Hid(H5Screate(H5S_SCALAR), H5Sclose); }

template <typename T>
hid_t MemType();
template <>
hid_t MemType<uint64_t>() { return H5T_NATIVE_UINT64; }
template <>
hid_t MemType<int64_t>() { return H5T_NATIVE_INT64; }
template <>
hid_t MemType<uint32_t>() { return H5T_NATIVE_UINT32; }
template <>
hid_t MemType<int32_t>() { return H5T_NATIVE_INT32; }
template <typename T>
hid_t FileType();
template <>
hid_t FileType<uint64_t>() { return H5T_STD_U64LE; }
template <>
hid_t FileType<int64_t>() { return H5T_STD_I64LE; }
template <>
hid_t FileType<uint32_t>() { return H5T_STD_U32LE; }
template <>
hid_t FileType<int32_t>() { return H5T_STD_I32LE; }

template <typename T>
bool PutAttr(hid_t obj, const char* name, T value) {
  Hid space = Scalar();
  Hid attr(H5Acreate2(obj, name, FileType<T>(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  return attr.valid() && H5Awrite(attr.get(), MemType<T>(), &value) >= 0;
}

bool PutAttrArray(hid_t obj, const char* name, const std::vector<int64_t>& values) {
  const hsize_t n = values.size();
  Hid space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Hid attr(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  return attr.valid() && (n == 0 || H5Awrite(attr.get(), H5T_NATIVE_INT64, values.data()) >= 0);
}

bool PutAttrString(hid_t obj, const char* name, const std::string& value) {
  Hid type(H5Tcopy(H5T_C_S1), H5Tclose);
  if (!type.valid() || H5Tset_size(type.get(), std::max<size_t>(1, value.size())) < 0) return false;
  Hid space = Scalar();
  Hid attr(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  return attr.valid() && H5Awrite(attr.get(), type.get(), padded.data()) >= 0;
}

// Reads a scalar integer attribute; false when missing or not readable as T.
template <typename T>
bool GetAttr(hid_t obj, const char* name, T* value) {
  if (H5Aexists(obj, name) <= 0) return false;
  Hid attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (!attr.valid()) return false;
  Hid space(H5Aget_space(attr.get()), H5Sclose);
  if (!space.valid() || H5Sget_simple_extent_npoints(space.get()) != 1) return false;
  return H5Aread(attr.get(), MemType<T>(), value) >= 0;
}

bool ValidArrayName(const std::string& s) {
  return !s.empty() && s.size() <= 64 &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isalnum(c) || c == '_'; });
}

bool ValidTensorName(const std::string& s) {
  return !s.empty() && s.size() <= 256 && s[0] != '.' &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isalnum(c) || c == '_' || c == '.'; });
}

// CRC32C of floats as stored (little-endian IEEE; the host's own layout on the little-endian
// machines Cohort builds for).
static_assert(std::endian::native == std::endian::little, "checkpoint CRCs assume a little-endian host");
uint32_t FloatCrc(const float* p, size_t n) { return Crc32c(p, n * sizeof(float)); }

// CRC32C and size of a whole file, read in 8 MiB pieces.
Status FileCrc(const std::string& path, uint64_t* size, uint32_t* crc) {
  ASSIGN_OR_RETURN(storage::ScopedFd fd, storage::OpenRegularFile(path, size));
  std::vector<unsigned char> buf(size_t{8} << 20);
  uint32_t c = 0;
  for (uint64_t off = 0; off < *size;) {
    const ssize_t got = ::pread(fd.get(), buf.data(), buf.size(), static_cast<off_t>(off));
    if (got < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(path + ": read", errno);
    }
    if (got == 0) return DataLoss(path + ": shorter than its size while reading (truncated?)");
    c = Crc32cExtend(c, buf.data(), static_cast<size_t>(got));
    off += static_cast<uint64_t>(got);
  }
  *crc = c;
  return Status::Ok();
}

// Removes a file on destruction unless released (the temporary shard on any failure).
class RemoveOnFailure {
 public:
  explicit RemoveOnFailure(std::string path) : path_(std::move(path)) {}
  ~RemoveOnFailure() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  void Release() { path_.clear(); }

 private:
  std::string path_;
};

// Writes a shard's in-memory image to `path` while the image is still being built:
// WriteShardImage reports each byte range that is final (every dataset's data, in place before
// HDF5 starts; HDF5 writes only metadata, elsewhere in the image), and a background thread writes
// every 4 KiB block whose bytes are all final. Finish writes the rest (the metadata, and blocks
// shared with it) once the image is complete. The disk then works while the metadata is built,
// instead of after.
//
// The file is created (it must not exist) with O_DIRECT where the file system allows, so a
// multi-GB shard neither waits on nor evicts the page cache (the data loader's files), and goes at
// the disk's sequential speed; tmpfs refuses O_DIRECT, and gets page-cache writes. The image is
// 4 KiB-aligned; the last block is written padded and the file cut to size after. Errors name the
// file (ENOSPC: "No space left on device").
class ImageWriter {
 public:
  static constexpr size_t kBlock = 4096;
  static constexpr uint64_t kPiece = uint64_t{8} << 20;  // background writes, at most

  static Result<std::unique_ptr<ImageWriter>> Create(const std::string& path, ImageBuffer* arena) {
    bool direct = true;
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_DIRECT, 0644);
    if (fd < 0 && errno == EINVAL) {  // no O_DIRECT here (tmpfs): the page cache then
      direct = false;
      fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    }
    if (fd < 0) return ErrnoError(path + ": create", errno);
    return std::unique_ptr<ImageWriter>(new ImageWriter(path, storage::ScopedFd(fd), direct, arena));
  }

  ~ImageWriter() {
    abort_.store(true);  // a failed build: what is pending is not written (the file is removed)
    StopThread();
  }

  // Bytes [offset, offset + n) of the image are final. False once a write failed (Finish says why).
  bool Final(uint64_t offset, uint64_t n) {
    if (n == 0) return true;
    const uint64_t first = offset / kBlock, last = (offset + n - 1) / kBlock;
    std::lock_guard<std::mutex> lk(mu_);
    if (!error_.ok()) return false;
    if (final_bytes_.size() <= last) final_bytes_.resize(last + 1, 0);
    for (uint64_t b = first; b <= last; ++b) {
      const uint64_t lo = std::max(offset, b * kBlock), hi = std::min(offset + n, (b + 1) * kBlock);
      final_bytes_[b] = static_cast<uint16_t>(final_bytes_[b] + (hi - lo));
    }
    pending_.push_back({first, last + 1});
    cv_.notify_one();
    return true;
  }

  // The build failed on the writer's error: stops and returns it.
  Status Abandon() {
    abort_.store(true);
    StopThread();
    return error_.ok() ? Internal(path_ + ": write abandoned") : error_;
  }

  // The arena is about to move (HDF5 grows the image past what was reserved): waits for the write
  // in progress and holds off the next until the returned lock is released.
  std::unique_lock<std::mutex> HoldBuffer() { return std::unique_lock<std::mutex>(buffer_mu_); }

  // The image is complete (`n` bytes, in the arena, which has room for n rounded up to 4 KiB):
  // writes what is left, cuts the file to n bytes and fsyncs it.
  Status Finish(size_t n) {
    StopThread();
    RETURN_IF_ERROR(error_);
    const uint64_t blocks = (n + kBlock - 1) / kBlock;
    unsigned char* image = arena_->data();
    std::memset(image + n, 0, blocks * kBlock - n);  // the padding of the last block
    if (written_.size() < blocks) written_.resize(blocks, false);
    for (uint64_t b = 0; b < blocks;) {
      if (written_[b]) {
        ++b;
        continue;
      }
      uint64_t e = b + 1;
      while (e < blocks && !written_[e]) ++e;
      const uint64_t end = direct_ ? e * kBlock : std::min<uint64_t>(e * kBlock, n);
      RETURN_IF_ERROR(WriteRange(image, b * kBlock, end));
      b = e;
    }
    if (direct_ && blocks * kBlock != n && ::ftruncate(fd_.get(), static_cast<off_t>(n)) != 0) {
      return ErrnoError(path_ + ": truncate", errno);
    }
    if (::fsync(fd_.get()) != 0) return ErrnoError(path_ + ": fsync", errno);
    return Status::Ok();
  }

 private:
  ImageWriter(std::string path, storage::ScopedFd fd, bool direct, ImageBuffer* arena)
      : path_(std::move(path)), fd_(std::move(fd)), direct_(direct), arena_(arena) {
    thread_ = std::thread([this] { Run(); });
  }

  void StopThread() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

  // Writes [begin, end) of the image at the same file offset, in pieces of at most 64 MiB.
  Status WriteRange(const unsigned char* image, uint64_t begin, uint64_t end) {
    for (uint64_t off = begin; off < end;) {
      const size_t len = static_cast<size_t>(std::min<uint64_t>(end - off, uint64_t{64} << 20));
      const ssize_t put = ::pwrite(fd_.get(), image + off, len, static_cast<off_t>(off));
      if (put < 0) {
        if (errno == EINTR) continue;
        return ErrnoError(path_ + ": write at offset " + std::to_string(off), errno);
      }
      if (put == 0) return IoError(path_ + ": write at offset " + std::to_string(off) + " wrote nothing");
      off += static_cast<uint64_t>(put);
    }
    return Status::Ok();
  }

  // Background: writes runs of whole final blocks as they are reported (the whole pending list at
  // a time, so neighbouring datasets go out in one write). Ends when stopped, once the list is done.
  void Run() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || !pending_.empty(); });
      if (pending_.empty() || abort_.load()) return;  // stopped
      std::vector<std::pair<uint64_t, uint64_t>> todo;
      todo.swap(pending_);
      std::sort(todo.begin(), todo.end());
      // Runs of blocks that are whole and not yet written, over the pending block ranges.
      std::vector<std::pair<uint64_t, uint64_t>> runs;
      for (const auto& [first, end] : todo) {
        if (written_.size() < end) written_.resize(end, false);
        for (uint64_t b = first; b < end; ++b) {
          if (written_[b] || final_bytes_[b] != kBlock) continue;
          written_[b] = true;
          if (!runs.empty() && runs.back().second == b) {
            runs.back().second = b + 1;
          } else {
            runs.push_back({b, b + 1});
          }
        }
      }
      lk.unlock();
      Status st;
      // The arena does not move during a write; it is held a piece at a time, so a move (inside
      // HDF5, with the process-wide HDF5 lock held) waits for one piece, not for the whole batch.
      for (const auto& [b, e] : runs) {
        for (uint64_t off = b * kBlock; off < e * kBlock && st.ok() && !abort_.load(); off += kPiece) {
          std::lock_guard<std::mutex> hold(buffer_mu_);
          st = WriteRange(arena_->data(), off, std::min<uint64_t>(off + kPiece, e * kBlock));
        }
      }
      lk.lock();
      if (!st.ok()) {
        error_ = st;
        return;
      }
    }
  }

  const std::string path_;
  const storage::ScopedFd fd_;
  const bool direct_;
  ImageBuffer* const arena_;
  std::mutex buffer_mu_;  // held while writing from the arena
  std::mutex mu_;         // guards what follows
  std::condition_variable cv_;
  std::vector<uint16_t> final_bytes_;  // per block: how many of its bytes are final
  std::vector<bool> written_;          // per block
  std::vector<std::pair<uint64_t, uint64_t>> pending_;  // block ranges with new final bytes
  bool stop_ = false;
  std::atomic<bool> abort_{false};  // stop without writing what is pending
  Status error_;
  std::thread thread_;
};

// ---- manifest <-> proto -----------------------------------------------------------------------

proto::Manifest ToProto(const Manifest& m) {
  proto::Manifest p;
  p.set_format_version(m.format_version);
  p.set_step(m.step);
  p.set_world_size(m.world_size);
  p.set_strategy(m.strategy);
  p.set_job_spec_yaml(m.job_spec_yaml);
  p.mutable_data()->set_seed(m.data.seed);
  p.mutable_data()->set_epoch(m.data.epoch);
  p.mutable_data()->set_cursor(m.data.cursor);
  p.mutable_data()->set_fingerprint(m.data.fingerprint);
  p.set_optimizer_step(m.optimizer_step);
  p.set_num_parameters(m.num_parameters);
  for (const std::string& s : m.states) p.add_states(s);
  for (const ShardFileInfo& f : m.files) {
    proto::ShardFile* pf = p.add_files();
    pf->set_name(f.name);
    pf->set_size(f.size);
    pf->set_crc32c(f.crc32c);
    pf->set_rank(f.rank);
    for (const Range& r : f.ranges) {
      proto::Range* pr = pf->add_ranges();
      pr->set_offset(r.offset);
      pr->set_size(r.size);
    }
  }
  for (uint64_t s : m.rng_seeds) p.add_rng_seeds(s);
  p.set_created_unix_ms(m.created_unix_ms);
  return p;
}

Manifest FromProto(const proto::Manifest& p) {
  Manifest m;
  m.format_version = p.format_version();
  m.step = p.step();
  m.world_size = p.world_size();
  m.strategy = p.strategy();
  m.job_spec_yaml = p.job_spec_yaml();
  m.data = {p.data().seed(), p.data().epoch(), p.data().cursor(), p.data().fingerprint()};
  m.optimizer_step = p.optimizer_step();
  m.num_parameters = p.num_parameters();
  m.states.assign(p.states().begin(), p.states().end());
  for (const proto::ShardFile& f : p.files()) {
    ShardFileInfo info{f.name(), f.size(), f.crc32c(), f.rank(), {}};
    for (const proto::Range& r : f.ranges()) info.ranges.push_back({r.offset(), r.size()});
    m.files.push_back(std::move(info));
  }
  m.rng_seeds.assign(p.rng_seeds().begin(), p.rng_seeds().end());
  m.created_unix_ms = p.created_unix_ms();
  return m;
}

// The manifest's own consistency: what a reader relies on before touching any shard.
Status ValidateManifest(const std::string& where, const Manifest& m) {
  auto bad = [&](const std::string& why) { return DataLoss(where + ": " + why); };
  if (m.format_version != kFormatVersion) {
    return InvalidArgument(where + ": checkpoint format version " + std::to_string(m.format_version) +
                           "; this Cohort reads version " + std::to_string(kFormatVersion));
  }
  if (m.step < 0) return bad("negative step " + std::to_string(m.step));
  if (m.world_size < 1 || m.world_size > (1 << 20)) return bad("world size " + std::to_string(m.world_size));
  if (m.files.size() != static_cast<size_t>(m.world_size)) {
    return bad(std::to_string(m.files.size()) + " shard files listed for world size " + std::to_string(m.world_size));
  }
  if (m.states.empty()) return bad("no arrays listed");
  for (const std::string& s : m.states) {
    if (!ValidArrayName(s)) return bad("bad array name \"" + s + "\"");
  }
  std::vector<Range> all;
  for (size_t r = 0; r < m.files.size(); ++r) {
    const ShardFileInfo& f = m.files[r];
    if (f.rank != static_cast<int>(r)) return bad("shard " + std::to_string(r) + " lists rank " + std::to_string(f.rank));
    if (f.name != ShardFileName(f.rank, m.world_size)) return bad("unexpected shard file name \"" + f.name + "\"");
    all.insert(all.end(), f.ranges.begin(), f.ranges.end());
  }
  std::sort(all.begin(), all.end(), [](const Range& a, const Range& b) { return a.offset < b.offset; });
  uint64_t next = 0;
  for (const Range& r : all) {
    if (r.offset != next) return bad("the shards' ranges do not tile the parameters at element " + std::to_string(next));
    next = r.offset + r.size;
  }
  if (next != m.num_parameters) {
    return bad("the shards' ranges cover " + std::to_string(next) + " of " + std::to_string(m.num_parameters) +
               " parameters");
  }
  return Status::Ok();
}

// One dataset of a shard: where its elements lie in the flat buffer.
struct Piece {
  std::string tensor;
  uint64_t flat_offset = 0;
  uint64_t numel = 0;
};

// The datasets of group `array` in an open shard, sorted by flat offset.
Result<std::vector<Piece>> ListPieces(hid_t file, const std::string& path, const std::string& array) {
  if (H5Lexists(file, array.c_str(), H5P_DEFAULT) <= 0) return DataLoss(path + ": no group /" + array);
  Hid group(H5Gopen2(file, array.c_str(), H5P_DEFAULT), H5Gclose);
  if (!group.valid()) return ReadError(path, "open group /" + array);
  H5G_info_t info;
  if (H5Gget_info(group.get(), &info) < 0) return ReadError(path, "list group /" + array);
  std::vector<Piece> pieces;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    char name[512];
    const ssize_t len = H5Lget_name_by_idx(group.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT);
    if (len < 0 || static_cast<size_t>(len) >= sizeof name) return ReadError(path, "list group /" + array);
    Hid ds(H5Dopen2(group.get(), name, H5P_DEFAULT), H5Dclose);
    if (!ds.valid()) return ReadError(path, "open /" + array + "/" + name);
    Hid space(H5Dget_space(ds.get()), H5Sclose);
    const hssize_t n = space.valid() ? H5Sget_simple_extent_npoints(space.get()) : -1;
    Piece p{name, 0, static_cast<uint64_t>(n)};
    if (n < 0 || !GetAttr(ds.get(), "flat_offset", &p.flat_offset)) {
      return DataLoss(path + ": /" + array + "/" + name + ": missing its size or flat_offset attribute");
    }
    pieces.push_back(std::move(p));
  }
  std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) { return a.flat_offset < b.flat_offset; });
  return pieces;
}

// Reads dataset /array/tensor into out (numel floats) and checks its CRC32C.
// Reads dataset /array/tensor in pieces of whole rows of at most ~4 Mi floats (so a dataset of any
// size, a hostile one included, costs bounded memory), hands each to `take(first element, data,
// count)`, and checks the CRC32C over all of it. `take` sees the data before the check: the
// caller uses it only once this returns Ok.
template <typename Take>
Status ReadPiece(hid_t file, const std::string& path, const std::string& array, const Piece& p, Take take) {
  const std::string ds_path = "/" + array + "/" + p.tensor;
  Hid ds(H5Dopen2(file, ds_path.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds.valid()) return ReadError(path, "open " + ds_path);
  uint32_t want = 0;
  if (!GetAttr(ds.get(), "crc32c", &want)) return DataLoss(path + ": " + ds_path + ": no crc32c attribute");
  Hid type(H5Dget_type(ds.get()), H5Tclose);
  if (!type.valid() || H5Tget_class(type.get()) != H5T_FLOAT || H5Tget_size(type.get()) != 4) {
    return DataLoss(path + ": " + ds_path + ": not a float32 dataset");
  }
  Hid space(H5Dget_space(ds.get()), H5Sclose);
  const int rank = space.valid() ? H5Sget_simple_extent_ndims(space.get()) : -1;
  if (rank < 1 || rank > kMaxTensorRank) return DataLoss(path + ": " + ds_path + ": not a 1- to 8-dimensional dataset");
  hsize_t dims[8];
  H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  constexpr uint64_t kChunk = kMaxRowElements;  // floats per read
  uint64_t row = 1;  // elements per index of the first dimension
  for (int d = 1; d < rank; ++d) {
    row *= dims[d];
    if (row > kChunk) return DataLoss(path + ": " + ds_path + ": rows of more than " + std::to_string(kChunk) + " elements");
  }
  if ((row > 0 && dims[0] > UINT64_MAX / row) || dims[0] * row != p.numel) {
    return DataLoss(path + ": " + ds_path + ": its shape does not hold its size");
  }
  const uint64_t rows_per_read = std::max<uint64_t>(1, kChunk / std::max<uint64_t>(row, 1));
  std::vector<float> buf(static_cast<size_t>(std::min<uint64_t>(dims[0], rows_per_read) * row));
  uint32_t got = 0;
  for (uint64_t r = 0; r < dims[0] && row > 0; r += rows_per_read) {
    hsize_t start[8] = {}, count[8];
    for (int d = 0; d < rank; ++d) count[d] = dims[d];
    start[0] = r;
    count[0] = std::min<uint64_t>(rows_per_read, dims[0] - r);
    const hsize_t n = count[0] * row;
    Hid memory(H5Screate_simple(1, &n, nullptr), H5Sclose);
    if (!memory.valid() || H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
        H5Dread(ds.get(), H5T_NATIVE_FLOAT, memory.get(), space.get(), H5P_DEFAULT, buf.data()) < 0) {
      return ReadError(path, "read " + ds_path);
    }
    got = Crc32cExtend(got, buf.data(), n * sizeof(float));
    take(r * row, buf.data(), static_cast<size_t>(n));
  }
  if (got != want) {
    char detail[64];
    std::snprintf(detail, sizeof detail, "stored 0x%08x, computed 0x%08x", want, got);
    return DataLoss(path + ": tensor " + ds_path + ": checksum mismatch (" + detail + "): the shard is corrupt");
  }
  return Status::Ok();
}

// The datasets of `array` in shard `path` (sorted by flat offset, as ListPieces gives them) must be
// exactly the shard's ranges from its manifest: one after another, no gap, no overlap, nothing
// outside. Each dataset's CRC covers its data only, so a damaged flat_offset attribute would
// otherwise put intact data in the wrong place.
Status CheckPiecesTileRanges(const std::string& path, const std::string& array, const std::vector<Range>& ranges,
                             const std::vector<Piece>& pieces) {
  size_t k = 0;
  for (const Range& r : ranges) {
    uint64_t next = r.offset;
    while (next < r.offset + r.size) {
      if (k >= pieces.size() || pieces[k].flat_offset != next || pieces[k].numel == 0) {
        return DataLoss(path + ": /" + array + " does not hold element " + std::to_string(next) + " of its ranges");
      }
      next += pieces[k++].numel;
    }
    if (next != r.offset + r.size) {
      return DataLoss(path + ": /" + array + " runs past its range ending at element " + std::to_string(r.offset + r.size));
    }
  }
  if (k != pieces.size()) {
    return DataLoss(path + ": /" + array + " holds " + std::to_string(pieces.size() - k) + " dataset(s) outside its ranges");
  }
  return Status::Ok();
}

Result<Hid> OpenShard(const std::string& path) {
  Hid file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.valid()) return ReadError(path, "open checkpoint shard");
  return file;
}

// ---- the shard's in-memory file: a minimal HDF5 virtual file driver ----------------------------
// A shard is built in memory and written out by ImageWriter (HDF5 never touches the disk, so a
// full disk or an I/O error is ours to handle, and HDF5 cannot fail to close a file, after which
// it would try to flush it again at process exit and crash, as it did with a full disk). The data
// is in the image before HDF5 starts: the caller copied it to the places PlanShard found, and the
// datasets are allocated at creation and never written through HDF5. HDF5's core driver would
// zero that memory as the file grows over it; this driver keeps the file in an ImageBuffer and
// changes only the bytes HDF5 writes, which are metadata: a write of raw data is refused, as it
// would land on data already in place. Every call comes with Hdf5Mutex() held.
// Byte ranges [begin, end) of a file.
using ByteRanges = std::vector<std::pair<uint64_t, uint64_t>>;

// The union of `ranges` as sorted, disjoint ranges (touching ones joined; empty ones dropped).
ByteRanges MergeRanges(ByteRanges ranges) {
  std::sort(ranges.begin(), ranges.end());
  ByteRanges out;
  for (const auto& [begin, end] : ranges) {
    if (begin >= end) continue;
    if (!out.empty() && out.back().second >= begin) {
      out.back().second = std::max(out.back().second, end);
    } else {
      out.push_back({begin, end});
    }
  }
  return out;
}

// Whether [begin, end) shares a byte with one of `merged` (MergeRanges' output).
bool Overlaps(const ByteRanges& merged, uint64_t begin, uint64_t end) {
  const auto after = std::upper_bound(merged.begin(), merged.end(), std::make_pair(begin, ~uint64_t{0}));
  return (after != merged.end() && after->first < end) || (after != merged.begin() && std::prev(after)->second > begin);
}

struct ImageSink {
  ImageBuffer* arena = nullptr;
  ImageWriter* writer = nullptr;  // null when only planning
  // The data already in the image (MergeRanges' output): HDF5 must not write there.
  ByteRanges data;
  // Planning: every metadata write, to check afterwards that no dataset was placed where metadata
  // had been (its data would have been overwritten when building in place).
  ByteRanges* writes = nullptr;
  uint64_t size = 0;  // the file's size, set when HDF5 closes it
  // What went wrong inside the driver. The driver itself never fails a call: a failed write would
  // fail HDF5's close, after which HDF5 keeps the file and flushes it again at exit (and crashes).
  std::string error;
};
struct ImageDriverInfo {
  ImageSink* sink;
};
struct ImageFile {
  H5FD_t pub;  // first: the part HDF5 sees
  ImageSink* sink;
  haddr_t eoa;
  haddr_t eof;
};
constexpr haddr_t kImageMaxAddr = haddr_t{1} << 62;

ImageFile* AsImage(H5FD_t* f) { return reinterpret_cast<ImageFile*>(f); }
const ImageFile* AsImage(const H5FD_t* f) { return reinterpret_cast<const ImageFile*>(f); }

// Room for the file up to `end`: the arena grows (keeping its contents, the new part zeroed) when
// HDF5 goes past what was reserved; the writer's write in progress finishes first, as the arena
// moves.
bool ImageRoom(ImageSink* sink, uint64_t end) {
  if (end <= sink->arena->capacity()) return true;
  std::unique_lock<std::mutex> hold;
  if (sink->writer != nullptr) hold = sink->writer->HoldBuffer();
  const size_t old = sink->arena->capacity();
  if (!sink->arena->Reserve(static_cast<size_t>(end))) return false;
  std::memset(sink->arena->data() + old, 0, sink->arena->capacity() - old);
  return true;
}

H5FD_t* ImageOpen(const char*, unsigned flags, hid_t fapl, haddr_t) {
  // An image is only ever created: there is no existing one to open.
  if ((flags & H5F_ACC_CREAT) == 0) return nullptr;
  const auto* info = static_cast<const ImageDriverInfo*>(H5Pget_driver_info(fapl));
  if (info == nullptr || info->sink == nullptr) return nullptr;
  auto* f = static_cast<ImageFile*>(std::calloc(1, sizeof(ImageFile)));
  if (f == nullptr) return nullptr;
  f->sink = info->sink;
  return &f->pub;
}
herr_t ImageClose(H5FD_t* file) {
  ImageFile* f = AsImage(file);
  f->sink->size = std::max(f->eoa, f->eof);
  std::free(f);
  return 0;
}
herr_t ImageQuery(const H5FD_t*, unsigned long* flags) {
  // As the core driver, less the data sieve (raw data never goes through the driver).
  *flags = H5FD_FEAT_AGGREGATE_METADATA | H5FD_FEAT_ACCUMULATE_METADATA | H5FD_FEAT_AGGREGATE_SMALLDATA;
  return 0;
}
haddr_t ImageGetEoa(const H5FD_t* file, H5FD_mem_t) { return AsImage(file)->eoa; }
herr_t ImageSetEoa(H5FD_t* file, H5FD_mem_t, haddr_t addr) {
  if (addr > kImageMaxAddr) return -1;
  AsImage(file)->eoa = addr;
  return 0;
}
haddr_t ImageGetEof(const H5FD_t* file, H5FD_mem_t) { return AsImage(file)->eof; }
herr_t ImageRead(H5FD_t* file, H5FD_mem_t, hid_t, haddr_t addr, size_t size, void* buf) {
  const ImageFile* f = AsImage(file);
  if (addr > kImageMaxAddr || size > kImageMaxAddr - addr) return -1;
  // What the image holds, also past the bytes HDF5 wrote (HDF5 reads ahead up to the end of its
  // allocated space, and may write what it read back: it must get the data that lies there, or
  // the zeros around it). Past the arena: zeros.
  const size_t cap = f->sink->arena->capacity();
  const size_t have = addr < cap ? static_cast<size_t>(std::min<uint64_t>(size, cap - addr)) : 0;
  if (have > 0) std::memcpy(buf, f->sink->arena->data() + addr, have);
  std::memset(static_cast<unsigned char*>(buf) + have, 0, size - have);
  return 0;
}
herr_t ImageWrite(H5FD_t* file, H5FD_mem_t type, hid_t, haddr_t addr, size_t size, const void* buf) {
  ImageFile* f = AsImage(file);
  ImageSink* sink = f->sink;
  if (addr > kImageMaxAddr || size > kImageMaxAddr - addr) return -1;  // beyond HDF5's own maxaddr: not reached
  const uint64_t end = addr + size;
  if (type == H5FD_MEM_DRAW) {
    if (sink->error.empty()) sink->error = "HDF5 wrote dataset data through the in-memory file, which holds it already";
    return 0;
  }
  // Metadata onto data in place would silently change the data: refused (the save fails).
  if (Overlaps(sink->data, addr, end)) {
    if (sink->error.empty()) {
      sink->error = "HDF5 wrote metadata at bytes [" + std::to_string(addr) + ", " + std::to_string(end) +
                    ") of the file, where dataset data lies";
    }
    return 0;
  }
  if (!ImageRoom(sink, end)) {
    if (sink->error.empty()) sink->error = "out of memory for the in-memory file (" + std::to_string(end) + " bytes)";
    return 0;
  }
  std::memcpy(sink->arena->data() + addr, buf, size);
  if (sink->writes != nullptr) sink->writes->push_back({addr, end});
  f->eof = std::max<haddr_t>(f->eof, end);
  return 0;
}
herr_t ImageTruncate(H5FD_t* file, hid_t, hbool_t) {
  // The file ends where its allocated space ends (bytes never written are the caller's: data, or
  // the zeros around it).
  ImageFile* f = AsImage(file);
  if (!ImageRoom(f->sink, f->eoa) && f->sink->error.empty()) {
    f->sink->error = "out of memory for the in-memory file (" + std::to_string(f->eoa) + " bytes)";
  }
  f->eof = f->eoa;
  return 0;
}

// The driver's id, registered with HDF5 on first use (and kept for the process's life).
// H5FD_class_t is HDF5 1.10's (Debian 12 ships 1.10.8); 1.12 and 1.14 changed the struct.
#if H5_VERS_MAJOR != 1 || H5_VERS_MINOR != 10
#error "checkpoint.cc's shard image driver is written for HDF5 1.10's virtual file driver interface"
#endif
hid_t ImageDriver() {
  static const H5FD_class_t kClass = {
      "cohort_shard_image", kImageMaxAddr, H5F_CLOSE_WEAK,
      nullptr,                                 // terminate
      nullptr, nullptr, nullptr,               // superblock driver info: none (any reader opens the file)
      sizeof(ImageDriverInfo), nullptr, nullptr, nullptr,  // fapl: the info is copied as bytes
      0, nullptr, nullptr,                     // dxpl
      ImageOpen, ImageClose,
      nullptr,                                 // cmp
      ImageQuery,
      nullptr,                                 // get_type_map
      nullptr, nullptr,                        // alloc, free: HDF5's own, from the EOA
      ImageGetEoa, ImageSetEoa, ImageGetEof,
      nullptr,                                 // get_handle
      ImageRead, ImageWrite,
      nullptr,                                 // flush: the caller writes the image out
      ImageTruncate,
      nullptr, nullptr,                        // lock, unlock
      H5FD_FLMAP_DICHOTOMY};
  static const hid_t id = H5FDregister(&kClass);
  return id;
}

std::string g_crash_phase;  // set once, before training starts
int64_t g_crash_step = -1;

}  // namespace

ImageBuffer::~ImageBuffer() { std::free(data_); }

bool ImageBuffer::Reserve(size_t n) {
  if (n <= capacity_) return true;
  const size_t cap = (n + 4095) & ~size_t{4095};
  void* p = nullptr;
  if (::posix_memalign(&p, 4096, cap) != 0) return false;
  if (capacity_ > 0) std::memcpy(p, data_, capacity_);
  std::free(data_);
  data_ = static_cast<unsigned char*>(p);
  capacity_ = cap;
  return true;
}

Status SetCrashPointForTesting(const std::string& point) {
  static const char* const kPhases[] = {"shard-tmp", "shard-final", "manifest-tmp", "manifest", "latest", "retention"};
  const size_t colon = point.rfind(':');
  const std::string phase = point.substr(0, colon);
  if (colon == std::string::npos || std::none_of(std::begin(kPhases), std::end(kPhases), [&](const char* p) { return phase == p; }) ||
      point.size() == colon + 1 || !std::all_of(point.begin() + static_cast<ptrdiff_t>(colon) + 1, point.end(), [](unsigned char c) { return std::isdigit(c); })) {
    return InvalidArgument("crash point \"" + point + "\": want PHASE:STEP, PHASE one of shard-tmp, shard-final, "
                           "manifest-tmp, manifest, latest, retention");
  }
  g_crash_phase = phase;
  g_crash_step = std::stoll(point.substr(colon + 1));
  return Status::Ok();
}

void CrashPoint(const char* phase, int64_t step) {
  if (step != g_crash_step || g_crash_phase != phase) return;
  std::fprintf(stderr, "checkpoint: crash point %s at step %lld: SIGKILL\n", phase, static_cast<long long>(step));
  std::fflush(stderr);
  ::raise(SIGKILL);
}

std::string StepDirName(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%09" PRId64, step);
  return name;
}

std::string StepDir(const std::string& root, int64_t step) { return Join(root, StepDirName(step)); }

std::optional<int64_t> StepFromDirName(std::string_view name) {
  if (name.size() <= 5 || name.substr(0, 5) != "step-" || name.size() > 5 + 18) return std::nullopt;
  if (!std::all_of(name.begin() + 5, name.end(), [](unsigned char c) { return std::isdigit(c); })) return std::nullopt;
  return std::stoll(std::string(name.substr(5)));
}

std::string ShardFileName(int rank, int world) {
  char name[48];
  std::snprintf(name, sizeof name, "rank-%05d-of-%05d.h5", rank, world);
  return name;
}

// A step being written is not committed. An earlier commit of the same step (a re-save after
// resuming from an older step, or after falling back past this one) is withdrawn before any of its
// shards is replaced: a crash in between must not leave the old manifest over a mix of old and new
// shards, whose sizes and per-dataset checksums would all look right.
Status WithdrawCommit(const std::string& step_dir) {
  const std::string manifest = Join(step_dir, kManifestName);
  if (::unlink(manifest.c_str()) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return ErrnoError(manifest + ": withdraw this step's earlier commit (remove its manifest)", errno);
  }
  return storage::SyncDirectory(step_dir);
}

namespace {

// The checks every shard write starts with; the number of elements in w's ranges in *elements.
Status ValidateShardWrite(const ShardWrite& w, bool need_data, uint64_t* elements) {
  if (w.world < 1 || w.rank < 0 || w.rank >= w.world) {
    return InvalidArgument("checkpoint shard: rank " + std::to_string(w.rank) + " of " + std::to_string(w.world));
  }
  uint64_t total = 0;
  for (const TensorSpec& t : w.tensors) {
    if (t.offset != total || !ValidTensorName(t.name)) {
      return InvalidArgument("checkpoint shard: tensor table does not tile the buffer at \"" + t.name + "\"");
    }
    // The shape (if any) must hold exactly the tensor's elements: the dataset is made that shape.
    uint64_t held = 1, row = 1;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      const uint64_t dim = static_cast<uint64_t>(t.shape[d]);
      if (t.shape[d] < 1 || held > UINT64_MAX / dim) {
        return InvalidArgument("checkpoint shard: tensor \"" + t.name + "\" has a dimension of " +
                               std::to_string(t.shape[d]) + " or too many elements");
      }
      held *= dim;
      if (d > 0) row *= dim;
    }
    if (!t.shape.empty() && held != t.numel) {
      return InvalidArgument("checkpoint shard: tensor \"" + t.name + "\" has a shape of " + std::to_string(held) +
                             " elements, the table says " + std::to_string(t.numel));
    }
    if (t.shape.size() > static_cast<size_t>(kMaxTensorRank) || row > kMaxRowElements) {
      return InvalidArgument("checkpoint shard: tensor \"" + t.name + "\" has " + std::to_string(t.shape.size()) +
                             " dimensions and rows of " + std::to_string(row) + " elements; shards hold up to " +
                             std::to_string(kMaxTensorRank) + " and " + std::to_string(kMaxRowElements));
    }
    total += t.numel;
  }
  uint64_t n = 0, end_of_previous = 0;
  for (const Range& r : w.ranges) {
    if (r.offset < end_of_previous || r.offset > total || r.size > total - r.offset) {
      return InvalidArgument("checkpoint shard: range [" + std::to_string(r.offset) + ", +" + std::to_string(r.size) +
                             ") overlaps the one before or lies outside the " + std::to_string(total) + " parameters");
    }
    end_of_previous = r.offset + r.size;
    n += r.size;
  }
  if (w.arrays.empty()) return InvalidArgument("checkpoint shard: no arrays to write");
  for (const RangeArray& a : w.arrays) {
    if (!ValidArrayName(a.name) || (need_data && a.data == nullptr && n > 0)) {
      return InvalidArgument("checkpoint shard: bad array \"" + a.name + "\"");
    }
  }
  *elements = n;
  return Status::Ok();
}

// Datasets in w's file: one per array, range and tensor the range touches.
size_t CountDatasets(const ShardWrite& w) {
  size_t datasets = 0;
  for (const Range& r : w.ranges) {
    for (const TensorSpec& t : w.tensors) datasets += (std::max(r.offset, t.offset) < std::min(r.offset + r.size, t.offset + t.numel));
  }
  return datasets * w.arrays.size();
}

// HDF5's metadata block for a shard of `datasets` datasets. All metadata goes in one block at the
// front (HDF5's default, 2 KiB blocks, scatters it between the datasets, and every block shared
// with metadata waits for the end): measured ~410 bytes per whole tensor with its attributes, more
// for pieces of one; running out only costs another block somewhere, unused room is zeros.
size_t MetaBlockBytes(size_t datasets) { return (datasets * 640 + (8 << 10) + 4095) & ~size_t{4095}; }

// Builds w's HDF5 file (its metadata; the datasets are allocated, not written) with the image
// driver over `sink`. With `plan` set, records where HDF5 placed each dataset; else checks that it
// placed them as `layout` says and takes each dataset's CRC32C from the data already there. The
// file is closed on return; sink->size is its size. Holds Hdf5Mutex().
Status BuildShard(const std::string& tmp, const ShardWrite& w, ImageSink* sink, const ShardLayout* layout,
                  ShardLayout* plan) {
  std::lock_guard<std::mutex> lock(Hdf5Mutex());
  QuietHdf5Errors quiet;
  const hid_t driver = ImageDriver();
  if (driver < 0) return WriteError(tmp, "register the in-memory file driver");
  Hid fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  ImageDriverInfo info{sink};
  if (!fapl.valid() || H5Pset_driver(fapl.get(), driver, &info) < 0 ||
      H5Pset_meta_block_size(fapl.get(), MetaBlockBytes(CountDatasets(w))) < 0) {
    return WriteError(tmp, "set up the in-memory file");
  }
  // No modification times in the objects: a shard's bytes depend on its contents only.
  Hid fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose), gcpl(H5Pcreate(H5P_GROUP_CREATE), H5Pclose);
  // Datasets get their space when created and are never written through HDF5: the data is there.
  Hid dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (!fcpl.valid() || !gcpl.valid() || !dcpl.valid() || H5Pset_obj_track_times(fcpl.get(), 0) < 0 ||
      H5Pset_obj_track_times(gcpl.get(), 0) < 0 || H5Pset_obj_track_times(dcpl.get(), 0) < 0 ||
      H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY) < 0 || H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER) < 0) {
    return WriteError(tmp, "set up the creation properties");
  }
  // The name appears only in HDF5's messages; nothing of that name is created on disk.
  const std::string image_name = tmp + ".in-memory";
  Hid file(H5Fcreate(image_name.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()), H5Fclose);
  if (!file.valid()) return WriteError(tmp, "create");
  // On any failure below, the writer stops before the file closes (destruction runs in reverse):
  // HDF5's closing flush then cannot meet a background write.
  struct StopWriterFirst {
    ImageWriter* writer;
    ~StopWriterFirst() {
      if (writer != nullptr) static_cast<void>(writer->Abandon());
    }
  } stop_writer{sink->writer};
  const bool attrs_ok = PutAttrString(file.get(), "format", kFormatName) &&
                        PutAttr<uint32_t>(file.get(), "format_version", kFormatVersion) &&
                        PutAttr<int64_t>(file.get(), "step", w.step) && PutAttr<int32_t>(file.get(), "rank", w.rank) &&
                        PutAttr<int32_t>(file.get(), "world_size", w.world);
  // The ranges as an n x 2 array of (offset, size).
  std::vector<int64_t> flat_ranges;
  for (const Range& r : w.ranges) {
    flat_ranges.push_back(static_cast<int64_t>(r.offset));
    flat_ranges.push_back(static_cast<int64_t>(r.size));
  }
  if (!attrs_ok || !PutAttrArray(file.get(), "ranges", flat_ranges)) return WriteError(tmp, "write file attributes");
  size_t k = 0;  // datasets so far
  for (size_t ai = 0; ai < w.arrays.size(); ++ai) {
    const RangeArray& a = w.arrays[ai];
    Hid group(H5Gcreate2(file.get(), a.name.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT), H5Gclose);
    if (!group.valid()) return WriteError(tmp, "create group /" + a.name);
    uint64_t range_start = 0;  // element index (over the ranges) of the current range's first element
    for (const Range& r : w.ranges) {
      const uint64_t lo = r.offset, hi = r.offset + r.size;
      for (const TensorSpec& t : w.tensors) {
        const uint64_t begin = std::max(lo, t.offset), end = std::min(hi, t.offset + t.numel);
        if (begin >= end) continue;
        const bool whole = begin == t.offset && end == t.offset + t.numel;
        std::vector<hsize_t> dims;
        if (whole && !t.shape.empty()) {
          for (int64_t d : t.shape) dims.push_back(static_cast<hsize_t>(d));
        } else {
          dims.push_back(end - begin);
        }
        Hid space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
        // A piece's name says where it starts, so a tensor cut by two of the rank's ranges gives two.
        const std::string ds_name = whole ? t.name : t.name + "@" + std::to_string(begin - t.offset);
        const std::string where = "/" + a.name + "/" + ds_name;
        Hid ds(H5Dcreate2(group.get(), ds_name.c_str(), H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, dcpl.get(),
                          H5P_DEFAULT),
               H5Dclose);
        if (!ds.valid()) return WriteError(tmp, "create " + where);
        const haddr_t at = H5Dget_offset(ds.get());
        if (at == HADDR_UNDEF) return WriteError(tmp, "allocate " + where);
        const ShardLayout::Extent here{ai, range_start + (begin - lo), end - begin, static_cast<uint64_t>(at)};
        uint32_t crc = 0;
        if (plan != nullptr) {
          plan->extents.push_back(here);
        } else {
          const ShardLayout::Extent* want = k < layout->extents.size() ? &layout->extents[k] : nullptr;
          if (want == nullptr || want->array != here.array || want->element != here.element ||
              want->count != here.count || want->offset != here.offset) {
            return Internal(tmp + ": HDF5 placed " + where + " at byte " + std::to_string(here.offset) +
                            (want == nullptr ? std::string(", past the planned datasets")
                                             : ", planned at " + std::to_string(want->offset)) +
                            ": the shard's layout changed since it was planned");
          }
          crc = Crc32c(sink->arena->data() + here.offset, here.count * sizeof(float));
        }
        ++k;
        bool ok = PutAttr<uint32_t>(ds.get(), "crc32c", crc) && PutAttr<uint64_t>(ds.get(), "flat_offset", begin);
        if (!whole) {
          ok = ok && PutAttr<uint64_t>(ds.get(), "tensor_offset", begin - t.offset) &&
               PutAttrArray(ds.get(), "tensor_shape", t.shape);
        }
        if (!ok) return WriteError(tmp, "write the attributes of " + where);
      }
      range_start += r.size;
    }
  }
  if (layout != nullptr && k != layout->extents.size()) {
    return Internal(tmp + ": " + std::to_string(k) + " datasets built, " + std::to_string(layout->extents.size()) +
                    " planned: the shard's layout changed since it was planned");
  }
  const bool closed = H5Fflush(file.get(), H5F_SCOPE_GLOBAL) >= 0 && file.Close();
  if (!sink->error.empty()) return Internal(tmp + ": " + sink->error);
  if (!closed) return WriteError(tmp, "close");
  stop_writer.writer = nullptr;  // built: the writer goes on
  return Status::Ok();
}


}  // namespace

Result<ShardLayout> PlanShard(const ShardWrite& w) {
  uint64_t elements = 0;
  RETURN_IF_ERROR(ValidateShardWrite(w, /*need_data=*/false, &elements));
  // The data, the metadata block and room for what overflows it, zeroed, as the image of a save
  // is around its data (HDF5 may read what it has not written).
  ImageBuffer scratch;
  const size_t room = elements * w.arrays.size() * sizeof(float) + 2 * MetaBlockBytes(CountDatasets(w)) + (size_t{1} << 20);
  if (!scratch.Reserve(room)) return Internal("checkpoint shard: out of memory planning the shard's layout");
  std::memset(scratch.data(), 0, scratch.capacity());
  ByteRanges writes;
  ImageSink sink;
  sink.arena = &scratch;
  sink.writes = &writes;
  ShardLayout layout;
  const std::string what = "(planning " + ShardFileName(w.rank, w.world) + ")";
  RETURN_IF_ERROR(BuildShard(what, w, &sink, nullptr, &layout));
  layout.file_size = sink.size;
  // A dataset placed where metadata had been written (space HDF5 freed and gave out again) cannot
  // be built in place: the metadata would be written over the data already there.
  const ByteRanges metadata = MergeRanges(std::move(writes));
  for (const ShardLayout::Extent& e : layout.extents) {
    const uint64_t end = e.offset + e.count * sizeof(float);
    if (end > layout.file_size) return Internal(what + ": a dataset planned past the end of the file");
    if (Overlaps(metadata, e.offset, end)) {
      return Internal(what + ": HDF5 placed a dataset at byte " + std::to_string(e.offset) +
                      ", where it had written metadata; this shard cannot be built in place");
    }
  }
  return layout;
}

Result<ShardFileInfo> WriteShardImage(const std::string& step_dir, const ShardWrite& w, const ShardLayout& layout,
                                      ImageBuffer* image) {
  uint64_t elements = 0;
  RETURN_IF_ERROR(ValidateShardWrite(w, /*need_data=*/false, &elements));
  if (image == nullptr || image->capacity() < layout.file_size) {
    return InvalidArgument("checkpoint shard: an image of " + std::to_string(image == nullptr ? 0 : image->capacity()) +
                           " bytes for a file of " + std::to_string(layout.file_size));
  }
  for (const ShardLayout::Extent& e : layout.extents) {
    if (e.array >= w.arrays.size() || e.count > layout.file_size / sizeof(float) ||
        e.offset > layout.file_size - e.count * sizeof(float)) {
      return InvalidArgument("checkpoint shard: a layout extent of " + std::to_string(e.count) + " floats at byte " +
                             std::to_string(e.offset) + " lies outside the file of " +
                             std::to_string(layout.file_size) + " bytes (or names no array)");
    }
  }
  RETURN_IF_ERROR(storage::MakeDirectories(step_dir));
  RETURN_IF_ERROR(WithdrawCommit(step_dir));
  ShardFileInfo info;
  info.name = ShardFileName(w.rank, w.world);
  info.rank = w.rank;
  info.ranges = w.ranges;
  const std::string path = Join(step_dir, info.name);
  const std::string tmp = Join(step_dir, "." + info.name + ".tmp-" + std::to_string(::getpid()));
  // Where the data lies. Everything around it is zeroed: HDF5 writes its metadata there, and what
  // it leaves unused (room in its blocks) must not carry bytes of an earlier shard.
  ByteRanges extents;
  for (const ShardLayout::Extent& e : layout.extents) extents.push_back({e.offset, e.offset + e.count * sizeof(float)});
  ImageSink sink;
  sink.arena = image;
  sink.data = MergeRanges(std::move(extents));
  const uint64_t padded = std::min<uint64_t>(image->capacity(), (layout.file_size + 4095) & ~uint64_t{4095});
  uint64_t next = 0;
  for (const auto& [begin, end] : sink.data) {
    if (begin > next) std::memset(image->data() + next, 0, begin - next);
    next = end;
  }
  if (padded > next) std::memset(image->data() + next, 0, padded - next);
  RemoveOnFailure cleanup(tmp);
  ::unlink(tmp.c_str());  // a leftover of an earlier process with the same pid
  ASSIGN_OR_RETURN(std::unique_ptr<ImageWriter> writer, ImageWriter::Create(tmp, image));
  // The data is final already: the writer starts on it while HDF5 builds the metadata.
  for (const auto& [begin, end] : sink.data) {
    if (!writer->Final(begin, end - begin)) return writer->Abandon();
  }
  sink.writer = writer.get();
  RETURN_IF_ERROR(BuildShard(tmp, w, &sink, &layout, nullptr));  // stops the writer when it fails
  if (sink.size != layout.file_size) {
    static_cast<void>(writer->Abandon());
    return Internal(tmp + ": the file came out at " + std::to_string(sink.size) + " bytes, planned " +
                    std::to_string(layout.file_size) + ": the shard's layout changed since it was planned");
  }
  const size_t image_size = static_cast<size_t>(sink.size);
  // The image is complete; its CRC is taken while the writer may still be writing.
  info.size = image_size;
  info.crc32c = Crc32c(image->data(), image_size);
  // The arena's capacity is whole 4 KiB blocks and holds the image: room for the last block's zero
  // padding (O_DIRECT), which Finish adds.
  RETURN_IF_ERROR(writer->Finish(image_size));
  writer.reset();  // closes the file
  CrashPoint("shard-tmp", w.step);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return ErrnoError(tmp + ": rename to " + path, errno);
  cleanup.Release();
  RETURN_IF_ERROR(storage::SyncDirectory(step_dir));
  CrashPoint("shard-final", w.step);
  return info;
}

Result<ShardFileInfo> WriteShard(const std::string& step_dir, const ShardWrite& w) {
  uint64_t elements = 0;
  RETURN_IF_ERROR(ValidateShardWrite(w, /*need_data=*/true, &elements));
  ASSIGN_OR_RETURN(ShardLayout layout, PlanShard(w));
  ImageBuffer own_scratch;
  ImageBuffer& image = w.scratch != nullptr ? *w.scratch : own_scratch;
  if (!image.Reserve(static_cast<size_t>(layout.file_size))) {
    return Internal(Join(step_dir, ShardFileName(w.rank, w.world)) + ": out of memory for the shard image");
  }
  // The arrays' elements to their places in the file.
  for (const ShardLayout::Extent& e : layout.extents) {
    std::memcpy(image.data() + e.offset, w.arrays[e.array].data + e.element, e.count * sizeof(float));
  }
  return WriteShardImage(step_dir, w, layout, &image);
}

Status Commit(const std::string& root, const Manifest& m, std::string* warning) {
  const std::string dir = StepDir(root, m.step);
  RETURN_IF_ERROR(ValidateManifest(Join(dir, kManifestName), m));
  for (const ShardFileInfo& f : m.files) {
    const std::string path = Join(dir, f.name);
    ASSIGN_OR_RETURN(uint64_t size, storage::RegularFileSize(path));
    if (size != f.size) {
      return DataLoss(path + ": " + std::to_string(size) + " bytes, but its rank reported " + std::to_string(f.size));
    }
  }
  Manifest stamped = m;
  if (stamped.created_unix_ms == 0) {
    stamped.created_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::system_clock::now().time_since_epoch()).count();
  }
  proto::ManifestFile file;
  const std::string body = ToProto(stamped).SerializeAsString();
  file.set_body(body);
  file.set_body_crc32c(Crc32c(body.data(), body.size()));
  std::string trouble;  // after the manifest is in place: the commit stands, with a warning
  {
    const std::string path = Join(dir, kManifestName);
    ASSIGN_OR_RETURN(storage::AtomicFileWriter w, storage::AtomicFileWriter::Create(path));
    const std::string bytes = file.SerializeAsString();
    RETURN_IF_ERROR(w.Append(bytes.data(), bytes.size()));
    CrashPoint("manifest-tmp", m.step);
    if (Status st = w.Commit(); !st.ok()) {
      // Failed before its rename: not committed. Failed after it (syncing the directory): the
      // manifest is in place and readers see the checkpoint; reporting a failure now would make the
      // caller remove the shards under it. It stands, with a warning.
      auto now = storage::ReadFileToString(path);
      if (!now.ok() || *now != bytes) return st;
      trouble = st.ToString() + " (the manifest is in place; the checkpoint stands, but may not survive a power loss)";
    }
  }
  CrashPoint("manifest", m.step);
  // `latest` is for people and scripts (resume finds the newest complete step itself): failing to
  // move it does not undo the commit.
  if (Status st = storage::WriteFileAtomically(Join(root, kLatestName), StepDirName(m.step) + "\n"); !st.ok()) {
    trouble += (trouble.empty() ? "" : "; ") + ("could not move " + Join(root, kLatestName) + ": " + st.ToString());
  }
  CrashPoint("latest", m.step);
  if (warning != nullptr) *warning = trouble;
  return Status::Ok();
}

Result<Manifest> ReadManifest(const std::string& step_dir) {
  const std::string path = Join(step_dir, kManifestName);
  ASSIGN_OR_RETURN(std::string bytes, storage::ReadFileToString(path));
  proto::ManifestFile file;
  if (!file.ParseFromString(bytes)) return DataLoss(path + ": not a checkpoint manifest (unparseable)");
  const uint32_t crc = Crc32c(file.body().data(), file.body().size());
  if (crc != file.body_crc32c()) {
    char detail[64];
    std::snprintf(detail, sizeof detail, "stored 0x%08x, computed 0x%08x", file.body_crc32c(), crc);
    return DataLoss(path + ": manifest checksum mismatch (" + detail + "): the manifest is corrupt");
  }
  proto::Manifest p;
  if (!p.ParseFromString(file.body())) return DataLoss(path + ": manifest body unparseable");
  Manifest m = FromProto(p);
  RETURN_IF_ERROR(ValidateManifest(path, m));
  return m;
}

Result<std::vector<Entry>> List(const std::string& root) {
  if (!storage::IsDirectory(root)) return NotFound(root + ": no such checkpoint directory");
  ASSIGN_OR_RETURN(std::vector<std::string> names, storage::ListDirectory(root));
  std::vector<Entry> out;
  for (const std::string& name : names) {
    const std::optional<int64_t> step = StepFromDirName(name);
    if (!step) continue;
    Entry e;
    e.step = *step;
    e.dir = Join(root, name);
    if (!storage::IsDirectory(e.dir)) continue;
    auto m = ReadManifest(e.dir);
    e.has_manifest = m.ok() || m.status().code() != Code::kNotFound;
    if (!m.ok()) {
      e.problem = m.status().code() == Code::kNotFound ? "no manifest (an interrupted save)" : m.status().message();
    } else if (m->step != e.step) {
      e.problem = "its manifest is for step " + std::to_string(m->step);
    } else {
      for (const ShardFileInfo& f : m->files) {
        auto size = storage::RegularFileSize(Join(e.dir, f.name));
        if (!size.ok()) {
          e.problem = size.status().message();
          break;
        }
        if (*size != f.size) {
          e.problem = Join(e.dir, f.name) + ": " + std::to_string(*size) + " bytes, the manifest says " +
                      std::to_string(f.size) + " (truncated?)";
          break;
        }
      }
    }
    e.complete = e.problem.empty();
    out.push_back(std::move(e));
  }
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.step < b.step; });
  return out;
}

Status ExportSafetensors(const std::string& step_dir, const std::string& out_path, bool hf_layout) {
  ASSIGN_OR_RETURN(Manifest m, ReadManifest(step_dir));
  // The tensor table, from the datasets of /model in every shard: a whole tensor has its shape; a
  // piece records the tensor's shape and its place in it.
  struct Tensor {
    uint64_t offset = 0;  // flat offset of element 0
    uint64_t numel = 0;
    std::vector<int64_t> shape;
  };
  std::map<std::string, Tensor> table;
  for (const ShardFileInfo& f : m.files) {
    const std::string path = Join(step_dir, f.name);
    std::lock_guard<std::mutex> lock(Hdf5Mutex());
    QuietHdf5Errors quiet;
    ASSIGN_OR_RETURN(Hid file, OpenShard(path));
    ASSIGN_OR_RETURN(std::vector<Piece> pieces, ListPieces(file.get(), path, "model"));
    for (const Piece& p : pieces) {
      Hid ds(H5Dopen2(file.get(), ("/model/" + p.tensor).c_str(), H5P_DEFAULT), H5Dclose);
      if (!ds.valid()) return ReadError(path, "open /model/" + p.tensor);
      const size_t at = p.tensor.rfind('@');
      const std::string name = p.tensor.substr(0, at);
      Tensor t;
      uint64_t within = 0;
      if (at == std::string::npos) {
        Hid space(H5Dget_space(ds.get()), H5Sclose);
        const int rank = space.valid() ? H5Sget_simple_extent_ndims(space.get()) : -1;
        if (rank < 0 || rank > 8) return DataLoss(path + ": /model/" + p.tensor + ": bad shape");
        hsize_t dims[8];
        H5Sget_simple_extent_dims(space.get(), dims, nullptr);
        for (int k = 0; k < rank; ++k) t.shape.push_back(static_cast<int64_t>(dims[k]));
      } else {
        Hid attr(H5Aopen(ds.get(), "tensor_shape", H5P_DEFAULT), H5Aclose);
        Hid space(attr.valid() ? H5Aget_space(attr.get()) : H5I_INVALID_HID, H5Sclose);
        const hssize_t rank = space.valid() ? H5Sget_simple_extent_npoints(space.get()) : -1;
        if (rank < 0 || rank > 8 || !GetAttr(ds.get(), "tensor_offset", &within)) {
          return DataLoss(path + ": /model/" + p.tensor + ": a piece without its tensor's shape or offset");
        }
        t.shape.resize(static_cast<size_t>(rank));
        if (rank > 0 && H5Aread(attr.get(), H5T_NATIVE_INT64, t.shape.data()) < 0) return ReadError(path, "read tensor_shape");
      }
      t.numel = 1;
      for (int64_t d : t.shape) t.numel *= static_cast<uint64_t>(d);
      t.offset = p.flat_offset - within;
      auto [it, fresh] = table.emplace(name, t);
      if (!fresh && (it->second.offset != t.offset || it->second.shape != t.shape)) {
        return DataLoss(path + ": /model/" + p.tensor + " disagrees with another piece of " + name);
      }
    }
  }
  std::vector<std::pair<std::string, Tensor>> order(table.begin(), table.end());
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.second.offset < b.second.offset; });
  uint64_t next = 0;
  for (const auto& [name, t] : order) {
    if (t.offset != next) return DataLoss(step_dir + ": the tensors do not tile the weights at \"" + name + "\"");
    next += t.numel;
  }
  if (next != m.num_parameters) return DataLoss(step_dir + ": the tensors cover " + std::to_string(next) + " weights");
  std::vector<float> weights(m.num_parameters);
  RETURN_IF_ERROR(ReadRange(step_dir, m, "model", 0, m.num_parameters, weights.data()));
  auto conv1d = [&](const std::string& name) {
    if (!hf_layout) return false;
    for (const char* suffix : {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"}) {
      const std::string s = suffix;
      if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) return true;
    }
    return false;
  };
  // Header: names are [A-Za-z0-9_.] (checked when written), so no JSON escaping is needed.
  std::string header = "{\"__metadata__\":{\"format\":\"pt\",\"producer\":\"cohort\",\"step\":\"" +
                       std::to_string(m.step) + "\",\"layout\":\"" + (hf_layout ? "hf-gpt2-conv1d" : "cohort") + "\"}";
  uint64_t begin = 0;
  for (const auto& [name, t] : order) {
    if (!ValidTensorName(name)) return DataLoss(step_dir + ": unexpected tensor name \"" + name + "\"");
    std::vector<int64_t> shape = t.shape;
    if (conv1d(name) && shape.size() == 2) std::swap(shape[0], shape[1]);
    header += ",\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[";
    for (size_t k = 0; k < shape.size(); ++k) header += (k ? "," : "") + std::to_string(shape[k]);
    header += "],\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(begin + 4 * t.numel) + "]}";
    begin += 4 * t.numel;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  ASSIGN_OR_RETURN(storage::AtomicFileWriter out, storage::AtomicFileWriter::Create(out_path));
  const uint64_t len = header.size();
  unsigned char len_le[8];
  for (int k = 0; k < 8; ++k) len_le[k] = static_cast<unsigned char>(len >> (8 * k));
  RETURN_IF_ERROR(out.Append(len_le, 8));
  RETURN_IF_ERROR(out.Append(header.data(), header.size()));
  std::vector<float> transposed;
  for (const auto& [name, t] : order) {
    const float* src = weights.data() + t.offset;
    if (conv1d(name) && t.shape.size() == 2) {
      const size_t rows = static_cast<size_t>(t.shape[0]), cols = static_cast<size_t>(t.shape[1]);
      transposed.resize(t.numel);
      for (size_t r = 0; r < rows; ++r) {
        for (size_t c = 0; c < cols; ++c) transposed[c * rows + r] = src[r * cols + c];
      }
      src = transposed.data();
    }
    RETURN_IF_ERROR(out.Append(src, t.numel * sizeof(float)));
  }
  return out.Commit();
}

int RemoveInterruptedSaves(const std::string& root) {
  auto is_tmp = [](const std::string& name) {
    return name.size() > 1 && name[0] == '.' && name.find(".tmp") != std::string::npos;
  };
  int removed = 0;
  auto sweep = [&](const std::string& dir) {
    auto names = storage::ListDirectory(dir);
    if (!names.ok()) return;
    for (const std::string& name : *names) {
      if (is_tmp(name) && ::unlink(Join(dir, name).c_str()) == 0) ++removed;
    }
  };
  sweep(root);
  auto names = storage::ListDirectory(root);
  if (names.ok()) {
    for (const std::string& name : *names) {
      const std::string dir = Join(root, name);
      if (name.rfind("step-", 0) != 0 || !storage::IsDirectory(dir)) continue;
      sweep(dir);
      struct stat st;
      if (::lstat(Join(dir, kManifestName).c_str(), &st) == 0 || errno != ENOENT) continue;  // committed
      // Never committed: the shards of a save interrupted before its manifest. Resuming ignores
      // them; left, a later save of the same step at another world size would sit beside them.
      auto files = storage::ListDirectory(dir);
      if (!files.ok()) continue;
      for (const std::string& f : *files) {
        if (::unlink(Join(dir, f).c_str()) == 0) ++removed;
      }
      ::rmdir(dir.c_str());
    }
  }
  return removed;
}

Result<Entry> FindLatest(const std::string& root) {
  ASSIGN_OR_RETURN(std::vector<Entry> entries, List(root));
  std::string skipped;
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    if (it->complete) return *it;
    skipped += "; " + StepDirName(it->step) + " skipped: " + it->problem;
  }
  return NotFound(root + ": no complete checkpoint" + skipped);
}

Status Verify(const std::string& step_dir, Manifest* out) {
  ASSIGN_OR_RETURN(Manifest m, ReadManifest(step_dir));
  for (const ShardFileInfo& f : m.files) {
    const std::string path = Join(step_dir, f.name);
    uint64_t size = 0;
    uint32_t crc = 0;
    RETURN_IF_ERROR(FileCrc(path, &size, &crc));
    if (size != f.size) {
      return DataLoss(path + ": " + std::to_string(size) + " bytes, the manifest says " + std::to_string(f.size) +
                      " (truncated?)");
    }
    if (crc != f.crc32c) {
      char detail[64];
      std::snprintf(detail, sizeof detail, "manifest 0x%08x, file 0x%08x", f.crc32c, crc);
      return DataLoss(path + ": file checksum mismatch (" + detail + "): the shard is corrupt");
    }
    std::lock_guard<std::mutex> lock(Hdf5Mutex());
    QuietHdf5Errors quiet;
    ASSIGN_OR_RETURN(Hid file, OpenShard(path));
    for (const std::string& array : m.states) {
      ASSIGN_OR_RETURN(std::vector<Piece> pieces, ListPieces(file.get(), path, array));
      RETURN_IF_ERROR(CheckPiecesTileRanges(path, array, f.ranges, pieces));
      for (const Piece& p : pieces) {
        RETURN_IF_ERROR(ReadPiece(file.get(), path, array, p, [](uint64_t, const float*, size_t) {}));
      }
    }
  }
  if (out != nullptr) *out = std::move(m);
  return Status::Ok();
}

Status ReadRange(const std::string& step_dir, const Manifest& m, const std::string& name, uint64_t offset,
                 uint64_t count, float* out) {
  if (std::find(m.states.begin(), m.states.end(), name) == m.states.end()) {
    return NotFound(step_dir + ": the checkpoint holds no array \"" + name + "\"");
  }
  if (offset > m.num_parameters || count > m.num_parameters - offset) {
    return InvalidArgument(step_dir + ": range [" + std::to_string(offset) + ", +" + std::to_string(count) +
                           ") outside the checkpoint's " + std::to_string(m.num_parameters) + " parameters");
  }
  const uint64_t hi = offset + count;
  uint64_t covered = 0;
  for (const ShardFileInfo& f : m.files) {
    const bool overlaps = std::any_of(f.ranges.begin(), f.ranges.end(), [&](const Range& r) {
      return r.offset < hi && r.offset + r.size > offset;
    });
    if (!overlaps) continue;
    const std::string path = Join(step_dir, f.name);
    std::lock_guard<std::mutex> lock(Hdf5Mutex());
    QuietHdf5Errors quiet;
    ASSIGN_OR_RETURN(Hid file, OpenShard(path));
    ASSIGN_OR_RETURN(std::vector<Piece> pieces, ListPieces(file.get(), path, name));
    RETURN_IF_ERROR(CheckPiecesTileRanges(path, name, f.ranges, pieces));
    for (const Piece& p : pieces) {
      const uint64_t begin = std::max(offset, p.flat_offset), end = std::min(hi, p.flat_offset + p.numel);
      if (begin >= end) continue;
      // The piece's elements [begin, end) go to out as they are read (all of the piece is read, for
      // its checksum).
      RETURN_IF_ERROR(ReadPiece(file.get(), path, name, p, [&](uint64_t first, const float* data, size_t n) {
        const uint64_t lo = std::max(begin, p.flat_offset + first), hi_ = std::min(end, p.flat_offset + first + n);
        if (lo < hi_) std::memcpy(out + (lo - offset), data + (lo - p.flat_offset - first), (hi_ - lo) * sizeof(float));
      }));
      covered += end - begin;
    }
  }
  if (covered != count) {
    return DataLoss(step_dir + ": the shards hold " + std::to_string(covered) + " of the " + std::to_string(count) +
                    " elements of \"" + name + "\" asked for");
  }
  return Status::Ok();
}

}  // namespace cohort::checkpoint
