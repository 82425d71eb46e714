#include "storage/posix.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <setjmp.h>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <utility>

#include "storage/file_util.h"

namespace cohort::storage {
namespace {

// file_util's messages name the local path. When the caller spelled the object as a file:// URI,
// that spelling is prepended too, so a message can always be matched to what the caller passed.
Status NameUri(const Status& s, const std::string& uri, const std::string& path) {
  if (s.ok() || uri == path) return s;
  return s.WithContext(uri);
}

// The prefix that turns a local path back into the caller's spelling: "file://" (as the caller
// cased it) for a file:// URI, "" for a bare path. LocalPath only strips a prefix, so the path is
// a suffix of the URI.
std::string SpellingPrefix(const std::string& uri, const std::string& path) {
  return uri.substr(0, uri.size() - path.size());
}

// ---- memory-mapped reads ----------------------------------------------------------------------
//
// Readable files are memory-mapped: a training loader reads one small sample (a few KiB) at a
// random offset per call, and on virtual machines every system call is expensive (a pread per
// sample measured ~350 MB/s, against ~4 GB/s for cat on the same warm files). From a mapping a read
// is a memcpy; the kernel maps page-cache pages 64 KiB at a time (fault-around) and on a miss reads
// ahead around the faulting page, so a shuffled epoch over cold files still reads them in large
// requests.
//
// The cost of mapping: touching a page past the end of a file that shrank after it was mapped, or
// a page the storage fails to read (EIO), raises SIGBUS instead of returning an error. ReadAt
// therefore copies under a guard: a per-thread marker with a sigjmp_buf and the range being copied.
// The SIGBUS handler jumps back into ReadAt when the fault lies in the guarded range, and ReadAt
// returns DataLoss (the file is now shorter, by fstat) or Io, like pread would have. A truncation
// that keeps the read inside the file's new last page faults nowhere (the tail of that page reads
// as zeros), so ReadAt also compares the file's size with the open-time size at most once a second.
// Faults at other addresses inside a mapped file (a caller holding a pointer into it; nothing in
// Cohort does) print the file and offset and exit with status 74 (EX_IOERR); faults anywhere else
// go to the previous handler or the default action. The registry of mappings is a push-only list
// that the handler can walk without locks; entries are marked dead when unmapped and never freed
// (a few dozen bytes per file opened, for the process lifetime).
struct MappedRegion {
  const char* base = nullptr;
  size_t len = 0;
  std::string uri;
  std::atomic<bool> live{true};
  MappedRegion* next = nullptr;
};

std::atomic<MappedRegion*> g_regions{nullptr};

// The copy a thread is making from a mapping, for the SIGBUS handler (see above). Plain data in
// static TLS, which a signal handler may read.
struct GuardedCopy {
  sigjmp_buf env;
  const char* lo;
  const char* hi;
  const char* volatile fault;  // the address that faulted (set by the handler before it jumps)
  volatile sig_atomic_t active;
};
thread_local GuardedCopy t_copy;
// Set while this thread revalidates a file (ReadableObject::SetRevalidation): its own reads skip
// the change check.
thread_local bool t_revalidating = false;
struct sigaction g_previous_sigbus;
std::once_flag g_sigbus_once;

void WriteAll(const char* s, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(STDERR_FILENO, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

// Async-signal-safe: no allocation, no locks, no stdio.
void OnSigbus(int sig, siginfo_t* info, void* ctx) {
  const char* addr = static_cast<const char*>(info->si_addr);
  if (info->si_code > 0 && t_copy.active && addr >= t_copy.lo && addr < t_copy.hi) {
    t_copy.active = 0;
    t_copy.fault = addr;
    siglongjmp(t_copy.env, 1);
  }
  for (const MappedRegion* r = g_regions.load(std::memory_order_acquire); r != nullptr; r = r->next) {
    if (!r->live.load(std::memory_order_acquire) || addr < r->base || addr >= r->base + r->len) continue;
    char num[24];
    size_t k = sizeof num;
    uint64_t off = static_cast<uint64_t>(addr - r->base);
    do {
      num[--k] = static_cast<char>('0' + off % 10);
      off /= 10;
    } while (off > 0 && k > 0);
    constexpr char kHead[] = "error: ";
    constexpr char kTail[] = ": reading the memory-mapped file failed (it was truncated by another program, "
                             "or the storage returned an I/O error); stopping\n";
    WriteAll(kHead, sizeof kHead - 1);
    WriteAll(r->uri.data(), r->uri.size());
    constexpr char kAt[] = ": byte offset ";
    WriteAll(kAt, sizeof kAt - 1);
    WriteAll(num + k, sizeof num - k);
    WriteAll(kTail, sizeof kTail - 1);
    ::_exit(74);
  }
  // Not ours: hand over to whoever handled SIGBUS before, else the default action (a fault repeats
  // when this handler returns; a signal sent by kill(2) has to be raised again).
  if (g_previous_sigbus.sa_flags & SA_SIGINFO) {
    if (g_previous_sigbus.sa_sigaction != nullptr) return g_previous_sigbus.sa_sigaction(sig, info, ctx);
  } else if (g_previous_sigbus.sa_handler != SIG_DFL && g_previous_sigbus.sa_handler != SIG_IGN) {
    return g_previous_sigbus.sa_handler(sig);
  }
  ::signal(SIGBUS, SIG_DFL);
  if (info->si_code <= 0) ::raise(SIGBUS);
}

MappedRegion* RegisterMapping(const char* base, size_t len, const std::string& uri) {
  std::call_once(g_sigbus_once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_previous_sigbus);
  });
  auto* r = new MappedRegion;  // never freed: see above
  r->base = base;
  r->len = len;
  r->uri = uri;
  MappedRegion* head = g_regions.load(std::memory_order_relaxed);
  do {
    r->next = head;
  } while (!g_regions.compare_exchange_weak(head, r, std::memory_order_release, std::memory_order_relaxed));
  return r;
}

class PosixReadableObject final : public ReadableObject {
 public:
  // Maps the file (size > 0). On failure to map (e.g. address space limits) reads fall back to
  // pread on the descriptor.
  // A mapped file gives its descriptor back at once (the mapping keeps the file readable): a
  // dataset of thousands of shards must not run into the per-process open-file limit (often 1024
  // on clusters).
  PosixReadableObject(std::string uri, std::string path, ScopedFd fd, uint64_t size)
      : uri_(std::move(uri)), path_(std::move(path)), fd_(std::move(fd)), size_(size) {
    if (size_ == 0 || size_ > SIZE_MAX) return;
    void* p = ::mmap(nullptr, static_cast<size_t>(size_), PROT_READ, MAP_SHARED, fd_.get(), 0);
    if (p == MAP_FAILED) return;
    map_ = static_cast<const char*>(p);
    region_ = RegisterMapping(map_, static_cast<size_t>(size_), uri_);
    struct stat st;
    if (::fstat(fd_.get(), &st) == 0) {
      dev_ = st.st_dev;
      ino_ = st.st_ino;
      mtime_ns_.store(static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec);
    }
    fd_.Reset();
  }
  ~PosixReadableObject() override {
    if (map_ == nullptr) return;
    region_->live.store(false, std::memory_order_release);
    ::munmap(const_cast<char*>(map_), static_cast<size_t>(size_));
  }

