#include "worker/agent.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/logging.h"
#include "coordinator/client.h"

extern char** environ;

namespace cohort::worker {

namespace proto = coordinator::proto;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr size_t kTailBytes = 4096;      // the end of a rank's output sent with its exit
constexpr size_t kMaxLineBytes = 16384;  // longer lines are cut into pieces of this size
constexpr size_t kMaxChunkBytes = 65536; // log bytes per LogChunk

std::string HostName() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "worker";
  return buf;
}

// Output of one rank, read by its own thread (a rank that writes a lot must never block on a full
// pipe because the agent is busy elsewhere).
struct Output {
  std::mutex mu;
  std::string pending;  // complete lines not yet sent to the coordinator
  std::string tail;     // the last kTailBytes of output
  bool eof = false;
};

struct Rank {
  uint64_t job = 0;
  uint64_t epoch = 0;
  int rank = 0;
  pid_t pid = -1;
  std::shared_ptr<Output> out = std::make_shared<Output>();
  std::shared_ptr<std::atomic<bool>> quit = std::make_shared<std::atomic<bool>>(false);
  std::thread reader;
  bool stopping = false;
  Clock::time_point stop_deadline;
  bool killed = false;
  bool exited = false;
  int status = 0;
  Clock::time_point exited_at;
  std::vector<int> gpus;  // the node's GPU slots (indexes into GpuNames) its launch holds
};

void ReadOutput(int fd, std::string log_path, std::shared_ptr<Output> out, std::shared_ptr<std::atomic<bool>> quit) {
  std::ofstream log(log_path, std::ios::app | std::ios::binary);
  std::string partial;
  char buf[65536];
  for (;;) {
    // Checked on every round: something outside the rank's process group (it called setsid) may
    // keep the pipe open and busy after the rank is gone.
    if (quit->load()) break;
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, 200);
    if (r < 0 && errno != EINTR) break;
    if (r <= 0) continue;
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    log.write(buf, n);
    log.flush();
    std::lock_guard<std::mutex> lk(out->mu);
    out->tail.append(buf, static_cast<size_t>(n));
    if (out->tail.size() > kTailBytes) out->tail.erase(0, out->tail.size() - kTailBytes);
    partial.append(buf, static_cast<size_t>(n));
    size_t cut = partial.rfind('\n');
    if (cut != std::string::npos) {
      out->pending.append(partial, 0, cut + 1);
      partial.erase(0, cut + 1);
    }
    if (partial.size() >= kMaxLineBytes) {
      out->pending += partial;
      out->pending += '\n';
      partial.clear();
    }
    // A coordinator that cannot keep up loses the oldest unsent lines, never the rank's progress.
    if (out->pending.size() > 16 * kMaxChunkBytes) out->pending.erase(0, out->pending.size() - 16 * kMaxChunkBytes);
  }
  std::lock_guard<std::mutex> lk(out->mu);
  if (!partial.empty()) out->pending += partial + "\n";
  out->eof = true;
  ::close(fd);
}

}  // namespace

class Agent::Impl {
 public:
  Impl(const AgentOptions& o, std::atomic<bool>* stop) : o_(o), stop_(stop) {}

  Status Init() {
    if (o_.name.empty()) o_.name = HostName();
    if (o_.slots < 0) return InvalidArgument("worker: --slots must be >= 0");
    if (o_.work_dir.empty()) {
      const char* tmp = std::getenv("TMPDIR");
      o_.work_dir = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/cohort-worker-" + o_.name;
    }
    std::error_code ec;
    std::filesystem::create_directories(o_.work_dir, ec);
    if (ec) return IoError("worker: cannot create " + o_.work_dir + ": " + ec.message());
    KillLeftovers();
    if (o_.self_exe.empty()) {
      char buf[4096];
      const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
      if (n <= 0) return ErrnoError("worker: /proc/self/exe", errno);
      o_.self_exe.assign(buf, static_cast<size_t>(n));
    }
    return Status::Ok();
  }

  Status Run();

