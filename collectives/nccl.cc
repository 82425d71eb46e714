#include "collectives/nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <string>
#include <thread>

#include "common/check.h"

namespace cohort::collectives {
namespace {

using Clock = std::chrono::steady_clock;

std::string CudaError(cudaError_t e) { return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e); }

ncclDataType_t NcclType(DataType t) {
  switch (t) {
    case DataType::kFloat32: return ncclFloat32;
    case DataType::kBFloat16: return ncclBfloat16;
    case DataType::kFloat16: return ncclFloat16;
  }
  COHORT_CHECK(false) << "unknown DataType";
  return ncclFloat32;
}

// Backs off like the MPI backend's poll: spin briefly, then sleep so a waiting host thread does
// not steal a core from the rest of the process.
void Backoff(int polls) {
  if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(polls > 100000 ? 1000 : 20));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, cudaStream_t stream, int device, float* scratch, int rank,
                   int size, std::chrono::milliseconds timeout)
      : comm_(comm), stream_(stream), device_(device), scratch_(scratch), rank_(rank),
        size_(size), timeout_(timeout) {}

  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    // A broken communicator was aborted (and freed) when it broke: never touch it again.
    if (comm_ != nullptr) ncclCommDestroy(comm_);
    cudaFree(scratch_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend() const override { return "nccl"; }
  void Abort(std::string_view /*why*/, int /*exit_code*/) override { AbortComm(); }
  std::chrono::milliseconds timeout() const override { return timeout_; }

  Status AllReduce(void* buf, size_t count, DataType type, ReduceOp op) override {
    RETURN_IF_ERROR(Usable());
    return Run("all-reduce", ncclAllReduce(buf, buf, count, NcclType(type),
                                           op == ReduceOp::kAvg ? ncclAvg : ncclSum, comm_, stream_));
  }

  Status ReduceScatter(const void* in, void* out, size_t count, DataType type,
                       ReduceOp op) override {
    RETURN_IF_ERROR(Usable());
    return Run("reduce-scatter",
               ncclReduceScatter(in, out, count, NcclType(type),
                                 op == ReduceOp::kAvg ? ncclAvg : ncclSum, comm_, stream_));
  }

  Status AllGather(const void* in, void* out, size_t count, DataType type) override {
    RETURN_IF_ERROR(Usable());
    return Run("all-gather", ncclAllGather(in, out, count, NcclType(type), comm_, stream_));
  }

  Status Broadcast(void* buf, size_t bytes, int root) override {
    COHORT_CHECK(root >= 0 && root < size_) << "broadcast root " << root;
    RETURN_IF_ERROR(Usable());
    return Run("broadcast", ncclBroadcast(buf, buf, bytes, ncclUint8, root, comm_, stream_));
  }

  // NCCL has no barrier: a one-element all-reduce on a private device scalar is one.
  Status Barrier() override {
    RETURN_IF_ERROR(Usable());
    return Run("barrier", ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, stream_));
  }

 private:
  Status Usable() const {
    if (broken_) return Status(Code::kUnavailable, "NCCL communicator is unusable after an earlier error");
    cudaError_t e = cudaSetDevice(device_);
    if (e != cudaSuccess) return Status(Code::kUnavailable, "cudaSetDevice: " + CudaError(e));
    return Status::Ok();
  }

  Status Fail(Code code, const std::string& what) {
    AbortComm();
    return Status(code, "rank " + std::to_string(rank_) + ": " + what);
  }

  // ncclCommAbort frees the communicator: do it once, never wait for in-flight work.
  void AbortComm() {
    broken_ = true;
    if (comm_ != nullptr) {
      cudaSetDevice(device_);
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
  }

  // Waits for the operation just enqueued (or still being enqueued: non-blocking communicators
  // may return ncclInProgress) to finish on the stream, bounded by the timeout.
  Status Run(const char* what, ncclResult_t enqueued) {
    if (enqueued != ncclSuccess && enqueued != ncclInProgress) {
      const std::string detail = ncclGetLastError(comm_);
      return Fail(Code::kUnavailable, std::string(what) + ": " + ncclGetErrorString(enqueued) +
                                          " (" + detail + ")");
    }
    const Clock::time_point deadline = Clock::now() + timeout_;
    for (int polls = 0;; ++polls) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        return Fail(Code::kUnavailable, std::string(what) + ": NCCL error " +
                                            ncclGetErrorString(async) + " (a peer failed?)");
      }
      if (async == ncclSuccess) {
        cudaError_t e = cudaStreamQuery(stream_);
        if (e == cudaSuccess) return Status::Ok();
        if (e != cudaErrorNotReady) {
          return Fail(Code::kUnavailable, std::string(what) + ": " + CudaError(e));
        }
      }
      if (Clock::now() > deadline) {
        return Fail(Code::kDeadlineExceeded,
                    std::string(what) + " timed out after " + std::to_string(timeout_.count()) +
                        " ms (a peer is dead, stopped or not calling the same collective)");
      }
      Backoff(polls);
    }
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  const int device_;
  float* scratch_;
  const int rank_;
  const int size_;
  const std::chrono::milliseconds timeout_;
  bool broken_ = false;
};

}  // namespace

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

