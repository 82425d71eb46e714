#include "coordinator/service.h"


#include <algorithm>
#include <cerrno>
#include <array>
#include <chrono>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "common/config.h"
#include "common/logging.h"
#include "coordinator/client.h"

namespace cohort::coordinator {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

class RealClock : public Clock {
 public:
  int64_t NowMs() override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  int64_t SteadyMs() override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
};

bool SafeWorkerName(const std::string& s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  }
  return true;
}

proto::JobState ToProto(JobState s) {
  switch (s) {
    case JobState::kQueued: return proto::JOB_QUEUED;
    case JobState::kRunning: return proto::JOB_RUNNING;
    case JobState::kSucceeded: return proto::JOB_SUCCEEDED;
    case JobState::kFailed: return proto::JOB_FAILED;
    case JobState::kCancelled: return proto::JOB_CANCELLED;
  }
  return proto::JOB_STATE_UNSPECIFIED;
}

void FillSummary(const JobRecord& j, proto::JobSummary* out) {
  out->set_job_id(j.id);
  out->set_name(j.spec.name);
  out->set_state(ToProto(j.state));
  out->set_ranks(j.spec.ranks);
  out->set_priority(j.spec.priority);
  out->set_restarts(static_cast<uint32_t>(j.restarts));
  out->set_submitted_unix_ms(j.submitted_ms);
  out->set_updated_unix_ms(j.updated_ms);
  out->set_message(j.message);
}

std::string Describe(const std::vector<Placement>& p) {
  std::string out;
  for (const Placement& x : p) {
    if (!out.empty()) out += ", ";
    out += x.worker;
    out += ':';
    out += std::to_string(x.first_rank);
    if (x.count > 1) {
      out += '-';
      out += std::to_string(x.first_rank + x.count - 1);
    }
  }
  return out;
}

}  // namespace

Clock* SystemClock() {
  static RealClock clock;  // stateless
  return &clock;
}

class Session;

class Service::Impl {
 public:
  Impl(const ServiceOptions& o, RendezvousHost* rdv, Clock* clock)
      : o_(o), rdv_(rdv), clock_(clock), acceptor_(io_), http_acceptor_(io_), signals_(io_), tick_(io_) {}

  Status Init();
  Status Run();
  void Stop() {
    asio::post(io_, [this] { Shutdown(); });
  }
  int port() const { return port_; }
  int http_port() const { return http_port_; }

  // The HTTP endpoint's answer to one request (on the loop thread).
  http::response<http::string_body> HandleHttp(const http::request<http::string_body>& req);

  // Called by sessions (on the loop thread).
  void OnFrame(const std::shared_ptr<Session>& s, const proto::Envelope& e);
  void OnClosed(Session* s);
  const ServiceOptions& options() const { return o_; }
  asio::io_context& io() { return io_; }
  std::vector<char>& read_buffer() { return read_buffer_; }

 private:
  struct Worker {
    std::string name;
    int slots = 0;
    int gpus = 0;
    std::string address;  // where its ranks are reachable (what it registered, else its peer address)
    std::weak_ptr<Session> session;
    bool connected = false;
    bool up = false;
    int64_t last_seen_unix_ms = 0;  // for display
    int64_t last_seen = 0;          // steady clock
    int64_t disconnected = 0;       // steady clock
    int64_t forgiven = 0;           // stall time added to its deadlines since its last heartbeat
    int64_t stop_grace_ms = 30000;  // how long its ranks may take to stop
  };
  struct Attempt {
    uint64_t job_id = 0;
    uint64_t epoch = 0;
    std::vector<Placement> placements;
    int ranks = 0;
    std::set<int> succeeded;
    int64_t started_ms = 0;
    int64_t time_limit_ms = 0;
    bool reattaching = false;     // open when the coordinator (re)started
    int64_t reattach_deadline = 0;  // steady clock
    std::set<int> attached;       // ranks their workers reported running since the restart
    int64_t launched = 0;         // steady clock: when LaunchRanks went out (0: before a restart)
    std::map<int, int> missing;   // rank -> heartbeats in a row from its worker not listing it
    std::map<int, int64_t> missed_at;  // rank -> when the last counted miss was seen (steady)
    std::set<int> exited;         // ranks known to have exited, whatever their status
    bool rendezvous = false;
    std::string name;             // the job's
    int restarts = 0;             // of the job, before this attempt
    bool has_progress = false;
    proto::JobProgress progress;  // the latest step rank 0 reported
  };
  struct Queued {
    QueuedJob job;
    int64_t not_before_ms = 0;
  };
  // Slots of an ended attempt whose ranks may still be stopping, per worker.
  struct Draining {
    std::map<std::string, int> slots;
    int64_t until = 0;  // steady clock
  };

  Result<int> Listen(tcp::acceptor& acceptor, const std::string& host, int port, const char* what);
  void Accept();
  void AcceptHttp();
  std::string Metrics();
  void Tick();
  void Shutdown();
  void Fatal(const Status& st);

  void HandleUser(const std::shared_ptr<Session>& s, const proto::Envelope& e);
  void HandleWorker(const std::shared_ptr<Session>& s, const proto::Envelope& e);
  void Register(const std::shared_ptr<Session>& s, const proto::Envelope& e);
  void NoteRunning(Worker& w, const google::protobuf::RepeatedPtrField<proto::RunningRank>& running);
  void RankExited(Worker& w, const proto::Envelope& e);
  void LogChunk(Worker& w, const proto::LogChunk& c);

  void Schedule();
  void StartJob(const Start& start);
  // Ends an open attempt as failed (or cancelled): records it, stops its ranks everywhere, and
  // releases its rendezvous store. `final` fails the job even with restarts left.
  void FailAttempt(uint64_t epoch, int rank, int status, const std::string& tail, const std::string& why,
                   bool final = false, int64_t hold_ms = 0);
  void StopRanks(const Attempt& a);
  void Forget(uint64_t epoch);
  void WorkerDown(Worker& w, const std::string& why);
  void CheckReattached(Attempt& a);
  // The open attempt `epoch` of `job` if it placed `rank` on `worker`; nullptr otherwise (stale).
  Attempt* PlacedOn(uint64_t job, uint64_t epoch, int rank, const std::string& worker);
  std::map<std::string, int> UsedSlots() const;
  void Requeued(const JobRecord& j);
  bool SendTo(const std::string& worker, const proto::Envelope& e);
  void AppendLog(uint64_t job, int rank, const std::string& text);
  std::string LogPath(uint64_t job, int rank) const;

  ServiceOptions o_;
  RendezvousHost* rdv_;
  Clock* clock_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  tcp::acceptor http_acceptor_;
  int http_port_ = -1;
  // Open HTTP connections; shared with them, as one may outlive the loop (destroyed with it).
  std::shared_ptr<int> http_sessions_ = std::make_shared<int>(0);
  asio::signal_set signals_;
  asio::steady_timer tick_;
  int port_ = 0;
  std::vector<char> read_buffer_ = std::vector<char>(65536);
  std::unique_ptr<StateStore> store_;
  uint64_t next_session_ = 1;
  std::map<uint64_t, std::shared_ptr<Session>> sessions_;
  std::map<std::string, Worker> workers_;
  std::map<uint64_t, Attempt> attempts_;  // open attempts by epoch
  std::map<uint64_t, Queued> queued_;     // queued jobs by id
  std::map<uint64_t, uint64_t> epoch_job_;  // every epoch known this run -> its job (late log lines)
  std::vector<WorkerRecord> unsaved_workers_;  // registrations not yet in the state (written per tick)
  std::map<uint64_t, Draining> draining_;  // by epoch
  // The open attempts with ranks on each worker: a heartbeat looks only at its worker's attempts,
  // not at every attempt of the cluster.
  std::map<std::string, std::set<uint64_t>> worker_attempts_;
  void Index(const Attempt& a) {
    for (const Placement& p : a.placements) worker_attempts_[p.worker].insert(a.epoch);
  }
  asio::steady_timer accept_retry_{io_};
  int64_t last_tick_ = 0;                 // steady clock
  uint64_t heartbeats_ = 0;
  bool dirty_ = true;                     // something changed that may let a job start
  bool stopping_ = false;
  Status fatal_;
};

