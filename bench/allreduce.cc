// bench_allreduce: all-reduce time and bandwidth of (a) raw MPI_Allreduce (MPI_SUM, float, in
// place), (b) Cohort's MPI backend and (c) Cohort's Gloo backend, in one run under mpirun (rank
// and size from Open MPI; Gloo is bootstrapped through a tcp:// store served by rank 0 on a port
// it picks and broadcasts over MPI, or --store). Driven by bench/allreduce.
//
// Method: one buffer per rank of the largest size, allocated and touched once (a fresh page costs
// ~10 us to fault in); each size gets warmup calls, then `reps` timed repetitions per backend of
// back-to-back calls (each backend's count sized for ~--target-secs), the backends alternating
// inside each repetition so slow drifts of the machine hit all three. A repetition's time is the
// slowest rank's; the figure reported is the median repetition, per call. algbw = bytes / time, busbw = algbw * 2(n-1)/n (as
// nccl-tests define them); ratio = cohort's algbw / raw MPI's.
#include <mpi.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "collectives/gloo.h"
#include "collectives/mpi.h"
#include "launch/bootstrap.h"

namespace {

using namespace cohort::collectives;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "bench_allreduce: %s\n", what.c_str());
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

void Check(const cohort::Status& s, const char* what) {
  if (!s.ok()) Die(std::string(what) + ": " + s.ToString());
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof(a);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    Die("cannot find a free port");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

// Seconds per call of `op` over `iters` calls: the slowest rank's.
double TimeIters(const std::function<void()>& op, int iters) {
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) op();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / iters;
  double slowest = 0;
  MPI_Allreduce(&secs, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return slowest;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string SizeName(size_t bytes) {
  char b[32];
  if (bytes >= (size_t{1} << 20)) {
    std::snprintf(b, sizeof(b), "%zu MiB", bytes >> 20);
  } else {
    std::snprintf(b, sizeof(b), "%zu KiB", bytes >> 10);
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"All-reduce bandwidth: raw MPI vs Cohort's MPI and Gloo backends"};
  size_t min_bytes = 1024, max_bytes = size_t{256} << 20;
  int step = 4, reps = 5, warmup = 3;
  double target_secs = 0.05;  // per repetition and backend
  std::string store, gloo_host = "127.0.0.1", only;
  app.add_option("--min-bytes", min_bytes);
  app.add_option("--max-bytes", max_bytes);
  app.add_option("--step", step, "size multiplier (2 or 4)");
  app.add_option("--reps", reps);
  app.add_option("--warmup", warmup);
  app.add_option("--target-secs", target_secs, "time per repetition and backend");
  app.add_option("--store", store, "Gloo rendezvous store (default: tcp://127.0.0.1:<free port of rank 0>)");
  app.add_option("--gloo-host", gloo_host, "address Gloo's transport binds");
  CLI11_PARSE(app, argc, argv);

  int provided = 0;
  // The allocator settings `cohort train` uses for multi-rank runs (launch/bootstrap.h), applied
  // before anything is allocated so raw MPI and both backends run under the same conditions.
  cohort::launch::TuneAllocatorForCollectives();
  if (MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS) Die("MPI_Init_thread");
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  // Rank and size from the launcher, as the Gloo backend would get them (they match MPI's).
  if (const char* r = std::getenv("OMPI_COMM_WORLD_RANK"); r != nullptr && std::atoi(r) != rank) Die("rank mismatch");

  auto mpi = CreateMpiCommunicator(std::chrono::minutes(5));
  if (!mpi.ok()) Die(mpi.status().ToString());
  if (store.empty()) {
    int port = rank == 0 ? FreePort() : 0;
    MPI_Bcast(&port, 1, MPI_INT, 0, MPI_COMM_WORLD);
    store = "tcp://127.0.0.1:" + std::to_string(port);
  }
  GlooOptions go;
  go.rank = rank;
  go.size = size;
  go.store = store;
  go.prefix = "bench-allreduce-" + std::to_string(::getppid());
  go.hostname = gloo_host;
  go.timeout = std::chrono::minutes(5);
  auto gloo = CreateGlooCommunicator(go);
  if (!gloo.ok()) Die(gloo.status().ToString());

  // One buffer, touched once; every backend reduces in place in it.
  const size_t max_count = max_bytes / sizeof(float);
  std::vector<float> buf(max_count, 0.0f);

  // Sanity: every backend computes the same sum.
  for (Communicator* c : {mpi->get(), gloo->get()}) {
    std::vector<float> x(1000);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rank + i);
    Check(c->AllReduce(x.data(), x.size(), DataType::kFloat32, ReduceOp::kSum), "sanity all-reduce");
    for (size_t i = 0; i < x.size(); ++i) {
      const float want = static_cast<float>(size * (size - 1) / 2 + size * static_cast<int>(i));
      if (x[i] != want) Die(std::string(c->backend()) + " sanity check failed");
    }
  }

  if (rank == 0) {
    std::printf("ranks=%d; per size: %d warmup, median of %d repetitions of ~%.2f s per backend (gloo n = its calls per\n"
                "repetition); time = us per all-reduce (slowest rank);\n"
                "algbw/busbw in GB/s (busbw = algbw * 2(n-1)/n); ratio = cohort algbw / raw MPI algbw (target >= 0.95)\n",
                size, warmup, reps, target_secs);
    std::printf("%9s %6s | %10s %7s %7s | %10s %7s %7s %6s | %10s %7s %7s %6s\n", "size", "gloo n", "raw us",
                "algbw", "busbw", "mpi us", "algbw", "busbw", "ratio", "gloo us", "algbw", "busbw", "ratio");
  }
  const double bus = 2.0 * (size - 1) / size;
  bool mpi_met = true, gloo_met = true;
  for (size_t bytes = min_bytes; bytes <= max_bytes; bytes *= static_cast<size_t>(step)) {
    const size_t count = bytes / sizeof(float);
    float* x = buf.data();
    auto raw = [&] {
      if (MPI_Allreduce(MPI_IN_PLACE, x, static_cast<int>(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS) {
        Die("MPI_Allreduce");
      }
    };
    auto cohort_mpi = [&] { Check((*mpi)->AllReduce(x, count, DataType::kFloat32, ReduceOp::kSum), "mpi all-reduce"); };
    auto cohort_gloo = [&] { Check((*gloo)->AllReduce(x, count, DataType::kFloat32, ReduceOp::kSum), "gloo all-reduce"); };
    for (int i = 0; i < warmup; ++i) {
      raw();
      cohort_mpi();
      cohort_gloo();
    }
    // Iterations per backend: enough for ~target_secs per repetition, from the fastest of three
    // single calls (one slow call must not shrink the sample), 1..100000.
    auto iters_for = [&](const std::function<void()>& op) {
      const double probe = std::min({TimeIters(op, 1), TimeIters(op, 1), TimeIters(op, 1)});
      int n = static_cast<int>(std::clamp(target_secs / std::max(probe, 1e-7), 1.0, 100000.0));
      MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD);
      return n;
    };
    const int it_raw = iters_for(raw), it_mpi = iters_for(cohort_mpi), it_gloo = iters_for(cohort_gloo);
    std::vector<double> t_raw, t_mpi, t_gloo;
    for (int r = 0; r < reps; ++r) {
      t_raw.push_back(TimeIters(raw, it_raw));
      t_mpi.push_back(TimeIters(cohort_mpi, it_mpi));
      t_gloo.push_back(TimeIters(cohort_gloo, it_gloo));
    }
    const double a = Median(t_raw), b = Median(t_mpi), c = Median(t_gloo);
    const double gb = static_cast<double>(bytes) / 1e9;
    mpi_met &= a / b >= 0.95;
    gloo_met &= a / c >= 0.95;
    if (rank == 0) {
      std::printf("%9s %6d | %10.1f %7.3f %7.3f | %10.1f %7.3f %7.3f %6.2f | %10.1f %7.3f %7.3f %6.2f\n",
                  SizeName(bytes).c_str(), it_gloo, a * 1e6, gb / a, gb / a * bus, b * 1e6, gb / b, gb / b * bus, a / b,
                  c * 1e6, gb / c, gb / c * bus, a / c);
      std::fflush(stdout);
    }
  }
  if (rank == 0) {
    std::printf("target (cohort >= 0.95x raw MPI at every size): mpi backend %s, gloo backend %s\n",
                mpi_met ? "met" : "NOT met", gloo_met ? "met" : "NOT met");
  }
  gloo->reset();
  // The Cohort MPI communicator finalizes MPI when it is destroyed (it is the last one).
  mpi->reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
  return 0;
}
