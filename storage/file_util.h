// POSIX file helpers: the layer under storage's POSIX backend (storage/posix.cc), also used
// directly by dataloader/ and cli/ code that still works on local paths (data preparation, token
// shards, tokenizer files). New code that reads or writes datasets or checkpoints should go through
// storage::Storage (storage/storage.h) so it works on every backend. All functions are thread-safe
// (no shared mutable state; ExpandGlob keeps its glob(3) error report in thread-local variables)
// and report failures as Status values whose message names the path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace cohort::storage {

// Owns a file descriptor and closes it on destruction (RAII). Move-only; -1 means "none".
class ScopedFd {
 public:
  ScopedFd() = default;
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(ScopedFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  ScopedFd& operator=(ScopedFd&& other) noexcept;
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Closes the descriptor now (errors ignored: for read-only fds close cannot lose data).
  void Reset();

 private:
  int fd_ = -1;
};

// Opens `path` for reading, only if it is a regular file. The open itself never blocks: a FIFO
// (or a device) is opened non-blocking, rejected by its type, and closed. The returned fd is
// O_CLOEXEC and in blocking mode. On success stores the file's size in `*size` when not null.
// Errors name the path: NotFound if it does not exist, InvalidArgument if it is not a regular
// file (directory, FIFO, device, socket), Io for other failures.
Result<ScopedFd> OpenRegularFile(const std::string& path, uint64_t* size = nullptr);

// The size of the regular file at `path` (following symlinks). Never opens it, so it cannot block
// on a FIFO. Errors name the path, with the same codes and wording as OpenRegularFile.
Result<uint64_t> RegularFileSize(const std::string& path);

// Reads the whole regular file at `path`. Errors as OpenRegularFile, plus Io for read failures.
Result<std::string> ReadFileToString(const std::string& path);

// Writes a file atomically: data goes to a temporary file in the target's directory; Commit()
// fsyncs it, renames it over the target and fsyncs the directory, so readers see either the old
// file or the complete new one, also after a crash. Destroying an uncommitted AtomicFileWriter (or
// any failure) removes the temporary file and leaves the target untouched. Not thread-safe.
class AtomicFileWriter {
 public:
  // Creates the temporary file next to `path`. On failure an error naming the directory
  // (NotFound if it does not exist, else Io).
  static Result<AtomicFileWriter> Create(const std::string& path);

  AtomicFileWriter(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&& other) = delete;
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter();

  // Appends `n` bytes (retries short writes and EINTR).
  Status Append(const void* data, size_t n);
  // Makes the file durable under its final name. The writer is unusable afterwards.
  Status Commit();

 private:
  AtomicFileWriter(std::string path, std::string tmp_path, int fd)
      : path_(std::move(path)), tmp_path_(std::move(tmp_path)), fd_(fd) {}
  void Abort();

  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
};

// Convenience: atomically replaces `path` with `data`.
Status WriteFileAtomically(const std::string& path, std::string_view data);

// True when `s` contains a glob(3) metacharacter (*, ?, [).
bool HasGlobMagic(std::string_view s);

// Expands one glob(3) pattern into the matching paths in sorted order. NotFound (naming the
// pattern) when nothing matches; Io when glob itself fails (e.g. unreadable directory).
Result<std::vector<std::string>> ExpandGlob(const std::string& pattern);

// The names of the entries of directory `dir` (without "." and ".."), sorted bytewise. Names are
// taken literally (no pattern matching). NotFound / Io naming the directory on failure.
Result<std::vector<std::string>> ListDirectory(const std::string& dir);

// Creates a new, empty directory `<parent>/<prefix>XXXXXX` (mode 0700, unique name, like
// mkdtemp(3)) and returns its path. Errors name `parent`.
Result<std::string> MakeTempDirectory(const std::string& parent, std::string_view prefix);

// fsyncs directory `dir`, making renames and removals of its entries durable.
Status SyncDirectory(const std::string& dir);

// The directory part of `path`, for paths without a trailing slash: "a/b" -> "a", "/a" -> "/",
// "a" -> ".". Purely textual (no file system access).
std::string ParentDirectory(const std::string& path);

// True if `path` names an existing directory (following symlinks).
bool IsDirectory(const std::string& path);

// Creates `path` and missing parents (like mkdir -p). Io error naming the path on failure.
Status MakeDirectories(const std::string& path);

}  // namespace cohort::storage
