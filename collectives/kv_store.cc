#include "collectives/kv_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>

namespace cohort::collectives {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

enum Op : uint8_t { kSet = 1, kGet = 2, kWait = 3, kDelete = 4 };
enum Reply : uint8_t { kOk = 0, kNotFound = 1, kTimeout = 2, kError = 3 };

// ---- encoding -----------------------------------------------------------------------------------

void PutU32(std::string* s, uint32_t v) {
  const char b[4] = {static_cast<char>(v), static_cast<char>(v >> 8), static_cast<char>(v >> 16),
                     static_cast<char>(v >> 24)};
  s->append(b, 4);
}
void PutStr(std::string* s, const std::string& v) {
  PutU32(s, static_cast<uint32_t>(v.size()));
  s->append(v);
}
uint32_t LoadU32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return uint32_t{u[0]} | uint32_t{u[1]} << 8 | uint32_t{u[2]} << 16 | uint32_t{u[3]} << 24;
}
// Frames a payload: [u32 length][payload].
std::string Frame(const std::string& payload) {
  std::string f;
  f.reserve(payload.size() + 4);
  PutU32(&f, static_cast<uint32_t>(payload.size()));
  f.append(payload);
  return f;
}

// Bounds-checked reader over one payload; every getter returns false on truncation or a limit.
class Reader {
 public:
  Reader(const char* p, size_t n) : p_(p), n_(n) {}
  bool U8(uint8_t* v) {
    if (n_ < 1) return false;
    *v = static_cast<uint8_t>(*p_);
    Skip(1);
    return true;
  }
  bool U32(uint32_t* v) {
    if (n_ < 4) return false;
    *v = LoadU32(p_);
    Skip(4);
    return true;
  }
  bool Str(std::string* v, size_t max) {
    uint32_t len = 0;
    if (!U32(&len) || len > max || len > n_) return false;
    v->assign(p_, len);
    Skip(len);
    return true;
  }
  bool done() const { return n_ == 0; }

 private:
  void Skip(size_t k) {
    p_ += k;
    n_ -= k;
  }
  const char* p_;
  size_t n_;
};

int PollTimeoutMs(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, INT_MAX));
}

std::string JoinKeys(const std::vector<std::string>& keys) {
  std::string s;
  for (const auto& k : keys) s += (s.empty() ? "" : ", ") + k;
  return s;
}

// An fd closed on destruction.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  int get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// ---- file store ---------------------------------------------------------------------------------

Status MakeDirs(const std::string& path) {
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    const std::string prefix = path.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoError("rendezvous store: mkdir " + prefix, errno);
    }
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoError("rendezvous store: " + path, errno);
  if (!S_ISDIR(st.st_mode)) return IoError("rendezvous store: " + path + " is not a directory");
  return Status::Ok();
}

class FileKvStore final : public KvStore {
 public:
  explicit FileKvStore(std::string dir) : dir_(std::move(dir)) {}

