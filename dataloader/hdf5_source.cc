// HDF5 token datasets as a SampleSource (source.h): one integer dataset per file, rank 1 (a token
// stream cut into overlapping windows) or rank 2 (one sample per row). Each Read is one hyperslab
// read of exactly the sample's T+1 elements, converted by HDF5 to a 64-bit integer of the dataset's
// signedness (so every width and sign reads losslessly) and then checked against the vocabulary.
//
// hdf5.h is included here only (DESIGN: library headers stay behind our interfaces).
#include <hdf5.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common/hdf5_lock.h"
#include "dataloader/source.h"

namespace cohort::data {
namespace {

// Every HDF5 call in this file runs under Hdf5Mutex() (common/hdf5_lock.h). Builds of libhdf5 without
// --enable-threadsafe (the usual source, conda and parallel builds) keep process-wide state (the
// open-object tables, metadata caches, free lists, the error stack) with no synchronization, so two
// threads may never be inside the library at once, not even for different files: the lock is
// therefore per process, not per source, so that a training and a validation source (or several
// loaders) reading concurrently are safe too. Thread-safe builds (Debian's serial package is one)
// take an equivalent global lock inside the library, so this one costs nothing extra there.
// checkpoint/ takes the same lock, as its writer thread may run beside a loader.

// Owns one HDF5 identifier and closes it with the matching H5*close. Must be destroyed (or Reset)
// with Hdf5Mutex() held, like every other HDF5 call.
class Hid {
 public:
  using Closer = herr_t (*)(hid_t);

