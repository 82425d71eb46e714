// NCCL backend (GPU buffers). Compiled only when CUDA is found (COHORT_WITH_CUDA); this header
// never includes <nccl.h> or <cuda_runtime.h>, so no other module needs CUDA's headers.
//
// Bootstrap: rank 0 creates an ncclUniqueId and broadcasts it through an already connected
// `bootstrap` communicator (MPI or Gloo, host memory), the way torch.distributed does.
//
// Buffers handed to this communicator's collectives are DEVICE pointers on its device. The
// Communicator contract holds: communicator creation and every collective run NCCL in
// non-blocking mode on the backend's own stream, polled (ncclCommGetAsyncError, cudaStreamQuery)
// until done or the timeout passes; on timeout or an asynchronous NCCL error the communicator is
// aborted (ncclCommAbort) and the call returns DeadlineExceeded / Unavailable; it is unusable
// afterwards. ReduceOp kAvg uses ncclAvg; NCCL's ring and tree algorithms give every rank the same
// bits.
#pragma once

#include <chrono>
#include <memory>

#include "collectives/communicator.h"

namespace cohort::collectives {

// Number of CUDA devices this process can see (0 without a driver or device).
int CudaDeviceCount();

// Creates the NCCL communicator of bootstrap.rank() over bootstrap.size() ranks on CUDA device
// `device`. Collective over `bootstrap`. Unavailable when CUDA/NCCL cannot start (no device, no
// driver); InvalidArgument for a device index out of range.
Result<std::unique_ptr<Communicator>> CreateNcclCommunicator(Communicator& bootstrap, int device,
                                                             std::chrono::milliseconds timeout);

}  // namespace cohort::collectives
