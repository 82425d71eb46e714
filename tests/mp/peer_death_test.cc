// A rank killed with SIGKILL in the middle of a run must not leave its peers hanging: under
// mpirun the others are torn down, and a stuck collective returns DeadlineExceeded. Run by
// tests/mp/peer_death_test.sh.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "collectives/mpi.h"

// Modes: "kill" (default): rank 1 SIGKILLs itself; "stall": rank 1 stops calling collectives
// (as a SIGSTOPped or hung rank would), so the others must hit the 5 s deadline.
int main(int argc, char** argv) {
  const bool stall = argc > 1 && std::string(argv[1]) == "stall";
  using namespace cohort::collectives;
  auto comm = CreateMpiCommunicator(std::chrono::seconds(5));
  if (!comm.ok()) return 1;
  Communicator& c = **comm;
  float x = 1;
  if (!c.AllReduce(&x, 1, DataType::kFloat32, ReduceOp::kSum).ok()) return 1;
  if (c.rank() == 1) {
    if (stall) {
      std::fprintf(stderr, "rank 1: stalling (not joining the next collective)\n");
      ::sleep(60);
      return 0;
    }
    std::fprintf(stderr, "rank 1: killing myself with SIGKILL\n");
    ::kill(::getpid(), SIGKILL);
  }
  cohort::Status s = c.AllReduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
  std::fprintf(stderr, "rank %d: all-reduce after peer death: %s\n", c.rank(), s.ToString().c_str());
  return s.ok() ? 0 : 3;
}
