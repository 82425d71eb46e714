// The Communicator conformance suite on the NCCL backend (label gpu), under a real mpirun with one
// rank per visible GPU: MPI bootstraps the ncclUniqueId, rank r uses device r % devices. The
// shared checks use host buffers, so an adapter stages them through device memory around every
// call (test-only; training passes device pointers directly).
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "collectives/mpi.h"
#include "collectives/nccl.h"
#include "tests/unit/collectives_conformance.h"

namespace {

using namespace cohort;
using namespace cohort::collectives;

class DeviceStaged final : public Communicator {
 public:
  explicit DeviceStaged(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string_view backend() const override { return inner_->backend(); }
  std::chrono::milliseconds timeout() const override { return inner_->timeout(); }

  Status AllReduce(void* buf, size_t count, DataType type, ReduceOp op) override {
    const size_t bytes = count * SizeOf(type);
    void* d = Device(0, bytes);
    cudaMemcpy(d, buf, bytes, cudaMemcpyHostToDevice);
    RETURN_IF_ERROR(inner_->AllReduce(d, count, type, op));
    return Copy(buf, d, bytes);
  }
  Status ReduceScatter(const void* in, void* out, size_t count, DataType type, ReduceOp op) override {
    const size_t bytes = count * SizeOf(type);
    void* din = Device(0, bytes * static_cast<size_t>(size()));
    void* dout = Device(1, bytes);
    cudaMemcpy(din, in, bytes * static_cast<size_t>(size()), cudaMemcpyHostToDevice);
    RETURN_IF_ERROR(inner_->ReduceScatter(din, dout, count, type, op));
    return Copy(out, dout, bytes);
  }
  Status AllGather(const void* in, void* out, size_t count, DataType type) override {
    const size_t bytes = count * SizeOf(type);
    void* din = Device(0, bytes);
    void* dout = Device(1, bytes * static_cast<size_t>(size()));
    cudaMemcpy(din, in, bytes, cudaMemcpyHostToDevice);
    RETURN_IF_ERROR(inner_->AllGather(din, dout, count, type));
    return Copy(out, dout, bytes * static_cast<size_t>(size()));
  }
  Status Broadcast(void* buf, size_t bytes, int root) override {
    void* d = Device(0, bytes);
    cudaMemcpy(d, buf, bytes, cudaMemcpyHostToDevice);
    RETURN_IF_ERROR(inner_->Broadcast(d, bytes, root));
    return Copy(buf, d, bytes);
  }
  Status Barrier() override { return inner_->Barrier(); }
  void Abort(std::string_view why, int code) override { inner_->Abort(why, code); }

  ~DeviceStaged() override {
    for (auto& b : bufs_) cudaFree(b.ptr);
  }

 private:
  struct Buf {
    void* ptr = nullptr;
    size_t bytes = 0;
  };
  void* Device(int slot, size_t bytes) {
    Buf& b = bufs_[slot];
    if (b.bytes < bytes) {
      cudaFree(b.ptr);
      b.ptr = nullptr;
      if (cudaMalloc(&b.ptr, bytes) != cudaSuccess) {
        std::fprintf(stderr, "cudaMalloc(%zu) failed\n", bytes);
        std::abort();
      }
      b.bytes = bytes;
    }
    return b.ptr;
  }
  static Status Copy(void* host, const void* dev, size_t bytes) {
    cudaError_t e = cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) return Internal(std::string("cudaMemcpy: ") + cudaGetErrorString(e));
    return Status::Ok();
  }
  std::unique_ptr<Communicator> inner_;
  Buf bufs_[2];
};

int Run() {
  auto boot = CreateMpiCommunicator(std::chrono::seconds(60));
  if (!boot.ok()) {
    std::fprintf(stderr, "%s\n", boot.status().ToString().c_str());
    return 1;
  }
  const int devices = CudaDeviceCount();
  if (devices == 0) {
    std::fprintf(stderr, "no CUDA device visible: the gpu-labelled tests need one\n");
    return 1;
  }
  auto nccl = CreateNcclCommunicator(**boot, (*boot)->rank() % devices, std::chrono::seconds(60));
  if (!nccl.ok()) {
    std::fprintf(stderr, "%s\n", nccl.status().ToString().c_str());
    return 1;
  }
  DeviceStaged c(std::move(*nccl));
  conformance::Tally t;
  conformance::RunSuite(c, t, /*large=*/false);
  t.Check(c, "barrier", 0, c.Barrier());
  if (c.rank() == 0) std::printf("nccl conformance on %d ranks: %d passed, %d failed\n", c.size(), t.passes, t.failures);
  return t.failures == 0 ? 0 : 1;
}

}  // namespace

int main() { return Run(); }