  const std::string& uri() const override { return uri_; }
  uint64_t size() const override { return size_; }

  Status ReadAt(uint64_t offset, void* dst, size_t n) const override {
    RETURN_IF_ERROR(CheckRange(offset, n));
    if (map_ != nullptr) return VisitMapping(offset, n, CopyTo, dst);
    // pread on a shared fd: no file position, so concurrent readers need no lock.
    char* p = static_cast<char*>(dst);
    uint64_t pos = offset;
    size_t left = n;
    while (left > 0) {
      // Linux transfers at most ~2 GiB per call anyway; a bounded chunk also keeps the count
      // within ssize_t.
      size_t chunk = std::min<size_t>(left, size_t{1} << 30);
      ssize_t got = ::pread(fd_.get(), p, chunk, static_cast<off_t>(pos));
      if (got < 0) {
        if (errno == EINTR) continue;
        return ErrnoError(uri_ + ": read at offset " + std::to_string(pos), errno);
      }
      if (got == 0) {
        // The size was checked against the open-time size, so EOF here means the file shrank.
        return DataLoss(uri_ + ": file is shorter than when it was opened (truncated?) at offset " +
                        std::to_string(pos) + " (size at open " + std::to_string(size_) + ")");
      }
      p += got;
      pos += static_cast<uint64_t>(got);
      left -= static_cast<size_t>(got);
    }
    return Status::Ok();
  }

  Status ReadVisit(uint64_t offset, size_t n, Visitor visit, void* ctx) const override {
    if (map_ == nullptr) return ReadableObject::ReadVisit(offset, n, visit, ctx);
    RETURN_IF_ERROR(CheckRange(offset, n));
    return VisitMapping(offset, n, visit, ctx);
  }