 private:
  std::string GroupsFile() const { return o_.work_dir + "/process-groups"; }
  void KillLeftovers();
  void SaveGroups();
  void Connect();
  void Disconnect(const Status& why);
  void Handle(const proto::Envelope& e);
  void Launch(const proto::LaunchRanks& l);
  Status Spawn(const proto::LaunchRanks& l, int rank, int local_rank, int local_size, const std::string& spec_path,
               const std::string& gpus, const std::vector<int>& gpu_slots);
  // The GPUs this node may use: --gpus N of them, named as in the agent's own CUDA_VISIBLE_DEVICES
  // when that is set (a node shared between agents, or Slurm's allocation), else 0..N-1.
  std::vector<std::string> GpuNames() const;
  void StopJob(uint64_t job, uint64_t epoch, const std::string& why);
  void BeginStop(Rank& r);
  void Reap();
  void Report(Rank& r);
  void FlushLogs();
  void SendHeartbeat();
  void SendPendingExits();
  void Send(proto::Envelope e);
  void RunningList(google::protobuf::RepeatedPtrField<proto::RunningRank>* out) const;

  AgentOptions o_;
  std::atomic<bool>* stop_;
  std::unique_ptr<coordinator::Client> client_;
  Clock::time_point next_connect_ = Clock::now();
  milliseconds backoff_{200};
  Clock::time_point last_heard_ = Clock::now();  // the last frame from the coordinator
  milliseconds heartbeat_interval_{1000};
  milliseconds lease_{10000};
  Clock::time_point next_heartbeat_ = Clock::now();
  std::list<Rank> ranks_;
  std::map<uint64_t, uint64_t> newest_epoch_;  // job -> the newest epoch seen
  // RankExited reports not yet acknowledged, by the request id they were last sent with.
  std::map<uint64_t, proto::RankExited> unacked_;
  std::deque<proto::RankExited> unsent_;
  // The built-in trainer's metrics file of each attempt whose rank 0 runs here (job, epoch).
  struct Progress {
    std::string path;
    uint64_t offset = 0;
    std::string partial;
    bool have = false;
    proto::JobProgress latest;
  };
  std::map<std::pair<uint64_t, uint64_t>, Progress> progress_;
  void ReadProgress(Progress& p);
  bool ever_registered_ = false;
  Status fatal_;  // a refusal at start: Run() ends with it
};

// The process groups of the ranks this agent runs, one "PGID JOB EPOCH" line each, rewritten
// whenever one starts or is reported. A killed agent's ranks die with it (PR_SET_PDEATHSIG), but
// what they started does not; the next agent finds those by their group.
void Agent::Impl::SaveGroups() {
  const std::string tmp = GroupsFile() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    for (const Rank& r : ranks_) f << r.pid << ' ' << r.job << ' ' << r.epoch << '\n';
  }
  std::error_code ec;
  std::filesystem::rename(tmp, GroupsFile(), ec);
}

// Kills what is left of the groups a previous agent in this work directory recorded. A process
// is killed only if it is in such a group and carries that attempt's COHORT_ATTEMPT_EPOCH in its
// environment, so a reused group id never hits an unrelated process.
void Agent::Impl::KillLeftovers() {
  std::ifstream in(GroupsFile());
  std::map<long, std::string> groups;  // pgid -> "COHORT_ATTEMPT_EPOCH=<epoch>"
  long pgid = 0;
  uint64_t job = 0, epoch = 0;
  while (in >> pgid >> job >> epoch) {
    if (pgid > 1) groups[pgid] = "COHORT_ATTEMPT_EPOCH=" + std::to_string(epoch);
  }
  if (groups.empty()) return;
  int killed = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    std::getline(stat, line);
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream fields(line.substr(close + 2));
    char state;
    long ppid, group;
    if (!(fields >> state >> ppid >> group)) continue;
    auto it = groups.find(group);
    if (it == groups.end()) continue;
    std::ifstream env(entry.path() / "environ", std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
    if (all.find(std::string(1, '\0') + it->second + std::string(1, '\0')) == std::string::npos &&
        all.rfind(it->second + std::string(1, '\0'), 0) != 0) {
      continue;
    }
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (::kill(pid, SIGKILL) == 0) ++killed;
  }
  if (killed > 0) {
    COHORT_LOG_WARN("worker {}: killed {} process(es) left running by ranks of a previous agent", o_.name, killed);
  }
  std::filesystem::remove(GroupsFile(), ec);
}

void Agent::Impl::Send(proto::Envelope e) {
  if (!client_) return;
  Result<uint64_t> id = client_->Send(std::move(e), milliseconds(5000));
  if (!id.ok()) Disconnect(id.status());
}

