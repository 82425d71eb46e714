#include "coordinator/client.h"

#include <sys/stat.h>

#include <array>
#include <cerrno>
#include <deque>
#include <fstream>

#include <boost/asio.hpp>

namespace cohort::coordinator {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

Status ParseHostPort(const std::string& s, const std::string& what, std::string* host, int* port,
                     bool allow_any_port) {
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size()) {
    return InvalidArgument(what + ": expected HOST:PORT, got '" + s + "'");
  }
  std::string h = s.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  const std::string p = s.substr(colon + 1);
  const int lo = allow_any_port ? 0 : 1;
  if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos || std::stoi(p) < lo ||
      std::stoi(p) > 65535) {
    return InvalidArgument(what + ": port '" + p + "' is not in " + std::to_string(lo) + "..65535");
  }
  *host = h;
  *port = std::stoi(p);
  return Status::Ok();
}

Result<std::string> ReadTokenFile(const std::string& path, const std::string& what, bool private_only) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoError(what + ": " + path, errno);
  if (!S_ISREG(st.st_mode) || st.st_size > 4096) return InvalidArgument(what + ": " + path + " is not a small regular file");
  if (private_only && (st.st_mode & 077) != 0) {
    return InvalidArgument(what + ": " + path + " is readable by other users (chmod 600 it)");
  }
  std::ifstream in(path);
  std::string token;
  std::getline(in, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.empty()) return InvalidArgument(what + ": " + path + " is empty");
  return token;
}

class Client::Impl {
 public:
  explicit Impl(const ClientOptions& o) : o_(o), sock_(io_), decoder_(o.limits) {
    peer_ = o.host + ":" + std::to_string(o.port);
  }

  Status Connect() {
    const auto deadline = Clock::now() + o_.timeout;
    // Name resolution and the connect share the deadline.
    tcp::resolver resolver(io_);
    error_code ec;
    tcp::resolver::results_type endpoints;
    bool resolved = false;
    resolver.async_resolve(o_.host, std::to_string(o_.port), [&](const error_code& e, tcp::resolver::results_type r) {
      ec = e;
      endpoints = std::move(r);
      resolved = true;
    });
    io_.restart();
    while (!resolved && Clock::now() < deadline) io_.run_one_until(deadline);
    if (!resolved) {
      resolver.cancel();
      io_.restart();
      while (!resolved) io_.run_one();
      return Break(Status(Code::kDeadlineExceeded, "timed out resolving " + peer_));
    }
    if (ec) return Break(Unavailable("cannot resolve " + peer_ + ": " + ec.message()));
    bool done = false;
    asio::async_connect(sock_, endpoints, [&](const error_code& e, const tcp::endpoint&) {
      ec = e;
      done = true;
    });
    // Closed on the deadline, not just cancelled: a cancelled ranged connect would go on to the
    // next address and wait out its own SYN timeout.
    if (Status st = RunUntil(deadline, &done, "connecting to", /*close=*/true); !st.ok()) return Break(st);
    if (ec) return Break(Unavailable("cannot connect to the coordinator at " + peer_ + ": " + ec.message()));
    sock_.set_option(tcp::no_delay(true), ec);
    proto::Envelope hello;
    hello.mutable_hello()->set_protocol_version(kProtocolVersion);
    hello.mutable_hello()->set_role(o_.role);
    hello.mutable_hello()->set_token(o_.token);
    hello.mutable_hello()->set_client(o_.name);
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    ASSIGN_OR_RETURN(proto::Envelope reply, Call(std::move(hello), std::max(left, std::chrono::milliseconds(1))));
    if (reply.body_case() != proto::Envelope::kWelcome) {
      return Unavailable(peer_ + " answered the handshake with a " + std::string(BodyName(reply)));
    }
    return Status::Ok();
  }