  void SetRevalidation(std::function<Status()> revalidate) override { revalidate_ = std::move(revalidate); }

  void Prefetch(uint64_t offset, size_t n) const override {
    // Software prefetches neither fault nor block: a page not yet mapped is simply skipped. A
    // shuffled sample lies at a random place, so without this every sample starts with a full
    // memory latency that the hardware prefetcher cannot foresee.
    if (map_ == nullptr || offset >= size_) return;
    const char* end = map_ + offset + std::min<uint64_t>(n, size_ - offset);
    // From the start of the first cache line, so the last line is not skipped.
    const char* p = map_ + (offset & ~uint64_t{63});
    for (; p < end; p += 64) __builtin_prefetch(p, 0, 3);
  }

 private:
  // Written so that offset + n cannot overflow.
  Status CheckRange(uint64_t offset, size_t n) const {
    if (offset <= size_ && n <= size_ - offset) return Status::Ok();
    return OutOfRange(uri_ + ": read of " + std::to_string(n) + " bytes at offset " + std::to_string(offset) +
                      " ends past the end of the object (size " + std::to_string(size_) + ")");
  }

  static void CopyTo(const unsigned char* data, size_t n, void* dst) { std::memcpy(dst, data, n); }

  Status VisitMapping(uint64_t offset, size_t n, Visitor visit, void* ctx) const {
    // At most once a second: has the file shrunk (possibly only inside its new last page, where
    // reading faults nowhere)?
    // The coarse clock (the kernel's last tick, no hardware read) is a few times cheaper to read
    // on a virtual machine and plenty for a once-a-second check.
    struct timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    const int64_t now = static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
    // A read that reaches into the file's last page is checked every time: a file cut inside that
    // page reads zeros there, not a fault.
    static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const bool last_page = size_ > 0 && offset + n > ((size_ - 1) & ~(page - 1));
    if (last_page || now - last_size_check_ms_.load(std::memory_order_relaxed) >= 1000) {
      last_size_check_ms_.store(now, std::memory_order_relaxed);
      RETURN_IF_ERROR(CheckSize(offset));
    }
    GuardedCopy& g = t_copy;
    g.lo = map_ + offset;
    g.hi = map_ + offset + n;
    // savemask 0: saving the signal mask would be a system call per read. The handler runs with
    // SA_NODEFER, so SIGBUS is not left blocked after jumping out of it.
    if (sigsetjmp(g.env, 0) == 0) {
      g.active = 1;
      std::atomic_signal_fence(std::memory_order_seq_cst);
      visit(reinterpret_cast<const unsigned char*>(map_) + offset, n, ctx);
      std::atomic_signal_fence(std::memory_order_seq_cst);
      g.active = 0;
      return Status::Ok();
    }
    // The copy faulted (the handler jumped back here), at this byte of the file.
    const uint64_t at = static_cast<uint64_t>(g.fault - map_);
    RETURN_IF_ERROR(CheckSize(at));
    return IoError(uri_ + ": read error at offset " + std::to_string(at) +
                   " (the storage failed to read a page of the memory-mapped file, or the file was truncated)");
  }

  // DataLoss if the file is now shorter than at open, or was modified since (rewritten in place,
  // e.g. by cp or rsync --inplace: the mapping would show the new bytes). By path, as the
  // descriptor is closed once mapped; a name that is gone or now names another file (removed, or
  // replaced by a rename) says nothing about the mapped file, whose pages stay intact, so that is
  // not an error.
  Status CheckSize(uint64_t offset) const {
    struct stat st;
    // A name that cannot be looked up now (removed, or a directory made unreadable) says nothing
    // about the mapped file either; a read that really fails faults, and is reported as such.
    if (::stat(path_.c_str(), &st) != 0) return Status::Ok();
    if (st.st_dev != dev_ || st.st_ino != ino_) return Status::Ok();
    if (static_cast<uint64_t>(st.st_size) < size_) {
      return DataLoss(uri_ + ": file is shorter than when it was opened (truncated?): " +
                      std::to_string(st.st_size) + " bytes, " + std::to_string(size_) +
                      " at open; reading at offset " + std::to_string(offset));
    }
    const int64_t mtime = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    if (mtime != mtime_ns_.load(std::memory_order_acquire)) {
      if (t_revalidating) return Status::Ok();  // a read of the revalidation itself
      if (revalidate_) {
        std::lock_guard<std::mutex> lock(revalidate_mu_);
        if (mtime == mtime_ns_.load(std::memory_order_acquire)) return Status::Ok();  // done by another reader
        t_revalidating = true;
        Status same = revalidate_();
        t_revalidating = false;
        if (!same.ok()) return same;
        mtime_ns_.store(mtime, std::memory_order_release);  // only touched: this time is the file's now
        return Status::Ok();
      }
      return DataLoss(uri_ + ": file was modified since it was opened (rewritten in place?); reading at offset " +
                      std::to_string(offset));
    }
    return Status::Ok();
  }

