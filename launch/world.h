// Rank discovery: where this process sits in the job, as told by whatever started it.
//
// Recognized launchers, in order of precedence (the first whose variables are present wins; the
// innermost launcher comes first, since a process inherits the variables of the jobs around it):
//  1. torchrun-style environment (torchrun, the Cohort coordinator's agents, hand-made scripts):
//     RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT.
//  2. Open MPI's mpirun:  OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE.
//  3. PMIx (srun --mpi=pmix, prun): PMIX_RANK, with the size from PMIX_SIZE, else Slurm's
//     SLURM_STEP_NUM_TASKS / SLURM_NTASKS, and the local rank from SLURM_LOCALID. Under srun
//     --mpi=pmix Open MPI's OMPI_COMM_WORLD_* variables are not set.
//  4. Slurm without PMIx (srun --mpi=none): SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID /
//     SLURM_STEP_TASKS_PER_NODE. MPI cannot find its peers here (Debian's Open MPI has no Slurm
//     PMI support), so the collectives bootstrap through a store (Gloo). An sbatch script itself
//     (SLURM_NTASKS=N but no SLURM_STEP_NUM_TASKS: not started by srun) is one process, and
//     World::note says so.
//  5. Nothing: a single process (rank 0 of 1).
// MASTER_ADDR / MASTER_PORT are read under every launcher (a store address for Gloo).
//
// Malformed values (not a number, rank outside [0, size)) are InvalidArgument naming the
// variable. Pure functions of the environment given, so tests pass a map.
#pragma once

#include <functional>
#include <map>
#include <string>

#include "common/status.h"

namespace cohort::launch {

struct World {
  int rank = 0;
  int size = 1;
  int local_rank = 0;  // index among the ranks on this node
  int local_size = 1;  // ranks on this node (a guess when !local_size_known)
  bool local_size_known = false;  // the launcher said how many ranks share this node
  std::string launcher = "single";  // "mpirun", "srun", "pmix", "torchrun" or "single"
  bool mpi = false;    // MPI_Init will find the peers (mpirun, or srun/prun with PMIx)
  std::string master_addr;  // MASTER_ADDR, "" when unset
  int master_port = 0;      // MASTER_PORT, 0 when unset
  std::string job_id;       // SLURM_JOB_ID (+ "." SLURM_STEP_ID) or OMPI's job id, "" when none
  int nodes = 1;            // SLURM_STEP_NUM_NODES / SLURM_NNODES when known, else 1
  std::string note;         // a warning for the user (e.g. a batch script started without srun)

  std::string Describe() const;  // e.g. "rank 1 of 4 (local 1 of 2) under srun"
};

// Looks a variable up; nullptr when unset.
using Getenv = std::function<const char*(const char*)>;

Result<World> DiscoverWorld(const Getenv& getenv);
Result<World> DiscoverWorld(const std::map<std::string, std::string>& env);
Result<World> DiscoverWorldFromProcess();  // this process's environment

}  // namespace cohort::launch
