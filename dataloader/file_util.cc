#include "dataloader/file_util.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace cohort::data {
namespace {

// Closes an fd on scope exit (RAII for the raw descriptors used below).
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  int fd_;
};

std::string DirName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

Result<std::string> ReadFileToString(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return NotFound(path + ": no such file");
    return ErrnoError(path + ": open", err);
  }
  FdCloser closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoError(path + ": fstat", errno);
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + ": not a regular file");
  std::string data;
  data.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  // Loop until EOF rather than trusting st_size alone: the file may grow or shrink under us.
  while (true) {
    if (done == data.size()) data.resize(data.size() + 65536);
    ssize_t n = ::read(fd, data.data() + done, data.size() - done);
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
  std::string tmpl = DirName(path) + "/." + BaseName(path) + ".tmp.XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  int fd = ::mkostemp(buf.data(), O_CLOEXEC);
  if (fd < 0) return ErrnoError(path + ": create temporary file in " + DirName(path), errno);
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
  std::string dir = DirName(path_);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return ErrnoError(dir + ": open directory for fsync", errno);
  FdCloser closer(dfd);
  if (::fsync(dfd) != 0) return ErrnoError(dir + ": fsync directory", errno);
  return Status::Ok();
}

Status WriteFileAtomically(const std::string& path, std::string_view data) {
  ASSIGN_OR_RETURN(AtomicFileWriter writer, AtomicFileWriter::Create(path));
  RETURN_IF_ERROR(writer.Append(data.data(), data.size()));
  return writer.Commit();
}

bool HasGlobMagic(std::string_view s) { return s.find_first_of("*?[") != std::string_view::npos; }

Result<std::vector<std::string>> ExpandGlob(const std::string& pattern) {
  glob_t g;
  std::memset(&g, 0, sizeof(g));
  int rc = ::glob(pattern.c_str(), GLOB_ERR, nullptr, &g);
  std::vector<std::string> out;
  if (rc == 0) {
    out.reserve(g.gl_pathc);
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  }
  ::globfree(&g);
  if (rc == GLOB_NOMATCH) return NotFound(pattern + ": no file matches this pattern");
  if (rc == GLOB_NOSPACE) return Internal(pattern + ": glob ran out of memory");
  if (rc != 0) return IoError(pattern + ": glob failed (unreadable directory?)");
  // glob sorts by the locale's collation; sort bytewise so the order is the same everywhere.
  std::sort(out.begin(), out.end());
  return out;
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

}  // namespace cohort::data