  const std::string uri_;
  const std::string path_;
  ScopedFd fd_;  // only while unmapped (pread fallback)
  dev_t dev_ = 0;  // the mapped file's identity, for CheckSize
  ino_t ino_ = 0;
  mutable std::atomic<int64_t> mtime_ns_{0};  // its modification time (at open, or when last revalidated)
  std::function<Status()> revalidate_;  // set before reads (SetRevalidation)
  mutable std::mutex revalidate_mu_;
  const uint64_t size_;
  const char* map_ = nullptr;
  MappedRegion* region_ = nullptr;
  mutable std::atomic<int64_t> last_size_check_ms_{0};
};

class PosixWritableObject final : public WritableObject {
 public:
  PosixWritableObject(std::string uri, std::string path, AtomicFileWriter writer)
      : uri_(std::move(uri)), path_(std::move(path)), writer_(std::move(writer)) {}

  const std::string& uri() const override { return uri_; }

  Status Append(const void* data, size_t n) override {
    COHORT_CHECK(!committed_) << "Append after Commit: " << uri_;
    // AtomicFileWriter aborts (removes its temporary file) on a failure and CHECK-fails if used
    // again; a storage caller gets the first error back instead.
    if (!failed_.ok()) return failed_;
    Status s = NameUri(writer_.Append(data, n), uri_, path_);
    if (!s.ok()) failed_ = s;
    return s;
  }

  Status Commit() override {
    COHORT_CHECK(!committed_) << "Commit twice: " << uri_;
    if (!failed_.ok()) return failed_;
    Status s = NameUri(writer_.Commit(), uri_, path_);
    if (!s.ok()) {
      failed_ = s;
      return s;
    }
    committed_ = true;
    return Status::Ok();
  }

 private:
  const std::string uri_;
  const std::string path_;
  AtomicFileWriter writer_;
  Status failed_;  // the first error; later calls return it
  bool committed_ = false;
};

class PosixStorageImpl final : public Storage {
 public:
  std::string_view scheme() const override { return "file"; }

  Result<std::unique_ptr<ReadableObject>> OpenForRead(const std::string& uri) override {
    ASSIGN_OR_RETURN(std::string path, LocalPath(uri));
    uint64_t size = 0;
    Result<ScopedFd> fd = OpenRegularFile(path, &size);
    if (!fd.ok()) return NameUri(fd.status(), uri, path);
    return std::unique_ptr<ReadableObject>(
        std::make_unique<PosixReadableObject>(uri, path, std::move(fd).value(), size));
  }

  Result<ObjectInfo> Stat(const std::string& uri) override {
    ASSIGN_OR_RETURN(std::string path, LocalPath(uri));
    Result<uint64_t> size = RegularFileSize(path);
    if (!size.ok()) return NameUri(size.status(), uri, path);
    return ObjectInfo{uri, *size};
  }

  Result<std::vector<ObjectInfo>> List(const std::string& pattern) override {
    ASSIGN_OR_RETURN(std::string path_pattern, LocalPath(pattern));
    if (!HasGlobMagic(path_pattern)) {
      ASSIGN_OR_RETURN(ObjectInfo info, Stat(pattern));
      return std::vector<ObjectInfo>{std::move(info)};
    }
    Result<std::vector<std::string>> matches = ExpandGlob(path_pattern);
    if (!matches.ok()) return NameUri(matches.status(), pattern, path_pattern);
    const std::string prefix = SpellingPrefix(pattern, path_pattern);
    std::vector<ObjectInfo> out;
    out.reserve(matches->size());
    for (const std::string& path : *matches) {
      struct stat st;
      if (::stat(path.c_str(), &st) != 0) {
        int err = errno;
        // Removed between glob and stat (e.g. a concurrent Remove), or a dangling symlink: not an
        // object now.
        if (err == ENOENT) continue;
        return NameUri(ErrnoError(path + ": stat", err), pattern, path_pattern);
      }
      // Objects are files: a pattern like "data/*" may also match subdirectories, which are not
      // part of the listing. Any other non-regular file (FIFO, device) is an error so that it
      // is not silently dropped from a dataset.
      if (S_ISDIR(st.st_mode)) continue;
      if (!S_ISREG(st.st_mode)) {
        return InvalidArgument(pattern + ": matches " + prefix + path + ", which is not a regular file");
      }
      out.push_back(ObjectInfo{prefix + path, static_cast<uint64_t>(st.st_size)});
    }
    if (out.empty()) {
      return NotFound(pattern + ": no object matches this pattern (only directories)");
    }
    // ExpandGlob sorts the paths bytewise and one common prefix keeps that order; sort anyway so
    // the contract does not hinge on that.
    std::sort(out.begin(), out.end(),
              [](const ObjectInfo& a, const ObjectInfo& b) { return a.uri < b.uri; });
    return out;
  }

