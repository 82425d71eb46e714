// Storage: where datasets and checkpoints live, addressed by URIs. The interface is shaped for
// object stores as much as for file systems: whole objects are created and published atomically,
// reads are ranged, and listing matches names against a pattern, so no directory semantics are
// needed by callers (a POSIX backend maps "objects" to files, a RADOS backend to objects).
//
// URIs:
//   file:///abs/path, /abs/path, rel/path   the local POSIX file system (NVMe); the default
//   rados://pool/prefix...                   Ceph RADOS (a later backend; refused until built)
//
// Errors are Status values whose message names the URI (and the byte offset for reads):
// NotFound for a missing object, InvalidArgument for something that is not a regular file or a
// malformed URI, DataLoss for a short read (an object shorter than its caller expects, e.g. a
// truncated file), Io for every other operating-system failure (with strerror).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cohort::storage {

struct ObjectInfo {
  std::string uri;    // as the caller would pass it back to this Storage
  uint64_t size = 0;  // bytes
};

// An object opened for reading; its size is fixed at open time. ReadAt is thread-safe (several
// prefetch threads read one shard concurrently) and returns exactly `n` bytes or an error.
class ReadableObject {
 public:
  virtual ~ReadableObject() = default;
  virtual const std::string& uri() const = 0;
  virtual uint64_t size() const = 0;
  // Reads bytes [offset, offset + n) into dst. OutOfRange when the range ends past size() (naming
  // the URI, offset and size); DataLoss when the object turned out shorter than size() (truncated
  // while open) or was modified since it was opened; Io otherwise. Retries EINTR and short reads.
  // (POSIX maps files and checks the file by path once a second, and before every read that
  // reaches into its last page: a truncation can leave a read within the file's new last page
  // reading zeros until that check, and a rewrite in place (same inode) is seen by its modification
  // time, also then: DataLoss, unless the owner's revalidation (SetRevalidation) finds the
  // contents unchanged, as after merely touching the file.)
  virtual Status ReadAt(uint64_t offset, void* dst, size_t n) const = 0;

  // Calls visit(data, n, ctx) with bytes [offset, offset + n) of the object, valid only during the
  // call: without a copy where the backend can (POSIX: a pointer into the file's mapping), else
  // from a per-thread buffer that ReadAt fills. Same errors as ReadAt. For a mapping, `visit` runs
  // under the read guard: a page that cannot be read (truncated file, I/O error) abandons `visit`
  // midway, without unwinding, and ReadVisit returns the error. So `visit` must only read `data`
  // and write memory the caller owns: no allocation, no locks, nothing that must be undone.
  using Visitor = void (*)(const unsigned char* data, size_t n, void* ctx);
  virtual Status ReadVisit(uint64_t offset, size_t n, Visitor visit, void* ctx) const;

  // A hint that bytes [offset, offset + n) are read soon (POSIX mapping: the CPU starts loading
  // them into its caches). Never blocks, never faults, may do nothing.
  virtual void Prefetch(uint64_t offset, size_t n) const {}

  // Where a backend notices that the object was modified while open (POSIX: a new modification
  // time on the same file), it calls `revalidate` instead of failing the read: Ok means the
  // contents are still what the owner opened (the file was only touched, e.g. by a scratch-purge
  // script) and reading goes on; an error is what the read returns. Called by one reader at a time
  // (the others wait), and reads it makes itself are not checked again. Set before any read.
  virtual void SetRevalidation(std::function<Status()> revalidate) {}
};

// An object being written. Nothing is visible under its URI until Commit() succeeds; then the
// complete object is, durably (POSIX: temporary file, fsync, rename, fsync of the directory), and
// replaces any previous object of that name. Destroying an uncommitted writer discards what was
// written. Not thread-safe.
class WritableObject {
 public:
  virtual ~WritableObject() = default;
  virtual const std::string& uri() const = 0;
  // Appends n bytes (retries short writes and EINTR).
  virtual Status Append(const void* data, size_t n) = 0;
  // Makes the object durable and visible under its URI. The writer is unusable afterwards.
  virtual Status Commit() = 0;
};

// Thread-safe: every method may be called concurrently.
class Storage {
 public:
  virtual ~Storage() = default;
  // "file" or "rados".
  virtual std::string_view scheme() const = 0;

  virtual Result<std::unique_ptr<ReadableObject>> OpenForRead(const std::string& uri) = 0;
  virtual Result<ObjectInfo> Stat(const std::string& uri) = 0;

  // The objects matching `pattern`, sorted bytewise by URI. A pattern without glob
  // metacharacters (* ? [) names one object (NotFound when it does not exist); with them, a
  // glob(3) pattern over names (POSIX: '*' does not cross '/' and, as in glob(3), does not match
  // a leading '.', so writers' hidden temporary files are never listed; directories are skipped).
  // Each ObjectInfo::uri keeps the pattern's spelling (a file:// pattern gives file:// URIs).
  // NotFound, naming the pattern, when nothing matches: a job's data pattern matching nothing is
  // a configuration error, not an empty dataset.
  virtual Result<std::vector<ObjectInfo>> List(const std::string& pattern) = 0;

  // Starts writing the object `uri` (see WritableObject). POSIX: the parent directory must exist
  // (NotFound naming it otherwise); use MakeParents for a fresh checkpoint directory.
  virtual Result<std::unique_ptr<WritableObject>> Create(const std::string& uri) = 0;
  // Creates whatever a Create(uri) needs to succeed (POSIX: the parent directories, like mkdir -p;
  // object stores: nothing).
  virtual Status MakeParents(const std::string& uri) = 0;

  // Atomically renames `from` to `to`, replacing `to`, and makes the rename durable.
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  // Removes one object. NotFound when it does not exist (callers that tolerate that check the
  // code); removing a directory is InvalidArgument. The removal itself is not made durable
  // (POSIX: Sync the parent directory where that matters).
  virtual Status Remove(const std::string& uri) = 0;
  // Makes an existing object (POSIX: a file or a directory and its entries) durable.
  virtual Status Sync(const std::string& uri) = 0;
};

// The storage backend for `uri`'s scheme (schemes are case-insensitive): a process-wide POSIX
// backend for file:// and bare paths; InvalidArgument naming the URI for an unknown scheme, a
// file:// URI that LocalPath refuses, or rados:// in a build without Ceph (the message says how to
// build it). The returned pointer stays valid for the process lifetime. Thread-safe.
Result<Storage*> StorageFor(std::string_view uri);

// True for "scheme://..." URIs other than file://, i.e. anything that is not a local path.
bool IsRemoteUri(std::string_view uri);

// The local path of a file:// URI or bare path ("file:///a/b" -> "/a/b", "a/b" -> "a/b").
// InvalidArgument for other schemes, an empty string, or a file:// URI with a host part (which is
// also how "file://rel/path" parses). The path is taken literally (no percent-decoding).
Result<std::string> LocalPath(std::string_view uri);

}  // namespace cohort::storage
