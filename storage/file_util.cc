#include "storage/file_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

namespace cohort::storage {
namespace {

// What a non-regular file is, for error messages.
const char* FileTypeName(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "unknown file type";
}

std::string BaseName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

std::string ParentDirectory(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

ScopedFd& ScopedFd::operator=(ScopedFd&& other) noexcept {
  if (this != &other) {
    Reset();
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

void ScopedFd::Reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Result<ScopedFd> OpenRegularFile(const std::string& path, uint64_t* size) {
  // O_NONBLOCK: open(2) of a FIFO without a writer (or of some devices) blocks forever otherwise;
  // the type can only be checked on the open fd. O_NOCTTY: a terminal must not become ours.
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid()) {
    int err = errno;
    if (err == ENOENT) return NotFound(path + ": no such file");
    return ErrnoError(path + ": open", err);
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoError(path + ": fstat", errno);
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgument(path + ": not a regular file (" + FileTypeName(st.st_mode) + ")");
  }
  // Regular files ignore O_NONBLOCK on Linux, but callers are promised ordinary blocking reads
  // (e.g. on file systems that honour the flag).
  int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return ErrnoError(path + ": fcntl(clear O_NONBLOCK)", errno);
  }
  if (size != nullptr) *size = static_cast<uint64_t>(st.st_size);
  return fd;
}

Result<uint64_t> RegularFileSize(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT) return NotFound(path + ": no such file");
    return ErrnoError(path + ": stat", err);
  }
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgument(path + ": not a regular file (" + FileTypeName(st.st_mode) + ")");
  }
  return static_cast<uint64_t>(st.st_size);
}

Result<std::string> ReadFileToString(const std::string& path) {
  uint64_t size = 0;
  ASSIGN_OR_RETURN(ScopedFd fd, OpenRegularFile(path, &size));
  std::string data;
  data.resize(static_cast<size_t>(size));
  size_t done = 0;
  // Loop until EOF rather than trusting st_size alone: the file may grow or shrink under us.
  while (true) {
    if (done == data.size()) data.resize(data.size() + 65536);
    ssize_t n = ::read(fd.get(), data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(path + ": read at byte offset " + std::to_string(done), errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  data.resize(done);
  return data;
}

Result<AtomicFileWriter> AtomicFileWriter::Create(const std::string& path) {
  // A hidden, unique name in the same directory so rename(2) is atomic (same filesystem) and a
  // crashed run leaves an obviously-temporary file rather than a half-written shard.
  std::string tmpl = ParentDirectory(path) + "/." + BaseName(path) + ".tmp.XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  int fd = ::mkostemp(buf.data(), O_CLOEXEC);
  if (fd < 0) return ErrnoError(path + ": create temporary file in " + ParentDirectory(path), errno);
  // mkostemp creates mode 0600; data files are meant to be shared like any other output.
  if (::fchmod(fd, 0644) != 0) {
    int err = errno;
    ::close(fd);
    ::unlink(buf.data());
    return ErrnoError(path + ": chmod temporary file", err);
  }
  return AtomicFileWriter(path, std::string(buf.data()), fd);
}

AtomicFileWriter::AtomicFileWriter(AtomicFileWriter&& other) noexcept
    : path_(std::move(other.path_)),
      tmp_path_(std::move(other.tmp_path_)),
      fd_(std::exchange(other.fd_, -1)) {}

AtomicFileWriter::~AtomicFileWriter() { Abort(); }

void AtomicFileWriter::Abort() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(tmp_path_.c_str());
  }
}

Status AtomicFileWriter::Append(const void* data, size_t n) {
  COHORT_CHECK(fd_ >= 0) << "Append after Commit or failure: " << path_;
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      Status s = ErrnoError(path_ + ": write", errno);
      Abort();
      return s;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

Status AtomicFileWriter::Commit() {
  COHORT_CHECK(fd_ >= 0) << "Commit twice or after failure: " << path_;
  if (::fsync(fd_) != 0) {
    Status s = ErrnoError(path_ + ": fsync", errno);
    Abort();
    return s;
  }
  // close() can report deferred write errors (NFS); treat them as failures too.
  int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp_path_.c_str());
    return ErrnoError(path_ + ": close", err);
  }
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp_path_.c_str());
    return ErrnoError(path_ + ": rename from " + tmp_path_, err);
  }
  // The rename is durable only once the directory entry is on disk.
  return SyncDirectory(ParentDirectory(path_));
}

