#include "launch/bootstrap.h"

#include <arpa/inet.h>
#include <malloc.h>
#include <sched.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "collectives/in_process.h"
#include "collectives/mpi.h"
#include "common/logging.h"
#if defined(COHORT_HAVE_GLOO)
#include "collectives/gloo.h"
#endif

namespace cohort::launch {
namespace {

using collectives::Communicator;
using collectives::DataType;
using collectives::ReduceOp;

// A one-rank world: the in-process backend with a group of one, owning its group.
class SoloCommunicator final : public Communicator {
 public:
  explicit SoloCommunicator(std::chrono::milliseconds timeout)
      : group_(1, timeout), comm_(group_.Connect(0)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string_view backend() const override { return "solo"; }
  std::chrono::milliseconds timeout() const override { return comm_->timeout(); }
  Status AllReduce(void* buf, size_t count, DataType type, ReduceOp op) override {
    return comm_->AllReduce(buf, count, type, op);
  }
  Status ReduceScatter(const void* in, void* out, size_t count, DataType type,
                       ReduceOp op) override {
    return comm_->ReduceScatter(in, out, count, type, op);
  }
  Status AllGather(const void* in, void* out, size_t count, DataType type) override {
    return comm_->AllGather(in, out, count, type);
  }
  Status Broadcast(void* buf, size_t bytes, int root) override {
    return comm_->Broadcast(buf, bytes, root);
  }
  Status Barrier() override { return comm_->Barrier(); }
  void Abort(std::string_view, int) override {}  // no peers to release

 private:
  collectives::InProcessGroup group_;
  std::unique_ptr<Communicator> comm_;
};

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// Whether every rank runs on this node, as far as the launcher tells.
bool OneNode(const World& w) {
  return w.launcher == "srun" ? w.nodes == 1 : w.local_size_known && w.local_size == w.size;
}

// The rendezvous store for Gloo (see the header); "" when none can be derived.
std::string GlooStore(const World& w) {
  std::string explicit_store = Env("COHORT_RENDEZVOUS");
  if (!explicit_store.empty()) return explicit_store;
  if (!w.master_addr.empty() && w.master_port > 0) {
    return "tcp://" + w.master_addr + ":" + std::to_string(w.master_port);
  }
  if (OneNode(w) && !w.job_id.empty()) {
    std::string tmp = Env("TMPDIR");
    if (tmp.empty()) tmp = "/tmp";
    return "file://" + tmp + "/cohort-rendezvous-" + std::to_string(::getuid()) + "-" + w.job_id;
  }
  return "";
}

// The local address of the route to `host` (a UDP "connect" sends nothing; getsockname then tells
// which interface the kernel would use). This is the address peers on other nodes can reach,
// unlike the host name, which Debian maps to 127.0.1.1 in /etc/hosts. "" on failure.
std::string RouteAddressTo(const std::string& host, int port) {
  addrinfo hints = {};
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port > 0 ? port : 9).c_str(), &hints, &res) != 0) {
    return "";
  }
  std::string out;
  for (addrinfo* ai = res; ai != nullptr && out.empty(); ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    sockaddr_storage local = {};
    socklen_t len = sizeof local;
    char text[INET6_ADDRSTRLEN] = {};
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
        ::getnameinfo(reinterpret_cast<sockaddr*>(&local), len, text, sizeof text, nullptr, 0,
                      NI_NUMERICHOST) == 0) {
      out = text;
    }
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return out;
}

// A job-private rendezvous directory in a shared /tmp must be ours: created 0700, never followed
// through a symlink, refused when another user made it first (they could plant addresses).
Status PrepareStoreDir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status(Code::kUnavailable, "gloo rendezvous directory " + dir + ": " + std::strerror(errno));
  }
  struct stat st = {};
  if (::lstat(dir.c_str(), &st) != 0) {
    return Status(Code::kUnavailable, "gloo rendezvous directory " + dir + ": " + std::strerror(errno));
  }
  if (!S_ISDIR(st.st_mode) || st.st_uid != ::getuid()) {
    return Status(Code::kUnavailable, "gloo rendezvous directory " + dir +
                                          " exists but is not a directory owned by this user; "
                                          "remove it or set COHORT_RENDEZVOUS");
  }
  return Status::Ok();
}

}  // namespace

