// MPI backend (Open MPI, CPU buffers). This header only exposes a factory and never includes
// <mpi.h>, so no other module needs MPI's headers.
//
// Every collective is issued non-blocking (MPI_Iallreduce, ...) and polled with MPI_Test until it
// completes or the communicator's timeout passes, so a stuck peer produces DeadlineExceeded
// instead of an endless wait. Errors are returned (MPI_ERRORS_RETURN on a private duplicate of
// MPI_COMM_WORLD), never abort the process from inside MPI. A collective that timed out cannot be
// cancelled in MPI: the communicator is then unusable and the process must exit (the launcher
// tears the job down), as the Communicator contract says.
#pragma once

#include <chrono>
#include <memory>

#include "collectives/communicator.h"

namespace cohort::collectives {

// Initializes MPI (MPI_THREAD_SERIALIZED) if the process has not done so, and returns a
// communicator over all ranks of MPI_COMM_WORLD. MPI is finalized when the last MPI communicator
// is destroyed. Unavailable when MPI cannot be initialized.
Result<std::unique_ptr<Communicator>> CreateMpiCommunicator(std::chrono::milliseconds timeout);

}  // namespace cohort::collectives