  Status Set(const std::string& key, const std::string& value) override {
    RETURN_IF_ERROR(ValidateKvKey(key));
    if (value.size() > kKvMaxValueBytes) return InvalidArgument("rendezvous store: value of " + key + " too large");
    const std::string path = Path(key);
    const size_t slash = path.rfind('/');
    RETURN_IF_ERROR(MakeDirs(path.substr(0, slash)));
    // Readers must never see a partial value: write a private temporary file, then rename it.
    const std::string tmp = path.substr(0, slash + 1) + ".tmp." + path.substr(slash + 1) + "." +
                            std::to_string(::getpid()) + "." + std::to_string(++tmp_counter_);
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (fd.get() < 0) return ErrnoError("rendezvous store: create " + tmp, errno);
    for (size_t done = 0; done < value.size();) {
      const ssize_t w = ::write(fd.get(), value.data() + done, value.size() - done);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        return ErrnoError("rendezvous store: write " + tmp, err);
      }
      done += static_cast<size_t>(w);
    }
    fd.Reset();
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      return ErrnoError("rendezvous store: rename to " + path, err);
    }
    return Status::Ok();
  }

  Result<std::string> Get(const std::string& key) override {
    RETURN_IF_ERROR(ValidateKvKey(key));
    const std::string path = Path(key);
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
      if (errno == ENOENT) return NotFound("rendezvous store: no key " + key + " in " + dir_);
      return ErrnoError("rendezvous store: open " + path, errno);
    }
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return ErrnoError("rendezvous store: stat " + path, errno);
    if (static_cast<uint64_t>(st.st_size) > kKvMaxValueBytes) {
      return DataLoss("rendezvous store: " + path + " exceeds the value size limit");
    }
    std::string value(static_cast<size_t>(st.st_size), '\0');
    for (size_t done = 0; done < value.size();) {
      const ssize_t r = ::read(fd.get(), value.data() + done, value.size() - done);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return ErrnoError("rendezvous store: read " + path, errno);
      if (r == 0) return DataLoss("rendezvous store: " + path + " shrank while reading");
      done += static_cast<size_t>(r);
    }
    return value;
  }

  // Polls for the files with a growing pause (1 ms .. 50 ms): shared filesystems offer no
  // portable change notification, and a rendezvous waits for a few keys once per job.
  Status Wait(const std::vector<std::string>& keys, milliseconds timeout) override {
    for (const auto& k : keys) RETURN_IF_ERROR(ValidateKvKey(k));
    const auto deadline = Clock::now() + timeout;
    auto pause = milliseconds(1);
    std::vector<std::string> missing = keys;
    for (;;) {
      std::vector<std::string> still;
      for (const auto& k : missing) {
        struct stat st;
        if (::stat(Path(k).c_str(), &st) != 0) still.push_back(k);
      }
      missing.swap(still);
      if (missing.empty()) return Status::Ok();
      if (Clock::now() >= deadline) {
        return Status(Code::kDeadlineExceeded, "rendezvous store " + Describe() + ": timed out after " +
                                                   std::to_string(timeout.count()) +
                                                   " ms waiting for key(s) " + JoinKeys(missing));
      }
      std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - Clock::now()));
      pause = std::min(pause * 2, milliseconds(50));
    }
  }

  Status Delete(const std::string& key) override {
    RETURN_IF_ERROR(ValidateKvKey(key));
    if (::unlink(Path(key).c_str()) != 0 && errno != ENOENT) {
      return ErrnoError("rendezvous store: unlink " + Path(key), errno);
    }
    return Status::Ok();
  }

  std::string Describe() const override { return "file://" + dir_; }

 private:
  std::string Path(const std::string& key) const { return dir_ + "/" + key; }

  const std::string dir_;
  std::atomic<uint64_t> tmp_counter_{0};
};

// ---- TCP client ---------------------------------------------------------------------------------

// Waits until `fd` is ready for `events` or the deadline passes (false; errno = ETIMEDOUT).
bool PollFor(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    struct pollfd p = {fd, events, 0};
    const int rc = ::poll(&p, 1, PollTimeoutMs(deadline));
    if (rc > 0) return true;
    if (rc == 0) {
      errno = ETIMEDOUT;
      return false;
    }
    if (errno != EINTR) return false;
  }
}

// One attempt to connect to `ai` before the deadline; returns the connected (non-blocking)
// socket, or -1 with errno set.
int ConnectOnce(const struct addrinfo* ai, Clock::time_point deadline) {
  Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
  if (fd.get() < 0) return -1;
  if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
    if (errno != EINPROGRESS) return -1;
    if (!PollFor(fd.get(), POLLOUT, deadline)) return -1;
    int err = 0;
    socklen_t len = sizeof(err);
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) return -1;
    if (err != 0) {
      errno = err;
      return -1;
    }
  }
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd.Release();  // ownership passes to the caller
}

class TcpKvStore final : public KvStore {
 public:
  TcpKvStore(std::string host, int port, int fd, milliseconds io_timeout)
      : host_(std::move(host)), port_(port), fd_(fd), io_timeout_(io_timeout) {}

