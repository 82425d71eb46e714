// Key-value stores for the rendezvous of collective backends (Gloo): every rank publishes its
// transport address under a key and waits for the keys of its peers. Two implementations:
//
//  - a directory on a filesystem that every rank shares (OpenFileKvStore): one file per key,
//    written to a temporary name and renamed, so a reader sees a whole value or nothing;
//  - a TCP store (KvStoreServer + ConnectTcpKvStore), torchrun/MASTER_ADDR style: rank 0 serves
//    it on a known port and every rank, rank 0 included, connects to it as a client.
//
// Why our own TCP store: Debian's Gloo (0.0~git20220518) ships only a file, a hash (in-process)
// and a Redis store. It is written on plain POSIX sockets and poll(2), not Boost.Asio: a handful
// of connections, one server thread and synchronous clients need no more, and it keeps the
// collectives library free of another dependency. Every blocking step (connect, send, receive,
// wait) is bounded by a deadline computed with poll(2) timeouts.
//
// Wire protocol (little endian): every message is a frame [u32 payload length][payload].
// Request payload: [u8 op] then fields; strings are [u32 length][bytes].
//   SET key value           -> OK
//   GET key                 -> OK value | NOT_FOUND
//   WAIT timeout_ms n keys  -> OK when every key exists | TIMEOUT n missing-keys (at the deadline)
//   DELETE key              -> OK | NOT_FOUND
// Response payload: [u8 status] then fields (ERROR carries a message). A frame that breaks a
// limit (key, value, key count, frame size) or does not parse ends its connection. There is no
// authentication: the store carries only transport addresses and must run on the job's private
// network (like torchrun's store).
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace cohort::collectives {

// Hard limits, enforced by clients (InvalidArgument) and by the server (connection closed).
inline constexpr size_t kKvMaxKeyBytes = 1024;
inline constexpr size_t kKvMaxValueBytes = size_t{16} << 20;
inline constexpr size_t kKvMaxWaitKeys = 65536;
inline constexpr size_t kKvMaxFrameBytes = kKvMaxValueBytes + 2 * kKvMaxKeyBytes + 64;
// Server-wide limits: beyond them SET is refused with an error (the store is not a database).
inline constexpr size_t kKvMaxStoredBytes = size_t{256} << 20;
inline constexpr size_t kKvMaxConnections = 4096;

// A rendezvous store. Keys are non-empty, at most kKvMaxKeyBytes, and limited to
// [A-Za-z0-9._-/] without empty or ".." path components (so they are safe file names); values
// are arbitrary bytes, at most kKvMaxValueBytes. Thread-safe; a TCP store's calls are serialized
// over its one connection (a Wait holds it until it returns), so a rank that waits and writes
// concurrently needs two clients.
class KvStore {
 public:
  virtual ~KvStore() = default;

  // Stores `value` under `key`, replacing an existing value.
  virtual Status Set(const std::string& key, const std::string& value) = 0;

  // The value of `key`; NotFound when it does not exist.
  virtual Result<std::string> Get(const std::string& key) = 0;

  // Returns when every key exists. DeadlineExceeded after `timeout`, its message listing the
  // missing keys; Unavailable when the store cannot be reached.
  virtual Status Wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) = 0;

  // Removes `key` (OK if it did not exist).
  virtual Status Delete(const std::string& key) = 0;

  // "file:///dir" or "tcp://host:port", for messages.
  virtual std::string Describe() const = 0;
};

// InvalidArgument unless `key` satisfies the rules above.
Status ValidateKvKey(const std::string& key);

// A store in directory `dir` (absolute; created with its parents if missing). Keys with '/'
// become subdirectories. InvalidArgument for a relative path, Io when it cannot be created.
Result<std::unique_ptr<KvStore>> OpenFileKvStore(const std::string& dir);

// Connects to the TCP store at host:port, retrying while it is not (yet) accepting connections,
// until `timeout` passes: then Unavailable naming the address and the last error. Set, Get and
// Delete are each bounded by `timeout` too; Wait by its own timeout plus `timeout`.
Result<std::unique_ptr<KvStore>> ConnectTcpKvStore(const std::string& host, int port,
                                                   std::chrono::milliseconds timeout);

// The TCP store's server: one thread serving every client over poll(2). Destroying it closes the
// listening socket and every connection (clients then get Unavailable).
class KvStoreServer {
 public:
  // Listens on `port` of every local address (IPv6 dual-stack when available, else IPv4); port 0
  // picks a free one (see port()). Unavailable naming the port when it cannot bind (in use).
  static Result<std::unique_ptr<KvStoreServer>> Start(int port);

  ~KvStoreServer();
  KvStoreServer(const KvStoreServer&) = delete;
  KvStoreServer& operator=(const KvStoreServer&) = delete;

  int port() const;

  class Impl;

 private:
  explicit KvStoreServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cohort::collectives
