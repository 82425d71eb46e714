// AdamW (torch.optim.AdamW semantics) and global-norm gradient clipping
// (torch.nn.utils.clip_grad_norm_ semantics) over the model's flat parameter buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/status.h"
#include "model/aligned_buffer.h"
#include "model/gpt.h"

namespace cohort::model {

// Defaults are torch.optim.AdamW's.
struct AdamWConfig {
  float lr = 1e-3f;            // peak rate; Step() takes the scheduled rate explicitly
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;  // decoupled; applied only to tensors with TensorInfo::decay

  // InvalidArgument unless lr >= 0, 0 <= beta1, beta2 < 1, eps >= 0, weight_decay >= 0 (all
  // finite), naming the field.
  Status Validate() const;
};

// AdamW owns the first and second moments (m, v) for a range of a parameter buffer laid out as
// `tensors` describes (by default the whole buffer; a sub-range for ZeRO-style sharding). Per
// element, with t the 1-based step count after this update and wd = weight_decay for tensors
// marked decay (0 otherwise), exactly as torch.optim.AdamW (foreach=False) orders it:
//   p = p * (1 - lr * wd)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// Not thread-safe; Step parallelizes internally (kernels::SetNumThreads).
class AdamW {
 public:
  // range defaults to the whole buffer (the sum of the tensors' sizes). InvalidArgument for a
  // bad config or a range outside the buffer. m and v start at zero, step() at 0.
  static Result<std::unique_ptr<AdamW>> Create(const AdamWConfig& config,
                                               const std::vector<TensorInfo>& tensors,
                                               ParamRange range = {0, SIZE_MAX});

  // Applies one update with learning rate lr to params[range] using grads[range]; both point at
  // the START of the full parameter/gradient buffers (same layout as the tensor table).
  void Step(float* params, const float* grads, float lr);

  int64_t step() const { return step_; }
  void set_step(int64_t step) { step_ = step; }  // checkpoint restore
  const AdamWConfig& config() const { return config_; }
  ParamRange range() const { return range_; }
  // Moments for the elements of range(), indexed from range().offset (checkpointing).
  float* m() { return m_.data(); }
  float* v() { return v_.data(); }
  size_t state_size() const { return range_.size; }

 private:
  struct Segment {  // a run of adjacent elements sharing a decay flag, in buffer coordinates
    size_t offset;
    size_t size;
    bool decay;
  };
  AdamW(const AdamWConfig& config, std::vector<Segment> segments, ParamRange range);

  AdamWConfig config_;
  std::vector<Segment> segments_;
  ParamRange range_;
  AlignedBuffer m_;
  AlignedBuffer v_;
  int64_t step_ = 0;
};

// Global-norm clipping, torch.nn.utils.clip_grad_norm_(norm_type=2) semantics: computes
// total = ||grads||_2 over all n elements (accumulated in double, deterministic), and if
// coef = max_norm / (total + 1e-6) < 1 multiplies every gradient by coef. Returns the pre-clip
// norm. Differences from torch, for robustness: when total is NaN/inf the gradients are left
// unchanged (the caller should skip the step); max_norm <= 0 only computes the norm.
float ClipGradNorm(float* grads, size_t n, float max_norm);

}  // namespace cohort::model