std::string BindToLocalShare(const World& world) {
  // Only with a node-local count every rank agrees on (else shares could overlap).
  if (Env("COHORT_BIND") == "0" || !world.local_size_known || world.local_size <= 1) return "";
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (::sched_getaffinity(0, sizeof allowed, &allowed) != 0) return "";
  const long online = ::sysconf(_SC_NPROCESSORS_ONLN);
  const int cores = CPU_COUNT(&allowed);
  // Already restricted (mpirun --bind-to core, srun --cpu-bind, taskset, a cgroup cpuset):
  // the launcher or the user decided; leave it.
  if (online <= 0 || cores < online || cores < world.local_size) return "";
  std::vector<int> ids;
  for (int c = 0; c < CPU_SETSIZE && static_cast<int>(ids.size()) < cores; ++c) {
    if (CPU_ISSET(c, &allowed)) ids.push_back(c);
  }
  const int share = cores / world.local_size;
  const int first = world.local_rank * share;
  const int last = world.local_rank == world.local_size - 1 ? cores : first + share;
  cpu_set_t mine;
  CPU_ZERO(&mine);
  for (int i = first; i < last; ++i) CPU_SET(ids[static_cast<size_t>(i)], &mine);
  if (::sched_setaffinity(0, sizeof mine, &mine) != 0) return "";
  return "bound to core(s) " + std::to_string(ids[static_cast<size_t>(first)]) +
         (last - first > 1 ? "-" + std::to_string(ids[static_cast<size_t>(last - 1)]) : std::string()) +
         " (" + std::to_string(world.local_size) + " ranks share this node's " +
         std::to_string(cores) + " cores; COHORT_BIND=0 to disable)";
}

void TuneAllocatorForCollectives() {
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

bool HaveBackend(const std::string& backend) {
  if (backend == "mpi") return true;
#if defined(COHORT_HAVE_GLOO)
  if (backend == "gloo") return true;
#endif
#if defined(COHORT_HAVE_NCCL)
  if (backend == "nccl") return true;
#endif
  return false;
}

Result<std::string> ResolveBackend(const std::string& requested, const World& world) {
  if (requested == "auto") return std::string(world.mpi ? "mpi" : "gloo");
  if (requested == "mpi" && !world.mpi && world.size > 1) {
    return InvalidArgument(
        "parallel.backend: mpi needs an MPI-aware launcher (mpirun, or srun --mpi=pmix), but this "
        "process was started by " + world.launcher + "; use backend gloo or auto");
  }
  if (requested == "nccl") {
    // The NCCL backend exists (collectives/nccl.h, when built with CUDA) but reduces device
    // buffers, and this trainer keeps its gradients in host memory until the CUDA kernels land.
    return InvalidArgument(std::string("parallel.backend: nccl is not available for training yet: ") +
                           (HaveBackend("nccl") ? "the trainer keeps gradients in host memory (no CUDA kernels yet)"
                                                : "this build has no CUDA") +
                           "; use auto, mpi or gloo");
  }
  if (requested != "mpi" && requested != "gloo" && requested != "nccl") {
    return InvalidArgument("parallel.backend: unknown backend '" + requested + "'");
  }
  return requested;
}

namespace {
Result<std::unique_ptr<Communicator>> ConnectBackend(const World& world,
                                                     const BootstrapOptions& options);
}  // namespace

Result<std::unique_ptr<Communicator>> Connect(const World& world, const BootstrapOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, ConnectBackend(world, options));
  // After the transport is up, so its own threads (Gloo's network thread) keep the whole node and
  // can run beside the compute; the binding covers this thread and those it starts later (the
  // OpenMP team, the gradient reducer's thread).
  if (world.size > 1) {
    const std::string bound = BindToLocalShare(world);
    if (!bound.empty()) COHORT_LOG_INFO("{}", bound);
  }
  return comm;
}