  Hid() = default;
  Hid(hid_t id, Closer close) : id_(id), close_(close) {}
  ~Hid() { Reset(); }
  Hid(Hid&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)), close_(other.close_) {}
  Hid& operator=(Hid&& other) noexcept {
    if (this != &other) {
      Reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
      close_ = other.close_;
    }
    return *this;
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void Reset() {
    if (id_ >= 0 && close_ != nullptr) close_(id_);  // nothing useful to do if closing fails
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer close_ = nullptr;
};

// While alive, HDF5 does not print its error stack to stderr: failures come back as Status
// messages built from the stack (TakeHdf5Error), so printing would show every error twice, as a
// multi-line trace that means little to users. Restores the previous handler, so HDF5 use elsewhere
// in the process (tests, tools) keeps its own setting. Construct with Hdf5Mutex() held.
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

// The innermost (most specific) entry of HDF5's error stack: the function that detected the
// failure, e.g. "truncated file: eof = 4096, sblock->base_addr = 0, stored_eof = 8192". The outer
// entries only repeat "unable to open file" up the call chain.
struct Hdf5Error {
  std::string message;
  hid_t major = H5I_INVALID_HID;
  hid_t minor = H5I_INVALID_HID;
};

herr_t KeepInnermost(unsigned n, const H5E_error2_t* err, void* data) {
  if (n != 0) return 0;
  auto* out = static_cast<Hdf5Error*>(data);
  out->major = err->maj_num;
  out->minor = err->min_num;
  if (err->desc != nullptr) out->message = err->desc;
  // Some entries carry no description; the minor code's text ("file has been truncated") then says
  // what happened.
  char minor[128];
  if (H5Eget_msg(err->min_num, nullptr, minor, sizeof minor) > 0) {
    if (out->message.empty()) {
      out->message = minor;
    } else if (out->message.find(minor) == std::string::npos) {
      out->message += std::string(" (") + minor + ")";
    }
  }
  return 0;
}

// Reads and clears the calling thread's HDF5 error stack; call right after a failed HDF5 call.
Hdf5Error TakeHdf5Error() {
  Hdf5Error e;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, KeepInnermost, &e);
  H5Eclear2(H5E_DEFAULT);
  if (e.message.empty()) e.message = "unknown HDF5 error";
  return e;
}

// A failure that is neither the operating system's I/O nor a lock is the file's contents:
// corruption or truncation.
Status Hdf5Failure(const std::string& what, const Hdf5Error& e) {
  if (e.minor == H5E_CANTLOCKFILE) {
    return IoError(what + ": " + e.message +
                   " (another process holds the file open for writing; readers share the lock)");
  }
  if (e.major == H5E_IO || e.minor == H5E_READERROR || e.minor == H5E_SEEKERROR) {
    return IoError(what + ": " + e.message);
  }
  if (e.minor == H5E_TRUNCATED) {
    return DataLoss(what + ": " + e.message + "; the file is incomplete (an interrupted copy or write?)");
  }
  return DataLoss(what + ": " + e.message);
}

std::string TypeClassName(H5T_class_t c) {
  switch (c) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_TIME: return "time";
    case H5T_STRING: return "string";
    case H5T_BITFIELD: return "bitfield";
    case H5T_OPAQUE: return "opaque";
    case H5T_COMPOUND: return "compound";
    case H5T_REFERENCE: return "reference";
    case H5T_ENUM: return "enum";
    case H5T_VLEN: return "variable-length";
    case H5T_ARRAY: return "array";
    default: return "unknown (" + std::to_string(static_cast<int>(c)) + ")";
  }
}

// Up to a few top-level names of a file, for "dataset not found" messages: the usual mistake is a
// different dataset name ("input_ids" vs "tokens"). Best effort: "" if the group cannot be listed.
std::string TopLevelNames(hid_t file) {
  constexpr hsize_t kMaxNames = 10;
  H5G_info_t info;
  if (H5Gget_info(file, &info) < 0) {
    H5Eclear2(H5E_DEFAULT);
    return "";
  }
  if (info.nlinks == 0) return "the file has no top-level objects";
  const std::string prefix = "top-level objects: ";
  std::string names = prefix;
  for (hsize_t i = 0; i < std::min(info.nlinks, kMaxNames); ++i) {
    char name[256];
    const ssize_t n = H5Lget_name_by_idx(file, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name,
                                         H5P_DEFAULT);
    if (n < 0) {
      H5Eclear2(H5E_DEFAULT);
      break;
    }
    if (names.size() > prefix.size()) names.append(", ");
    names.append("'").append(name).append(n >= static_cast<ssize_t>(sizeof name) ? "...'" : "'");
  }
  if (names.size() == prefix.size()) return "";
  if (info.nlinks > kMaxNames) names.append(" and ").append(std::to_string(info.nlinks - kMaxNames)).append(" more");
  return names;
}

// One open file: ids stay open for the source's lifetime, so a Read is one hyperslab selection and
// one H5Dread, with HDF5's metadata (chunk index, superblock) cached. Members are destroyed in
// reverse order: the dataset's ids close before the file's.
struct Hdf5File {
  std::string path;
  Hid file;
  Hid dataset;
  Hid space;       // the dataset's file dataspace; its selection is rewritten by each Read
  bool is_signed = true;
  int rank = 0;
  hsize_t dims[2] = {0, 0};
  uint64_t samples = 0;
  // The file as opened (fstat of HDF5's own descriptor), to detect a file rewritten or truncated
  // underneath us: HDF5's sec2 driver reads zeros past the end of a shrunk file instead of failing.
  int fd = -1;  // owned by HDF5; -1 when the driver does not expose one
  off_t size = 0;
  struct timespec mtime = {};
};

class Hdf5Source final : public SampleSource {
 public:
  explicit Hdf5Source(const SourceOptions& options)
      : dataset_name_(options.hdf5_dataset), seq_len_(options.seq_len), vocab_size_(options.vocab_size) {}

  ~Hdf5Source() override {
    // Ids must be closed under the library lock like any other HDF5 call.
    std::lock_guard<std::mutex> lock(Hdf5Mutex());
    QuietHdf5Errors quiet;
    files_.clear();
    memory_space_.Reset();
  }

  int seq_len() const override { return seq_len_; }
  uint64_t num_samples() const override { return first_sample_.back(); }
  uint32_t vocab_size() const override { return vocab_size_; }
  const std::vector<SourceFileInfo>& files() const override { return infos_; }
  std::string kind() const override { return "HDF5 dataset '" + dataset_name_ + "'"; }

  // Opens every file; on failure the caller destroys the source, which closes what was opened.
  Status Open(const std::vector<std::string>& paths);

