#include "collectives/mpi.h"

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace cohort::collectives {
namespace {

std::string MpiError(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(len));
}

std::atomic<int> g_live_comms{0};  // MPI is finalized with the last communicator

// Open MPI's non-blocking all-reduce (coll/libnbc) picks its algorithm from the control variable
// coll_libnbc_iallreduce_algorithm, read at every call. Its default choice is ~1.5-2x slower than
// the blocking MPI_Allreduce from a few KiB up; Rabenseifner's reduce-scatter + all-gather (3)
// matches it there, while small buffers are fastest with the default. Measured with
// bench/allreduce (bench/RESULTS.md). Set through MPI_T at run time, so no environment variable
// is needed; with another MPI (no such variable) this is a no-op.
class NbcAllreduceTuner {
 public:
  NbcAllreduceTuner() {
    int provided = 0;
    if (MPI_T_init_thread(MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS) return;
    initialized_ = true;
    int index = -1, count = 0;
    if (MPI_T_cvar_get_index("coll_libnbc_iallreduce_algorithm", &index) != MPI_SUCCESS) return;
    if (MPI_T_cvar_handle_alloc(index, nullptr, &handle_, &count) != MPI_SUCCESS || count != 1) return;
    usable_ = true;
  }
  ~NbcAllreduceTuner() {
    if (usable_) MPI_T_cvar_handle_free(&handle_);
    if (initialized_) MPI_T_finalize();
  }
  // Chooses the algorithm for an all-reduce of `bytes`.
  void Before(size_t bytes) {
    if (!usable_) return;
    const int want = bytes > kSmallBytes ? kRabenseifner : kDefault;
    // The variable is process-wide (another communicator may have changed it): read it back.
    int current = -1;
    MPI_T_cvar_read(handle_, &current);
    if (want != current) MPI_T_cvar_write(handle_, &want);
  }

 private:
  static constexpr size_t kSmallBytes = 2048;
  static constexpr int kDefault = 0;
  static constexpr int kRabenseifner = 3;
  bool initialized_ = false;
  bool usable_ = false;
  MPI_T_cvar_handle handle_{};
};

// Small all-reduces skip libnbc: every rank sends its whole buffer to every peer with plain
// non-blocking sends and sums the N buffers itself, in rank order (so every rank, and the Gloo
// backend, computes bit-identical sums). One exchange instead of libnbc's schedule, whose per-call
// cost (~1.3 us) halved the rate at 1 KiB. Used while the bytes each rank sends, (size-1) * buffer,
// stay within kOneShotBytes: on 2 ranks one-shot measured 1.2-2.5x raw MPI_Allreduce from 4 to 64
// KiB, and 0.77x at 128 KiB, where libnbc's Rabenseifner (~0.98x) takes over (bench/RESULTS.md).
constexpr size_t kOneShotBytes = size_t{64} << 10;
// Messages are cut into fragments that fit Open MPI's shared-memory eager limit (btl_vader_eager_limit,
// 4096 bytes including ob1's header): a larger message takes the rendezvous protocol, which made a
// 4 KiB exchange 3x slower (7.1 vs 2.4 us; 16 KiB 12.9 vs 8.8 us). Between nodes the TCP and UCX
// eager limits are larger, so the fragments are eager there too.
constexpr size_t kFragmentFloats = 992;  // 3968 bytes
constexpr int kOneShotTag = 0x0c0a;      // point-to-point context of our private communicator

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, int rank, int size, std::chrono::milliseconds timeout)
      : comm_(comm), rank_(rank), size_(size), timeout_(timeout) {}

  ~MpiCommunicator() override {
    tuner_.reset();  // MPI_T handles go before MPI_Finalize
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

  // MPI (without the fault-tolerance extensions) has no way to make peers' collectives fail:
  // ending the job is the only prompt way out. mpirun then reports the aborting rank.
  void Abort(std::string_view why, int exit_code) override {
    std::fprintf(stderr, "[r%d] error: %.*s; aborting the MPI job\n", rank_,
                 static_cast<int>(why.size()), why.data());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);  // MPI_Abort does not return; be sure
  }

  Status AllReduce(void* buf, size_t count, DataType type, ReduceOp op) override {
    if (type != DataType::kFloat32) return AllReduceWidened(*this, buf, count, type, op);
    RETURN_IF_ERROR(CheckCount(count, "all-reduce"));
    if (size_ > 1 && count * sizeof(float) * static_cast<size_t>(size_ - 1) <= kOneShotBytes) {
      return OneShotAllReduce(static_cast<float*>(buf), count, op);
    }
    tuner_->Before(count * SizeOf(type));
    MPI_Request req;
    RETURN_IF_ERROR(Check(MPI_Iallreduce(MPI_IN_PLACE, buf, static_cast<int>(count), MPI_FLOAT,
                                         MPI_SUM, comm_, &req),
                          "MPI_Iallreduce"));
    RETURN_IF_ERROR(Wait(&req, 1, "all-reduce"));
    FinishReduce(static_cast<float*>(buf), count, op, size_);
    (void)type;
    return Status::Ok();
  }

  Status ReduceScatter(const void* in, void* out, size_t count, DataType type,
                       ReduceOp op) override {
    if (type != DataType::kFloat32) return ReduceScatterWidened(*this, in, out, count, type, op);
    RETURN_IF_ERROR(CheckCount(count * static_cast<size_t>(size_), "reduce-scatter"));
    MPI_Request req;
    RETURN_IF_ERROR(Check(MPI_Ireduce_scatter_block(in, out, static_cast<int>(count), MPI_FLOAT,
                                                    MPI_SUM, comm_, &req),
                          "MPI_Ireduce_scatter_block"));
    RETURN_IF_ERROR(Wait(&req, 1, "reduce-scatter"));
    FinishReduce(static_cast<float*>(out), count, op, size_);
    (void)type;
    return Status::Ok();
  }

  Status AllGather(const void* in, void* out, size_t count, DataType type) override {
    if (type != DataType::kFloat32) return AllGatherWidened(*this, in, out, count, type);
    RETURN_IF_ERROR(CheckCount(count * static_cast<size_t>(size_), "all-gather"));
    MPI_Request req;
    RETURN_IF_ERROR(Check(MPI_Iallgather(in, static_cast<int>(count), MPI_FLOAT, out,
                                         static_cast<int>(count), MPI_FLOAT, comm_, &req),
                          "MPI_Iallgather"));
    (void)type;
    return Wait(&req, 1, "all-gather");
  }

  Status Broadcast(void* buf, size_t bytes, int root) override {
    COHORT_CHECK(root >= 0 && root < size_) << "broadcast root " << root;
    RETURN_IF_ERROR(CheckCount(bytes, "broadcast"));
    MPI_Request req;
    RETURN_IF_ERROR(Check(MPI_Ibcast(buf, static_cast<int>(bytes), MPI_BYTE, root, comm_, &req),
                          "MPI_Ibcast"));
    return Wait(&req, 1, "broadcast");
  }

  Status Barrier() override {
    MPI_Request req;
    RETURN_IF_ERROR(Check(MPI_Ibarrier(comm_, &req), "MPI_Ibarrier"));
    return Wait(&req, 1, "barrier");
  }

 private:
  Status OneShotAllReduce(float* x, size_t count, ReduceOp op) {
    const size_t n = static_cast<size_t>(size_);
    if (scratch_.size() < n * count) scratch_.resize(n * count);
    requests_.clear();
    const auto post = [&](bool send) -> Status {
      for (int i = 1; i < size_; ++i) {
        const int peer = (rank_ + i) % size_;  // spread the first fragments over the peers
        for (size_t off = 0; off < count; off += kFragmentFloats) {
          const int len = static_cast<int>(std::min(kFragmentFloats, count - off));
          MPI_Request req;
          const int rc = send ? MPI_Isend(x + off, len, MPI_FLOAT, peer, kOneShotTag, comm_, &req)
                              : MPI_Irecv(scratch_.data() + static_cast<size_t>(peer) * count + off,
                                          len, MPI_FLOAT, peer, kOneShotTag, comm_, &req);
          RETURN_IF_ERROR(Check(rc, send ? "MPI_Isend (all-reduce)" : "MPI_Irecv (all-reduce)"));
          requests_.push_back(req);
        }
      }
      return Status::Ok();
    };
    RETURN_IF_ERROR(post(false));  // receives first, so arriving fragments land in place
    RETURN_IF_ERROR(post(true));
    // Sends from x complete here too, before x is overwritten by the sum.
    RETURN_IF_ERROR(Wait(requests_.data(), static_cast<int>(requests_.size()), "all-reduce"));
    inputs_.resize(n);
    for (size_t r = 0; r < n; ++r) {
      inputs_[r] = static_cast<int>(r) == rank_ ? x : scratch_.data() + r * count;
    }
    SumInRankOrder(inputs_.data(), size_, x, count, op, size_);
    return Status::Ok();
  }

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

  // Polls the requests until all complete or the deadline passes. Open MPI's non-blocking
  // collectives progress only inside MPI calls, so polling must be frequent: a busy MPI_Test loop
  // for the first 200 us, then MPI_Test + yield (which hands the core to a runnable compute
  // thread, and otherwise returns at once) up to 10 ms, then 20 us sleeps, and 1 ms sleeps after
  // 100 ms, so a rank waiting for a slow peer does not steal a core for long. Sleeping from
  // 200 us on made 1 MiB all-reduces 2x slower than MPI_Allreduce (bench/allreduce).
  Status Wait(MPI_Request* reqs, int n, const char* what) {
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + timeout_;
    const auto spin_until = start + std::chrono::microseconds(200);
    const auto yield_until = start + std::chrono::milliseconds(10);
    const auto slow_after = start + std::chrono::milliseconds(100);
    for (;;) {
      int done = 0;
      RETURN_IF_ERROR(Check(MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE), what));
      if (done) return Status::Ok();
      const auto now = std::chrono::steady_clock::now();
      if (now > deadline) {
        broken_ = true;
        return Status(Code::kDeadlineExceeded,
                      "rank " + std::to_string(rank_) + ": " + what + " timed out after " +
                          std::to_string(timeout_.count()) +
                          " ms (a peer is dead, stopped or not calling the same collective)");
      }
      if (now < spin_until) continue;
      if (now < yield_until) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(now > slow_after ? 1000 : 20));
      }
    }
  }

  MPI_Comm comm_;
  const int rank_;
  const int size_;
  const std::chrono::milliseconds timeout_;
  bool broken_ = false;
  std::unique_ptr<NbcAllreduceTuner> tuner_ = std::make_unique<NbcAllreduceTuner>();
  // Reused by OneShotAllReduce (fresh pages cost ~10 us each to touch).
  std::vector<float> scratch_;
  std::vector<MPI_Request> requests_;
  std::vector<const float*> inputs_;
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