  Status Set(const std::string& key, const std::string& value) override {
    RETURN_IF_ERROR(ValidateKvKey(key));
    if (value.size() > kKvMaxValueBytes) return InvalidArgument("rendezvous store: value of " + key + " too large");
    std::string req(1, static_cast<char>(kSet));
    PutStr(&req, key);
    PutStr(&req, value);
    std::string resp;
    RETURN_IF_ERROR(Call(req, &resp, io_timeout_));
    return ExpectOk(resp, "SET " + key);
  }

  Result<std::string> Get(const std::string& key) override {
    RETURN_IF_ERROR(ValidateKvKey(key));
    std::string req(1, static_cast<char>(kGet));
    PutStr(&req, key);
    std::string resp;
    RETURN_IF_ERROR(Call(req, &resp, io_timeout_));
    Reader r(resp.data(), resp.size());
    uint8_t status = 0;
    std::string value;
    if (!r.U8(&status)) return Malformed("GET " + key);
    if (status == kNotFound) return NotFound("rendezvous store " + Describe() + ": no key " + key);
    if (status != kOk) return ExpectOk(resp, "GET " + key);
    if (!r.Str(&value, kKvMaxValueBytes) || !r.done()) return Malformed("GET " + key);
    return value;
  }

  Status Wait(const std::vector<std::string>& keys, milliseconds timeout) override {
    if (keys.size() > kKvMaxWaitKeys) return InvalidArgument("rendezvous store: too many keys to wait for");
    for (const auto& k : keys) RETURN_IF_ERROR(ValidateKvKey(k));
    const int64_t ms = std::clamp<int64_t>(timeout.count(), 0, UINT32_MAX);
    std::string req(1, static_cast<char>(kWait));
    PutU32(&req, static_cast<uint32_t>(ms));
    PutU32(&req, static_cast<uint32_t>(keys.size()));
    for (const auto& k : keys) PutStr(&req, k);
    if (req.size() > kKvMaxFrameBytes) return InvalidArgument("rendezvous store: WAIT request too large");
    std::string resp;
    // The server answers at its own deadline; the grace covers the round trip.
    RETURN_IF_ERROR(Call(req, &resp, milliseconds(ms) + io_timeout_));
    Reader r(resp.data(), resp.size());
    uint8_t status = 0;
    if (!r.U8(&status)) return Malformed("WAIT");
    if (status != kTimeout) return ExpectOk(resp, "WAIT");
    uint32_t n = 0;
    std::vector<std::string> missing;
    if (!r.U32(&n) || n > kKvMaxWaitKeys) return Malformed("WAIT");
    for (uint32_t i = 0; i < n; ++i) {
      std::string k;
      if (!r.Str(&k, kKvMaxKeyBytes)) return Malformed("WAIT");
      missing.push_back(std::move(k));
    }
    return Status(Code::kDeadlineExceeded, "rendezvous store " + Describe() + ": timed out after " +
                                               std::to_string(ms) + " ms waiting for key(s) " +
                                               JoinKeys(missing));
  }

  Status Delete(const std::string& key) override {
    RETURN_IF_ERROR(ValidateKvKey(key));
    std::string req(1, static_cast<char>(kDelete));
    PutStr(&req, key);
    std::string resp;
    RETURN_IF_ERROR(Call(req, &resp, io_timeout_));
    if (!resp.empty() && resp[0] == static_cast<char>(kNotFound)) return Status::Ok();
    return ExpectOk(resp, "DELETE " + key);
  }

  std::string Describe() const override { return "tcp://" + host_ + ":" + std::to_string(port_); }