Status WriteFileAtomically(const std::string& path, std::string_view data) {
  ASSIGN_OR_RETURN(AtomicFileWriter writer, AtomicFileWriter::Create(path));
  RETURN_IF_ERROR(writer.Append(data.data(), data.size()));
  return writer.Commit();
}

bool HasGlobMagic(std::string_view s) { return s.find_first_of("*?[") != std::string_view::npos; }

namespace {
// glob(3)'s error callback has no user pointer: the failing directory and errno of this thread's
// current glob call go here.
thread_local std::string t_glob_error_path;
thread_local int t_glob_error_errno = 0;
extern "C" int RecordGlobError(const char* path, int err) {
  t_glob_error_path = path;
  t_glob_error_errno = err;
  return 1;  // stop (GLOB_ERR semantics)
}
}  // namespace

Result<std::vector<std::string>> ExpandGlob(const std::string& pattern) {
  glob_t g;
  std::memset(&g, 0, sizeof(g));
  t_glob_error_path.clear();
  t_glob_error_errno = 0;
  int rc = ::glob(pattern.c_str(), GLOB_ERR, RecordGlobError, &g);
  std::vector<std::string> out;
  if (rc == 0) {
    out.reserve(g.gl_pathc);
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  }
  ::globfree(&g);
  if (rc == GLOB_NOMATCH) return NotFound(pattern + ": no file matches this pattern");
  if (rc == GLOB_NOSPACE) return Internal(pattern + ": glob ran out of memory");
  if (rc != 0) {
    if (t_glob_error_errno == ENOENT || t_glob_error_errno == ENOTDIR) {
      return NotFound(pattern + ": directory " + t_glob_error_path + " does not exist");
    }
    return IoError(pattern + ": cannot read directory " + t_glob_error_path + ": " +
                   std::strerror(t_glob_error_errno));
  }
  // glob sorts by the locale's collation; sort bytewise so the order is the same everywhere.
  std::sort(out.begin(), out.end());
  return out;
}

Result<std::vector<std::string>> ListDirectory(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), &::closedir);
  if (d == nullptr) return ErrnoError(dir + ": open directory", errno);
  std::vector<std::string> names;
  while (true) {
    errno = 0;
    const struct dirent* e = ::readdir(d.get());
    if (e == nullptr) {
      if (errno != 0) return ErrnoError(dir + ": read directory", errno);
      break;
    }
    std::string_view name = e->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

Result<std::string> MakeTempDirectory(const std::string& parent, std::string_view prefix) {
  std::string tmpl = parent + "/" + std::string(prefix) + "XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    return ErrnoError(parent + ": create temporary directory", errno);
  }
  return tmpl;
}

Status SyncDirectory(const std::string& dir) {
  ScopedFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError(dir + ": open directory for fsync", errno);
  if (::fsync(fd.get()) != 0) return ErrnoError(dir + ": fsync directory", errno);
  return Status::Ok();
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Status MakeDirectories(const std::string& path) {
  if (path.empty()) return InvalidArgument("empty directory path");
  std::string prefix;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    prefix = path.substr(0, pos);
    if (prefix.empty() || IsDirectory(prefix)) continue;
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoError(prefix + ": mkdir", errno);
    }
  }
  if (!IsDirectory(path)) return IoError(path + ": exists and is not a directory");
  return Status::Ok();
}

}  // namespace cohort::storage
