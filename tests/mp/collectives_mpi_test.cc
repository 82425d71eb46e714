// The Communicator conformance suite on the MPI backend, run by ctest under a real `mpirun -np N`
// (label mp). Every rank runs the same checks; a failing rank makes mpirun exit non-zero.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "collectives/mpi.h"
#include "tests/unit/collectives_conformance.h"

namespace {

using cohort::Status;
using namespace cohort::collectives;

int Run() {
  auto comm = CreateMpiCommunicator(std::chrono::seconds(60));
  if (!comm.ok()) {
    std::fprintf(stderr, "%s\n", comm.status().ToString().c_str());
    return 1;
  }
  Communicator& c = **comm;
  int failures = 0, passes = 0;
  auto check = [&](const char* name, size_t count, Status s) {
    if (s.ok()) {
      ++passes;
    } else {
      ++failures;
      std::fprintf(stderr, "FAIL rank %d: %s count=%zu: %s\n", c.rank(), name, count,
                   s.ToString().c_str());
    }
  };
  for (size_t count : conformance::Sizes()) {
    check("all-reduce", count, conformance::AllReduceSumAndAvg(c, count));
    check("reduce-scatter/all-gather", count, conformance::ReduceScatterThenAllGather(c, count));
    check("broadcast", count, conformance::BroadcastFromEveryRoot(c, count));
    check("bf16/fp16", count, conformance::SixteenBit(c, count));
  }
  // 64 MiB all-reduce: the size the gradient buckets reach.
  check("all-reduce 64MiB", size_t{16} << 20, conformance::AllReduceSumAndAvg(c, size_t{16} << 20));
  if (c.rank() == 0) std::printf("mpi conformance on %d ranks: %d passed, %d failed\n", c.size(), passes, failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main() { return Run(); }
