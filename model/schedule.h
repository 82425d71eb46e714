// Learning-rate schedules (nanoGPT style), evaluated per optimizer step.
#pragma once

#include <cstdint>

#include "common/status.h"

namespace cohort::model {

// lr(s) for the 0-based optimizer step s (the rate used by the s-th update):
//   warmup (s < warmup_steps, both kinds):  lr(s) = max_lr * (s + 1) / warmup_steps
//   kConstant, s >= warmup_steps:            lr(s) = max_lr
//   kCosine, warmup_steps <= s < total_steps:
//       r = (s - warmup_steps) / (total_steps - warmup_steps)          (in [0, 1))
//       lr(s) = min_lr + 0.5 * (1 + cos(pi * r)) * (max_lr - min_lr)
//   kCosine, s >= total_steps:               lr(s) = min_lr
// So the first step uses max_lr / warmup_steps, step warmup_steps-1 uses max_lr, the decay starts
// from max_lr, and it reaches min_lr exactly at total_steps. Computed in double, returned as float.
struct LrSchedule {
  enum class Kind { kConstant, kCosine };
  Kind kind = Kind::kCosine;
  float max_lr = 6e-4f;
  float min_lr = 6e-5f;        // kCosine only
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;     // kCosine only: the step at which min_lr is reached

  // InvalidArgument unless max_lr >= 0 and finite, warmup_steps >= 0, and for kCosine
  // 0 <= min_lr <= max_lr and total_steps >= warmup_steps. Names the field.
  Status Validate() const;

  // lr(step) as above; step < 0 is treated as 0.
  float At(int64_t step) const;
};

}  // namespace cohort::model