 private:
  // Sends one request frame and reads the response payload, within `timeout` from the moment
  // this call has the connection to itself (calls are serialized: one request in flight per
  // connection). Any failure leaves the connection in an unknown state, so it is closed and later
  // calls fail fast.
  Status Call(const std::string& payload, std::string* response, milliseconds timeout) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto deadline = Clock::now() + timeout;
    if (fd_.get() < 0) return Status(Code::kUnavailable, "rendezvous store " + Describe() + ": connection lost earlier");
    Status s = SendAll(Frame(payload), deadline);
    if (s.ok()) {
      char len[4];
      s = RecvAll(len, 4, deadline);
      if (s.ok()) {
        const uint32_t n = LoadU32(len);
        if (n == 0 || n > kKvMaxFrameBytes) {
          s = Status(Code::kUnavailable, "rendezvous store " + Describe() + ": bad response frame");
        } else {
          response->resize(n);
          s = RecvAll(response->data(), n, deadline);
        }
      }
    }
    if (!s.ok()) fd_.Reset();
    return s;
  }

  Status SendAll(const std::string& data, Clock::time_point deadline) {
    for (size_t done = 0; done < data.size();) {
      const ssize_t w = ::send(fd_.get(), data.data() + done, data.size() - done, MSG_NOSIGNAL);
      if (w >= 0) {
        done += static_cast<size_t>(w);
        continue;
      }
      if (errno == EINTR) continue;
      if ((errno != EAGAIN && errno != EWOULDBLOCK) || !PollFor(fd_.get(), POLLOUT, deadline)) {
        return IoFailure("send");
      }
    }
    return Status::Ok();
  }

  Status RecvAll(char* buf, size_t n, Clock::time_point deadline) {
    for (size_t done = 0; done < n;) {
      const ssize_t r = ::recv(fd_.get(), buf + done, n - done, 0);
      if (r > 0) {
        done += static_cast<size_t>(r);
        continue;
      }
      if (r == 0) return Status(Code::kUnavailable, "rendezvous store " + Describe() + ": connection closed by the server");
      if (errno == EINTR) continue;
      if ((errno != EAGAIN && errno != EWOULDBLOCK) || !PollFor(fd_.get(), POLLIN, deadline)) {
        return IoFailure("receive");
      }
    }
    return Status::Ok();
  }

  Status IoFailure(const char* what) const {
    const int err = errno;
    const Code code = err == ETIMEDOUT ? Code::kDeadlineExceeded : Code::kUnavailable;
    return Status(code, "rendezvous store " + Describe() + ": " + what + ": " + std::strerror(err));
  }

  Status ExpectOk(const std::string& resp, const std::string& what) const {
    Reader r(resp.data(), resp.size());
    uint8_t status = 0;
    if (!r.U8(&status)) return Malformed(what);
    if (status == kOk) return Status::Ok();
    std::string msg;
    if (status == kError && r.Str(&msg, 4096)) {
      return Status(Code::kUnavailable, "rendezvous store " + Describe() + ": " + what + ": " + msg);
    }
    return Malformed(what);
  }

  Status Malformed(const std::string& what) const {
    return Status(Code::kInternal, "rendezvous store " + Describe() + ": malformed response to " + what);
  }

  const std::string host_;
  const int port_;
  std::mutex mu_;
  Fd fd_;
  const milliseconds io_timeout_;
};

}  // namespace

Status ValidateKvKey(const std::string& key) {
  if (key.empty() || key.size() > kKvMaxKeyBytes) {
    return InvalidArgument("rendezvous store: key must have 1.." + std::to_string(kKvMaxKeyBytes) + " bytes");
  }
  size_t start = 0;
  for (size_t i = 0; i <= key.size(); ++i) {
    if (i == key.size() || key[i] == '/') {
      const std::string part = key.substr(start, i - start);
      if (part.empty() || part == "." || part == "..") {
        return InvalidArgument("rendezvous store: key '" + key + "' has an empty, '.' or '..' component");
      }
      start = i + 1;
      continue;
    }
    const char c = key[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return InvalidArgument("rendezvous store: key '" + key + "' has a character outside [A-Za-z0-9._-/]");
  }
  return Status::Ok();
}

Result<std::unique_ptr<KvStore>> OpenFileKvStore(const std::string& dir) {
  if (dir.empty() || dir[0] != '/') {
    return InvalidArgument("rendezvous store: file store directory '" + dir + "' must be an absolute path");
  }
  std::string clean = dir;
  while (clean.size() > 1 && clean.back() == '/') clean.pop_back();
  RETURN_IF_ERROR(MakeDirs(clean));
  return std::unique_ptr<KvStore>(std::make_unique<FileKvStore>(clean));
}

Result<std::unique_ptr<KvStore>> ConnectTcpKvStore(const std::string& host, int port,
                                                   milliseconds timeout) {
  const std::string where = "tcp://" + host + ":" + std::to_string(port);
  if (host.empty() || port <= 0 || port > 65535) {
    return InvalidArgument("rendezvous store " + where + ": bad host or port");
  }
  const auto deadline = Clock::now() + timeout;
  auto pause = milliseconds(10);
  std::string last_error = "no attempt";
  // The server (rank 0) may start after its clients: refused connections and names that do not
  // resolve yet are retried until the deadline.
  for (;;) {
    struct addrinfo hints {};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    struct addrinfo* res = nullptr;
    const std::string service = std::to_string(port);
    const int gai = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
    if (gai != 0) {
      last_error = std::string("cannot resolve host: ") + ::gai_strerror(gai);
    } else {
      int fd = -1;
      for (const struct addrinfo* ai = res; ai != nullptr && fd < 0; ai = ai->ai_next) {
        fd = ConnectOnce(ai, std::min(deadline, Clock::now() + milliseconds(2000)));
        if (fd < 0) last_error = std::strerror(errno);
      }
      ::freeaddrinfo(res);
      if (fd >= 0) return std::unique_ptr<KvStore>(std::make_unique<TcpKvStore>(host, port, fd, timeout));
    }
    const auto now = Clock::now();
    if (now >= deadline) break;
    std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - now));
    pause = std::min(pause * 2, milliseconds(500));
  }
  return Status(Code::kUnavailable, "rendezvous store " + where + ": could not connect within " +
                                        std::to_string(timeout.count()) + " ms: " + last_error);
}

