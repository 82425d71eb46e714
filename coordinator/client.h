// A synchronous client of the coordinator (service.h) for the job CLI and the worker agent: one
// TCP connection, the handshake done by Connect, then requests and replies matched by request id.
// Every call is bounded by a timeout. Boost.Asio stays inside client.cc.
//
// Errors: Unavailable when the coordinator cannot be reached or the connection breaks (naming
// HOST:PORT), DeadlineExceeded on a timeout, and the coordinator's own refusals (an ErrorReply)
// with the code and message it sent (e.g. InvalidArgument "handshake: authentication failed ...").
// After a transport error the client is broken: every later call fails; connect again.
//
// Thread safety: one thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"
#include "coordinator/wire.h"

namespace cohort::coordinator {

struct ClientOptions {
  std::string host = "127.0.0.1";
  int port = 7450;
  proto::Role role = proto::ROLE_USER;
  std::string token;
  std::string name;  // who is calling, for the coordinator's logs
  std::chrono::milliseconds timeout{std::chrono::seconds(10)};  // connect + handshake
  WireLimits limits;
};

// "HOST:PORT" (IPv6 in brackets) -> host and port; InvalidArgument naming `what` otherwise. Port 0
// ("any free port", for a listener) only with allow_any_port.
Status ParseHostPort(const std::string& s, const std::string& what, std::string* host, int* port,
                     bool allow_any_port = false);

// A token from a file: its first line (the file regular and at most 4 KiB), trailing spaces and
// CRs removed. InvalidArgument naming `what` and the path when the file is not that, the token is
// empty, or, with `private_only` (the coordinator's own tokens), the file is readable by others.
Result<std::string> ReadTokenFile(const std::string& path, const std::string& what, bool private_only = false);

class Client {
 public:
  static Result<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Sends `request` with a fresh request id and waits for the reply carrying it; messages that
  // arrive meanwhile without that id are kept for Receive(). An ErrorReply becomes its Status.
  Result<proto::Envelope> Call(proto::Envelope request, std::chrono::milliseconds timeout);

  // Sends without waiting for a reply; returns the request id it used.
  Result<uint64_t> Send(proto::Envelope message, std::chrono::milliseconds timeout);

  // The next message the coordinator sent on its own (or a reply nobody waited for); nullopt when
  // none arrives within `timeout` (0: only what is already here).
  Result<std::optional<proto::Envelope>> Receive(std::chrono::milliseconds timeout);

  std::string peer() const;           // "HOST:PORT"
  std::string local_address() const;  // this side's address of the connection

  class Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cohort::coordinator
