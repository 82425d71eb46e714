#include "model/optimizer.h"

#include <cmath>
#include <string>

#include "kernels/cpu/cpu_kernels.h"

namespace cohort::model {

Status AdamWConfig::Validate() const {
  auto bad = [](const char* field, float v, const char* rule) {
    return InvalidArgument("AdamWConfig." + std::string(field) + " = " + std::to_string(v) +
                           ": " + rule);
  };
  if (!std::isfinite(lr) || lr < 0) return bad("lr", lr, "must be finite and >= 0");
  if (!(beta1 >= 0 && beta1 < 1)) return bad("beta1", beta1, "must be in [0, 1)");
  if (!(beta2 >= 0 && beta2 < 1)) return bad("beta2", beta2, "must be in [0, 1)");
  if (!std::isfinite(eps) || eps < 0) return bad("eps", eps, "must be finite and >= 0");
  if (!std::isfinite(weight_decay) || weight_decay < 0) {
    return bad("weight_decay", weight_decay, "must be finite and >= 0");
  }
  return Status::Ok();
}

Result<std::unique_ptr<AdamW>> AdamW::Create(const AdamWConfig& config,
                                             const std::vector<TensorInfo>& tensors,
                                             ParamRange range) {
  RETURN_IF_ERROR(config.Validate());
  size_t total = 0;
  for (const TensorInfo& t : tensors) {
    if (t.offset != total) {
      return InvalidArgument("AdamW: tensor " + t.name + " is not contiguous with the previous one");
    }
    total += t.numel;
  }
  if (range.size == SIZE_MAX) range.size = total - std::min(range.offset, total);
  if (range.offset > total || range.size > total - range.offset) {
    return InvalidArgument("AdamW: range [" + std::to_string(range.offset) + ", +" +
                           std::to_string(range.size) + ") is outside the " +
                           std::to_string(total) + "-element buffer");
  }
  // Clip each tensor to the range and merge neighbours with equal decay flags, so a step is a
  // handful of long kernel calls rather than one per tensor.
  std::vector<Segment> segments;
  const size_t lo = range.offset, hi = range.offset + range.size;
  for (const TensorInfo& t : tensors) {
    const size_t a = std::max(lo, t.offset), b = std::min(hi, t.offset + t.numel);
    if (a >= b) continue;
    if (!segments.empty() && segments.back().decay == t.decay &&
        segments.back().offset + segments.back().size == a) {
      segments.back().size += b - a;
    } else {
      segments.push_back(Segment{a, b - a, t.decay});
    }
  }
  std::unique_ptr<AdamW> opt(new AdamW(config, std::move(segments), range));
  if (!opt->m_.TryAllocate(range.size) || !opt->v_.TryAllocate(range.size)) {
    return Internal("AdamW: cannot allocate " + std::to_string(2 * range.size * sizeof(float) >> 20) +
                    " MiB of optimizer state");
  }
  kernels::Fill(opt->m_.data(), range.size, 0.0f);
  kernels::Fill(opt->v_.data(), range.size, 0.0f);
  return opt;
}

AdamW::AdamW(const AdamWConfig& config, std::vector<Segment> segments, ParamRange range)
    : config_(config), segments_(std::move(segments)), range_(range) {}

void AdamW::Step(float* params, const float* grads, float lr) {
  ++step_;
  kernels::AdamWHyper h;
  h.lr = lr;
  h.beta1 = config_.beta1;
  h.beta2 = config_.beta2;
  h.eps = config_.eps;
  h.step = step_;
  for (const Segment& s : segments_) {
    h.weight_decay = s.decay ? config_.weight_decay : 0.0f;
    const size_t state = s.offset - range_.offset;
    kernels::AdamWUpdate(params + s.offset, grads + s.offset, m_.data() + state,
                         v_.data() + state, s.size, h);
  }
}

float ClipGradNorm(float* grads, size_t n, float max_norm) {
  const float total = static_cast<float>(std::sqrt(kernels::SumOfSquares(grads, n)));
  if (!std::isfinite(total) || !(max_norm > 0)) return total;
  // Same float arithmetic as torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1.
  const float coef = max_norm / (total + 1e-6f);
  if (coef < 1.0f) kernels::Scale(grads, n, coef);
  return total;
}

}  // namespace cohort::model
