// The coordinator's commands: `cohort coordinator` (the service), `cohort worker` (the node
// agent), and the job CLI: submit, jobs, status, logs, cancel, workers (docs/coordinator.md).
//
// Where the coordinator is: --coordinator HOST:PORT, else $COHORT_COORDINATOR, else
// 127.0.0.1:7450. The token: --token-file FILE, else $COHORT_TOKEN_FILE, else
// ~/.cohort/user.token (the user token for the job CLI; the worker token for `cohort worker`).
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "cli/commands.h"
#include "collectives/kv_store.h"
#include "common/config.h"
#include "common/logging.h"
#include "coordinator/client.h"
#include "coordinator/service.h"
#include "worker/agent.h"

namespace cohort::cli {
namespace {

namespace proto = coordinator::proto;
using std::chrono::milliseconds;

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

struct Endpoint {
  std::string coordinator;  // HOST:PORT
  std::string token_file;
};

void AddEndpointOptions(CLI::App* cmd, Endpoint* ep, const char* default_token) {
  cmd->add_option("--coordinator", ep->coordinator,
                  "the coordinator's HOST:PORT (default $COHORT_COORDINATOR, else 127.0.0.1:7450)");
  cmd->add_option("--token-file", ep->token_file,
                  std::string("file holding the token (default $COHORT_TOKEN_FILE, else ~/.cohort/") + default_token + ")");
}

Result<coordinator::ClientOptions> Resolve(const Endpoint& ep, proto::Role role, const char* default_token) {
  coordinator::ClientOptions o;
  o.role = role;
  std::string where = !ep.coordinator.empty() ? ep.coordinator : Env("COHORT_COORDINATOR");
  if (where.empty()) where = "127.0.0.1:7450";
  RETURN_IF_ERROR(coordinator::ParseHostPort(where, "--coordinator", &o.host, &o.port));
  std::string file = !ep.token_file.empty() ? ep.token_file : Env("COHORT_TOKEN_FILE");
  if (file.empty()) file = Env("HOME") + "/.cohort/" + default_token;
  ASSIGN_OR_RETURN(o.token, coordinator::ReadTokenFile(file, "token file"));
  return o;
}

Result<std::unique_ptr<coordinator::Client>> ConnectUser(const Endpoint& ep, const char* what) {
  ASSIGN_OR_RETURN(coordinator::ClientOptions o, Resolve(ep, proto::ROLE_USER, "user.token"));
  o.name = std::string("cohort ") + what;
  return coordinator::Client::Connect(o);
}

// One request on a fresh user connection.
Result<proto::Envelope> Ask(const Endpoint& ep, const char* what, const proto::Envelope& request) {
  ASSIGN_OR_RETURN(std::unique_ptr<coordinator::Client> c, ConnectUser(ep, what));
  return c->Call(request, milliseconds(30000));
}

const char* StateName(proto::JobState s) {
  switch (s) {
    case proto::JOB_QUEUED: return "queued";
    case proto::JOB_RUNNING: return "running";
    case proto::JOB_SUCCEEDED: return "succeeded";
    case proto::JOB_FAILED: return "failed";
    case proto::JOB_CANCELLED: return "cancelled";
    default: return "unknown";
  }
}

bool Final(proto::JobState s) {
  return s == proto::JOB_SUCCEEDED || s == proto::JOB_FAILED || s == proto::JOB_CANCELLED;
}

std::string Utc(int64_t unix_ms) { return unix_ms <= 0 ? "-" : UtcTime(unix_ms); }

// Blocks SIGINT and SIGTERM in this thread (and the threads it starts), and runs `on_signal` on a
// thread of its own when one arrives.
class SignalWaiter {
 public:
  explicit SignalWaiter(std::function<void(int)> on_signal) {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGUSR2);  // our own wake-up at destruction
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::thread([this, f = std::move(on_signal)] {
      int sig = 0;
      while (sigwait(&set_, &sig) == 0) {
        if (sig == SIGUSR2) {
          if (done_.load()) return;
          continue;
        }
        f(sig);
      }
    });
  }
  ~SignalWaiter() {
    done_.store(true);
    pthread_kill(thread_.native_handle(), SIGUSR2);
    thread_.join();
  }

 private:
  sigset_t set_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// ---- cohort coordinator ----------------------------------------------------------------------

// The per-attempt rendezvous stores, served by the collectives' TCP key-value store.
class KvRendezvous : public coordinator::RendezvousHost {
 public:
  Result<int> Open(uint64_t epoch) override {
    ASSIGN_OR_RETURN(auto server, collectives::KvStoreServer::Start(0));
    const int port = server->port();
    std::lock_guard<std::mutex> lk(mu_);
    servers_[epoch] = std::move(server);
    return port;
  }
  void Close(uint64_t epoch) override {
    std::lock_guard<std::mutex> lk(mu_);
    servers_.erase(epoch);
  }

