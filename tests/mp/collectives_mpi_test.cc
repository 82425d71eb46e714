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
  conformance::Tally t;
  conformance::RunSuite(c, t, /*large=*/true);
  // Small all-reduces take the one-shot path, which sums in rank order like Gloo (collectives/mpi.cc):
  // up to 64 KiB sent per rank, i.e. 16384 floats on 2 ranks, 8192 on 3, in fragments of 992.
  for (size_t count : {size_t{1}, size_t{3}, size_t{991}, size_t{992}, size_t{993}, size_t{8192}}) {
    t.Check(c, "rank-order all-reduce", count, conformance::AllReduceInRankOrder(c, count));
  }
  if (c.rank() == 0) std::printf("mpi conformance on %d ranks: %d passed, %d failed\n", c.size(), t.passes, t.failures);
  return t.failures == 0 ? 0 : 1;
}

}  // namespace

int main() { return Run(); }