  Status Read(uint64_t index, int32_t* out) const override;
  std::string Locate(uint64_t index) const override {
    if (index >= num_samples()) return SampleSource::Locate(index);
    const size_t fi = static_cast<size_t>(
        std::upper_bound(first_sample_.begin(), first_sample_.end(), index) - first_sample_.begin() - 1);
    const uint64_t j = index - first_sample_[fi];
    const Hdf5File& f = files_[fi];
    return "sample " + std::to_string(index) + " (" + Where(f) +
           (f.rank == 1 ? " element " + std::to_string(j * static_cast<uint64_t>(seq_len_))
                        : " row " + std::to_string(j)) + ")";
  }

 private:
  Result<Hdf5File> OpenFile(const std::string& path) const;
  std::string Where(const Hdf5File& f) const { return f.path + ": dataset '" + dataset_name_ + "'"; }

  const std::string dataset_name_;
  const int seq_len_;
  const uint32_t vocab_size_;
  std::vector<Hdf5File> files_;
  std::vector<SourceFileInfo> infos_;
  std::vector<uint64_t> first_sample_{0};  // files_.size() + 1 prefix sums of samples
  Hid memory_space_;                       // [T+1], shared by all reads (they are serialized)
};

Result<Hdf5File> Hdf5Source::OpenFile(const std::string& path) const {
  Hdf5File f;
  f.path = path;
  const std::string where = path + ": dataset '" + dataset_name_ + "'";

  // Our own checks first: HDF5's messages for a missing or non-HDF5 file are less clear.
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoError(path, errno);
  if (S_ISDIR(st.st_mode)) return InvalidArgument(path + ": is a directory, not an HDF5 file");
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 < 0) return Hdf5Failure(path + ": cannot read the file", TakeHdf5Error());
  if (is_hdf5 == 0) return InvalidArgument(path + ": not an HDF5 file (no HDF5 superblock signature)");

  // Read-only opens take a shared lock (flock) in HDF5 >= 1.10, so any number of ranks may read the
  // same file at once; only a writer holding it open conflicts. On file systems without flock
  // (some NFS and Lustre mounts) the lock is skipped rather than failing the open.
  Hid fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  if (!fapl.valid()) return Internal(path + ": H5Pcreate: " + TakeHdf5Error().message);
#if H5_VERSION_GE(1, 10, 7)
  if (H5Pset_file_locking(fapl.get(), true, true) < 0) H5Eclear2(H5E_DEFAULT);
#endif
  f.file = Hid(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose);
  if (!f.file.valid()) return Hdf5Failure(path + ": cannot open the HDF5 file", TakeHdf5Error());

  // H5Lexists fails (rather than returning false) when an intermediate group of "a/b" is missing.
  const htri_t exists = H5Lexists(f.file.get(), dataset_name_.c_str(), H5P_DEFAULT);
  if (exists <= 0) {
    if (exists < 0) H5Eclear2(H5E_DEFAULT);
    const std::string names = TopLevelNames(f.file.get());
    return NotFound(path + ": no dataset '" + dataset_name_ + "'" + (names.empty() ? "" : " (" + names + ")") +
                    "; set data.hdf5_dataset to the dataset holding the tokens");
  }
  f.dataset = Hid(H5Dopen2(f.file.get(), dataset_name_.c_str(), H5P_DEFAULT), H5Dclose);
  if (!f.dataset.valid()) {
    const Hdf5Error e = TakeHdf5Error();
    return InvalidArgument(path + ": cannot open '" + dataset_name_ + "' as a dataset (is it a group?): " +
                           e.message);
  }

  Hid type(H5Dget_type(f.dataset.get()), H5Tclose);
  if (!type.valid()) return Hdf5Failure(where + ": cannot read the type", TakeHdf5Error());
  const H5T_class_t type_class = H5Tget_class(type.get());
  if (type_class != H5T_INTEGER) {
    return InvalidArgument(where + " has element type class " + TypeClassName(type_class) +
                           "; token datasets must have an integer type");
  }
  const H5T_sign_t sign = H5Tget_sign(type.get());
  if (sign == H5T_SGN_ERROR) return Hdf5Failure(where + ": cannot read the type's sign", TakeHdf5Error());
  f.is_signed = sign != H5T_SGN_NONE;

