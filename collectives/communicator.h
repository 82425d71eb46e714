// Communicator: the collective operations data-parallel training needs, independent of the
// transport. Backends: an in-process one that runs N ranks as threads (tests; this file's
// companion in_process.h); MPI, Gloo and NCCL follow (issue 3).
//
// Contract shared by every backend and every call:
//  - Collective: every rank of the group makes the same calls in the same order with the same
//    counts, types, ops and roots; violating that is a bug (a CHECK where detectable).
//  - Blocking with a deadline: a call returns when it has completed on this rank, or with
//    DeadlineExceeded when peers did not arrive within the communicator's timeout (the message
//    names the missing ranks where the backend knows them), or with Unavailable when the group
//    was aborted (a peer failed). It never hangs forever. After an error the communicator is
//    unusable: the caller tears the job down (the launcher restarts it).
//  - Results are bit-identical on every rank (reductions run in a fixed rank order).
//  - Buffers are caller-owned and must stay valid for the call; in-place all-reduce.
//  - Thread safety: one thread calls a given Communicator at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/status.h"

namespace cohort::collectives {

// Element types. 16-bit buffers: the NCCL backend reduces them natively; the host backends
// (in-process, MPI, Gloo) widen to fp32, reduce there (so a sum is rounded once, identically on
// every rank) and round back, at twice the bytes on the wire.
enum class DataType { kFloat32, kBFloat16, kFloat16 };
enum class ReduceOp { kSum, kAvg };

size_t SizeOf(DataType t);
std::string_view Name(DataType t);
std::string_view Name(ReduceOp op);

// For backends: turns the sum over `world_size` ranks in x[0, n) into the result of `op`
// (a no-op for kSum; multiplies by 1/world_size for kAvg, the same on every rank).
void FinishReduce(float* x, size_t n, ReduceOp op, int world_size);

// For backends that reduce on the host: out[i] = (((0 + in[0][i]) + in[1][i]) + ... +
// in[n_in-1][i]), then FinishReduce over `world_size`. Summing the same inputs in rank order gives
// bit-identical results on every rank and in every backend that uses it (MPI's small all-reduce,
// Gloo). `out` may alias any input.
void SumInRankOrder(const float* const* in, int n_in, float* out, size_t len, ReduceOp op,
                    int world_size);

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string_view backend() const = 0;
  virtual std::chrono::milliseconds timeout() const = 0;

  // buf[0, count) <- op over all ranks' buf[0, count).
  virtual Status AllReduce(void* buf, size_t count, DataType type, ReduceOp op) = 0;

  // `in` holds size() * count elements; this rank's `out[0, count)` receives the reduction of
  // every rank's chunk in[rank() * count, (rank() + 1) * count). `out` must not overlap `in`.
  virtual Status ReduceScatter(const void* in, void* out, size_t count, DataType type,
                               ReduceOp op) = 0;

  // out[r * count, (r + 1) * count) <- rank r's in[0, count), for every r. `out` holds
  // size() * count elements and must not overlap `in`.
  virtual Status AllGather(const void* in, void* out, size_t count, DataType type) = 0;

  // buf[0, bytes) on every rank <- buf on `root`.
  virtual Status Broadcast(void* buf, size_t bytes, int root) = 0;

  virtual Status Barrier() = 0;

  // Tears the group down after a failure on this rank, so peers fail promptly instead of waiting
  // for their deadline: their pending and future collectives return Unavailable (in-process,
  // Gloo: connections closed). MPI cannot do that and ends the whole job instead (MPI_Abort with
  // `exit_code`, after printing `why` with the rank on stderr), so this may not return. NCCL
  // aborts its communicator; peers still wait for their own deadline. Idempotent; the
  // communicator is unusable afterwards.
  virtual void Abort(std::string_view why, int exit_code = 1) = 0;
};

// For host backends: the 16-bit collectives done on an fp32 copy through the same
// communicator's kFloat32 path (widen, collective, round back). Buffers as in the interface.
Status AllReduceWidened(Communicator& c, void* buf, size_t count, DataType type, ReduceOp op);
Status ReduceScatterWidened(Communicator& c, const void* in, void* out, size_t count,
                            DataType type, ReduceOp op);
Status AllGatherWidened(Communicator& c, const void* in, void* out, size_t count, DataType type);

}  // namespace cohort::collectives
