#include "collectives/reducer.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include "common/check.h"

namespace cohort::collectives {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

Result<std::unique_ptr<GradientReducer>> GradientReducer::Create(Communicator* comm, float* grads,
                                                                  size_t n,
                                                                  const ReducerOptions& options) {
  COHORT_CHECK(comm != nullptr && grads != nullptr);
  if (n == 0) return InvalidArgument("gradient reducer: empty gradient buffer");
  const size_t world = static_cast<size_t>(comm->size());
  size_t elems = options.bucket_bytes / sizeof(float);
  if (elems < world) {
    return InvalidArgument("parallel.bucket_mb: a bucket of " +
                           std::to_string(options.bucket_bytes) + " bytes is smaller than one " +
                           "element per rank (" + std::to_string(world) + " ranks)");
  }
  // Backends count elements in int (MPI); keep every collective far below that.
  elems = std::min<size_t>(elems, size_t{1} << 28);
  const bool scatter = options.mode == ReducerOptions::Mode::kReduceScatter;
  // Reduce-scatter needs a multiple of the world size per bucket; rounding the nominal size
  // leaves at most the last (lowest) bucket uneven, and only that one pays for padding.
  if (scatter) elems = (elems + world - 1) / world * world;
  std::vector<Bucket> buckets;
  for (size_t hi = n; hi > 0;) {
    const size_t size = std::min(elems, hi);
    Bucket b;
    b.offset = hi - size;
    b.size = size;
    b.chunk = scatter ? (size + world - 1) / world : size;
    buckets.push_back(b);
    hi = b.offset;
  }
  return std::unique_ptr<GradientReducer>(
      new GradientReducer(comm, grads, n, options, std::move(buckets)));
}

GradientReducer::GradientReducer(Communicator* comm, float* grads, size_t n,
                                 const ReducerOptions& options, std::vector<Bucket> buckets)
    : comm_(comm), grads_(grads), n_(n), options_(options), buckets_(std::move(buckets)) {
  const size_t world = static_cast<size_t>(comm_->size());
  const size_t rank = static_cast<size_t>(comm_->rank());
  if (options_.mode == ReducerOptions::Mode::kAllReduce) {
    owned_.push_back({0, n_});
    owned_elements_ = n_;
  } else {
    size_t max_chunk = 0;
    bool padded = false;
    for (const Bucket& b : buckets_) {
      max_chunk = std::max(max_chunk, b.chunk);
      padded |= b.chunk * world != b.size;
      const size_t begin = rank * b.chunk;
      if (begin < b.size) {
        owned_.push_back({b.offset + begin, std::min(b.chunk, b.size - begin)});
        owned_elements_ += owned_.back().size;
      }
    }
    std::sort(owned_.begin(), owned_.end(),
              [](const ElementRange& a, const ElementRange& b) { return a.offset < b.offset; });
    chunk_.resize(max_chunk);
    if (padded) {
      size_t max_padded = 0;
      for (const Bucket& b : buckets_) max_padded = std::max(max_padded, b.chunk * world);
      staging_.resize(max_padded);
    }
  }
  thread_ = std::thread([this] { Loop(); });
}

GradientReducer::~GradientReducer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

size_t GradientReducer::buckets_done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

void GradientReducer::Begin() {
  COHORT_CHECK(!open_) << "GradientReducer::Begin while a window is open";
  std::lock_guard<std::mutex> lock(mu_);
  open_ = true;
  next_ = 0;
  done_ = 0;
  comm_seconds_ = 0;
}

void GradientReducer::MarkFinalFrom(size_t offset) {
  if (!open_) return;
  bool handed = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (next_ < buckets_.size() && buckets_[next_].offset >= offset) {
      queue_.push_back(next_++);
      handed = true;
    }
  }
  if (handed) cv_.notify_all();
}