  f.space = Hid(H5Dget_space(f.dataset.get()), H5Sclose);
  if (!f.space.valid()) return Hdf5Failure(where + ": cannot read the shape", TakeHdf5Error());
  const int rank = H5Sget_simple_extent_ndims(f.space.get());
  if (rank < 0) return Hdf5Failure(where + ": cannot read the shape", TakeHdf5Error());
  if (rank < 1 || rank > 2) {
    return InvalidArgument(where + " has rank " + std::to_string(rank) +
                           "; expected rank 1 (a token stream) or 2 ([rows, tokens per row])");
  }
  f.rank = rank;
  if (H5Sget_simple_extent_dims(f.space.get(), f.dims, nullptr) < 0) {
    return Hdf5Failure(where + ": cannot read the shape", TakeHdf5Error());
  }
  const uint64_t window = static_cast<uint64_t>(seq_len_) + 1;
  if (rank == 1) {
    f.samples = f.dims[0] >= window ? (f.dims[0] - 1) / static_cast<uint64_t>(seq_len_) : 0;
  } else {
    if (f.dims[1] < window) {
      return InvalidArgument(where + " has rows of " + std::to_string(f.dims[1]) +
                             " tokens, fewer than the " + std::to_string(window) +
                             " a sample needs (seq_len + 1)");
    }
    f.samples = f.dims[0];
  }

  void* handle = nullptr;
  if (H5Fget_vfd_handle(f.file.get(), H5P_DEFAULT, &handle) >= 0 && handle != nullptr) {
    f.fd = *static_cast<int*>(handle);  // the sec2 (POSIX) driver's handle is an int*
    struct stat fst;
    if (::fstat(f.fd, &fst) == 0) {
      f.size = fst.st_size;
      f.mtime = fst.st_mtim;
    } else {
      f.fd = -1;
    }
  } else {
    H5Eclear2(H5E_DEFAULT);
  }
  return f;
}

Status Hdf5Source::Open(const std::vector<std::string>& paths) {
  if (seq_len_ < 1) return InvalidArgument("HDF5 source: seq_len must be >= 1, got " + std::to_string(seq_len_));
  if (vocab_size_ == 0) return InvalidArgument("HDF5 source: vocab_size must be > 0");
  // Samples are handed out as int32.
  if (vocab_size_ > static_cast<uint32_t>(std::numeric_limits<int32_t>::max()) + 1u) {
    return InvalidArgument("HDF5 source: vocab_size " + std::to_string(vocab_size_) + " exceeds 2^31");
  }
  if (dataset_name_.empty()) return InvalidArgument("HDF5 source: the dataset name (data.hdf5_dataset) is empty");
  if (paths.empty()) return InvalidArgument("HDF5 source: no files");

  std::lock_guard<std::mutex> lock(Hdf5Mutex());
  QuietHdf5Errors quiet;
  for (const std::string& path : paths) {
    ASSIGN_OR_RETURN(Hdf5File f, OpenFile(path));
    if (!files_.empty() && f.rank != files_.front().rank) {
      const Hdf5File& first = files_.front();
      return InvalidArgument("HDF5 source: files mix dataset ranks: " + first.path + " has a " +
                             std::to_string(first.rank) + "-D dataset '" + dataset_name_ + "' but " + path +
                             " has a " + std::to_string(f.rank) + "-D one; use one layout for all files");
    }
    SourceFileInfo info;
    info.uri = path;
    info.tokens = f.rank == 1 ? f.dims[0] : f.dims[0] * f.dims[1];
    info.samples = f.samples;
    first_sample_.push_back(first_sample_.back() + f.samples);
    infos_.push_back(std::move(info));
    files_.push_back(std::move(f));
  }
  if (num_samples() == 0) {
    return InvalidArgument("HDF5 source: " + std::to_string(paths.size()) + " file(s) (" + paths.front() +
                           (paths.size() > 1 ? " .. " + paths.back() : std::string()) + ") hold no sample of " +
                           std::to_string(seq_len_ + 1) + " tokens in dataset '" + dataset_name_ + "'");
  }
  const hsize_t window = static_cast<hsize_t>(seq_len_) + 1;
  memory_space_ = Hid(H5Screate_simple(1, &window, nullptr), H5Sclose);
  if (!memory_space_.valid()) return Internal("HDF5 source: H5Screate_simple: " + TakeHdf5Error().message);
  return Status::Ok();
}