// ---- TCP server ---------------------------------------------------------------------------------

class KvStoreServer::Impl {
 public:
  Impl(Fd listen_fd, Fd wake_fd, int port)
      : listen_fd_(std::move(listen_fd)), wake_fd_(std::move(wake_fd)), port_(port) {
    thread_ = std::thread([this] { Run(); });
  }

  ~Impl() {
    const uint64_t one = 1;
    // The eventfd counter cannot overflow from a single write; the loop exits on POLLIN.
    [[maybe_unused]] ssize_t w = ::write(wake_fd_.get(), &one, sizeof(one));
    thread_.join();
  }

  int port() const { return port_; }

 private:
  struct Conn {
    Fd fd;
    std::string in;
    std::string out;
    size_t out_done = 0;
    bool waiting = false;
    std::vector<std::string> wait_keys;
    Clock::time_point wait_deadline;
    bool dead = false;
  };

  void Run() {
    std::vector<struct pollfd> fds;
    for (;;) {
      fds.clear();
      fds.push_back({wake_fd_.get(), POLLIN, 0});
      fds.push_back({listen_fd_.get(), static_cast<short>(conns_.size() < kKvMaxConnections ? POLLIN : 0), 0});
      int timeout_ms = -1;
      for (const auto& c : conns_) {
        short ev = POLLIN;
        if (c->out_done < c->out.size()) ev |= POLLOUT;
        fds.push_back({c->fd.get(), ev, 0});
        if (c->waiting) {
          const int t = PollTimeoutMs(c->wait_deadline);
          timeout_ms = timeout_ms < 0 ? t : std::min(timeout_ms, t);
        }
      }
      const int rc = ::poll(fds.data(), fds.size(), timeout_ms);
      if (rc < 0 && errno != EINTR) return;  // cannot happen with valid fds; clients time out
      if (rc > 0 && (fds[0].revents & POLLIN)) return;
      if (rc > 0 && (fds[1].revents & POLLIN)) Accept();
      for (size_t i = 2; rc > 0 && i < fds.size(); ++i) {
        Conn& c = *conns_[i - 2];
        if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) ReadFrom(c);
        if (!c.dead && (fds[i].revents & POLLOUT)) Flush(c);
      }
      ServeWaiters();
      conns_.erase(std::remove_if(conns_.begin(), conns_.end(), [](const auto& c) { return c->dead; }),
                   conns_.end());
    }
  }

  void Accept() {
    for (;;) {
      const int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;  // EAGAIN, or a connection that failed before accept: nothing to do
      auto c = std::make_unique<Conn>();
      c->fd = Fd(fd);
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      conns_.push_back(std::move(c));
      if (conns_.size() >= kKvMaxConnections) return;
    }
  }

  void ReadFrom(Conn& c) {
    char buf[65536];
    for (;;) {
      const ssize_t r = ::recv(c.fd.get(), buf, sizeof(buf), 0);
      if (r > 0) {
        c.in.append(buf, static_cast<size_t>(r));
        // A client sends one request and waits for its answer; more than one frame's worth of
        // unread bytes means a broken or hostile client.
        if (c.in.size() > kKvMaxFrameBytes + 4) {
          c.dead = true;
          return;
        }
        continue;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      c.dead = true;  // EOF or error
      return;
    }
    while (!c.dead && !c.waiting && c.in.size() >= 4) {
      const uint32_t n = LoadU32(c.in.data());
      if (n == 0 || n > kKvMaxFrameBytes) {
        c.dead = true;
        return;
      }
      if (c.in.size() < 4 + size_t{n}) return;
      const std::string payload = c.in.substr(4, n);
      c.in.erase(0, 4 + size_t{n});
      Handle(c, payload);
    }
  }

  void Handle(Conn& c, const std::string& payload) {
    Reader r(payload.data(), payload.size());
    uint8_t op = 0;
    std::string key, value;
    if (!r.U8(&op)) {
      c.dead = true;
      return;
    }
    switch (op) {
      case kSet: {
        if (!r.Str(&key, kKvMaxKeyBytes) || !r.Str(&value, kKvMaxValueBytes) || !r.done() ||
            !ValidateKvKey(key).ok()) {
          c.dead = true;
          return;
        }
        auto it = data_.find(key);
        const size_t old = it == data_.end() ? 0 : key.size() + it->second.size();
        if (stored_bytes_ - old + key.size() + value.size() > kKvMaxStoredBytes) {
          std::string resp(1, static_cast<char>(kError));
          PutStr(&resp, "store full (" + std::to_string(kKvMaxStoredBytes) + " bytes)");
          Send(c, resp);
          return;
        }
        stored_bytes_ = stored_bytes_ - old + key.size() + value.size();
        data_[key] = std::move(value);
        Send(c, std::string(1, static_cast<char>(kOk)));
        return;
      }
      case kGet: {
        if (!r.Str(&key, kKvMaxKeyBytes) || !r.done()) {
          c.dead = true;
          return;
        }
        auto it = data_.find(key);
        if (it == data_.end()) {
          Send(c, std::string(1, static_cast<char>(kNotFound)));
          return;
        }
        std::string resp(1, static_cast<char>(kOk));
        PutStr(&resp, it->second);
        Send(c, resp);
        return;
      }
      case kWait: {
        uint32_t ms = 0, n = 0;
        if (!r.U32(&ms) || !r.U32(&n) || n > kKvMaxWaitKeys) {
          c.dead = true;
          return;
        }
        std::vector<std::string> keys(n);
        for (auto& k : keys) {
          if (!r.Str(&k, kKvMaxKeyBytes)) {
            c.dead = true;
            return;
          }
        }
        if (!r.done()) {
          c.dead = true;
          return;
        }
        c.waiting = true;
        c.wait_keys = std::move(keys);
        c.wait_deadline = Clock::now() + milliseconds(ms);
        return;  // answered by ServeWaiters, now or when the keys arrive or the deadline passes
      }
      case kDelete: {
        if (!r.Str(&key, kKvMaxKeyBytes) || !r.done()) {
          c.dead = true;
          return;
        }
        auto it = data_.find(key);
        if (it == data_.end()) {
          Send(c, std::string(1, static_cast<char>(kNotFound)));
          return;
        }
        stored_bytes_ -= key.size() + it->second.size();
        data_.erase(it);
        Send(c, std::string(1, static_cast<char>(kOk)));
        return;
      }
      default:
        c.dead = true;
    }
  }

  void ServeWaiters() {
    const auto now = Clock::now();
    for (auto& cp : conns_) {
      Conn& c = *cp;
      if (c.dead || !c.waiting) continue;
      std::vector<std::string> missing;
      for (const auto& k : c.wait_keys) {
        if (data_.find(k) == data_.end()) missing.push_back(k);
      }
      if (!missing.empty() && now < c.wait_deadline) continue;
      c.waiting = false;
      c.wait_keys.clear();
      if (missing.empty()) {
        Send(c, std::string(1, static_cast<char>(kOk)));
      } else {
        std::string resp(1, static_cast<char>(kTimeout));
        PutU32(&resp, static_cast<uint32_t>(missing.size()));
        for (const auto& k : missing) PutStr(&resp, k);
        Send(c, resp);
      }
      // Requests that arrived while this one waited are served in order.
      if (!c.dead && c.in.size() >= 4) ReadFrom(c);
    }
  }

  void Send(Conn& c, const std::string& payload) {
    c.out.append(Frame(payload));
    Flush(c);
  }

  void Flush(Conn& c) {
    while (c.out_done < c.out.size()) {
      const ssize_t w = ::send(c.fd.get(), c.out.data() + c.out_done, c.out.size() - c.out_done, MSG_NOSIGNAL);
      if (w >= 0) {
        c.out_done += static_cast<size_t>(w);
        continue;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) c.dead = true;
      return;
    }
    c.out.clear();
    c.out_done = 0;
  }

  Fd listen_fd_;
  Fd wake_fd_;
  const int port_;
  std::vector<std::unique_ptr<Conn>> conns_;  // only touched by the server thread
  std::unordered_map<std::string, std::string> data_;
  size_t stored_bytes_ = 0;
  std::thread thread_;
};