Status GradientReducer::Finish() {
  COHORT_CHECK(open_) << "GradientReducer::Finish without Begin";
  MarkFinalFrom(0);
  const Clock::time_point t0 = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return done_ == buckets_.size(); });
  open_ = false;
  stats_.exposed_seconds = Seconds(t0, Clock::now());
  stats_.comm_seconds = comm_seconds_;
  stats_.buckets = buckets_.size();
  stats_.bytes = n_ * sizeof(float);
  return error_;
}

void GradientReducer::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing in flight
    const size_t i = queue_.front();
    queue_.pop_front();
    const bool failed = !error_.ok();
    lock.unlock();
    Status st;
    double seconds = 0;
    // After a failure the communicator is unusable: skip the rest so Finish() returns promptly.
    if (!failed) {
      const Clock::time_point t0 = Clock::now();
      st = ReduceBucket(buckets_[i]);
      seconds = Seconds(t0, Clock::now());
    }
    lock.lock();
    comm_seconds_ += seconds;
    if (!st.ok() && error_.ok()) error_ = std::move(st);
    ++done_;
    if (done_ == buckets_.size()) cv_.notify_all();
  }
}

Status GradientReducer::ReduceBucket(const Bucket& b) {
  float* base = grads_ + b.offset;
  if (options_.mode == ReducerOptions::Mode::kAllReduce) {
    return comm_->AllReduce(base, b.size, DataType::kFloat32, ReduceOp::kAvg)
        .WithContext("gradient all-reduce of elements [" + std::to_string(b.offset) + ", " +
                     std::to_string(b.offset + b.size) + ")");
  }
  const size_t world = static_cast<size_t>(comm_->size());
  const size_t rank = static_cast<size_t>(comm_->rank());
  const float* in = base;
  if (b.chunk * world != b.size) {
    std::memcpy(staging_.data(), base, b.size * sizeof(float));
    std::fill(staging_.begin() + static_cast<ptrdiff_t>(b.size),
              staging_.begin() + static_cast<ptrdiff_t>(b.chunk * world), 0.0f);
    in = staging_.data();
  }
  RETURN_IF_ERROR(comm_->ReduceScatter(in, chunk_.data(), b.chunk, DataType::kFloat32,
                                       ReduceOp::kAvg)
                      .WithContext("gradient reduce-scatter of elements [" +
                                   std::to_string(b.offset) + ", " +
                                   std::to_string(b.offset + b.size) + ")"));
  const size_t begin = rank * b.chunk;
  if (begin < b.size) {
    std::memcpy(base + begin, chunk_.data(), std::min(b.chunk, b.size - begin) * sizeof(float));
  }
  return Status::Ok();
}

Status GradientReducer::AllGatherParams(float* params) {
  COHORT_CHECK(!open_) << "AllGatherParams inside a reduction window";
  COHORT_CHECK(options_.mode == ReducerOptions::Mode::kReduceScatter)
      << "AllGatherParams is for ZeRO (reduce-scatter) mode";
  {
    std::lock_guard<std::mutex> lock(mu_);
    RETURN_IF_ERROR(error_);
  }
  const size_t world = static_cast<size_t>(comm_->size());
  const size_t rank = static_cast<size_t>(comm_->rank());
  for (const Bucket& b : buckets_) {
    float* base = params + b.offset;
    const size_t begin = rank * b.chunk;
    const size_t valid = begin < b.size ? std::min(b.chunk, b.size - begin) : 0;
    std::memcpy(chunk_.data(), base + begin, valid * sizeof(float));
    std::fill(chunk_.begin() + static_cast<ptrdiff_t>(valid),
              chunk_.begin() + static_cast<ptrdiff_t>(b.chunk), 0.0f);
    const bool even = b.chunk * world == b.size;
    float* out = even ? base : staging_.data();
    Status st = comm_->AllGather(chunk_.data(), out, b.chunk, DataType::kFloat32);
    if (!st.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = st;
      return st.WithContext("parameter all-gather of elements [" + std::to_string(b.offset) +
                            ", " + std::to_string(b.offset + b.size) + ")");
    }
    if (!even) std::memcpy(base, staging_.data(), b.size * sizeof(float));
  }
  return Status::Ok();
}

}  // namespace cohort::collectives