Result<std::unique_ptr<Communicator>> CreateNcclCommunicator(Communicator& bootstrap, int device,
                                                             std::chrono::milliseconds timeout) {
  const int devices = CudaDeviceCount();
  // Every rank takes part in the id broadcast even when its own device is missing, so a bad
  // node fails the others by their timeout instead of leaving them in the broadcast.
  ncclUniqueId id{};
  Status local;
  if (devices == 0) {
    local = Status(Code::kUnavailable, "NCCL backend: no CUDA device visible on this node");
  } else if (device < 0 || device >= devices) {
    local = InvalidArgument("NCCL backend: device " + std::to_string(device) + " requested but " +
                            std::to_string(devices) + " visible");
  } else if (bootstrap.rank() == 0) {
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) local = Status(Code::kUnavailable, std::string("ncclGetUniqueId: ") + ncclGetErrorString(r));
  }
  RETURN_IF_ERROR(bootstrap.Broadcast(&id, sizeof id, 0).WithContext("NCCL unique id broadcast"));
  // Every rank learns whether all can go on, so none waits in ncclCommInitRank for a rank that
  // already gave up (or for an id rank 0 could not create).
  float failed = local.ok() ? 0.0f : 1.0f;
  RETURN_IF_ERROR(bootstrap.AllReduce(&failed, 1, DataType::kFloat32, ReduceOp::kSum)
                      .WithContext("NCCL bootstrap status"));
  RETURN_IF_ERROR(local);
  if (failed > 0) {
    return Status(Code::kUnavailable, std::to_string(static_cast<int>(failed)) +
                                          " rank(s) could not start NCCL; see their errors");
  }

  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return Status(Code::kUnavailable, "cudaSetDevice: " + CudaError(e));
  cudaStream_t stream = nullptr;
  e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  if (e != cudaSuccess) return Status(Code::kUnavailable, "cudaStreamCreate: " + CudaError(e));
  float* scratch = nullptr;
  e = cudaMalloc(&scratch, sizeof(float));
  if (e != cudaSuccess) {
    cudaStreamDestroy(stream);
    return Status(Code::kUnavailable, "cudaMalloc: " + CudaError(e));
  }

  // Non-blocking initialization, polled against the deadline (a rank that never joins must not
  // hang the others inside ncclCommInitRank).
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, bootstrap.size(), id, bootstrap.rank(), &config);
  const Clock::time_point deadline = Clock::now() + timeout;
  for (int polls = 0; r == ncclInProgress; ++polls) {
    if (Clock::now() > deadline) break;
    Backoff(polls);
    ncclCommGetAsyncError(comm, &r);
  }
  if (r != ncclSuccess) {
    const bool timed_out = r == ncclInProgress;
    if (comm != nullptr) ncclCommAbort(comm);
    cudaFree(scratch);
    cudaStreamDestroy(stream);
    return Status(timed_out ? Code::kDeadlineExceeded : Code::kUnavailable,
                  "rank " + std::to_string(bootstrap.rank()) + ": ncclCommInitRankConfig: " +
                      (timed_out ? "timed out after " + std::to_string(timeout.count()) + " ms"
                                 : std::string(ncclGetErrorString(r))));
  }
  return std::unique_ptr<Communicator>(std::make_unique<NcclCommunicator>(
      comm, stream, device, scratch, bootstrap.rank(), bootstrap.size(), timeout));
}

}  // namespace cohort::collectives