Result<std::unique_ptr<KvStoreServer>> KvStoreServer::Start(int port) {
  if (port < 0 || port > 65535) return InvalidArgument("rendezvous store: bad port " + std::to_string(port));
  auto fail = [&](const std::string& what, int err) {
    return Status(Code::kUnavailable, "rendezvous store: cannot listen on port " + std::to_string(port) +
                                          ": " + what + ": " + std::strerror(err));
  };
  // Every local address, IPv6 dual-stack when the host has IPv6, so clients reach the store by
  // whatever name or address of this host they were given.
  Fd fd(::socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  bool v6 = fd.get() >= 0;
  if (v6) {
    int zero = 0;
    ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  }
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (fd.get() < 0) {
      fd = Fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      v6 = false;
      if (fd.get() < 0) return fail("socket", errno);
    }
    // SO_REUSEADDR only lets a new job bind while the last one's connections sit in TIME_WAIT;
    // a live listener on the port still makes bind fail with EADDRINUSE.
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    int rc;
    if (v6) {
      struct sockaddr_in6 a {};
      a.sin6_family = AF_INET6;
      a.sin6_addr = in6addr_any;
      a.sin6_port = htons(static_cast<uint16_t>(port));
      rc = ::bind(fd.get(), reinterpret_cast<struct sockaddr*>(&a), sizeof(a));
    } else {
      struct sockaddr_in a {};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_ANY);
      a.sin_port = htons(static_cast<uint16_t>(port));
      rc = ::bind(fd.get(), reinterpret_cast<struct sockaddr*>(&a), sizeof(a));
    }
    if (rc == 0) break;
    const int err = errno;
    if (!v6 || err == EADDRINUSE || err == EACCES) return fail("bind", err);
    fd.Reset();  // IPv6 present but unusable (e.g. disabled): fall back to IPv4
  }
  if (::listen(fd.get(), 1024) != 0) return fail("listen", errno);
  struct sockaddr_storage ss {};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd.get(), reinterpret_cast<struct sockaddr*>(&ss), &len) != 0) return fail("getsockname", errno);
  const int bound = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<struct sockaddr_in6*>(&ss)->sin6_port
                                                   : reinterpret_cast<struct sockaddr_in*>(&ss)->sin_port);
  Fd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (wake.get() < 0) return fail("eventfd", errno);
  return std::unique_ptr<KvStoreServer>(
      new KvStoreServer(std::make_unique<Impl>(std::move(fd), std::move(wake), bound)));
}

KvStoreServer::KvStoreServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KvStoreServer::~KvStoreServer() = default;
int KvStoreServer::port() const { return impl_->port(); }

}  // namespace cohort::collectives
