// bench_coordinator: simulated worker agents against a real `cohort coordinator` (bench/coordinator
// starts it), all in this one process on one Boost.Asio thread.
//
//   --mode agents: N agents connect (ramped), say hello, register (8 slots each) and heartbeat
//     once a second each (spread evenly), timing every heartbeat to its acknowledgement. After
//     --warmup seconds it measures for --seconds; then a user submits a --ranks job (command
//     `true`) and it times submission -> the last LaunchRanks received by the agents (each agent
//     reports its ranks exited at once). Prints one JSON line.
//   --mode echo: the peer. A minimal server that answers every frame with a HeartbeatAck at once
//     (same framing, same event loop library, no state): what any coordinator's handling costs
//     at least on this machine. `--mode agents --echo` runs the same agents against it.
#include <sys/resource.h>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <chrono>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <boost/asio.hpp>

#include "coordinator/wire.h"

namespace {

namespace asio = boost::asio;
namespace proto = cohort::coordinator::proto;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;
using cohort::coordinator::AppendFrame;
using cohort::coordinator::FrameDecoder;
using cohort::coordinator::WireLimits;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

struct Stats {
  std::vector<double> heartbeat_ms;  // measured round trips
  bool measuring = false;
  long registered = 0;
  long failed = 0;
  long launched_ranks = 0;
  Clock::time_point last_launch;
};

// One connection speaking frames: a sim agent or a user.
class Conn : public std::enable_shared_from_this<Conn> {
 public:
  using Handler = std::function<void(const proto::Envelope&)>;
  Conn(asio::io_context& io) : sock_(io) {}
  tcp::socket& socket() { return sock_; }
  Handler on_frame;
  std::function<void()> on_close;

  void Start() { Read(); }
  void Send(const proto::Envelope& e) {
    std::string f;
    if (!AppendFrame(e, WireLimits(), &f).ok()) return;
    out_.push_back(std::move(f));
    if (!writing_) Write();
  }

 private:
  void Read() {
    sock_.async_read_some(asio::buffer(buf_), [self = shared_from_this()](const error_code& ec, size_t n) {
      if (ec) {
        if (self->on_close) self->on_close();
        return;
      }
      if (!self->dec_.Feed(self->buf_.data(), n).ok()) return;
      proto::Envelope e;
      for (;;) {
        auto r = self->dec_.Next(&e);
        if (!r.ok() || !*r) break;
        if (self->on_frame) self->on_frame(e);
      }
      self->Read();
    });
  }
  void Write() {
    writing_ = true;
    asio::async_write(sock_, asio::buffer(out_.front()), [self = shared_from_this()](const error_code& ec, size_t) {
      self->writing_ = false;
      if (ec) return;
      self->out_.pop_front();
      if (!self->out_.empty()) self->Write();
    });
  }
  tcp::socket sock_;
  FrameDecoder dec_;
  std::array<char, 16384> buf_;
  std::deque<std::string> out_;
  bool writing_ = false;
};

class Agent : public std::enable_shared_from_this<Agent> {
 public:
  Agent(asio::io_context& io, int index, Stats* stats, const std::string& token, bool echo)
      : io_(io), index_(index), stats_(stats), token_(token), echo_(echo), timer_(io) {}

  void Start(const tcp::endpoint& ep, Clock::duration first_heartbeat) {
    conn_ = std::make_shared<Conn>(io_);
    auto self = shared_from_this();
    conn_->on_frame = [self](const proto::Envelope& e) { self->OnFrame(e); };
    conn_->on_close = [self] { ++self->stats_->failed; };
    first_ = first_heartbeat;
    conn_->socket().async_connect(ep, [self](const error_code& ec) {
      if (ec) {
        ++self->stats_->failed;
        return;
      }
      self->conn_->Start();
      proto::Envelope hello;
      hello.set_request_id(1);
      hello.mutable_hello()->set_protocol_version(cohort::coordinator::kProtocolVersion);
      hello.mutable_hello()->set_role(proto::ROLE_WORKER);
      hello.mutable_hello()->set_token(self->token_);
      self->conn_->Send(hello);
      if (self->echo_) self->Registered();  // the echo peer has no registration
    });
  }

 private:
  void OnFrame(const proto::Envelope& e) {
    switch (e.body_case()) {
      case proto::Envelope::kWelcome: {
        if (echo_) return;
        proto::Envelope reg;
        reg.set_request_id(2);
        reg.mutable_register_worker()->set_name("sim-" + std::to_string(index_));
        reg.mutable_register_worker()->set_slots(8);
        conn_->Send(reg);
        return;
      }
      case proto::Envelope::kRegistered:
        Registered();
        return;
      case proto::Envelope::kHeartbeatAck: {
        auto it = sent_.find(e.request_id());
        if (it == sent_.end()) return;
        if (it->second.second) stats_->heartbeat_ms.push_back(Ms(Clock::now() - it->second.first));
        sent_.erase(it);
        return;
      }
      case proto::Envelope::kLaunch: {
        stats_->launched_ranks += e.launch().ranks_size();
        stats_->last_launch = Clock::now();
        // The ranks "run" and finish at once, so the job ends and frees its slots.
        for (int r : e.launch().ranks()) {
          proto::Envelope x;
          x.set_request_id(next_id_++);
          auto* ex = x.mutable_rank_exited();
          ex->set_job_id(e.launch().job_id());
          ex->set_epoch(e.launch().epoch());
          ex->set_rank(r);
          ex->set_exit_status(0);
          conn_->Send(x);
        }
        return;
      }
      default:
        return;
    }
  }