  Result<proto::Envelope> Call(proto::Envelope request, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    ASSIGN_OR_RETURN(uint64_t id, Send(std::move(request), timeout));
    for (;;) {
      for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
        if (it->request_id() != id) continue;
        proto::Envelope reply = std::move(*it);
        inbox_.erase(it);
        if (reply.body_case() == proto::Envelope::kError) {
          const uint32_t code = reply.error().code();
          const Code c = code > 0 && code <= static_cast<uint32_t>(Code::kInternal) ? static_cast<Code>(code)
                                                                                    : Code::kInternal;
          return Status(c, reply.error().message());
        }
        return reply;
      }
      RETURN_IF_ERROR(ReadMore(deadline));
    }
  }

  Result<uint64_t> Send(proto::Envelope message, std::chrono::milliseconds timeout) {
    RETURN_IF_ERROR(broken_);
    const uint64_t id = next_id_++;
    message.set_request_id(id);
    std::string frame;
    RETURN_IF_ERROR(AppendFrame(message, o_.limits, &frame));
    bool done = false;
    error_code ec;
    asio::async_write(sock_, asio::buffer(frame), [&](const error_code& e, size_t) {
      ec = e;
      done = true;
    });
    // A send cut short leaves part of a frame on the wire: the stream is unusable after it.
    if (Status st = RunUntil(Clock::now() + timeout, &done, "sending to", /*close=*/true); !st.ok()) return Break(st);
    if (ec) return Break(Unavailable("lost the connection to the coordinator at " + peer_ + ": " + ec.message()));
    return id;
  }

  Result<std::optional<proto::Envelope>> Receive(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      if (!inbox_.empty()) {
        proto::Envelope e = std::move(inbox_.front());
        inbox_.pop_front();
        return std::optional<proto::Envelope>(std::move(e));
      }
      Status st = ReadMore(deadline);
      if (st.code() == Code::kDeadlineExceeded && broken_.ok()) return std::optional<proto::Envelope>();
      RETURN_IF_ERROR(st);
    }
  }

  const std::string& peer() const { return peer_; }
  std::string local_address() const {
    error_code ec;
    const auto ep = sock_.local_endpoint(ec);
    return ec ? std::string() : ep.address().to_string();
  }

 private:
  static Status Unavailable(std::string m) { return Status(Code::kUnavailable, std::move(m)); }

  Status Break(Status st) {
    if (broken_.ok()) broken_ = st;
    error_code ec;
    sock_.close(ec);
    return st;
  }

  // Runs the loop until *done or the deadline; on the deadline cancels the operation (and waits
  // for its handler, which still refers to the caller's locals).
  // On the deadline the operation is cancelled and its handler awaited (it refers to the caller's
  // locals); the caller looks at the operation's error to see whether it completed anyway.
  // `close`: the socket is closed rather than the operation cancelled (connect, send: the
  // connection is unusable afterwards anyway).
  Status RunUntil(Clock::time_point deadline, bool* done, const char* what, bool close = false) {
    io_.restart();
    while (!*done && Clock::now() < deadline) io_.run_one_until(deadline);
    if (*done) return Status::Ok();
    error_code ec;
    if (close) {
      sock_.close(ec);
    } else {
      sock_.cancel(ec);
    }
    io_.restart();
    while (!*done) io_.run_one();
    return Status(Code::kDeadlineExceeded, std::string("timed out ") + what + " the coordinator at " + peer_);
  }

  // Reads at least one more frame into the inbox, or fails (DeadlineExceeded at the deadline).
  Status ReadMore(Clock::time_point deadline) {
    RETURN_IF_ERROR(broken_);
    const size_t before = inbox_.size();
    while (inbox_.size() == before) {
      proto::Envelope e;
      Result<bool> r = decoder_.Next(&e);
      if (!r.ok()) return Break(r.status().WithContext("from " + peer_));
      if (*r) {
        inbox_.push_back(std::move(e));
        break;
      }
      if (Clock::now() >= deadline) {
        return Status(Code::kDeadlineExceeded, "no reply from the coordinator at " + peer_ + " in time");
      }
      bool done = false;
      error_code ec;
      size_t n = 0;
      sock_.async_read_some(asio::buffer(buf_), [&](const error_code& x, size_t m) {
        ec = x;
        n = m;
        done = true;
      });
      Status st = RunUntil(deadline, &done, "waiting for");
      if (!st.ok() && (ec == asio::error::operation_aborted || ec)) {
        return Status(Code::kDeadlineExceeded, st.message());
      }
      // (A read that completed just as the deadline passed is kept: its bytes are fed below.)
      if (ec) {
        return Break(Unavailable("the coordinator at " + peer_ + " closed the connection" +
                                 (ec == asio::error::eof ? std::string() : ": " + ec.message())));
      }
      if (Status f = decoder_.Feed(buf_.data(), n); !f.ok()) return Break(f.WithContext("from " + peer_));
    }
    return Status::Ok();
  }

  ClientOptions o_;
  std::string peer_;
  asio::io_context io_;
  tcp::socket sock_;
  FrameDecoder decoder_;
  std::array<char, 65536> buf_;
  std::deque<proto::Envelope> inbox_;
  uint64_t next_id_ = 1;
  Status broken_;
};

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

Result<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  RETURN_IF_ERROR(impl->Connect());
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Result<proto::Envelope> Client::Call(proto::Envelope request, std::chrono::milliseconds timeout) {
  return impl_->Call(std::move(request), timeout);
}
Result<uint64_t> Client::Send(proto::Envelope message, std::chrono::milliseconds timeout) {
  return impl_->Send(std::move(message), timeout);
}
Result<std::optional<proto::Envelope>> Client::Receive(std::chrono::milliseconds timeout) {
  return impl_->Receive(timeout);
}
std::string Client::peer() const { return impl_->peer(); }
std::string Client::local_address() const { return impl_->local_address(); }

}  // namespace cohort::coordinator
