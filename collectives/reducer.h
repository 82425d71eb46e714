// GradientReducer: averages a flat gradient buffer across the ranks of a Communicator in buckets,
// overlapping the communication with the backward pass that produces the gradients.
//
// The buffer [0, n) is cut into buckets of `bucket_bytes` from the END backwards (the model's
// backward pass finalizes gradients from the last layer to the embeddings, i.e. from high offsets
// to low ones). During backward the caller reports progress with MarkFinalFrom(offset) ("grads
// [offset, n) are final"); every bucket that lies entirely above the mark is handed at once to the
// reducer's own communication thread, which reduces it while backward computes the rest. Finish()
// waits for the remaining buckets.
//
// Two modes:
//  - kAllReduce (DDP): every bucket is all-reduced in place; afterwards every rank holds the
//    average of all ranks' gradients, bit-identical on every rank.
//  - kReduceScatter (ZeRO-1): each bucket is split into size() equal chunks (the last one padded
//    with zeros when the bucket does not divide evenly) and reduce-scattered: rank r receives the
//    averaged chunk r of every bucket, written back into the gradient buffer at its place (the
//    rest of the buffer then holds this rank's unreduced gradients and must not be used). The
//    elements rank r owns are owned_ranges(); the optimizer updates only those, and
//    AllGatherParams() then gives every rank every other rank's updated chunks.
//
// Thread safety: Begin/MarkFinalFrom/Finish/AllGatherParams are called from one thread (the
// training loop; MarkFinalFrom from the model's backward hook on that thread). Between Begin() and
// the return of Finish() the reducer's thread owns the Communicator; outside that window the
// caller may use the Communicator directly (one thread at a time, as its contract requires).
// Errors from a collective are sticky: Finish() returns the first one, and the reducer (like the
// communicator) is unusable afterwards.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "collectives/communicator.h"
#include "common/status.h"

namespace cohort::collectives {

struct ReducerOptions {
  enum class Mode { kAllReduce, kReduceScatter };
  Mode mode = Mode::kAllReduce;
  size_t bucket_bytes = size_t{25} << 20;  // PyTorch DDP's default bucket_cap_mb
};

// A range of the flat buffer, in elements.
struct ElementRange {
  size_t offset = 0;
  size_t size = 0;
};

// Timing of the last Begin()..Finish() window.
struct ReducerStats {
  double comm_seconds = 0;     // time the communication thread spent inside collectives
  double exposed_seconds = 0;  // time Finish() blocked waiting for them (not hidden by backward)
  size_t buckets = 0;
  size_t bytes = 0;            // gradient bytes reduced by this rank
};

class GradientReducer {
 public:
  // `comm` and `grads` (n floats) must outlive the reducer. InvalidArgument for n == 0 or a
  // bucket smaller than one element per rank.
  static Result<std::unique_ptr<GradientReducer>> Create(Communicator* comm, float* grads,
                                                          size_t n, const ReducerOptions& options);
  ~GradientReducer();  // joins the communication thread (after any in-flight bucket finishes)

  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Starts a reduction window (call before the backward pass whose gradients are to be reduced,
  // i.e. the last micro-step of an accumulation). CHECK-fails if a window is already open.
  void Begin();

  // grads[offset, n) are final: buckets lying entirely inside are reduced from now on. Offsets
  // must not increase within a window; a call outside a window is ignored (the hook stays
  // installed for the non-final micro-steps of an accumulation).
  void MarkFinalFrom(size_t offset);

  // Marks everything final, waits for every bucket and closes the window. Returns the first
  // collective error (the gradients are then undefined).
  Status Finish();

  // ZeRO-1 only: params[owned_ranges()] on every rank -> params everywhere (all-gather, bucket by
  // bucket). Call outside a window, after the optimizer has updated the owned ranges.
  Status AllGatherParams(float* params);

  // The elements whose reduced gradient this rank holds after Finish(): everything in
  // kAllReduce mode; chunk rank() of every bucket in kReduceScatter mode (ascending offsets).
  const std::vector<ElementRange>& owned_ranges() const { return owned_; }
  size_t owned_elements() const { return owned_elements_; }

  const ReducerStats& last_stats() const { return stats_; }
  // Buckets of the open window already reduced by the communication thread (thread-safe; for
  // tests and diagnostics: progress made while backward still runs).
  size_t buckets_done() const;
  size_t num_buckets() const { return buckets_.size(); }
  ElementRange bucket(size_t i) const { return {buckets_[i].offset, buckets_[i].size}; }

 private:
  struct Bucket {
    size_t offset = 0;
    size_t size = 0;
    size_t chunk = 0;  // kReduceScatter: elements per rank, ceil(size / world)
  };

  GradientReducer(Communicator* comm, float* grads, size_t n, const ReducerOptions& options,
                  std::vector<Bucket> buckets);
  void Loop();
  Status ReduceBucket(const Bucket& b);

  Communicator* const comm_;
  float* const grads_;
  const size_t n_;
  const ReducerOptions options_;
  const std::vector<Bucket> buckets_;  // buckets_[0] is the highest range (reduced first)
  std::vector<ElementRange> owned_;
  size_t owned_elements_ = 0;
  std::vector<float> staging_;  // padded bucket copy (reduce-scatter / all-gather), reused
  std::vector<float> chunk_;    // one chunk (reduce-scatter output / all-gather input), reused

  // Shared with the communication thread.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<size_t> queue_;  // bucket indices ready to reduce
  size_t done_ = 0;           // buckets finished in this window
  Status error_;
  bool stopping_ = false;
  double comm_seconds_ = 0;

  // Training-thread state.
  bool open_ = false;
  size_t next_ = 0;  // next bucket to hand over
  ReducerStats stats_;
  std::thread thread_;
};

}  // namespace cohort::collectives