  void Registered() {
    ++stats_->registered;
    timer_.expires_after(first_);
    Tick();
  }

  void Tick() {
    timer_.async_wait([self = shared_from_this()](const error_code& ec) {
      if (ec) return;
      proto::Envelope hb;
      const uint64_t id = self->next_id_++;
      hb.set_request_id(id);
      hb.mutable_heartbeat();
      self->sent_[id] = {Clock::now(), self->stats_->measuring};
      self->conn_->Send(hb);
      self->timer_.expires_at(self->timer_.expiry() + std::chrono::seconds(1));
      self->Tick();
    });
  }

  asio::io_context& io_;
  int index_;
  Stats* stats_;
  std::string token_;
  bool echo_;
  asio::steady_timer timer_;
  Clock::duration first_{};
  std::shared_ptr<Conn> conn_;
  std::map<uint64_t, std::pair<Clock::time_point, bool>> sent_;
  uint64_t next_id_ = 100;
};

void RaiseFdLimit() {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) == 0) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

// CPU seconds (user + system) a process has used, from /proc/PID/stat; -1 if unreadable.
double CpuSeconds(int pid) {
  if (pid <= 0) return -1;
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
  if (f == nullptr) return -1;
  char buf[4096];
  const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // Fields after the command name (which may hold spaces) start after the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) return -1;
  unsigned long utime = 0, stime = 0;
  // state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
  if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2) return -1;
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// A /proc/PID/status field in kB ("VmRSS", "VmHWM"); -1 if unreadable.
long StatusKb(int pid, const char* field) {
  if (pid <= 0) return -1;
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "r");
  if (f == nullptr) return -1;
  char line[256];
  long kb = -1;
  const size_t len = std::strlen(field);
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, field, len) == 0 && line[len] == ':') kb = std::atol(line + len + 1);
  }
  std::fclose(f);
  return kb;
}

double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return v[k];
}