void Agent::Impl::RunningList(google::protobuf::RepeatedPtrField<proto::RunningRank>* out) const {
  // Every rank not yet reported: one that exited is listed until its report goes out (on the same
  // connection, after this), or the coordinator would count it as vanished.
  for (const Rank& r : ranks_) {
    auto* x = out->Add();
    x->set_job_id(r.job);
    x->set_epoch(r.epoch);
    x->set_rank(r.rank);
    x->set_pid(r.pid);
  }
}

void Agent::Impl::Connect() {
  if (client_ || Clock::now() < next_connect_) return;
  coordinator::ClientOptions co;
  co.host = o_.coordinator_host;
  co.port = o_.coordinator_port;
  co.role = proto::ROLE_WORKER;
  co.token = o_.token;
  co.name = o_.name;
  // Short: the loop also reaps ranks and enforces the lease, and waits for this.
  co.timeout = milliseconds(2000);
  auto c = coordinator::Client::Connect(co);
  if (!c.ok()) {
    if (c.status().code() == Code::kInvalidArgument) {
      // Refused, not unreachable (a wrong token). At start that is a configuration error: stop
      // and say so. Once registered, the coordinator may have restarted with new settings that
      // an operator is fixing: keep trying, slowly, and say why.
      if (!ever_registered_) {
        fatal_ = c.status();
        return;
      }
      COHORT_LOG_ERROR("worker {}: {}", o_.name, c.status().message());
    } else {
      COHORT_LOG_WARN("worker {}: {} (retrying in {} ms)", o_.name, c.status().message(), backoff_.count());
    }
    next_connect_ = Clock::now() + backoff_;
    backoff_ = std::min(backoff_ * 2, o_.reconnect_max);
    return;
  }
  proto::Envelope reg;
  auto* r = reg.mutable_register_worker();
  r->set_name(o_.name);
  r->set_slots(o_.slots);
  r->set_gpus(o_.gpus);
  r->set_address(!o_.address.empty() ? o_.address : (*c)->local_address());
  r->set_stop_grace_ms(static_cast<uint32_t>(o_.stop_grace.count()));
  RunningList(r->mutable_running());
  Result<proto::Envelope> reply = (*c)->Call(std::move(reg), milliseconds(10000));
  if (!reply.ok() || reply->body_case() != proto::Envelope::kRegistered) {
    COHORT_LOG_ERROR("worker {}: registration refused: {}", o_.name,
                     reply.ok() ? std::string("unexpected reply") : reply.status().message());
    next_connect_ = Clock::now() + backoff_;
    backoff_ = std::min(backoff_ * 2, o_.reconnect_max);
    return;
  }
  client_ = std::move(c).value();
  ever_registered_ = true;
  last_heard_ = Clock::now();
  backoff_ = milliseconds(200);
  if (reply->registered().heartbeat_interval_ms() > 0) heartbeat_interval_ = milliseconds(reply->registered().heartbeat_interval_ms());
  if (reply->registered().lease_ms() > 0) lease_ = milliseconds(reply->registered().lease_ms());
  next_heartbeat_ = Clock::now() + heartbeat_interval_;
  COHORT_LOG_INFO("worker {}: registered with the coordinator at {} ({} slots)", o_.name, client_->peer(), o_.slots);
  // Exits reported before the connection broke, unacknowledged: again (a stale one is refused).
  for (auto& [id, x] : unacked_) unsent_.push_back(x);
  unacked_.clear();
  SendPendingExits();
}

void Agent::Impl::Disconnect(const Status& why) {
  if (!client_) return;
  COHORT_LOG_WARN("worker {}: lost the coordinator: {}", o_.name, why.message());
  client_.reset();
  next_connect_ = Clock::now();
}

void Agent::Impl::SendPendingExits() {
  while (client_ && !unsent_.empty()) {
    proto::Envelope e;
    *e.mutable_rank_exited() = unsent_.front();
    Result<uint64_t> id = client_->Send(e, milliseconds(5000));
    if (!id.ok()) {
      Disconnect(id.status());
      return;
    }
    unacked_[*id] = unsent_.front();
    unsent_.pop_front();
  }
}