 private:
  std::mutex mu_;
  std::map<uint64_t, std::unique_ptr<collectives::KvStoreServer>> servers_;
};

void AddCoordinatorCommand(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("coordinator", "run the job coordinator (a service; docs/coordinator.md)");
  auto config = std::make_shared<std::string>();
  auto listen = std::make_shared<std::string>();
  cmd->add_option("--config", *config, "coordinator.yaml")->required();
  cmd->add_option("--listen", *listen, "HOST:PORT to listen on, overriding the file's `listen`");
  cmd->callback([&ctx, config, listen] {
    Result<coordinator::ServiceOptions> o = coordinator::LoadServiceOptions(*config);
    if (!o.ok()) return ReportError(o.status(), ctx);
    if (!listen->empty()) {
      Status st = coordinator::ParseHostPort(*listen, "--listen", &o->listen_host, &o->listen_port,
                                             /*allow_any_port=*/true);
      if (!st.ok()) return ReportError(st, ctx);
    }
    KvRendezvous rendezvous;
    Result<std::unique_ptr<coordinator::Service>> svc = coordinator::Service::Create(*o, &rendezvous);
    if (!svc.ok()) return ReportError(svc.status(), ctx);
    // The port, for scripts that asked for any free one (listen: HOST:0).
    std::printf("cohort coordinator: listening on %s:%d\n", o->listen_host.c_str(), (*svc)->port());
    if ((*svc)->http_port() >= 0) std::printf("cohort coordinator: http on %s:%d\n", o->http_host.c_str(), (*svc)->http_port());
    std::fflush(stdout);
    Status st = (*svc)->Run();
    if (!st.ok()) return ReportError(st, ctx);
  });
}

// ---- cohort worker ---------------------------------------------------------------------------

void AddWorkerCommand(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("worker", "run the node agent: take ranks from the coordinator (docs/coordinator.md)");
  auto ep = std::make_shared<Endpoint>();
  auto o = std::make_shared<worker::AgentOptions>();
  auto grace_s = std::make_shared<int>(30);
  AddEndpointOptions(cmd, ep.get(), "worker.token");
  cmd->add_option("--slots", o->slots, "rank processes this node runs at once")->required()->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--gpus", o->gpus, "GPUs on this node")->check(CLI::Range(0, 1024));
  cmd->add_option("--name", o->name, "unique name of this node (default: the host name)");
  cmd->add_option("--address", o->address,
                  "address other nodes reach this node's ranks at (default: this side of the connection to the "
                  "coordinator)");
  cmd->add_option("--work-dir", o->work_dir, "spec files and rank logs (default $TMPDIR/cohort-worker-NAME)");
  cmd->add_option("--stop-grace-s", *grace_s, "seconds between SIGTERM and SIGKILL when stopping a rank")
      ->check(CLI::Range(0, 3600));
  cmd->callback([&ctx, ep, o, grace_s] {
    Result<coordinator::ClientOptions> c = Resolve(*ep, proto::ROLE_WORKER, "worker.token");
    if (!c.ok()) return ReportError(c.status(), ctx);
    o->coordinator_host = c->host;
    o->coordinator_port = c->port;
    o->token = c->token;
    o->stop_grace = std::chrono::seconds(*grace_s);
    // Signals are taken by a thread of their own before any other thread starts.
    std::unique_ptr<worker::Agent> agent;
    std::atomic<worker::Agent*> target{nullptr};
    SignalWaiter signals([&target](int sig) {
      COHORT_LOG_INFO("worker: signal {}: stopping the ranks and exiting", sig);
      if (auto* a = target.load()) a->Stop();
    });
    Result<std::unique_ptr<worker::Agent>> created = worker::Agent::Create(*o);
    if (!created.ok()) return ReportError(created.status(), ctx);
    agent = std::move(created).value();
    target.store(agent.get());
    Status st = agent->Run();
    target.store(nullptr);
    if (!st.ok()) return ReportError(st, ctx);
  });
}

// ---- the job CLI -----------------------------------------------------------------------------

Result<proto::JobSummary> JobSummary(coordinator::Client& c, uint64_t id) {
  proto::Envelope q;
  q.mutable_job_status()->set_job_id(id);
  ASSIGN_OR_RETURN(proto::Envelope r, c.Call(q, milliseconds(30000)));
  return r.job_status_reply().job();
}

// Polls until the job ends; the exit code says how (0 succeeded, 1 otherwise).
void WaitForJob(coordinator::Client& c, uint64_t id, Context& ctx) {
  for (;;) {
    Result<proto::JobSummary> j = JobSummary(c, id);
    if (!j.ok()) return ReportError(j.status(), ctx);
    if (Final(j->state())) {
      std::printf("job %" PRIu64 " %s%s%s\n", id, StateName(j->state()), j->message().empty() ? "" : ": ",
                  j->message().c_str());
      ctx.exit_code = j->state() == proto::JOB_SUCCEEDED ? kExitOk : kExitFailure;
      return;
    }
    std::this_thread::sleep_for(milliseconds(300));
  }
}

void AddSubmitCommand(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("submit", "submit a job to the coordinator");
  auto ep = std::make_shared<Endpoint>();
  auto file = std::make_shared<std::string>();
  auto sets = std::make_shared<std::vector<std::string>>();
  auto wait = std::make_shared<bool>(false);
  AddEndpointOptions(cmd, ep.get(), "user.token");
  cmd->add_option("job", *file, "job.yaml")->required();
  cmd->add_option("--set", *sets, "override a field: key.path=value (repeatable)");
  cmd->add_flag("--wait", *wait, "wait until the job ends; exit 0 if it succeeded, 1 if not");
  cmd->callback([&ctx, ep, file, sets, wait] {
    // Validated and resolved here (relative paths against the job file), so the coordinator and
    // the workers get a spec that means the same wherever it runs.
    Result<config::JobSpec> spec = config::LoadJobSpec(*file, config::Limits(), *sets);
    if (!spec.ok()) return ReportError(spec.status(), ctx);
    auto c = ConnectUser(*ep, "submit");
    if (!c.ok()) return ReportError(c.status(), ctx);
    proto::Envelope q;
    q.mutable_submit()->set_spec_yaml(config::ToYaml(*spec));
    std::error_code ec;
    q.mutable_submit()->set_source(std::filesystem::absolute(*file, ec).lexically_normal().string());
    Result<proto::Envelope> r = (*c)->Call(q, milliseconds(30000));
    if (!r.ok()) return ReportError(r.status(), ctx);
    const uint64_t id = r->submit_reply().job_id();
    std::printf("submitted job %" PRIu64 " (%s, %d ranks)\n", id, spec->name.c_str(), spec->launch.ranks);
    std::fflush(stdout);
    if (*wait) WaitForJob(**c, id, ctx);
  });
}

void AddJobsCommand(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("jobs", "list the coordinator's jobs");
  auto ep = std::make_shared<Endpoint>();
  AddEndpointOptions(cmd, ep.get(), "user.token");
  cmd->callback([&ctx, ep] {
    proto::Envelope q;
    q.mutable_list_jobs();
    Result<proto::Envelope> r = Ask(*ep, "jobs", q);
    if (!r.ok()) return ReportError(r.status(), ctx);
    std::printf("%-6s %-20s %-10s %5s %5s %8s  %-19s  %s\n", "ID", "NAME", "STATE", "RANKS", "PRIO", "RESTARTS",
                "SUBMITTED (UTC)", "MESSAGE");
    for (const auto& j : r->job_list().jobs()) {
      std::printf("%-6" PRIu64 " %-20s %-10s %5d %5d %8u  %-19s  %s\n", j.job_id(), j.name().c_str(),
                  StateName(j.state()), j.ranks(), j.priority(), j.restarts(), Utc(j.submitted_unix_ms()).c_str(),
                  j.message().c_str());
    }
  });
}

void AddStatusCommand(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("status", "show a job and its attempts");
  auto ep = std::make_shared<Endpoint>();
  auto id = std::make_shared<uint64_t>(0);
  auto wait = std::make_shared<bool>(false);
  AddEndpointOptions(cmd, ep.get(), "user.token");
  cmd->add_option("job", *id, "job id")->required();
  cmd->add_flag("--wait", *wait, "wait until the job ends; exit 0 if it succeeded, 1 if not");
  cmd->callback([&ctx, ep, id, wait] {
    auto c = ConnectUser(*ep, "status");
    if (!c.ok()) return ReportError(c.status(), ctx);
    if (*wait) return WaitForJob(**c, *id, ctx);
    proto::Envelope q;
    q.mutable_job_status()->set_job_id(*id);
    Result<proto::Envelope> r = (*c)->Call(q, milliseconds(30000));
    if (!r.ok()) return ReportError(r.status(), ctx);
    const auto& j = r->job_status_reply().job();
    std::printf("job %" PRIu64 " %s\n  state      %s%s%s\n  ranks      %d\n  priority   %d\n  restarts   %u\n"
                "  submitted  %s UTC\n  updated    %s UTC\n",
                j.job_id(), j.name().c_str(), StateName(j.state()), j.message().empty() ? "" : ": ", j.message().c_str(),
                j.ranks(), j.priority(), j.restarts(), Utc(j.submitted_unix_ms()).c_str(),
                Utc(j.updated_unix_ms()).c_str());
    int n = 0;
    for (const auto& a : r->job_status_reply().attempts()) {
      std::string where;
      for (const auto& p : a.placements()) {
        where += (where.empty() ? "" : ", ") + p.worker() + " ranks " + std::to_string(p.first_rank()) + "-" +
                 std::to_string(p.first_rank() + p.count() - 1);
      }
      std::printf("  attempt %d (epoch %" PRIu64 "): %s .. %s on %s", ++n, a.epoch(), Utc(a.started_unix_ms()).c_str(),
                  a.ended_unix_ms() > 0 ? Utc(a.ended_unix_ms()).c_str() : "running", where.c_str());
      if (!a.message().empty()) {
        std::printf(": %s", a.message().c_str());
      } else if (a.exit_rank() >= 0) {
        std::printf("; rank %d exited with status %d", a.exit_rank(), a.exit_status());
      }
      std::printf("\n");
      if (!a.log_tail().empty()) {
        std::printf("    output of that rank, the end:\n");
        PrintIndented(a.log_tail(), "      ");
      }
    }
  });
}

void AddLogsCommand(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("logs", "print a job's output (every rank, or one)");
  auto ep = std::make_shared<Endpoint>();
  auto id = std::make_shared<uint64_t>(0);
  auto rank = std::make_shared<int>(-1);
  auto follow = std::make_shared<bool>(false);
  AddEndpointOptions(cmd, ep.get(), "user.token");
  cmd->add_option("job", *id, "job id")->required();
  cmd->add_option("--rank", *rank, "only this rank's output")->check(CLI::Range(0, 1 << 20));
  cmd->add_flag("-f,--follow", *follow, "keep printing until the job ends");
  cmd->callback([&ctx, ep, id, rank, follow] {
    auto c = ConnectUser(*ep, "logs");
    if (!c.ok()) return ReportError(c.status(), ctx);
    uint64_t offset = 0;
    for (;;) {
      proto::Envelope q;
      q.mutable_logs()->set_job_id(*id);
      q.mutable_logs()->set_rank(*rank);
      q.mutable_logs()->set_offset(offset);
      Result<proto::Envelope> r = (*c)->Call(q, milliseconds(30000));
      if (!r.ok()) return ReportError(r.status(), ctx);
      const auto& l = r->logs_reply();
      std::fwrite(l.data().data(), 1, l.data().size(), stdout);
      std::fflush(stdout);
      offset = l.next_offset();
      if (l.data().empty()) {
        if (!*follow || l.done()) return;
        std::this_thread::sleep_for(milliseconds(300));
      }
    }
  });
}

void AddCancelCommand(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("cancel", "cancel a job: its ranks are stopped on every node");
  auto ep = std::make_shared<Endpoint>();
  auto id = std::make_shared<uint64_t>(0);
  AddEndpointOptions(cmd, ep.get(), "user.token");
  cmd->add_option("job", *id, "job id")->required();
  cmd->callback([&ctx, ep, id] {
    proto::Envelope q;
    q.mutable_cancel()->set_job_id(*id);
    Result<proto::Envelope> r = Ask(*ep, "cancel", q);
    if (!r.ok()) return ReportError(r.status(), ctx);
    std::printf("job %" PRIu64 " cancelled\n", *id);
  });
}

void AddWorkersCommand(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("workers", "list the worker nodes");
  auto ep = std::make_shared<Endpoint>();
  AddEndpointOptions(cmd, ep.get(), "user.token");
  cmd->callback([&ctx, ep] {
    proto::Envelope q;
    q.mutable_list_workers();
    Result<proto::Envelope> r = Ask(*ep, "workers", q);
    if (!r.ok()) return ReportError(r.status(), ctx);
    std::printf("%-24s %-5s %5s %5s  %s\n", "NAME", "STATE", "SLOTS", "USED", "LAST HEARTBEAT (UTC)");
    for (const auto& w : r->worker_list().workers()) {
      std::printf("%-24s %-5s %5d %5d  %s\n", w.name().c_str(), w.up() ? "up" : "down", w.slots(), w.used_slots(),
                  Utc(w.last_heartbeat_unix_ms()).c_str());
    }
  });
}

}  // namespace

void AddJobCommands(CLI::App& app, Context& ctx) {
  AddCoordinatorCommand(app, ctx);
  AddWorkerCommand(app, ctx);
  AddSubmitCommand(app, ctx);
  AddJobsCommand(app, ctx);
  AddStatusCommand(app, ctx);
  AddLogsCommand(app, ctx);
  AddCancelCommand(app, ctx);
  AddWorkersCommand(app, ctx);
}

}  // namespace cohort::cli