// One connection. Lives while a read or write is pending on it (the handlers hold it) and in the
// service's session table.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Service::Impl* svc, tcp::socket sock, uint64_t id)
      : id(id), svc_(svc), sock_(std::move(sock)), timer_(svc->io()), decoder_(svc->options().limits) {
    error_code ec;
    const auto ep = sock_.remote_endpoint(ec);
    if (!ec) {
      peer_ip = ep.address().to_string();
      peer = peer_ip + ":" + std::to_string(ep.port());
    }
  }

  const uint64_t id;
  proto::Role role = proto::ROLE_UNSPECIFIED;
  std::string worker;  // the registered worker's name (role worker, after RegisterWorker)
  std::string peer_ip, peer;

  void Start() {
    // Reads are attempted only once the socket is readable, and must never block the loop.
    error_code ec;
    sock_.non_blocking(true, ec);
    Arm(svc_->options().handshake_timeout_ms, "no hello within the handshake timeout");
    Read();
  }

  // The idle limit for users; workers are watched through their heartbeats instead.
  void Touch() {
    if (role == proto::ROLE_USER) Arm(svc_->options().idle_timeout_ms, "idle");
    if (role == proto::ROLE_WORKER) timer_.cancel();
  }

  // Queues a frame. False (logged) if it cannot go out: the connection is closed, the message
  // breaks the frame limits, or the peer does not read (the connection is then closed).
  bool Send(const proto::Envelope& e) {
    if (closed_) return false;
    std::string frame;
    Status st = AppendFrame(e, svc_->options().limits, &frame);
    if (!st.ok()) {
      COHORT_LOG_ERROR("coordinator: not sending a {} to {}: {}", BodyName(e), peer, st.ToString());
      return false;
    }
    out_bytes_ += frame.size();
    out_.push_back(std::move(frame));
    // A peer that does not read what it asked for is cut off rather than buffered without end.
    if (out_bytes_ > 64 * svc_->options().limits.max_frame_bytes) {
      Close("does not read its replies (" + std::to_string(out_bytes_) + " bytes queued)");
      return false;
    }
    if (!writing_) Write();
    return true;
  }

  void SendError(uint64_t request_id, const Status& st) {
    proto::Envelope e;
    e.set_request_id(request_id);
    e.mutable_error()->set_code(static_cast<uint32_t>(st.code()));
    e.mutable_error()->set_message(st.message().substr(0, 65536));
    Send(e);
  }

  // A reply, or an error naming why it could not be sent (too large for a frame).
  void Reply(const proto::Envelope& e) {
    if (closed_ || Send(e) || closed_) return;
    SendError(e.request_id(), InvalidArgument("the reply (" + std::string(BodyName(e)) +
                                              ") is over the frame limits; ask for less"));
  }

  // Sends what is queued, then closes (a refused handshake: the error reaches the client).
  void CloseAfterWrite(const std::string& why) {
    close_reason_ = why;
    close_after_write_ = true;
    if (!writing_) Close(why);
  }

  void Close(const std::string& why) {
    if (closed_) return;
    closed_ = true;
    if (!why.empty()) COHORT_LOG_INFO("coordinator: closing {} ({}): {}", peer, Who(), why);
    error_code ec;
    sock_.shutdown(tcp::socket::shutdown_both, ec);
    sock_.close(ec);
    timer_.cancel();
    svc_->OnClosed(this);
  }

  bool closed() const { return closed_; }

  std::string Who() const {
    if (!worker.empty()) return "worker " + worker;
    return role == proto::ROLE_USER ? "user" : role == proto::ROLE_WORKER ? "worker" : "unauthenticated";
  }

 private:
  void Arm(int64_t ms, std::string why) {
    timer_.expires_after(std::chrono::milliseconds(ms));
    timer_.async_wait([self = shared_from_this(), why = std::move(why)](const error_code& ec) {
      if (!ec && !self->closed_) self->Close(why);
    });
  }

  // Waits for the socket to be readable, then reads what is there into the service's one buffer
  // (the loop has one thread): an idle connection holds no read buffer of its own, which matters
  // at ten thousand workers.
  void Read() {
    sock_.async_wait(tcp::socket::wait_read, [self = shared_from_this()](const error_code& ec) {
      if (self->closed_) return;
      if (ec) return self->OnRead(ec, 0);
      std::vector<char>& buf = self->svc_->read_buffer();
      error_code rec;
      const size_t n = self->sock_.read_some(asio::buffer(buf), rec);
      if (rec == asio::error::would_block) return self->Read();
      self->OnRead(rec, n);
    });
  }

  void OnRead(const error_code& ec, size_t n) {
    if (closed_) return;
    if (ec) {
      Close(ec == asio::error::eof
                ? (decoder_.buffered() > 0
                       ? "closed inside a frame (" + std::to_string(decoder_.buffered()) + " bytes of it sent)"
                       : std::string())
                : ec.message());
      return;
    }
    if (Status st = decoder_.Feed(svc_->read_buffer().data(), n); !st.ok()) {
      Close(st.message());
      return;
    }
    proto::Envelope e;
    for (;;) {
      Result<bool> r = decoder_.Next(&e);
      if (!r.ok()) {
        Close(r.status().message());
        return;
      }
      if (!*r) break;
      svc_->OnFrame(shared_from_this(), e);
      if (closed_ || close_after_write_) return;
    }
    Read();
  }

  void Write() {
    writing_ = true;
    asio::async_write(sock_, asio::buffer(out_.front()), [self = shared_from_this()](const error_code& ec, size_t) {
      self->writing_ = false;
      if (self->closed_) return;
      if (ec) {
        self->Close(ec.message());
        return;
      }
      self->out_bytes_ -= self->out_.front().size();
      self->out_.pop_front();
      if (!self->out_.empty()) {
        self->Write();
      } else if (self->close_after_write_) {
        self->Close(self->close_reason_);
      }
    });
  }

  Service::Impl* svc_;
  tcp::socket sock_;
  asio::steady_timer timer_;
  FrameDecoder decoder_;
  std::deque<std::string> out_;
  size_t out_bytes_ = 0;
  bool writing_ = false;
  bool closed_ = false;
  bool close_after_write_ = false;
  std::string close_reason_;
};

// ---- setup -------------------------------------------------------------------------------------