int RunEcho(int port) {
  asio::io_context io;
  tcp::acceptor acc(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
  std::printf("echo: listening on 127.0.0.1:%d\n", acc.local_endpoint().port());
  std::fflush(stdout);
  std::function<void()> accept = [&] {
    auto c = std::make_shared<Conn>(io);
    acc.async_accept(c->socket(), [&, c](const error_code& ec) {
      if (!ec) {
        std::weak_ptr<Conn> weak = c;
        c->on_frame = [weak](const proto::Envelope& e) {
          auto self = weak.lock();
          if (!self) return;
          proto::Envelope r;
          r.set_request_id(e.request_id());
          if (e.body_case() == proto::Envelope::kHello) {
            r.mutable_welcome()->set_protocol_version(cohort::coordinator::kProtocolVersion);
          } else {
            r.mutable_heartbeat_ack();
          }
          self->Send(r);
        };
        c->Start();
      }
      accept();
    });
  };
  accept();
  io.run();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_coordinator: simulated worker agents against a coordinator"};
  std::string mode = "agents", token_file, user_token_file;
  int port = 7450, agents = 1000, ranks = 512, server_pid = 0;
  double warmup = 5, seconds = 20, ramp_per_s = 2000;
  bool echo = false;
  app.add_option("--mode", mode, "agents | echo");
  app.add_option("--port", port, "the coordinator's (or echo server's) port on 127.0.0.1");
  app.add_option("--agents", agents);
  app.add_option("--ranks", ranks, "ranks of the job whose start is timed (0: none)");
  app.add_option("--warmup", warmup, "seconds after the last registration before measuring");
  app.add_option("--seconds", seconds, "seconds of heartbeats measured");
  app.add_option("--ramp", ramp_per_s, "new connections per second");
  app.add_option("--token-file", token_file, "the worker token");
  app.add_option("--user-token-file", user_token_file, "the user token (for the timed submission)");
  app.add_flag("--echo", echo, "the server is the echo peer (no registration, no submission)");
  app.add_option("--server-pid", server_pid, "the server's PID: its CPU time and memory are reported");
  CLI11_PARSE(app, argc, argv);
  RaiseFdLimit();
  if (mode == "echo") return RunEcho(port);

  auto read = [](const std::string& path) {
    std::string t;
    if (FILE* f = std::fopen(path.c_str(), "r")) {
      char buf[256];
      if (std::fgets(buf, sizeof buf, f)) t = buf;
      std::fclose(f);
    }
    while (!t.empty() && (t.back() == '\n' || t.back() == '\r')) t.pop_back();
    return t;
  };
  const std::string token = echo ? "" : read(token_file);
  asio::io_context io;
  Stats stats;
  const tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port));
  std::vector<std::shared_ptr<Agent>> sims;
  asio::steady_timer ramp(io);
  int started = 0;
  const auto t_start = Clock::now();
  std::function<void()> more = [&] {
    // A batch every 10 ms at the ramp rate.
    const int batch = std::max(1, static_cast<int>(ramp_per_s / 100));
    for (int k = 0; k < batch && started < agents; ++k, ++started) {
      auto a = std::make_shared<Agent>(io, started, &stats, token, echo);
      // Heartbeats spread evenly over the second.
      a->Start(ep, std::chrono::microseconds(static_cast<int64_t>(1e6 * started / std::max(1, agents))) +
                       std::chrono::milliseconds(1000));
      sims.push_back(std::move(a));
    }
    if (started < agents) {
      ramp.expires_after(std::chrono::milliseconds(10));
      ramp.async_wait([&](const error_code& ec) {
        if (!ec) more();
      });
    }
  };
  more();
  // Wait for every registration, then warm up, then measure.
  while (stats.registered + stats.failed < agents && Clock::now() - t_start < std::chrono::seconds(120)) {
    io.run_for(std::chrono::milliseconds(50));
  }
  const double registration_s = std::chrono::duration<double>(Clock::now() - t_start).count();
  io.run_for(std::chrono::milliseconds(static_cast<int64_t>(warmup * 1000)));
  stats.measuring = true;
  const double cpu0 = CpuSeconds(server_pid);
  const auto w0 = Clock::now();
  io.run_for(std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
  const double window = std::chrono::duration<double>(Clock::now() - w0).count();
  const double cpu1 = CpuSeconds(server_pid);
  stats.measuring = false;
  const double server_cores = cpu0 >= 0 && cpu1 >= 0 ? (cpu1 - cpu0) / window : -1;
  std::vector<double> hb = stats.heartbeat_ms;

  // The timed submission: a user connection submits a `ranks`-rank job.
  double submit_to_started_ms = -1;
  if (!echo && ranks > 0) {
    auto user = std::make_shared<Conn>(io);
    bool welcomed = false;
    Clock::time_point submitted;
    user->on_frame = [&](const proto::Envelope& e) {
      if (e.body_case() == proto::Envelope::kWelcome) welcomed = true;
      if (e.body_case() == proto::Envelope::kError) std::fprintf(stderr, "submit: %s\n", e.error().message().c_str());
    };
    error_code ec;
    user->socket().connect(ep, ec);
    user->Start();
    proto::Envelope hello;
    hello.set_request_id(1);
    hello.mutable_hello()->set_protocol_version(cohort::coordinator::kProtocolVersion);
    hello.mutable_hello()->set_role(proto::ROLE_USER);
    hello.mutable_hello()->set_token(read(user_token_file));
    user->Send(hello);
    while (!welcomed) io.run_for(std::chrono::milliseconds(10));
    proto::Envelope submit;
    submit.set_request_id(2);
    submit.mutable_submit()->set_spec_yaml("name: bench\ncommand: 'true'\nlaunch:\n  ranks: " + std::to_string(ranks) + "\n");
    submit.mutable_submit()->set_source("bench");
    const long before = stats.launched_ranks;
    submitted = Clock::now();
    user->Send(submit);
    while (stats.launched_ranks - before < ranks && Clock::now() - submitted < std::chrono::seconds(60)) {
      io.run_for(std::chrono::milliseconds(1));
    }
    if (stats.launched_ranks - before >= ranks) submit_to_started_ms = Ms(stats.last_launch - submitted);
    io.run_for(std::chrono::milliseconds(500));  // the exits go out
  }
  std::printf(
      "{\"agents\": %d, \"registered\": %ld, \"failed\": %ld, \"registration_s\": %.2f, \"heartbeats\": %zu, "
      "\"hb_p50_ms\": %.3f, \"hb_p99_ms\": %.3f, \"hb_max_ms\": %.3f, \"submit_to_started_ms\": %.1f, "
      "\"server_cores\": %.3f, \"server_rss_kb\": %ld, \"server_peak_rss_kb\": %ld}\n",
      agents, stats.registered, stats.failed, registration_s, hb.size(), Percentile(hb, 0.5), Percentile(hb, 0.99),
      hb.empty() ? 0.0 : *std::max_element(hb.begin(), hb.end()), submit_to_started_ms, server_cores,
      StatusKb(server_pid, "VmRSS"), StatusKb(server_pid, "VmHWM"));
  return 0;
}