namespace {
Result<std::unique_ptr<Communicator>> ConnectBackend(const World& world,
                                                     const BootstrapOptions& options) {
  if (world.size == 1) {
    return std::unique_ptr<Communicator>(std::make_unique<SoloCommunicator>(options.timeout));
  }
  ASSIGN_OR_RETURN(std::string backend, ResolveBackend(options.backend, world));
  TuneAllocatorForCollectives();
  if (backend == "mpi") {
    ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm,
                     collectives::CreateMpiCommunicator(options.timeout));
    if (comm->rank() != world.rank || comm->size() != world.size) {
      return Status(Code::kUnavailable,
                    "MPI sees rank " + std::to_string(comm->rank()) + " of " +
                        std::to_string(comm->size()) + " but the launcher (" + world.launcher +
                        ") said " + world.Describe() +
                        "; with srun use --mpi=pmix (Debian's Open MPI has no PMI2 support)");
    }
    return comm;
  }
  if (backend == "gloo") {
#if defined(COHORT_HAVE_GLOO)
    collectives::GlooOptions o;
    o.rank = world.rank;
    o.size = world.size;
    o.store = GlooStore(world);
    if (o.store.empty()) {
      return InvalidArgument(
          "gloo backend: no rendezvous store for a " + std::to_string(world.size) +
          "-rank job under " + world.launcher +
          ": set MASTER_ADDR and MASTER_PORT (rank 0's host and a free port), or "
          "COHORT_RENDEZVOUS=file:///shared/dir, or launch with mpirun / srun --mpi=pmix");
    }
    std::string restart = Env("SLURM_RESTART_COUNT");
    o.prefix = "cohort/" + (world.job_id.empty() ? std::string("job") : world.job_id) + "/" +
               (restart.empty() ? std::string("0") : restart);
    // The address this rank's transport binds and advertises: COHORT_GLOO_HOSTNAME if set;
    // loopback when every rank is on this node; else the local end of the route to MASTER_ADDR
    // (reachable from the other nodes); else the host name, resolved by Gloo.
    o.hostname = Env("COHORT_GLOO_HOSTNAME");
    if (o.hostname.empty() && (OneNode(world) || world.master_addr == "127.0.0.1")) {
      o.hostname = "127.0.0.1";
    }
    if (o.hostname.empty() && !world.master_addr.empty()) {
      o.hostname = RouteAddressTo(world.master_addr, world.master_port);
    }
    const bool private_dir = Env("COHORT_RENDEZVOUS").empty() && o.store.rfind("file://", 0) == 0;
    if (private_dir) RETURN_IF_ERROR(PrepareStoreDir(o.store.substr(7)));
    o.timeout = options.timeout;
    COHORT_LOG_DEBUG("gloo rendezvous through {} (prefix {})", o.store, o.prefix);
    ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, collectives::CreateGlooCommunicator(o));
    // A file store this function made up (not the user's COHORT_RENDEZVOUS) is private to this
    // job: once every rank is connected (and has removed its keys), rank 0 removes the directory.
    if (private_dir) {
      RETURN_IF_ERROR(comm->Barrier().WithContext("gloo rendezvous cleanup"));
      if (world.rank == 0) {
        std::error_code ec;
        std::filesystem::remove_all(o.store.substr(7), ec);  // best effort: a leftover is harmless
      }
    }
    return comm;
#else
    return InvalidArgument("parallel.backend: gloo is not available in this build");
#endif
  }
  return InvalidArgument("parallel.backend: " + backend + " is not available in this build");
}

}  // namespace

}  // namespace cohort::launch
