#include "collectives/mpi.h"

#include <mpi.h>

#include <atomic>
#include <string>
#include <thread>

namespace cohort::collectives {
namespace {

std::string MpiError(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(len));
}

std::atomic<int> g_live_comms{0};  // MPI is finalized with the last communicator

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, int rank, int size, std::chrono::milliseconds timeout)
      : comm_(comm), rank_(rank), size_(size), timeout_(timeout) {}

  ~MpiCommunicator() override {
    if (!broken_) MPI_Comm_free(&comm_);
    int finalized = 0;
    MPI_Finalized(&finalized);
    // A broken communicator has a collective in flight that cannot be cancelled; finalizing would
    // wait for it, so leave MPI to the process exit in that case.
    if (--g_live_comms == 0 && !finalized && !broken_) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend() const override { return "mpi"; }
  std::chrono::milliseconds timeout() const override { return timeout_; }

  Status AllReduce(void* buf, size_t count, DataType type, ReduceOp op) override {
    RETURN_IF_ERROR(CheckCount(count, "all-reduce"));
    MPI_Request req;
    RETURN_IF_ERROR(Check(MPI_Iallreduce(MPI_IN_PLACE, buf, static_cast<int>(count), MPI_FLOAT,
                                         MPI_SUM, comm_, &req),
                          "MPI_Iallreduce"));
    RETURN_IF_ERROR(Wait(&req, "all-reduce"));
    FinishReduce(static_cast<float*>(buf), count, op, size_);
    (void)type;
    return Status::Ok();
  }

  Status ReduceScatter(const void* in, void* out, size_t count, DataType type,
                       ReduceOp op) override {
    RETURN_IF_ERROR(CheckCount(count * static_cast<size_t>(size_), "reduce-scatter"));
    MPI_Request req;
    RETURN_IF_ERROR(Check(MPI_Ireduce_scatter_block(in, out, static_cast<int>(count), MPI_FLOAT,
                                                    MPI_SUM, comm_, &req),
                          "MPI_Ireduce_scatter_block"));
    RETURN_IF_ERROR(Wait(&req, "reduce-scatter"));
    FinishReduce(static_cast<float*>(out), count, op, size_);
    (void)type;
    return Status::Ok();
  }

  Status AllGather(const void* in, void* out, size_t count, DataType type) override {
    RETURN_IF_ERROR(CheckCount(count * static_cast<size_t>(size_), "all-gather"));
    MPI_Request req;
    RETURN_IF_ERROR(Check(MPI_Iallgather(in, static_cast<int>(count), MPI_FLOAT, out,
                                         static_cast<int>(count), MPI_FLOAT, comm_, &req),
                          "MPI_Iallgather"));
    (void)type;
    return Wait(&req, "all-gather");
  }

  Status Broadcast(void* buf, size_t bytes, int root) override {
    COHORT_CHECK(root >= 0 && root < size_) << "broadcast root " << root;
    RETURN_IF_ERROR(CheckCount(bytes, "broadcast"));
    MPI_Request req;
    RETURN_IF_ERROR(Check(MPI_Ibcast(buf, static_cast<int>(bytes), MPI_BYTE, root, comm_, &req),
                          "MPI_Ibcast"));
    return Wait(&req, "broadcast");
  }

  Status Barrier() override {
    MPI_Request req;
    RETURN_IF_ERROR(Check(MPI_Ibarrier(comm_, &req), "MPI_Ibarrier"));
    return Wait(&req, "barrier");
  }

 private:
  Status Check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return Status::Ok();
    broken_ = true;
    return Status(Code::kUnavailable,
                  "rank " + std::to_string(rank_) + ": " + what + ": " + MpiError(rc));
  }

  // MPI counts are int: larger buffers must be split by the caller (the reducer's buckets are).
  Status CheckCount(size_t n, const char* what) const {
    if (broken_) return Status(Code::kUnavailable, "MPI communicator is unusable after an earlier error");
    if (n > static_cast<size_t>(INT32_MAX)) {
      return InvalidArgument(std::string(what) + ": " + std::to_string(n) +
                             " elements exceed MPI's int count limit");
    }
    return Status::Ok();
  }

  // Polls the request until it completes or the deadline passes. Spins briefly, then yields and
  // sleeps, so a waiting rank does not steal a core from compute threads for long.
  Status Wait(MPI_Request* req, const char* what) {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    for (int polls = 0;; ++polls) {
      int done = 0;
      MPI_Status st;
      RETURN_IF_ERROR(Check(MPI_Test(req, &done, &st), what));
      if (done) return Status::Ok();
      if (std::chrono::steady_clock::now() > deadline) {
        broken_ = true;
        return Status(Code::kDeadlineExceeded,
                      "rank " + std::to_string(rank_) + ": " + what + " timed out after " +
                          std::to_string(timeout_.count()) +
                          " ms (a peer is dead, stopped or not calling the same collective)");
      }
      if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(polls > 100000 ? 1000 : 20));
    }
  }

  MPI_Comm comm_;
  const int rank_;
  const int size_;
  const std::chrono::milliseconds timeout_;
  bool broken_ = false;
};

}  // namespace

Result<std::unique_ptr<Communicator>> CreateMpiCommunicator(std::chrono::milliseconds timeout) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    if (rc != MPI_SUCCESS) return Status(Code::kUnavailable, "MPI_Init_thread: " + MpiError(rc));
    if (provided < MPI_THREAD_SERIALIZED) {
      return Status(Code::kUnavailable, "MPI does not provide MPI_THREAD_SERIALIZED");
    }
  }
  MPI_Comm comm;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  if (rc != MPI_SUCCESS) return Status(Code::kUnavailable, "MPI_Comm_dup: " + MpiError(rc));
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  ++g_live_comms;
  return std::unique_ptr<Communicator>(
      std::make_unique<MpiCommunicator>(comm, rank, size, timeout));
}

}  // namespace cohort::collectives