void Agent::Impl::Handle(const proto::Envelope& e) {
  switch (e.body_case()) {
    case proto::Envelope::kLaunch:
      Launch(e.launch());
      return;
    case proto::Envelope::kStop:
      StopJob(e.stop().job_id(), e.stop().epoch(), "the coordinator asked");
      return;
    case proto::Envelope::kAck:
      unacked_.erase(e.request_id());
      return;
    case proto::Envelope::kHeartbeatAck:
      return;
    case proto::Envelope::kError:
      COHORT_LOG_WARN("worker {}: the coordinator refused request {}: {}", o_.name, e.request_id(), e.error().message());
      unacked_.erase(e.request_id());
      return;
    default:
      COHORT_LOG_WARN("worker {}: ignoring an unexpected {} from the coordinator", o_.name, coordinator::BodyName(e));
  }
}

void Agent::Impl::Launch(const proto::LaunchRanks& l) {
  uint64_t& newest = newest_epoch_[l.job_id()];
  if (l.epoch() < newest) {
    COHORT_LOG_WARN("worker {}: refusing to launch job {} epoch {}: epoch {} was seen already (stale)", o_.name,
                    l.job_id(), l.epoch(), newest);
    return;
  }
  if (l.epoch() > newest) {
    newest = l.epoch();
    StopJob(l.job_id(), l.epoch() - 1, "a newer attempt starts");
  }
  const std::string dir = o_.work_dir + "/" + std::to_string(l.job_id());
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  const std::string spec_path = dir + "/epoch-" + std::to_string(l.epoch()) + ".yaml";
  {
    std::ofstream f(spec_path, std::ios::binary | std::ios::trunc);
    f << l.spec_yaml();
  }
  std::vector<int> ranks(l.ranks().begin(), l.ranks().end());
  std::sort(ranks.begin(), ranks.end());
  // On a node with GPUs, the launch's ranks get one each, the lowest free ones, all listed in the
  // same order in every rank's CUDA_VISIBLE_DEVICES: rank LOCAL_RANK uses device LOCAL_RANK, as
  // with torchrun. Fewer free GPUs than ranks: the launch is refused (each rank reported failed).
  std::string gpus;
  std::vector<int> gpu_slots;
  Status refused;
  if (o_.gpus > 0) {
    const std::vector<std::string> names = GpuNames();
    std::set<int> busy;
    for (const Rank& r : ranks_) busy.insert(r.gpus.begin(), r.gpus.end());
    for (int g = 0; g < static_cast<int>(names.size()) && gpu_slots.size() < ranks.size(); ++g) {
      if (busy.count(g) == 0) gpu_slots.push_back(g);
    }
    if (gpu_slots.size() < ranks.size()) {
      refused = InvalidArgument("worker " + o_.name + " has " + std::to_string(gpu_slots.size()) + " free GPU(s) for " +
                                std::to_string(ranks.size()) + " rank(s): start it with --slots no larger than --gpus");
    }
    for (int g : gpu_slots) gpus += (gpus.empty() ? "" : ",") + names[static_cast<size_t>(g)];
  }
  for (size_t i = 0; i < ranks.size(); ++i) {
    Status st = refused.ok() ? Spawn(l, ranks[i], static_cast<int>(i), static_cast<int>(ranks.size()), spec_path,
                                     gpus, gpu_slots.empty() ? std::vector<int>() : std::vector<int>{gpu_slots[i]})
                             : refused;
    if (!st.ok()) {
      COHORT_LOG_ERROR("worker {}: job {} rank {}: {}", o_.name, l.job_id(), ranks[i], st.message());
      proto::RankExited x;
      x.set_job_id(l.job_id());
      x.set_epoch(l.epoch());
      x.set_rank(ranks[i]);
      x.set_exit_status(127);
      x.set_log_tail("cohort worker " + o_.name + ": " + st.message());
      unsent_.push_back(x);
    }
  }
  SendPendingExits();
}