Status Hdf5Source::Read(uint64_t index, int32_t* out) const {
  if (index >= num_samples()) {
    return OutOfRange("HDF5 source: sample " + std::to_string(index) + " of " + std::to_string(num_samples()));
  }
  // The file holding the sample: the last one whose first sample is <= index (files holding no
  // samples share their successor's first sample and are skipped by upper_bound).
  const auto next = std::upper_bound(first_sample_.begin(), first_sample_.end(), index);
  const size_t fi = static_cast<size_t>(next - first_sample_.begin()) - 1;
  const Hdf5File& f = files_[fi];
  const uint64_t j = index - first_sample_[fi];
  const hsize_t window = static_cast<hsize_t>(seq_len_) + 1;
  hsize_t start[2];
  hsize_t count[2];
  if (f.rank == 1) {
    start[0] = j * static_cast<hsize_t>(seq_len_);
    count[0] = window;
  } else {
    start[0] = j;
    start[1] = 0;
    count[0] = 1;
    count[1] = window;
  }

  // Raw 64-bit storage: HDF5 converts any integer width to int64 or uint64 (by the dataset's sign),
  // so no value is clipped before the range checks below.
  // Per-thread scratch, grown once: no allocation per sample in steady state.
  thread_local std::vector<uint64_t> buf;
  if (buf.size() < window) buf.resize(window);
  {
    std::lock_guard<std::mutex> lock(Hdf5Mutex());
    QuietHdf5Errors quiet;
    // Before the read, and again after it: HDF5 reads past the end of a file that shrank as zeros,
    // which are valid tokens.
    auto unchanged = [&]() -> Status {
      if (f.fd < 0) return Status::Ok();
      struct stat st;
      if (::fstat(f.fd, &st) != 0) return ErrnoError(f.path + ": fstat", errno);
      if (st.st_size < f.size) {
        return DataLoss(f.path + ": the file shrank from " + std::to_string(f.size) + " to " +
                        std::to_string(st.st_size) + " bytes since it was opened");
      }
      if (st.st_size != f.size || st.st_mtim.tv_sec != f.mtime.tv_sec || st.st_mtim.tv_nsec != f.mtime.tv_nsec) {
        return DataLoss(f.path + ": the file was modified since it was opened");
      }
      return Status::Ok();
    };
    RETURN_IF_ERROR(unchanged());
    if (H5Sselect_hyperslab(f.space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) < 0) {
      return Internal(Where(f) + ": cannot select sample " + std::to_string(j) + ": " + TakeHdf5Error().message);
    }
    const hid_t memory_type = f.is_signed ? H5T_NATIVE_INT64 : H5T_NATIVE_UINT64;
    if (H5Dread(f.dataset.get(), memory_type, memory_space_.get(), f.space.get(), H5P_DEFAULT, buf.data()) < 0) {
      const std::string what = f.rank == 1 ? "elements " + std::to_string(start[0]) + " .. " +
                                                 std::to_string(start[0] + window - 1)
                                           : "row " + std::to_string(start[0]);
      return Hdf5Failure(Where(f) + ": cannot read " + what, TakeHdf5Error());
    }
    RETURN_IF_ERROR(unchanged());
  }

  for (hsize_t i = 0; i < window; ++i) {
    const bool negative = f.is_signed && static_cast<int64_t>(buf[i]) < 0;
    if (negative || buf[i] >= vocab_size_) {
      const std::string element = f.rank == 1 ? std::to_string(start[0] + i)
                                              : "[" + std::to_string(start[0]) + ", " + std::to_string(i) + "]";
      std::string problem = ": token ";
      if (negative) {
        problem.append(std::to_string(static_cast<int64_t>(buf[i]))).append(" is negative");
      } else {
        problem.append(std::to_string(buf[i])).append(" >= vocab size ").append(std::to_string(vocab_size_));
      }
      return DataLoss(Where(f) + " element " + element + problem);
    }
    out[i] = static_cast<int32_t>(buf[i]);
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<SampleSource>> OpenHdf5Source(const std::vector<std::string>& files,
                                                     const SourceOptions& options) {
  auto source = std::make_unique<Hdf5Source>(options);
  RETURN_IF_ERROR(source->Open(files));
  return std::unique_ptr<SampleSource>(std::move(source));
}

}  // namespace cohort::data