  Result<std::unique_ptr<WritableObject>> Create(const std::string& uri) override {
    ASSIGN_OR_RETURN(std::string path, LocalPath(uri));
    // A name ending in '/' or naming a directory could never be committed (rename(2) of a file
    // over a directory fails); say so now rather than after all the data was written.
    if (path.back() == '/' || IsDirectory(path)) {
      return InvalidArgument(uri + ": names a directory, not an object");
    }
    Result<AtomicFileWriter> writer = AtomicFileWriter::Create(path);
    if (!writer.ok()) return NameUri(writer.status(), uri, path);
    return std::unique_ptr<WritableObject>(
        std::make_unique<PosixWritableObject>(uri, path, std::move(writer).value()));
  }

  Status MakeParents(const std::string& uri) override {
    ASSIGN_OR_RETURN(std::string path, LocalPath(uri));
    std::string parent = ParentDirectory(path);
    if (parent == "." || parent == "/") return Status::Ok();
    return NameUri(MakeDirectories(parent), uri, path);
  }

  Status Rename(const std::string& from, const std::string& to) override {
    ASSIGN_OR_RETURN(std::string from_path, LocalPath(from));
    ASSIGN_OR_RETURN(std::string to_path, LocalPath(to));
    if (::rename(from_path.c_str(), to_path.c_str()) != 0) {
      int err = errno;
      std::string what = from + ": rename to " + to;
      if (err == EISDIR) return InvalidArgument(what + ": the target is a directory");
      return ErrnoError(what, err);
    }
    // The rename is durable only once the directory entries are: the new name's directory, and
    // the old name's when it differs (else the old entry may come back after a crash).
    const std::string to_dir = ParentDirectory(to_path);
    const std::string from_dir = ParentDirectory(from_path);
    RETURN_IF_ERROR(NameUri(SyncDirectory(to_dir), to, to_path));
    if (from_dir != to_dir) RETURN_IF_ERROR(NameUri(SyncDirectory(from_dir), from, from_path));
    return Status::Ok();
  }

  Status Remove(const std::string& uri) override {
    ASSIGN_OR_RETURN(std::string path, LocalPath(uri));
    if (::unlink(path.c_str()) != 0) {
      int err = errno;
      // Linux reports EISDIR for a directory, POSIX specifies EPERM (which also means a
      // permission problem, hence the check).
      if (err == EISDIR || (err == EPERM && IsDirectory(path))) {
        return InvalidArgument(uri + ": is a directory, not an object");
      }
      if (err == ENOENT) return NotFound(uri + ": no such object");
      return ErrnoError(uri + ": remove", err);
    }
    return Status::Ok();
  }

  Status Sync(const std::string& uri) override {
    ASSIGN_OR_RETURN(std::string path, LocalPath(uri));
    // O_RDONLY suffices for fsync, also of a directory. O_NONBLOCK: a FIFO must be refused, not
    // waited on (open(2) of a FIFO blocks until a writer appears).
    ScopedFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
    if (!fd.valid()) {
      int err = errno;
      if (err == ENOENT) return NotFound(uri + ": no such object");
      return ErrnoError(uri + ": open for fsync", err);
    }
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return ErrnoError(uri + ": fstat", errno);
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
      return InvalidArgument(uri + ": not a regular file or directory");
    }
    if (::fsync(fd.get()) != 0) return ErrnoError(uri + ": fsync", errno);
    return Status::Ok();
  }
};

}  // namespace

Storage* PosixStorage() {
  // Heap-allocated and never deleted: no destructor runs at exit, so threads still using storage
  // during static destruction are safe.
  static Storage* const storage = new PosixStorageImpl();
  return storage;
}

}  // namespace cohort::storage
