// Process bootstrap: picks the collective backend for the discovered World and connects it.
//
// Backend `auto`: NCCL when the trainer runs on GPUs (not yet: the NCCL backend is built with
// CUDA, but the trainer has no CUDA kernels in this version and reduces host memory), else MPI when the launcher is MPI-aware (mpirun; srun/prun with PMIx), else
// Gloo over a rendezvous store. An explicit backend that cannot work here (mpi without an MPI
// launcher, nccl in a CPU build, gloo without a store address) is InvalidArgument saying what to
// do instead. A single-rank world needs no transport: it gets a trivial one-rank communicator
// whatever the backend says.
//
// Gloo's rendezvous store, first match wins:
//   COHORT_RENDEZVOUS=file:///shared/dir, tcp://host:port (rank 0 serves) or store://host:port (a
//   store someone else serves: the coordinator sets this for the ranks it launches) (explicit),
//   MASTER_ADDR + MASTER_PORT (torchrun style; rank 0 serves a TCP store there),
//   all ranks on one node (Slurm says so, or a torchrun-style local world): a file store under
//   $TMPDIR (or /tmp) keyed by the job id, created 0700 and refused if another user owns it.
// Gloo's transport binds COHORT_GLOO_HOSTNAME if set, 127.0.0.1 on one node, else the local
// address of the route to MASTER_ADDR (not the host name: Debian maps it to 127.0.1.1).
// The store prefix carries the job id and Slurm's restart count, so a requeued job never reads
// a previous attempt's keys.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "collectives/communicator.h"
#include "common/status.h"
#include "launch/world.h"

namespace cohort::launch {

struct BootstrapOptions {
  std::string backend = "auto";  // parallel.backend: auto | mpi | gloo | nccl
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};  // every collective's deadline
};

// The backend `auto` resolves to (or the explicit one, validated) for this world.
Result<std::string> ResolveBackend(const std::string& requested, const World& world);

// Connects this rank to its peers. Errors name the backend and the address involved.
Result<std::unique_ptr<collectives::Communicator>> Connect(const World& world,
                                                           const BootstrapOptions& options);

// Process-wide allocator settings for a rank that runs large collectives: glibc serves blocks
// above its mmap threshold (dynamic, up to 32 MiB) with fresh mappings whose pages fault in on
// every use, so the transport's temporary buffers for a large collective were re-faulted on every
// call (a 64 MiB MPI all-reduce: 160 ms instead of 15 ms here). This keeps large blocks in the
// heap (M_MMAP_MAX 0) and returns memory to the OS only above 1 GiB of free heap. Connect() calls
// it for worlds of more than one rank; benchmarks call it to measure under the same conditions.
void TuneAllocatorForCollectives();

// Gives this rank its own share of the node's cores when the launcher did not bind it: if the
// process may run on every core and several ranks share the node, rank `local_rank` is pinned to
// cores [local_rank * k, (local_rank + 1) * k) of the allowed set, k = cores / local_size (the
// last rank takes the remainder). Unbound ranks and their communication threads otherwise
// migrate across each other's cores: on 2 cores with 2 ranks that made a step 9% slower and the
// gradient all-reduce 7x slower (waiting for the other rank). Returns a description of what it
// did ("" when it left the affinity alone: already bound, one rank per node, more ranks than
// cores, a launcher that does not say how many ranks share the node, or COHORT_BIND=0). Connect() calls it for multi-rank worlds.
std::string BindToLocalShare(const World& world);

// Whether this binary was built with the backend ("mpi", "gloo", "nccl").
bool HaveBackend(const std::string& backend);

}  // namespace cohort::launch
