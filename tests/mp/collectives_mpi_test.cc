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
  if (c.rank() == 0) std::printf("mpi conformance on %d ranks: %d passed, %d failed\n", c.size(), t.passes, t.failures);
  return t.failures == 0 ? 0 : 1;
}

}  // namespace

int main() { return Run(); }
