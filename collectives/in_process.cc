#include "collectives/in_process.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace cohort::collectives {

InProcessGroup::InProcessGroup(int size, std::chrono::milliseconds timeout)
    : size_(size), timeout_(timeout), arrived_(static_cast<size_t>(size), false),
      in_(static_cast<size_t>(size), nullptr), out_(static_cast<size_t>(size), nullptr) {
  COHORT_CHECK(size >= 1) << "group size " << size;
}

void InProcessGroup::Abort(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!aborted_) {
    aborted_ = true;
    abort_reason_ = why;
  }
  cv_.notify_all();
}

Status InProcessGroup::Arrive(int rank) {
  std::unique_lock<std::mutex> lock(mu_);
  if (aborted_) return Status(Code::kUnavailable, "in-process group aborted: " + abort_reason_);
  arrived_[static_cast<size_t>(rank)] = true;
  if (++waiting_ == size_) {
    ++generation_;
    waiting_ = 0;
    std::fill(arrived_.begin(), arrived_.end(), false);
    cv_.notify_all();
    return Status::Ok();
  }
  const uint64_t gen = generation_;
  const bool done = cv_.wait_for(lock, timeout_, [&] { return generation_ != gen || aborted_; });
  if (generation_ != gen) return Status::Ok();
  if (aborted_) return Status(Code::kUnavailable, "in-process group aborted: " + abort_reason_);
  (void)done;
  // Timed out: name the ranks that never arrived, and fail the whole group so that no peer
  // waits for this rank in turn.
  std::string missing;
  for (int r = 0; r < size_; ++r) {
    if (!arrived_[static_cast<size_t>(r)]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
  }
  const std::string msg = "rank " + std::to_string(rank) + ": collective timed out after " +
                          std::to_string(timeout_.count()) + " ms waiting for rank(s) " + missing;
  aborted_ = true;
  abort_reason_ = msg;
  cv_.notify_all();
  return Status(Code::kDeadlineExceeded, msg);
}

class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(InProcessGroup* group, int rank) : g_(group), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return g_->size_; }
  std::string_view backend() const override { return "inprocess"; }
  std::chrono::milliseconds timeout() const override { return g_->timeout_; }

  void Abort(std::string_view why, int /*exit_code*/) override {
    g_->Abort("rank " + std::to_string(rank_) + " failed: " + std::string(why));
  }

  Status AllReduce(void* buf, size_t count, DataType type, ReduceOp op) override {
    if (type != DataType::kFloat32) return AllReduceWidened(*this, buf, count, type, op);
    Publish(buf, buf);
    RETURN_IF_ERROR(g_->Arrive(rank_));
    // This rank reduces one contiguous slice for everybody, in rank order.
    const size_t n = static_cast<size_t>(size());
    const size_t lo = count * rank_ / n, hi = count * (rank_ + 1) / n;
    scratch_.assign(hi - lo, 0.0f);
    for (size_t r = 0; r < n; ++r) {
      const float* src = static_cast<const float*>(g_->in_[r]) + lo;
      for (size_t i = 0; i < hi - lo; ++i) scratch_[i] += src[i];
    }
    FinishReduce(scratch_.data(), hi - lo, op, size());
    RETURN_IF_ERROR(g_->Arrive(rank_));  // everybody has read the inputs
    for (size_t r = 0; r < n; ++r) {
      std::memcpy(static_cast<float*>(g_->out_[r]) + lo, scratch_.data(), (hi - lo) * sizeof(float));
    }
    (void)type;
    return g_->Arrive(rank_);  // every slice is written everywhere
  }

  Status ReduceScatter(const void* in, void* out, size_t count, DataType type,
                       ReduceOp op) override {
    if (type != DataType::kFloat32) return ReduceScatterWidened(*this, in, out, count, type, op);
    Publish(in, out);
    RETURN_IF_ERROR(g_->Arrive(rank_));
    float* dst = static_cast<float*>(out);
    std::fill(dst, dst + count, 0.0f);
    for (int r = 0; r < size(); ++r) {
      const float* src = static_cast<const float*>(g_->in_[static_cast<size_t>(r)]) +
                         static_cast<size_t>(rank_) * count;
      for (size_t i = 0; i < count; ++i) dst[i] += src[i];
    }
    FinishReduce(dst, count, op, size());
    (void)type;
    return g_->Arrive(rank_);  // peers' inputs may be released only after everyone has read
  }

  Status AllGather(const void* in, void* out, size_t count, DataType type) override {
    if (type != DataType::kFloat32) return AllGatherWidened(*this, in, out, count, type);
    Publish(in, out);
    RETURN_IF_ERROR(g_->Arrive(rank_));
    const size_t bytes = count * SizeOf(type);
    for (int r = 0; r < size(); ++r) {
      std::memcpy(static_cast<char*>(out) + static_cast<size_t>(r) * bytes,
                  g_->in_[static_cast<size_t>(r)], bytes);
    }
    return g_->Arrive(rank_);
  }

  Status Broadcast(void* buf, size_t bytes, int root) override {
    COHORT_CHECK(root >= 0 && root < size()) << "broadcast root " << root;
    Publish(buf, buf);
    RETURN_IF_ERROR(g_->Arrive(rank_));
    if (rank_ != root) std::memcpy(buf, g_->in_[static_cast<size_t>(root)], bytes);
    return g_->Arrive(rank_);
  }

  Status Barrier() override { return g_->Arrive(rank_); }

 private:
  // Each rank writes only its own slot, before the barrier that publishes it (the group's mutex
  // orders the write before every peer's read).
  void Publish(const void* in, void* out) {
    g_->in_[static_cast<size_t>(rank_)] = in;
    g_->out_[static_cast<size_t>(rank_)] = out;
  }

  InProcessGroup* g_;
  const int rank_;
  std::vector<float> scratch_;  // reused across calls
};

std::unique_ptr<Communicator> InProcessGroup::Connect(int rank) {
  COHORT_CHECK(rank >= 0 && rank < size_) << "rank " << rank << " of " << size_;
  return std::make_unique<InProcessCommunicator>(this, rank);
}

}  // namespace cohort::collectives