Status Agent::Impl::Spawn(const proto::LaunchRanks& l, int rank, int local_rank, int local_size,
                          const std::string& spec_path, const std::string& gpus, const std::vector<int>& gpu_slots) {
  std::vector<std::string> argv(l.argv().begin(), l.argv().end());
  if (argv.empty()) {
    // The built-in trainer; its rank 0 writes a line of metrics per step, read for heartbeats.
    const std::string metrics = spec_path.substr(0, spec_path.size() - 5) + ".metrics.jsonl";
    argv = {o_.self_exe, "train", spec_path, "--resume=auto", "--metrics", metrics};
    if (rank == 0) progress_[{l.job_id(), l.epoch()}].path = metrics;
  }
  // The environment: ours, then the job's, then the rank's own (later entries win).
  std::map<std::string, std::string> env;
  for (char** p = environ; *p != nullptr; ++p) {
    const char* eq = std::strchr(*p, '=');
    if (eq != nullptr) env[std::string(*p, static_cast<size_t>(eq - *p))] = eq + 1;
  }
  for (const auto& [k, v] : l.env()) env[k] = v;
  env["RANK"] = std::to_string(rank);
  env["WORLD_SIZE"] = std::to_string(l.world_size());
  env["LOCAL_RANK"] = std::to_string(local_rank);
  env["LOCAL_WORLD_SIZE"] = std::to_string(local_size);
  env["GROUP_RANK"] = "0";
  if (!gpus.empty()) env["CUDA_VISIBLE_DEVICES"] = gpus;
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> cargv, cenv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  for (auto& x : env_strings) cenv.push_back(x.data());
  cenv.push_back(nullptr);
  std::string workdir = l.workdir();
  struct stat st;
  if (workdir.empty() || ::stat(workdir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    workdir = o_.work_dir + "/" + std::to_string(l.job_id());
  }

  const long open_max = ::sysconf(_SC_OPEN_MAX);
  const int max_fd = static_cast<int>(open_max > 0 && open_max < 65536 ? open_max : 65536);
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoError("pipe", errno);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    return ErrnoError("fork", err);
  }
  if (pid == 0) {
    // The child: only async-signal-safe calls until exec.
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(128 + SIGKILL);  // the agent died before the line above
    ::dup2(fds[1], STDOUT_FILENO);
    ::dup2(fds[1], STDERR_FILENO);
    const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull >= 0) ::dup2(devnull, STDIN_FILENO);
    // Nothing of the agent's reaches the job: not its connection to the coordinator (a rank could
    // forge reports on it), not other ranks' pipes or log files.
    if (::close_range(3, ~0U, 0) != 0) {
      for (int fd = 3; fd < max_fd; ++fd) ::close(fd);  // kernels before 5.9, or a seccomp filter
    }
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::signal(SIGINT, SIG_DFL);
    if (::chdir(workdir.c_str()) != 0) {
      static const char msg[] = "cohort worker: cannot enter the working directory\n";
      (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
      ::_exit(127);
    }
    ::execvpe(cargv[0], cargv.data(), cenv.data());
    // Only async-signal-safe calls here: the errno as digits, not strerror.
    const int err = errno;
    char num[16];
    int len = 0;
    for (int v = err; len < 15;) {
      num[len++] = static_cast<char>('0' + v % 10);
      v /= 10;
      if (v == 0) break;
    }
    static const char pre[] = "cohort worker: cannot run ";
    (void)!::write(STDERR_FILENO, pre, sizeof pre - 1);
    (void)!::write(STDERR_FILENO, cargv[0], ::strlen(cargv[0]));
    static const char mid[] = ": errno ";
    (void)!::write(STDERR_FILENO, mid, sizeof mid - 1);
    while (len > 0) (void)!::write(STDERR_FILENO, &num[--len], 1);
    (void)!::write(STDERR_FILENO, "\n", 1);
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also here: no race with a stop sent before the child ran setpgid
  ::close(fds[1]);
  Rank& r = ranks_.emplace_back();
  r.job = l.job_id();
  r.epoch = l.epoch();
  r.rank = rank;
  r.pid = pid;
  r.gpus = gpu_slots;
  const std::string log_path = o_.work_dir + "/" + std::to_string(l.job_id()) + "/rank-" + std::to_string(rank) + ".log";
  r.reader = std::thread(ReadOutput, fds[0], log_path, r.out, r.quit);
  SaveGroups();
  COHORT_LOG_INFO("worker {}: job {} epoch {} rank {} started (pid {}): {}", o_.name, r.job, r.epoch, rank, pid, argv[0]);
  return Status::Ok();
}

std::vector<std::string> Agent::Impl::GpuNames() const {
  std::vector<std::string> inherited;
  if (const char* v = std::getenv("CUDA_VISIBLE_DEVICES"); v != nullptr && *v != '\0') {
    std::stringstream ss(v);
    std::string item;
    while (std::getline(ss, item, ',')) {
      if (!item.empty()) inherited.push_back(item);
    }
  }
  std::vector<std::string> out;
  for (int g = 0; g < o_.gpus; ++g) {
    if (!inherited.empty() && g >= static_cast<int>(inherited.size())) break;
    out.push_back(inherited.empty() ? std::to_string(g) : inherited[static_cast<size_t>(g)]);
  }
  return out;
}

void Agent::Impl::BeginStop(Rank& r) {
  if (r.stopping || r.exited) return;
  r.stopping = true;
  r.stop_deadline = Clock::now() + o_.stop_grace;
  ::kill(-r.pid, SIGTERM);
}

void Agent::Impl::StopJob(uint64_t job, uint64_t epoch, const std::string& why) {
  for (Rank& r : ranks_) {
    if (r.job == job && r.epoch <= epoch && !r.stopping && !r.exited) {
      COHORT_LOG_INFO("worker {}: stopping job {} epoch {} rank {}: {}", o_.name, r.job, r.epoch, r.rank, why);
      BeginStop(r);
    }
  }
}

void Agent::Impl::Reap() {
  const auto now = Clock::now();
  for (Rank& r : ranks_) {
    if (!r.exited) {
      int status = 0;
      const pid_t got = ::waitpid(r.pid, &status, WNOHANG);
      if (got == r.pid) {
        r.exited = true;
        r.exited_at = now;
        r.status = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1;
        // Whatever the rank left behind in its group goes with it.
        ::kill(-r.pid, SIGKILL);
      } else if (r.stopping && !r.killed && now >= r.stop_deadline) {
        COHORT_LOG_WARN("worker {}: job {} rank {} did not stop within {} ms: killing it", o_.name, r.job, r.rank,
                        o_.stop_grace.count());
        ::kill(-r.pid, SIGKILL);
        r.killed = true;
      }
    }
  }
  for (auto it = ranks_.begin(); it != ranks_.end();) {
    bool eof;
    {
      std::lock_guard<std::mutex> lk(it->out->mu);
      eof = it->out->eof;
    }
    // Reported once its output is complete (or 2 s after it exited, if something kept the pipe).
    if (it->exited && (eof || now - it->exited_at > milliseconds(2000))) {
      it->quit->store(true);
      it->reader.join();
      FlushLogs();
      Report(*it);
      it = ranks_.erase(it);
      SaveGroups();
    } else {
      ++it;
    }
  }
}

void Agent::Impl::Report(Rank& r) {
  proto::RankExited x;
  x.set_job_id(r.job);
  x.set_epoch(r.epoch);
  x.set_rank(r.rank);
  x.set_exit_status(r.status);
  {
    std::lock_guard<std::mutex> lk(r.out->mu);
    x.set_log_tail(r.out->tail);
  }
  COHORT_LOG_INFO("worker {}: job {} epoch {} rank {} exited with status {}", o_.name, r.job, r.epoch, r.rank, r.status);
  if (r.rank == 0) progress_.erase({r.job, r.epoch});
  unsent_.push_back(std::move(x));
  SendPendingExits();
}

void Agent::Impl::FlushLogs() {
  if (!client_) return;
  for (Rank& r : ranks_) {
    std::string data;
    {
      std::lock_guard<std::mutex> lk(r.out->mu);
      if (r.out->pending.empty()) continue;
      data.swap(r.out->pending);
    }
    for (size_t at = 0; at < data.size() && client_; at += kMaxChunkBytes) {
      proto::Envelope e;
      auto* c = e.mutable_log_chunk();
      c->set_job_id(r.job);
      c->set_epoch(r.epoch);
      c->set_rank(r.rank);
      c->set_data(data.substr(at, kMaxChunkBytes));
      Send(std::move(e));
    }
  }
}

void Agent::Impl::SendHeartbeat() {
  if (!client_ || Clock::now() < next_heartbeat_) return;
  next_heartbeat_ = Clock::now() + heartbeat_interval_;
  proto::Envelope e;
  RunningList(e.mutable_heartbeat()->mutable_running());
  for (auto& [key, p] : progress_) {
    ReadProgress(p);
    if (!p.have) continue;
    p.latest.set_job_id(key.first);
    p.latest.set_epoch(key.second);
    *e.mutable_heartbeat()->add_progress() = p.latest;
  }
  Send(std::move(e));
}

// Reads what the trainer appended to its metrics file since the last heartbeat; keeps the last
// complete step line. A line that does not parse is skipped (it is the trainer's file, not input
// the agent must trust to run).
void Agent::Impl::ReadProgress(Progress& p) {
  std::ifstream in(p.path, std::ios::binary);
  if (!in) return;
  in.seekg(0, std::ios::end);
  const auto size = static_cast<uint64_t>(in.tellg());
  if (size < p.offset) p.offset = 0;  // rewritten
  if (size == p.offset) return;
  const uint64_t n = std::min<uint64_t>(size - p.offset, 1 << 20);
  std::string data(n, '\0');
  in.seekg(static_cast<std::streamoff>(p.offset));
  in.read(data.data(), static_cast<std::streamsize>(n));
  data.resize(static_cast<size_t>(in.gcount()));
  p.offset += data.size();
  p.partial += data;
  const size_t end = p.partial.rfind('\n');
  if (end == std::string::npos) return;
  const std::string lines = p.partial.substr(0, end + 1);
  p.partial.erase(0, end + 1);
  // The newest step line (the last one may be the run's summary, which has no "step").
  size_t stop = lines.size() - 1;  // the '\n' ending the line being looked at
  while (stop != std::string::npos && stop > 0) {
    const size_t nl = lines.rfind('\n', stop - 1);
    const size_t begin = nl == std::string::npos ? 0 : nl + 1;
    nlohmann::json j = nlohmann::json::parse(lines.substr(begin, stop - begin), nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer()) {
      p.latest.set_step(j["step"].get<int64_t>());
      p.latest.set_loss(j.value("loss", 0.0));
      p.latest.set_tokens_per_s(j.value("tokens_per_s", 0.0));
      p.latest.set_step_ms(j.value("step_ms", 0.0));
      p.latest.set_data_ms(j.value("data_ms", 0.0));
      p.latest.set_checkpoint_stall_ms(j.value("ckpt_stall_ms", 0.0));
      p.latest.set_checkpoints(j.value("ckpts", int64_t{0}));
      p.have = true;
      return;
    }
    stop = nl;
  }
}


Status Agent::Impl::Run() {
  COHORT_LOG_INFO("worker {}: {} slots, coordinator {}:{}, work directory {}", o_.name, o_.slots, o_.coordinator_host,
                  o_.coordinator_port, o_.work_dir);
  while (!stop_->load()) {
    // The lease counts from the last frame heard from the coordinator (heartbeats are
    // acknowledged), connected or not: a connection that looks open but carries nothing back (a
    // partition, a hung coordinator host) is as good as lost. Past it, the coordinator has given
    // up on this node's ranks and may have restarted them elsewhere: they are stopped, before any
    // attempt to reconnect (which may itself take a while when the network is gone).
    if (Clock::now() - last_heard_ > lease_) {
      const auto silent = std::chrono::duration_cast<milliseconds>(Clock::now() - last_heard_).count();
      if (client_) {
        Disconnect(Status(Code::kDeadlineExceeded, "nothing from the coordinator for " + std::to_string(silent) + " ms"));
      }
      for (Rank& r : ranks_) {
        if (!r.stopping && !r.exited) {
          COHORT_LOG_WARN("worker {}: nothing from the coordinator for {} ms (lease {} ms): stopping job {} rank {}",
                          o_.name, silent, lease_.count(), r.job, r.rank);
          BeginStop(r);
        }
      }
    }
    Connect();
    if (!fatal_.ok()) return fatal_.WithContext("worker " + o_.name);
    if (client_) {
      Result<std::optional<proto::Envelope>> m = client_->Receive(milliseconds(50));
      if (!m.ok()) {
        Disconnect(m.status());
      } else if (m->has_value()) {
        last_heard_ = Clock::now();
        Handle(**m);
      }
    } else {
      std::this_thread::sleep_for(milliseconds(50));
    }
    Reap();
    FlushLogs();
    SendPendingExits();
    SendHeartbeat();
  }
  // Stopping: the ranks go too (SIGTERM, then SIGKILL after the grace), and are reported if the
  // coordinator is still there.
  for (Rank& r : ranks_) BeginStop(r);
  while (!ranks_.empty()) {
    Reap();
    if (!ranks_.empty()) std::this_thread::sleep_for(milliseconds(20));
  }
  return Status::Ok();
}

Agent::Agent(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Agent::~Agent() = default;

Result<std::unique_ptr<Agent>> Agent::Create(const AgentOptions& options) {
  std::unique_ptr<Agent> agent(new Agent(nullptr));
  agent->impl_ = std::make_unique<Impl>(options, &agent->stop_);
  RETURN_IF_ERROR(agent->impl_->Init());
  return agent;
}

Status Agent::Run() { return impl_->Run(); }

}  // namespace cohort::worker