// Opens `acceptor` on host:port (port 0: any free one); returns the bound port.
Result<int> Service::Impl::Listen(tcp::acceptor& acceptor, const std::string& host, int port, const char* what) {
  error_code ec;
  const auto addr = asio::ip::make_address(host, ec);
  if (ec) return InvalidArgument("coordinator: address '" + host + "': " + ec.message());
  const tcp::endpoint ep(addr, static_cast<unsigned short>(port));
  acceptor.open(ep.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(ep, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return Status(Code::kUnavailable,
                  std::string("coordinator: cannot ") + what + " " + host + ":" + std::to_string(port) + ": " + ec.message());
  }
  return static_cast<int>(acceptor.local_endpoint().port());
}

Status Service::Impl::Init() {
  if (o_.state_dir.empty()) return InvalidArgument("coordinator: state_dir is required");
  if (o_.user_token.empty() && o_.worker_token.empty()) {
    return InvalidArgument("coordinator: no user or worker token configured: nobody could connect");
  }
  std::error_code fec;
  std::filesystem::create_directories(o_.state_dir + "/logs", fec);
  if (fec) return IoError("coordinator: cannot create " + o_.state_dir + "/logs: " + fec.message());
  ASSIGN_OR_RETURN(store_, StateStore::Open(o_.state_dir + "/state.db", o_.backoff));

  // The jobs as the last run left them.
  const int64_t steady = clock_->SteadyMs();
  last_tick_ = steady;
  ASSIGN_OR_RETURN(std::vector<JobRecord> jobs, store_->Jobs());
  std::map<uint64_t, const JobRecord*> by_id;
  for (const JobRecord& j : jobs) {
    by_id[j.id] = &j;
    Requeued(j);
  }
  ASSIGN_OR_RETURN(std::vector<AttemptRecord> open, store_->OpenAttempts());
  for (const AttemptRecord& r : open) {
    const JobRecord* j = by_id.count(r.job_id) > 0 ? by_id[r.job_id] : nullptr;
    if (j == nullptr) continue;
    Attempt a;
    a.job_id = r.job_id;
    a.epoch = r.epoch;
    a.placements = r.placements;
    a.ranks = j->spec.ranks;
    a.started_ms = r.started_ms;
    a.time_limit_ms = j->spec.time_limit_ms;
    a.reattaching = true;
    a.reattach_deadline = steady + o_.reattach_grace_ms;
    a.name = j->spec.name;
    a.restarts = j->restarts;
    // Ranks that finished before the restart stay finished.
    ASSIGN_OR_RETURN(auto exits, store_->RankExits(r.epoch));
    for (const auto& [rank, status] : exits) {
      if (status == 0) a.succeeded.insert(rank);
    }
    if (static_cast<int>(a.succeeded.size()) >= a.ranks) {
      // Every rank had finished; the coordinator died before it recorded the attempt's end.
      StateStore::End end;
      end.outcome = Outcome::kSucceeded;
      ASSIGN_OR_RETURN(JobRecord done, store_->EndAttempt(r.epoch, end, clock_->NowMs()));
      COHORT_LOG_INFO("coordinator: job {} succeeded (all its ranks had finished before the restart)", done.id);
      continue;
    }
    Index(a);
    attempts_[r.epoch] = std::move(a);
    epoch_job_[r.epoch] = r.job_id;
    COHORT_LOG_INFO("coordinator: job {} attempt (epoch {}) was running on {}: waiting up to {} ms for its workers",
                    r.job_id, r.epoch, Describe(r.placements), o_.reattach_grace_ms);
  }
  // Known workers are down until they register again.
  ASSIGN_OR_RETURN(std::vector<WorkerRecord> known, store_->Workers());
  for (const WorkerRecord& w : known) {
    Worker& x = workers_[w.name];
    x.name = w.name;
    x.slots = w.slots;
    x.gpus = w.gpus;
    x.disconnected = steady;
  }

  error_code ec;
  const auto addr = asio::ip::make_address(o_.listen_host, ec);
  if (ec) return InvalidArgument("coordinator: listen address '" + o_.listen_host + "': " + ec.message());
  ASSIGN_OR_RETURN(port_, Listen(acceptor_, o_.listen_host, o_.listen_port, "listen on"));
  if (!o_.http_host.empty()) {
    ASSIGN_OR_RETURN(http_port_, Listen(http_acceptor_, o_.http_host, o_.http_port, "serve HTTP on"));
  }
  if (o_.advertise_host.empty()) {
    if (addr.is_unspecified()) {
      return InvalidArgument("coordinator: listening on every address (" + o_.listen_host +
                             "): set `advertise` to the address ranks on other nodes reach this host at");
    }
    o_.advertise_host = o_.listen_host;
  }
  return Status::Ok();
}

Status Service::Impl::Run() {
  if (o_.stop_on_signals) {
    signals_.add(SIGINT);
    signals_.add(SIGTERM);
    signals_.async_wait([this](const error_code& ec, int sig) {
      if (!ec) {
        COHORT_LOG_INFO("coordinator: signal {}: stopping (jobs keep running; a restart re-attaches them)", sig);
        Shutdown();
      }
    });
  }
  COHORT_LOG_INFO("coordinator: listening on {}:{}, state in {}", o_.listen_host, port_, o_.state_dir);
  if (http_port_ >= 0) COHORT_LOG_INFO("coordinator: HTTP (/metrics, /api/jobs, /api/workers) on {}:{}", o_.http_host, http_port_);
  Accept();
  if (http_port_ >= 0) AcceptHttp();
  Tick();
  io_.run();
  return fatal_;
}

void Service::Impl::Shutdown() {
  if (stopping_) return;
  stopping_ = true;
  error_code ec;
  acceptor_.close(ec);
  http_acceptor_.close(ec);
  signals_.cancel(ec);
  tick_.cancel();
  // Copy: closing removes sessions from the table.
  auto sessions = sessions_;
  for (auto& [id, s] : sessions) s->Close("");
  for (auto& [epoch, a] : attempts_) {
    if (a.rendezvous) rdv_->Close(epoch);
  }
  io_.stop();
}

void Service::Impl::Fatal(const Status& st) {
  COHORT_LOG_ERROR("coordinator: {}: stopping; a restart resumes from the state on disk", st.ToString());
  if (fatal_.ok()) fatal_ = st;
  Shutdown();
}

void Service::Impl::Accept() {
  acceptor_.async_accept([this](const error_code& ec, tcp::socket sock) {
    if (stopping_) return;
    if (!ec) {
      if (sessions_.size() >= o_.max_connections) {
        error_code ignored;
        sock.close(ignored);
      } else {
        auto s = std::make_shared<Session>(this, std::move(sock), next_session_++);
        sessions_[s->id] = s;
        s->Start();
      }
    } else if (ec == asio::error::operation_aborted) {
      return;
    } else {
      // Out of file descriptors (or another accept failure): the pending connection keeps the
      // listener readable, so accepting again at once would spin. Retry shortly.
      COHORT_LOG_WARN("coordinator: accept failed: {} (retrying in 100 ms)", ec.message());
      accept_retry_.expires_after(std::chrono::milliseconds(100));
      accept_retry_.async_wait([this](const error_code& e) {
        if (!e && !stopping_) Accept();
      });
      return;
    }
    Accept();
  });
}

void Service::Impl::OnClosed(Session* s) {
  if (!s->worker.empty()) {
    auto it = workers_.find(s->worker);
    if (it != workers_.end() && it->second.session.lock().get() == s) {
      it->second.connected = false;
      it->second.disconnected = clock_->SteadyMs();
      COHORT_LOG_WARN("coordinator: worker {} disconnected; down unless it registers within {} ms", s->worker,
                      o_.heartbeat_timeout_ms);
    }
  }
  sessions_.erase(s->id);
}

// ---- requests ----------------------------------------------------------------------------------

void Service::Impl::OnFrame(const std::shared_ptr<Session>& s, const proto::Envelope& e) {
  if (stopping_) return;
  if (s->role == proto::ROLE_UNSPECIFIED) {
    Result<proto::Role> role = CheckHello(e, o_.user_token, o_.worker_token);
    if (!role.ok()) {
      s->SendError(e.request_id(), role.status());
      s->CloseAfterWrite(role.status().message());
      return;
    }
    s->role = *role;
    proto::Envelope w;
    w.set_request_id(e.request_id());
    w.mutable_welcome()->set_protocol_version(kProtocolVersion);
    s->Send(w);
    // A worker must register next, within the handshake timeout (the timer keeps running).
    if (s->role == proto::ROLE_USER) s->Touch();
    return;
  }
  if (s->role == proto::ROLE_USER) {
    s->Touch();
    HandleUser(s, e);
  } else {
    HandleWorker(s, e);
  }
}

void Service::Impl::HandleUser(const std::shared_ptr<Session>& s, const proto::Envelope& e) {
  const uint64_t rid = e.request_id();
  proto::Envelope r;
  r.set_request_id(rid);
  const int64_t now = clock_->NowMs();
  switch (e.body_case()) {
    case proto::Envelope::kSubmit: {
      const std::string source = e.submit().source().empty() ? "job" : e.submit().source();
      Result<config::JobSpec> spec = config::ParseJobSpec(e.submit().spec_yaml(), source);
      if (!spec.ok()) {
        s->SendError(rid, spec.status());
        return;
      }
      // A launch lists a worker's ranks in one frame, within the repeated-field limit.
      if (static_cast<size_t>(spec->launch.ranks) > o_.limits.max_repeated) {
        s->SendError(rid, InvalidArgument(source + ": launch.ranks: " + std::to_string(spec->launch.ranks) +
                                          " ranks, over this coordinator's limit of " +
                                          std::to_string(o_.limits.max_repeated)));
        return;
      }
      NewJob n;
      n.name = spec->name;
      n.spec_yaml = e.submit().spec_yaml();
      n.source = source;
      n.ranks = spec->launch.ranks;
      n.priority = spec->launch.priority;
      n.max_restarts = spec->launch.max_restarts;
      n.time_limit_ms = spec->launch.time_limit_s * 1000;
      Result<uint64_t> id = store_->AddJob(n, now);
      if (!id.ok()) {
        s->SendError(rid, id.status());
        return;
      }
      Result<JobRecord> j = store_->Job(*id);
      if (!j.ok()) return Fatal(j.status());
      Requeued(*j);
      COHORT_LOG_INFO("coordinator: job {} '{}' submitted from {} ({} ranks, priority {})", *id, n.name, source,
                      n.ranks, n.priority);
      r.mutable_submit_reply()->set_job_id(*id);
      s->Send(r);
      dirty_ = true;
      Schedule();
      return;
    }
    case proto::Envelope::kListJobs: {
      Result<std::vector<JobRecord>> jobs = store_->Jobs();
      if (!jobs.ok()) return s->SendError(rid, jobs.status());
      // The newest ones when there are more than a reply may hold.
      const size_t n = jobs->size(), keep = std::min(n, o_.limits.max_repeated);
      for (size_t i = n - keep; i < n; ++i) FillSummary((*jobs)[i], r.mutable_job_list()->add_jobs());
      s->Reply(r);
      return;
    }
    case proto::Envelope::kJobStatus: {
      Result<JobRecord> j = store_->Job(e.job_status().job_id());
      if (!j.ok()) return s->SendError(rid, j.status());
      Result<std::vector<AttemptRecord>> attempts = store_->Attempts(j->id);
      if (!attempts.ok()) return s->SendError(rid, attempts.status());
      auto* reply = r.mutable_job_status_reply();
      FillSummary(*j, reply->mutable_job());
      // The newest attempts that fit in half a frame (a log tail is up to 4 KiB each).
      const size_t n = attempts->size();
      size_t keep = 0, bytes = 0;
      while (keep < std::min(n, o_.limits.max_repeated)) {
        bytes += 256 + (*attempts)[n - 1 - keep].log_tail.size();
        if (bytes > o_.limits.max_frame_bytes / 2) break;
        ++keep;
      }
      for (size_t i = n - keep; i < n; ++i) {
        const AttemptRecord& a = (*attempts)[i];
        auto* x = reply->add_attempts();
        x->set_epoch(a.epoch);
        for (const Placement& p : a.placements) {
          auto* q = x->add_placements();
          q->set_worker(p.worker);
          q->set_first_rank(p.first_rank);
          q->set_count(p.count);
        }
        x->set_started_unix_ms(a.started_ms);
        x->set_ended_unix_ms(a.ended_ms);
        x->set_exit_rank(a.exit_rank);
        x->set_exit_status(a.exit_status);
        x->set_log_tail(a.log_tail);
        x->set_message(a.message);
      }
      s->Reply(r);
      return;
    }
    case proto::Envelope::kCancel: {
      const uint64_t id = e.cancel().job_id();
      Result<uint64_t> epoch = store_->CancelJob(id, "cancelled by " + s->peer, now);
      if (!epoch.ok()) return s->SendError(rid, epoch.status());
      queued_.erase(id);
      if (*epoch != 0 && attempts_.count(*epoch) > 0) {
        StopRanks(attempts_[*epoch]);
        Forget(*epoch);
      }
      COHORT_LOG_INFO("coordinator: job {} cancelled by {}", id, s->peer);
      r.mutable_cancel_reply();
      s->Send(r);
      dirty_ = true;
      Schedule();
      return;
    }
    case proto::Envelope::kLogs: {
      const auto& q = e.logs();
      Result<JobRecord> j = store_->Job(q.job_id());
      if (!j.ok()) return s->SendError(rid, j.status());
      const std::string path = LogPath(q.job_id(), q.rank() < 0 ? -1 : q.rank());
      std::ifstream in(path, std::ios::binary);
      std::string data;
      uint64_t size = 0;
      if (in) {
        in.seekg(0, std::ios::end);
        size = static_cast<uint64_t>(in.tellg());
        if (q.offset() < size) {
          const uint64_t n = std::min<uint64_t>(size - q.offset(), o_.limits.max_string_bytes / 2);
          data.resize(n);
          in.seekg(static_cast<std::streamoff>(q.offset()));
          in.read(data.data(), static_cast<std::streamsize>(n));
          data.resize(static_cast<size_t>(in.gcount()));
        }
      }
      const uint64_t next = std::max<uint64_t>(q.offset(), std::min<uint64_t>(size, q.offset() + data.size()));
      auto* reply = r.mutable_logs_reply();
      reply->set_data(std::move(data));
      reply->set_next_offset(next);
      reply->set_done(IsFinal(j->state) && next >= size);
      s->Send(r);
      return;
    }
    case proto::Envelope::kListWorkers: {
      std::map<std::string, int> used = UsedSlots();
      for (const auto& [name, w] : workers_) {
        auto* x = r.mutable_worker_list()->add_workers();
        x->set_name(name);
        x->set_slots(w.slots);
        x->set_used_slots(used[name]);
        x->set_up(w.up);
        x->set_last_heartbeat_unix_ms(w.last_seen_unix_ms);
        if (r.worker_list().workers_size() >= static_cast<int>(o_.limits.max_repeated)) break;
      }
      s->Reply(r);
      return;
    }
    default:
      s->SendError(rid, InvalidArgument("a " + std::string(BodyName(e)) + " is not a user request"));
      s->CloseAfterWrite("sent a " + std::string(BodyName(e)) + " as a user");
  }
}

void Service::Impl::HandleWorker(const std::shared_ptr<Session>& s, const proto::Envelope& e) {
  if (s->worker.empty()) {
    if (e.body_case() != proto::Envelope::kRegisterWorker) {
      s->SendError(e.request_id(), InvalidArgument("a worker must register first, not send a " +
                                                   std::string(BodyName(e))));
      s->CloseAfterWrite("did not register");
      return;
    }
    Register(s, e);
    return;
  }
  auto it = workers_.find(s->worker);
  if (it == workers_.end() || it->second.session.lock() != s) {
    s->Close("replaced by a newer connection of the same worker");
    return;
  }
  Worker& w = it->second;
  w.last_seen = clock_->SteadyMs();
  w.last_seen_unix_ms = clock_->NowMs();
  w.forgiven = 0;
  switch (e.body_case()) {
    case proto::Envelope::kHeartbeat: {
      ++heartbeats_;
      NoteRunning(w, e.heartbeat().running());
      for (const proto::JobProgress& p : e.heartbeat().progress()) {
        auto it = attempts_.find(p.epoch());
        if (it != attempts_.end() && it->second.job_id == p.job_id()) {
          it->second.progress = p;
          it->second.has_progress = true;
        }
      }
      // Acknowledged, so an agent (or a benchmark) sees the round trip.
      proto::Envelope ack;
      ack.set_request_id(e.request_id());
      ack.mutable_heartbeat_ack();
      if (auto self = w.session.lock()) self->Send(ack);
      return;
    }
    case proto::Envelope::kRankExited:
      RankExited(w, e);
      return;
    case proto::Envelope::kLogChunk:
      LogChunk(w, e.log_chunk());
      return;
    default:
      s->SendError(e.request_id(), InvalidArgument("a " + std::string(BodyName(e)) + " is not a worker report"));
      s->CloseAfterWrite("sent a " + std::string(BodyName(e)) + " as a worker");
  }
}

void Service::Impl::Register(const std::shared_ptr<Session>& s, const proto::Envelope& e) {
  const auto& r = e.register_worker();
  if (!SafeWorkerName(r.name()) || r.slots() < 0 || r.gpus() < 0 || r.address().size() > 255) {
    Status st = InvalidArgument("worker registration: the name must be 1-128 of [A-Za-z0-9._-] and slots and gpus >= 0 "
                                "(got '" + r.name() + "', " + std::to_string(r.slots()) + ", " +
                                std::to_string(r.gpus()) + ")");
    s->SendError(e.request_id(), st);
    s->CloseAfterWrite(st.message());
    return;
  }
  // Written with the other registrations of this tick, in one transaction: a worker's record only
  // says what it was last seen with, and it registers again after any restart.
  unsaved_workers_.push_back({r.name(), r.slots(), r.gpus(), clock_->NowMs()});
  Worker& w = workers_[r.name()];
  if (auto old = w.session.lock(); old && old != s) old->Close("worker " + r.name() + " registered again");
  w.name = r.name();
  w.slots = r.slots();
  w.gpus = r.gpus();
  // Where other nodes reach its ranks: what it says (its side of the connection, or its
  // --address), else where its connection comes from.
  w.address = r.address().empty() ? s->peer_ip : r.address();
  if (r.stop_grace_ms() > 0) w.stop_grace_ms = r.stop_grace_ms();
  w.session = s;
  w.connected = true;
  w.up = true;
  w.last_seen = clock_->SteadyMs();
  w.last_seen_unix_ms = clock_->NowMs();
  s->worker = r.name();
  s->Touch();
  COHORT_LOG_INFO("coordinator: worker {} registered from {} ({} slots, {} GPUs, {} ranks running)", w.name, s->peer,
                  w.slots, w.gpus, r.running_size());
  proto::Envelope reply;
  reply.set_request_id(e.request_id());
  reply.mutable_registered()->set_heartbeat_interval_ms(static_cast<uint32_t>(o_.heartbeat_interval_ms));
  // The agent stops its ranks a heartbeat interval before the coordinator gives up on it, not
  // after (but never sooner than two intervals without an acknowledgement).
  reply.mutable_registered()->set_lease_ms(static_cast<uint32_t>(
      std::max(2 * o_.heartbeat_interval_ms, o_.heartbeat_timeout_ms - o_.heartbeat_interval_ms)));
  s->Send(reply);
  NoteRunning(w, r.running());
  if (stopping_) return;
  dirty_ = true;
  Schedule();
}

Service::Impl::Attempt* Service::Impl::PlacedOn(uint64_t job, uint64_t epoch, int rank, const std::string& worker) {
  auto it = attempts_.find(epoch);
  if (it == attempts_.end() || it->second.job_id != job) return nullptr;
  for (const Placement& p : it->second.placements) {
    if (p.worker == worker && rank >= p.first_rank && rank < p.first_rank + p.count) return &it->second;
  }
  return nullptr;
}

void Service::Impl::CheckReattached(Attempt& a) {
  if (!a.reattaching) return;
  for (const Placement& p : a.placements) {
    for (int r = p.first_rank; r < p.first_rank + p.count; ++r) {
      if (a.attached.count(r) == 0 && a.succeeded.count(r) == 0) return;
    }
  }
  a.reattaching = false;
  COHORT_LOG_INFO("coordinator: job {} attempt (epoch {}) re-attached: every rank is running or has finished", a.job_id,
                  a.epoch);
}

// What a worker says it runs (at registration and in every heartbeat):
//  - ranks of open attempts placed on it are (re-)attached;
//  - ranks of any other epoch belong to an attempt that has ended: told to stop;
//  - ranks placed on it that it does not list, twice in a row, and that have not finished, are
//    gone (its agent restarted and they died with it, or the launch was lost): their attempt
//    fails. A launch gets a heartbeat interval to show up first;
//  - slots of ended attempts still held (draining) are released once it lists none of their ranks.
void Service::Impl::NoteRunning(Worker& w, const google::protobuf::RepeatedPtrField<proto::RunningRank>& running) {
  const int64_t now = clock_->SteadyMs();
  std::set<std::pair<uint64_t, int>> listed;      // (epoch, rank)
  std::set<std::pair<uint64_t, uint64_t>> stale;  // (job, epoch)
  std::set<uint64_t> listed_epochs;
  for (const proto::RunningRank& r : running) {
    listed_epochs.insert(r.epoch());
    if (PlacedOn(r.job_id(), r.epoch(), r.rank(), w.name) != nullptr) {
      listed.insert({r.epoch(), r.rank()});
    } else {
      stale.insert({r.job_id(), r.epoch()});
    }
  }
  // Ranks of ended attempts still running here hold their slots until they are gone (a worker
  // coming back after a partition, or after the coordinator restarted, may still be stopping them).
  std::map<uint64_t, int> stale_ranks;  // epoch -> ranks listed
  for (const proto::RunningRank& r : running) {
    if (listed.count({r.epoch(), r.rank()}) == 0) ++stale_ranks[r.epoch()];
  }
  for (const auto& [job, epoch] : stale) {
    COHORT_LOG_WARN("coordinator: worker {} runs ranks of job {} epoch {}, which is not a running attempt: stopping them",
                    w.name, job, epoch);
    proto::Envelope stop;
    stop.mutable_stop()->set_job_id(job);
    stop.mutable_stop()->set_epoch(epoch);
    SendTo(w.name, stop);
    Draining& d = draining_[epoch];
    d.slots[w.name] = stale_ranks[epoch];
    d.until = std::max(d.until, now + std::max(o_.drain_timeout_ms, w.stop_grace_ms + o_.heartbeat_timeout_ms));
  }
  for (auto it = draining_.begin(); it != draining_.end();) {
    if (listed_epochs.count(it->first) == 0 && it->second.slots.erase(w.name) > 0) dirty_ = true;
    it = it->second.slots.empty() ? draining_.erase(it) : std::next(it);
  }
  std::vector<std::pair<uint64_t, std::string>> gone;
  static const std::set<uint64_t> kNone;
  const auto on_worker = worker_attempts_.find(w.name);
  // Not changed in the loop: the failures it finds are acted on after it.
  const std::set<uint64_t>& mine = on_worker == worker_attempts_.end() ? kNone : on_worker->second;
  for (uint64_t epoch : mine) {
    auto found = attempts_.find(epoch);
    if (found == attempts_.end()) continue;
    Attempt& a = found->second;
    int lost = -1;
    for (const Placement& p : a.placements) {
      if (p.worker != w.name) continue;
      for (int r = p.first_rank; r < p.first_rank + p.count; ++r) {
        if (listed.count({epoch, r}) > 0) {
          a.missing.erase(r);
          if (a.reattaching) a.attached.insert(r);
        } else if (a.succeeded.count(r) == 0 && (a.launched == 0 || now - a.launched > o_.heartbeat_interval_ms)) {
          // Misses count at most once per half interval: heartbeats queued behind a stalled loop
          // and read back to back are one observation, not several.
          auto last = a.missed_at.find(r);
          if (last == a.missed_at.end() || now - last->second >= o_.heartbeat_interval_ms / 2) {
            a.missed_at[r] = now;
            if (++a.missing[r] >= 2 && lost < 0) lost = r;
          }
        }
      }
    }
    CheckReattached(a);
    if (lost >= 0) {
      gone.push_back({epoch, "rank " + std::to_string(lost) + " is no longer running on worker " + w.name +
                                 " (its agent restarted, or the launch was lost)"});
    }
  }
  for (const auto& [epoch, why] : gone) FailAttempt(epoch, -1, 0, "", why);
}

void Service::Impl::RankExited(Worker& w, const proto::Envelope& e) {
  const auto& x = e.rank_exited();
  proto::Envelope ack;
  ack.set_request_id(e.request_id());
  ack.mutable_ack();
  Attempt* placed = PlacedOn(x.job_id(), x.epoch(), x.rank(), w.name);
  if (placed == nullptr) {
    // Settled by being refused: acknowledged, so the worker stops sending it. A rank of a draining
    // attempt has now stopped: its slot is free.
    if (auto d = draining_.find(x.epoch()); d != draining_.end()) {
      auto slot = d->second.slots.find(w.name);
      if (slot != d->second.slots.end() && --slot->second <= 0) d->second.slots.erase(slot);
      if (d->second.slots.empty()) draining_.erase(d);
      dirty_ = true;
    }
    COHORT_LOG_INFO("coordinator: the exit of rank {} of job {} epoch {} on {} is not for a running attempt (stale)",
                    x.rank(), x.job_id(), x.epoch(), w.name);
    if (auto s = w.session.lock()) s->Send(ack);
    Schedule();
    return;
  }
  Attempt& a = *placed;
  const uint64_t epoch = a.epoch;
  if (x.exit_status() == 0) {
    // Durable before acknowledged: the worker forgets an acknowledged report.
    if (Status st = store_->RecordRankExit(epoch, x.rank(), 0); !st.ok()) return Fatal(st);
    a.succeeded.insert(x.rank());
    a.missing.erase(x.rank());
    COHORT_LOG_INFO("coordinator: job {} rank {} finished on {}", a.job_id, x.rank(), w.name);
    if (static_cast<int>(a.succeeded.size()) < a.ranks) {
      CheckReattached(a);
      if (auto s = w.session.lock()) s->Send(ack);
      return;
    }
    StateStore::End end;
    end.outcome = Outcome::kSucceeded;
    Result<JobRecord> j = store_->EndAttempt(epoch, end, clock_->NowMs());
    if (!j.ok()) return Fatal(j.status());
    if (auto s = w.session.lock()) s->Send(ack);
    COHORT_LOG_INFO("coordinator: job {} succeeded", a.job_id);
    Forget(epoch);
    dirty_ = true;
    Schedule();
    return;
  }
  a.exited.insert(x.rank());
  FailAttempt(epoch, x.rank(), x.exit_status(), x.log_tail(),
              "rank " + std::to_string(x.rank()) + " exited with status " + std::to_string(x.exit_status()) +
                  " on worker " + w.name);
  if (auto s = w.session.lock()) s->Send(ack);
}

void Service::Impl::LogChunk(Worker& w, const proto::LogChunk& c) {
  auto it = epoch_job_.find(c.epoch());
  if (it == epoch_job_.end() || it->second != c.job_id() || c.rank() < 0) return;  // not an attempt of this run
  AppendLog(c.job_id(), c.rank(), c.data());
}

std::string Service::Impl::LogPath(uint64_t job, int rank) const {
  return o_.state_dir + "/logs/" + std::to_string(job) + "/" + (rank < 0 ? std::string("all") : "rank-" + std::to_string(rank)) +
         ".log";
}

void Service::Impl::AppendLog(uint64_t job, int rank, const std::string& text) {
  std::error_code ec;
  std::filesystem::create_directories(o_.state_dir + "/logs/" + std::to_string(job), ec);
  if (rank >= 0) {
    std::ofstream(LogPath(job, rank), std::ios::app | std::ios::binary) << text;
  }
  // The job's combined log: every line prefixed with its rank.
  std::string prefixed;
  const std::string tag = rank >= 0 ? "[rank " + std::to_string(rank) + "] " : "";
  size_t at = 0;
  while (at < text.size()) {
    size_t nl = text.find('\n', at);
    const size_t end = nl == std::string::npos ? text.size() : nl + 1;
    prefixed += tag;
    prefixed.append(text, at, end - at);
    at = end;
  }
  if (!prefixed.empty() && prefixed.back() != '\n') prefixed += '\n';
  std::ofstream(LogPath(job, -1), std::ios::app | std::ios::binary) << prefixed;
}

// ---- scheduling and supervision ----------------------------------------------------------------

bool Service::Impl::SendTo(const std::string& worker, const proto::Envelope& e) {
  auto it = workers_.find(worker);
  if (it == workers_.end()) return false;
  auto s = it->second.session.lock();
  if (!s || s->closed()) return false;
  return s->Send(e);
}

std::map<std::string, int> Service::Impl::UsedSlots() const {
  std::map<std::string, int> used;
  for (const auto& [epoch, a] : attempts_) {
    for (const Placement& p : a.placements) used[p.worker] += p.count;
  }
  for (const auto& [epoch, d] : draining_) {
    for (const auto& [worker, n] : d.slots) used[worker] += n;
  }
  return used;
}

void Service::Impl::Schedule() {
  if (!dirty_ || stopping_) return;
  dirty_ = false;
  const int64_t now = clock_->NowMs();
  std::vector<QueuedJob> queue;
  for (const auto& [id, q] : queued_) {
    if (q.not_before_ms <= now) queue.push_back(q.job);
  }
  if (queue.empty()) return;
  std::map<std::string, int> used = UsedSlots();
  std::vector<RunningJob> running;
  for (const auto& [epoch, a] : attempts_) {
    RunningJob r;
    r.id = a.job_id;
    r.ends_at_ms = a.time_limit_ms > 0 ? a.started_ms + a.time_limit_ms : 0;
    for (const Placement& p : a.placements) r.slots[p.worker] += p.count;
    running.push_back(std::move(r));
  }
  std::vector<WorkerCapacity> capacity;
  for (const auto& [name, w] : workers_) {
    if (w.up && w.connected) capacity.push_back({name, w.slots, used[name]});
  }
  const Decision d = coordinator::Schedule(queue, capacity, running, now);
  for (const Start& s : d.starts) {
    StartJob(s);
    if (stopping_) return;
  }
}

void Service::Impl::StartJob(const Start& start) {
  const int64_t now = clock_->NowMs();
  Result<JobRecord> j = store_->Job(start.job_id);
  if (!j.ok()) return Fatal(j.status());
  Result<config::JobSpec> spec = config::ParseJobSpec(j->spec.spec_yaml, j->spec.source);
  if (!spec.ok()) {
    // Accepted once, refused now (a stricter schema after an upgrade): it can never run. Failing
    // it durably keeps the coordinator from stopping on it at every start.
    queued_.erase(start.job_id);
    Result<JobRecord> failed = store_->FailQueuedJob(start.job_id, "the job spec no longer parses: " +
                                                                       spec.status().message(), now);
    if (!failed.ok()) return Fatal(failed.status());
    COHORT_LOG_ERROR("coordinator: job {} failed: its spec no longer parses: {}", start.job_id,
                     spec.status().message());
    return;
  }
  Result<uint64_t> epoch = store_->StartAttempt(start.job_id, start.placements, now);
  if (!epoch.ok()) return Fatal(epoch.status());
  queued_.erase(start.job_id);
  j = store_->Job(start.job_id);  // as the start left it: `restarts` counts the attempts before this one
  if (!j.ok()) return Fatal(j.status());
  Attempt a;
  a.job_id = start.job_id;
  a.epoch = *epoch;
  a.placements = start.placements;
  a.ranks = j->spec.ranks;
  a.started_ms = now;
  a.time_limit_ms = j->spec.time_limit_ms;
  a.name = j->spec.name;
  a.restarts = j->restarts;
  a.launched = clock_->SteadyMs();
  attempts_[a.epoch] = a;
  Index(a);
  epoch_job_[a.epoch] = a.job_id;
  COHORT_LOG_INFO("coordinator: job {} attempt {} (epoch {}) starts on {}{}", a.job_id, j->restarts + 1, a.epoch,
                  Describe(a.placements), start.backfilled ? " (backfilled)" : "");
  AppendLog(a.job_id, -1,
            "--- cohort: attempt " + std::to_string(j->restarts + 1) + " (epoch " + std::to_string(a.epoch) + ") on " +
                Describe(a.placements) + " ---\n");

  proto::Envelope launch;
  auto* l = launch.mutable_launch();
  l->set_job_id(a.job_id);
  l->set_epoch(a.epoch);
  l->set_world_size(a.ranks);
  l->set_spec_yaml(j->spec.spec_yaml);
  if (!j->spec.source.empty() && j->spec.source[0] == '/') {
    l->set_workdir(std::filesystem::path(j->spec.source).parent_path().string());
  }
  for (const std::string& arg : spec->command) l->add_argv(arg);
  auto& env = *l->mutable_env();
  const Worker* first = nullptr;
  for (const Placement& p : a.placements) {
    if (p.first_rank == 0) first = &workers_[p.worker];
  }
  env["MASTER_ADDR"] = first != nullptr && !first->address.empty() ? first->address : "127.0.0.1";
  env["MASTER_PORT"] = std::to_string(o_.master_port_base + static_cast<int>(a.epoch % static_cast<uint64_t>(
                                                                 std::max(1, o_.master_port_count))));
  env["COHORT_JOB_ID"] = std::to_string(a.job_id);
  env["COHORT_ATTEMPT_EPOCH"] = std::to_string(a.epoch);
  env["COHORT_RESTART_COUNT"] = std::to_string(j->restarts);
  if (spec->command.empty() && a.ranks > 1 && rdv_ != nullptr) {
    Result<int> port = rdv_->Open(a.epoch);
    if (!port.ok()) {
      FailAttempt(a.epoch, -1, 0, "", "cannot serve the rendezvous store: " + port.status().message());
      return;
    }
    attempts_[a.epoch].rendezvous = true;
    env["COHORT_RENDEZVOUS"] = "store://" + o_.advertise_host + ":" + std::to_string(*port);
  }
  for (const Placement& p : a.placements) {
    proto::Envelope mine = launch;
    for (int r = p.first_rank; r < p.first_rank + p.count; ++r) mine.mutable_launch()->add_ranks(r);
    if (!SendTo(p.worker, mine)) {
      FailAttempt(a.epoch, -1, 0, "", "cannot send the launch to worker " + p.worker);
      return;
    }
  }
}

void Service::Impl::StopRanks(const Attempt& a) {
  proto::Envelope stop;
  stop.mutable_stop()->set_job_id(a.job_id);
  stop.mutable_stop()->set_epoch(a.epoch);
  for (const Placement& p : a.placements) SendTo(p.worker, stop);
}

// Drops an attempt that has ended. Ranks that have not exited may still be stopping (writing a
// checkpoint, freeing GPU memory): their slots stay held on workers that are up until the worker
// shows them gone, or drain_timeout.
void Service::Impl::Forget(uint64_t epoch) {
  auto it = attempts_.find(epoch);
  if (it == attempts_.end()) return;
  const Attempt& a = it->second;
  Draining d;
  for (const Placement& p : a.placements) {
    auto w = workers_.find(p.worker);
    if (w == workers_.end() || !w->second.up) continue;
    int left = 0;
    for (int r = p.first_rank; r < p.first_rank + p.count; ++r) {
      left += a.succeeded.count(r) == 0 && a.exited.count(r) == 0 ? 1 : 0;
    }
    if (left > 0) {
      d.slots[p.worker] = left;
      d.until = std::max(d.until, clock_->SteadyMs() + std::max(o_.drain_timeout_ms,
                                                                 w->second.stop_grace_ms + o_.heartbeat_timeout_ms));
    }
  }
  if (!d.slots.empty()) draining_[epoch] = std::move(d);
  if (a.rendezvous && rdv_ != nullptr) rdv_->Close(epoch);
  for (const Placement& p : a.placements) {
    auto w = worker_attempts_.find(p.worker);
    if (w == worker_attempts_.end()) continue;
    w->second.erase(epoch);
    if (w->second.empty()) worker_attempts_.erase(w);
  }
  attempts_.erase(it);
}

// The scheduler's view of a queued job (new, requeued, or queued when the coordinator started).
void Service::Impl::Requeued(const JobRecord& j) {
  if (j.state != JobState::kQueued) return;
  queued_[j.id] = {{j.id, j.spec.priority, j.queue_order, j.spec.ranks, j.spec.time_limit_ms}, j.not_before_ms};
}

void Service::Impl::FailAttempt(uint64_t epoch, int rank, int status, const std::string& tail, const std::string& why,
                                bool final, int64_t hold_ms) {
  auto it = attempts_.find(epoch);
  if (it == attempts_.end()) return;
  const Attempt a = it->second;
  StateStore::End end;
  if (hold_ms > 0) end.not_before_ms = clock_->NowMs() + hold_ms;
  end.outcome = Outcome::kFailed;
  end.exit_rank = rank;
  end.exit_status = status;
  end.log_tail = tail;
  end.message = why;
  end.no_restart = final;
  Result<JobRecord> j = store_->EndAttempt(epoch, end, clock_->NowMs());
  if (!j.ok()) return Fatal(j.status());
  StopRanks(a);
  Forget(epoch);
  Requeued(*j);
  AppendLog(a.job_id, -1, "--- cohort: attempt (epoch " + std::to_string(epoch) + ") failed: " + why + " ---\n");
  if (j->state == JobState::kQueued) {
    COHORT_LOG_WARN("coordinator: job {} attempt (epoch {}) failed: {}; requeued (restart {} of {}, not before +{} ms)",
                    a.job_id, epoch, why, j->restarts + 1, j->spec.max_restarts, j->not_before_ms - j->updated_ms);
  } else {
    COHORT_LOG_WARN("coordinator: job {} failed: {} (after {} restarts)", a.job_id, why, j->restarts);
  }
  dirty_ = true;
}

void Service::Impl::WorkerDown(Worker& w, const std::string& why) {
  if (!w.up) return;
  w.up = false;
  COHORT_LOG_WARN("coordinator: worker {} is down: {}", w.name, why);
  std::vector<uint64_t> hit;
  if (auto on = worker_attempts_.find(w.name); on != worker_attempts_.end()) hit.assign(on->second.begin(), on->second.end());
  // Its ranks may still run, cut off (they stop at the agent's lease, within the stop grace):
  // the jobs restart only once they surely have, or two attempts would write one checkpoint.
  for (uint64_t epoch : hit) {
    FailAttempt(epoch, -1, 0, "", "worker " + w.name + " lost: " + why, false, w.stop_grace_ms);
  }
  // Its draining slots go with it; it starts afresh when it registers again.
  for (auto it = draining_.begin(); it != draining_.end();) {
    it->second.slots.erase(w.name);
    it = it->second.slots.empty() ? draining_.erase(it) : std::next(it);
  }
  if (auto s = w.session.lock()) s->Close("declared down");
}

void Service::Impl::Tick() {
  if (stopping_) return;
  if (!unsaved_workers_.empty()) {
    if (Status st = store_->UpsertWorkers(unsaved_workers_); !st.ok()) return Fatal(st);
    unsaved_workers_.clear();
  }
  const int64_t steady = clock_->SteadyMs();
  // A loop that stalled (a slow disk under the state, the process stopped) has not read the
  // heartbeats that arrived meanwhile: their absence is not the workers' fault.
  const int64_t stalled = steady - last_tick_ - o_.tick_ms;
  last_tick_ = steady;
  if (o_.forgive_stalls && stalled > o_.heartbeat_timeout_ms / 4) {
    COHORT_LOG_WARN("coordinator: the event loop stalled for {} ms; extending the workers' deadlines by that", stalled);
    for (auto& [name, w] : workers_) {
      // At most one timeout between two heartbeats: a loop that keeps lagging does not keep a
      // dead worker up.
      const int64_t add = std::min(stalled, o_.heartbeat_timeout_ms - w.forgiven);
      if (add <= 0) continue;
      w.forgiven += add;
      w.last_seen += add;
      w.disconnected += add;
    }
    for (auto& [epoch, a] : attempts_) {
      a.reattach_deadline += stalled;
      if (a.launched > 0) a.launched += stalled;
    }
  }
  for (auto& [name, w] : workers_) {
    if (w.connected && w.up && steady - w.last_seen > o_.heartbeat_timeout_ms) {
      WorkerDown(w, "no heartbeat for " + std::to_string(steady - w.last_seen) + " ms");
    } else if (!w.connected && w.up && steady - w.disconnected > o_.heartbeat_timeout_ms) {
      WorkerDown(w, "disconnected for " + std::to_string(steady - w.disconnected) + " ms");
    }
    if (stopping_) return;
  }
  const int64_t now = clock_->NowMs();
  std::vector<std::pair<uint64_t, std::string>> failing;
  std::vector<std::pair<uint64_t, std::string>> timed_out;
  for (const auto& [epoch, a] : attempts_) {
    if (a.reattaching && steady >= a.reattach_deadline) {
      failing.push_back({epoch, "not re-attached within " + std::to_string(o_.reattach_grace_ms) +
                                    " ms of the coordinator's restart (" +
                                    std::to_string(a.attached.size() + a.succeeded.size()) + " of " +
                                    std::to_string(a.ranks) + " ranks running or finished)"});
    } else if (a.time_limit_ms > 0 && now - a.started_ms > a.time_limit_ms) {
      timed_out.push_back({epoch, "time limit of " + std::to_string(a.time_limit_ms / 1000) + " s reached"});
    }
  }
  for (const auto& [epoch, why] : failing) FailAttempt(epoch, -1, 0, "", why);
  for (const auto& [epoch, why] : timed_out) FailAttempt(epoch, -1, 0, "", why, /*final=*/true);
  if (stopping_) return;
  for (auto it = draining_.begin(); it != draining_.end();) {
    if (steady >= it->second.until) {
      dirty_ = true;
      it = draining_.erase(it);
    } else {
      ++it;
    }
  }
  // A requeued job whose backoff just ended may start now (once; not on every tick after).
  for (auto& [id, q] : queued_) {
    if (q.not_before_ms > 0 && q.not_before_ms <= now) {
      q.not_before_ms = 0;
      dirty_ = true;
    }
  }
  Schedule();
  tick_.expires_after(std::chrono::milliseconds(o_.tick_ms));
  tick_.async_wait([this](const error_code& ec) {
    if (!ec) Tick();
  });
}

// ---- HTTP: /metrics (Prometheus text format) and a JSON API ---------------------------------------

namespace {

// One HTTP request per connection (Connection: close), read with Beast under a 10 s deadline.
class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(Service::Impl* svc, tcp::socket sock, std::shared_ptr<int> count)
      : svc_(svc), stream_(std::move(sock)), count_(std::move(count)) {
    ++*count_;
    parser_.header_limit(8192);
    parser_.body_limit(4096);
  }
  ~HttpSession() { --*count_; }

  void Start() {
    stream_.expires_after(std::chrono::seconds(10));
    http::async_read(stream_, buf_, parser_, [self = shared_from_this()](const error_code& ec, size_t) {
      if (ec) return self->Close();
      self->res_ = self->svc_->HandleHttp(self->parser_.get());
      self->res_.keep_alive(false);
      self->res_.prepare_payload();
      http::async_write(self->stream_, self->res_, [self](const error_code&, size_t) { self->Close(); });
    });
  }

 private:
  void Close() {
    error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  Service::Impl* svc_;
  beast::tcp_stream stream_;
  std::shared_ptr<int> count_;
  beast::flat_buffer buf_;
  http::request_parser<http::string_body> parser_;
  http::response<http::string_body> res_;
};

std::string StateLabel(JobState s) { return std::string(JobStateName(s)); }

}  // namespace

void Service::Impl::AcceptHttp() {
  http_acceptor_.async_accept([this](const error_code& ec, tcp::socket sock) {
    if (stopping_ || ec == asio::error::operation_aborted) return;
    if (!ec) {
      if (*http_sessions_ >= 64) {
        error_code ignored;
        sock.close(ignored);
      } else {
        std::make_shared<HttpSession>(this, std::move(sock), http_sessions_)->Start();
      }
    }
    AcceptHttp();
  });
}

std::string Service::Impl::Metrics() {
  std::ostringstream m;
  auto gauge = [&m](const char* name, const char* help, const char* type = "gauge") {
    m << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
  };
  const int64_t now = clock_->NowMs();
  size_t waiting = 0;
  for (const auto& [id, q] : queued_) waiting += q.not_before_ms <= now ? 1 : 0;
  gauge("cohort_queue_length", "Jobs waiting to start (not counting those in a restart backoff).");
  m << "cohort_queue_length " << waiting << '\n';
  gauge("cohort_jobs_backing_off", "Requeued jobs waiting out their restart backoff.");
  m << "cohort_jobs_backing_off " << queued_.size() - waiting << '\n';
  gauge("cohort_jobs_running", "Jobs with a running attempt.");
  m << "cohort_jobs_running " << attempts_.size() << '\n';
  if (auto counts = store_->CountJobs(); counts.ok()) {
    gauge("cohort_jobs", "Jobs by state, ended ones included.");
    for (const auto& [state, n] : *counts) m << "cohort_jobs{state=\"" << StateLabel(state) << "\"} " << n << '\n';
  }
  int up = 0, down = 0;
  long slots = 0, used = 0;
  for (const auto& [name, w] : workers_) {
    if (w.up && w.connected) {
      ++up;
      slots += w.slots;
    } else {
      ++down;
    }
  }
  for (const auto& [worker, n] : UsedSlots()) used += n;
  gauge("cohort_workers_up", "Workers registered and heartbeating.");
  m << "cohort_workers_up " << up << '\n';
  gauge("cohort_workers_down", "Workers known but not up.");
  m << "cohort_workers_down " << down << '\n';
  gauge("cohort_slots", "Rank slots of the workers that are up, and those held by running attempts.");
  m << "cohort_slots{kind=\"total\"} " << slots << "\ncohort_slots{kind=\"used\"} " << used << '\n';
  gauge("cohort_heartbeats_received_total", "Worker heartbeats handled since the coordinator started.", "counter");
  m << "cohort_heartbeats_received_total " << heartbeats_ << '\n';
  // Per running job: restarts always; training progress when its rank 0 reported some.
  gauge("cohort_job_restarts", "Attempts of the job started after its first.");
  for (const auto& [epoch, a] : attempts_) {
    m << "cohort_job_restarts{job=\"" << a.job_id << "\",name=\"" << a.name << "\"} " << a.restarts << '\n';
  }
  struct Series {
    const char* name;
    const char* help;
    const char* type;
    double (*get)(const proto::JobProgress&);
  };
  const Series series[] = {
      {"cohort_job_step", "The job's last completed training step.", "gauge",
       [](const proto::JobProgress& p) { return static_cast<double>(p.step()); }},
      {"cohort_job_loss", "Training loss at that step.", "gauge", [](const proto::JobProgress& p) { return p.loss(); }},
      {"cohort_job_tokens_per_second", "Training throughput of all the job's ranks together.", "gauge",
       [](const proto::JobProgress& p) { return p.tokens_per_s(); }},
      {"cohort_job_data_wait_ratio", "Share of that step spent waiting for data.", "gauge",
       [](const proto::JobProgress& p) { return p.step_ms() > 0 ? p.data_ms() / p.step_ms() : 0.0; }},
      {"cohort_job_checkpoint_stall_seconds_total", "Training time stalled by checkpoint saves, this attempt.",
       "counter", [](const proto::JobProgress& p) { return p.checkpoint_stall_ms() / 1000.0; }},
      {"cohort_job_checkpoints_total", "Checkpoints committed by this attempt.", "counter",
       [](const proto::JobProgress& p) { return static_cast<double>(p.checkpoints()); }},
  };
  for (const Series& x : series) {
    gauge(x.name, x.help, x.type);
    for (const auto& [epoch, a] : attempts_) {
      if (!a.has_progress) continue;
      m << x.name << "{job=\"" << a.job_id << "\",name=\"" << a.name << "\"} " << x.get(a.progress) << '\n';
    }
  }
  return m.str();
}

http::response<http::string_body> Service::Impl::HandleHttp(const http::request<http::string_body>& req) {
  http::response<http::string_body> res;
  res.version(req.version());
  res.set(http::field::server, "cohort-coordinator");
  auto reply = [&res](http::status code, const std::string& type, std::string body) {
    res.result(code);
    res.set(http::field::content_type, type);
    res.body() = std::move(body);
    return res;
  };
  auto json_error = [&](http::status code, const std::string& message) {
    return reply(code, "application/json", nlohmann::json{{"error", message}}.dump() + "\n");
  };
  if (req.method() != http::verb::get) return json_error(http::status::method_not_allowed, "only GET is served");
  const std::string target(req.target());
  const std::string path = target.substr(0, target.find('?'));
  if (path == "/metrics") return reply(http::status::ok, "text/plain; version=0.0.4; charset=utf-8", Metrics());
  if (path == "/api/workers") {
    std::map<std::string, int> used = UsedSlots();
    nlohmann::json out = nlohmann::json::array();
    for (const auto& [name, w] : workers_) {
      out.push_back({{"name", name}, {"slots", w.slots}, {"gpus", w.gpus}, {"used_slots", used[name]},
                     {"up", w.up && w.connected}, {"address", w.address}, {"last_heartbeat_unix_ms", w.last_seen_unix_ms}});
    }
    return reply(http::status::ok, "application/json", out.dump() + "\n");
  }
  auto job_json = [this](const JobRecord& j) {
    nlohmann::json x = {{"id", j.id},
                        {"name", j.spec.name},
                        {"state", std::string(JobStateName(j.state))},
                        {"ranks", j.spec.ranks},
                        {"priority", j.spec.priority},
                        {"max_restarts", j.spec.max_restarts},
                        {"restarts", j.restarts},
                        {"submitted_unix_ms", j.submitted_ms},
                        {"updated_unix_ms", j.updated_ms},
                        {"message", j.message}};
    if (j.open_epoch != 0) {
      auto it = attempts_.find(j.open_epoch);
      if (it != attempts_.end() && it->second.has_progress) {
        const proto::JobProgress& p = it->second.progress;
        x["progress"] = {{"step", p.step()},
                         {"loss", p.loss()},
                         {"tokens_per_s", p.tokens_per_s()},
                         {"step_ms", p.step_ms()},
                         {"data_ms", p.data_ms()},
                         {"checkpoint_stall_ms", p.checkpoint_stall_ms()},
                         {"checkpoints", p.checkpoints()}};
      }
    }
    return x;
  };
  if (path == "/api/jobs") {
    Result<std::vector<JobRecord>> jobs = store_->Jobs();
    if (!jobs.ok()) return json_error(http::status::internal_server_error, jobs.status().message());
    nlohmann::json out = nlohmann::json::array();
    for (const JobRecord& j : *jobs) out.push_back(job_json(j));
    return reply(http::status::ok, "application/json", out.dump() + "\n");
  }
  const std::string prefix = "/api/jobs/";
  if (path.rfind(prefix, 0) == 0) {
    const std::string id = path.substr(prefix.size());
    if (id.empty() || id.size() > 19 || id.find_first_not_of("0123456789") != std::string::npos) {
      return json_error(http::status::bad_request, "expected /api/jobs/<id>");
    }
    Result<JobRecord> j = store_->Job(std::stoull(id));
    if (!j.ok()) {
      return json_error(j.status().code() == Code::kNotFound ? http::status::not_found
                                                              : http::status::internal_server_error,
                        j.status().message());
    }
    nlohmann::json x = job_json(*j);
    Result<std::vector<AttemptRecord>> attempts = store_->Attempts(j->id);
    if (!attempts.ok()) return json_error(http::status::internal_server_error, attempts.status().message());
    x["attempts"] = nlohmann::json::array();
    for (const AttemptRecord& a : *attempts) {
      nlohmann::json placements = nlohmann::json::array();
      for (const Placement& p : a.placements) {
        placements.push_back({{"worker", p.worker}, {"first_rank", p.first_rank}, {"count", p.count}});
      }
      x["attempts"].push_back({{"epoch", a.epoch},
                               {"placements", placements},
                               {"started_unix_ms", a.started_ms},
                               {"ended_unix_ms", a.ended_ms},
                               {"exit_rank", a.exit_rank},
                               {"exit_status", a.exit_status},
                               {"log_tail", a.log_tail},
                               {"message", a.message}});
    }
    return reply(http::status::ok, "application/json", x.dump() + "\n");
  }
  return json_error(http::status::not_found, "no such path: " + path + " (try /metrics, /api/jobs, /api/workers)");
}

// ---- the public face ---------------------------------------------------------------------------

Service::Service(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Service::~Service() = default;

Result<std::unique_ptr<Service>> Service::Create(const ServiceOptions& options, RendezvousHost* rendezvous,
                                                 Clock* clock) {
  auto impl = std::make_unique<Impl>(options, rendezvous, clock);
  RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<Service>(new Service(std::move(impl)));
}

Status Service::Run() { return impl_->Run(); }
void Service::Stop() { impl_->Stop(); }
int Service::port() const { return impl_->port(); }
int Service::http_port() const { return impl_->http_port(); }

// ---- coordinator.yaml --------------------------------------------------------------------------

namespace {

Result<std::string> ReadToken(const std::string& path, const std::string& where) {
  ASSIGN_OR_RETURN(std::string token, ReadTokenFile(path, where, /*private_only=*/true));
  if (token.size() < 16) return InvalidArgument(where + ": " + path + ": a token needs at least 16 characters");
  return token;
}

}  // namespace

Result<ServiceOptions> LoadServiceOptions(const std::string& path) {
  ServiceOptions o;
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return ErrnoError(path, errno != 0 ? errno : ENOENT);
  } catch (const YAML::Exception& e) {
    return InvalidArgument(path + ": invalid YAML at line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  if (!root.IsMap()) return InvalidArgument(path + ": expected a mapping of settings");
  const std::string base = std::filesystem::absolute(path).parent_path().string();
  auto resolve = [&](const std::string& p) { return p.empty() || p[0] == '/' ? p : base + "/" + p; };
  try {
    for (const auto& kv : root) {
      const std::string key = kv.first.as<std::string>();
      const YAML::Node& v = kv.second;
      const std::string where = path + ": " + key;
      auto ms = [&](int64_t scale, int64_t lo, int64_t hi) -> Result<int64_t> {
        const int64_t x = v.as<int64_t>();
        if (x < lo || x > hi) {
          return InvalidArgument(where + ": " + std::to_string(x) + " is out of range [" + std::to_string(lo) + ", " +
                                 std::to_string(hi) + "]");
        }
        return x * scale;
      };
      if (key == "state_dir") {
        o.state_dir = resolve(v.as<std::string>());
      } else if (key == "listen") {
        RETURN_IF_ERROR(ParseHostPort(v.as<std::string>(), where, &o.listen_host, &o.listen_port, /*allow_any_port=*/true));
      } else if (key == "http") {
        const std::string x = v.as<std::string>();
        if (x.empty() || x == "off") {
          o.http_host.clear();
        } else {
          RETURN_IF_ERROR(ParseHostPort(x, where, &o.http_host, &o.http_port, /*allow_any_port=*/true));
        }
      } else if (key == "advertise") {
        o.advertise_host = v.as<std::string>();
      } else if (key == "user_token_file") {
        ASSIGN_OR_RETURN(o.user_token, ReadToken(resolve(v.as<std::string>()), where));
      } else if (key == "worker_token_file") {
        ASSIGN_OR_RETURN(o.worker_token, ReadToken(resolve(v.as<std::string>()), where));
      } else if (key == "heartbeat_interval_ms") {
        ASSIGN_OR_RETURN(o.heartbeat_interval_ms, ms(1, 10, 600000));
      } else if (key == "heartbeat_timeout_s") {
        ASSIGN_OR_RETURN(o.heartbeat_timeout_ms, ms(1000, 1, 86400));
      } else if (key == "reattach_grace_s") {
        ASSIGN_OR_RETURN(o.reattach_grace_ms, ms(1000, 0, 86400));
      } else if (key == "handshake_timeout_s") {
        ASSIGN_OR_RETURN(o.handshake_timeout_ms, ms(1000, 1, 3600));
      } else if (key == "idle_timeout_s") {
        ASSIGN_OR_RETURN(o.idle_timeout_ms, ms(1000, 1, 86400 * 7));
      } else if (key == "restart_backoff_s") {
        ASSIGN_OR_RETURN(o.backoff.base_ms, ms(1000, 0, 86400));
      } else if (key == "restart_backoff_max_s") {
        ASSIGN_OR_RETURN(o.backoff.max_ms, ms(1000, 0, 86400 * 7));
      } else if (key == "max_connections") {
        ASSIGN_OR_RETURN(int64_t n, ms(1, 1, 1000000));
        o.max_connections = static_cast<size_t>(n);
      } else if (key == "max_frame_bytes") {
        ASSIGN_OR_RETURN(int64_t n, ms(1, 1024, int64_t{1} << 30));
        o.limits.max_frame_bytes = static_cast<size_t>(n);
      } else if (key == "master_port_base") {
        ASSIGN_OR_RETURN(int64_t n, ms(1, 1024, 65000));
        o.master_port_base = static_cast<int>(n);
      } else {
        return InvalidArgument(where + ": unknown key (allowed: state_dir, listen, http, advertise, user_token_file, "
                               "worker_token_file, heartbeat_interval_ms, heartbeat_timeout_s, reattach_grace_s, "
                               "handshake_timeout_s, idle_timeout_s, restart_backoff_s, restart_backoff_max_s, "
                               "max_connections, max_frame_bytes, master_port_base)");
      }
    }
  } catch (const YAML::Exception& e) {
    return InvalidArgument(path + ": line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  if (o.state_dir.empty()) return InvalidArgument(path + ": state_dir is required");
  if (o.heartbeat_timeout_ms <= o.heartbeat_interval_ms) {
    return InvalidArgument(path + ": heartbeat_timeout_s must be longer than heartbeat_interval_ms");
  }
  return o;
}

}  // namespace cohort::coordinator
