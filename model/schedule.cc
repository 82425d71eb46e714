#include "model/schedule.h"

#include <cmath>
#include <numbers>
#include <string>

namespace cohort::model {

Status LrSchedule::Validate() const {
  if (!std::isfinite(max_lr) || max_lr < 0) {
    return InvalidArgument("LrSchedule.max_lr = " + std::to_string(max_lr) +
                           ": must be finite and >= 0");
  }
  if (warmup_steps < 0) {
    return InvalidArgument("LrSchedule.warmup_steps = " + std::to_string(warmup_steps) +
                           ": must be >= 0");
  }
  if (kind == Kind::kCosine) {
    if (!(min_lr >= 0 && min_lr <= max_lr)) {
      return InvalidArgument("LrSchedule.min_lr = " + std::to_string(min_lr) +
                             ": must be in [0, max_lr = " + std::to_string(max_lr) + "]");
    }
    if (total_steps < warmup_steps) {
      return InvalidArgument("LrSchedule.total_steps = " + std::to_string(total_steps) +
                             ": must be >= warmup_steps = " + std::to_string(warmup_steps));
    }
  }
  return Status::Ok();
}

float LrSchedule::At(int64_t step) const {
  const int64_t s = step < 0 ? 0 : step;
  const double max = max_lr, min = min_lr;
  if (s < warmup_steps) {
    return static_cast<float>(max * static_cast<double>(s + 1) / static_cast<double>(warmup_steps));
  }
  if (kind == Kind::kConstant) return max_lr;
  if (s >= total_steps) return min_lr;
  const double r = static_cast<double>(s - warmup_steps) /
                   static_cast<double>(total_steps - warmup_steps);
  return static_cast<float>(min + 0.5 * (1.0 + std::cos(std::numbers::pi * r)) * (max - min));
}

}  // namespace cohort::model
