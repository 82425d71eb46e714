#include "collectives/communicator.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "collectives/float16.h"
#include "common/check.h"

namespace cohort::collectives {

size_t SizeOf(DataType t) {
  switch (t) {
    case DataType::kFloat32: return 4;
    case DataType::kBFloat16:
    case DataType::kFloat16: return 2;
  }
  return 0;
}

std::string_view Name(DataType t) {
  switch (t) {
    case DataType::kFloat32: return "fp32";
    case DataType::kBFloat16: return "bf16";
    case DataType::kFloat16: return "fp16";
  }
  return "?";
}

std::string_view Name(ReduceOp op) { return op == ReduceOp::kSum ? "sum" : "avg"; }

void FinishReduce(float* x, size_t n, ReduceOp op, int world_size) {
  if (op != ReduceOp::kAvg) return;
  const float inv = 1.0f / static_cast<float>(world_size);
  for (size_t i = 0; i < n; ++i) x[i] *= inv;
}

void SumInRankOrder(const float* const* in, int n_in, float* out, size_t len, ReduceOp op,
                    int world_size) {
  // Each block is summed in a local accumulator before it is stored, since out may alias an input.
  constexpr size_t kBlock = 1024;
  alignas(64) float acc[kBlock];
  for (size_t base = 0; base < len; base += kBlock) {
    const size_t m = std::min(kBlock, len - base);
    for (size_t i = 0; i < m; ++i) acc[i] = 0.0f + in[0][base + i];
    for (int r = 1; r < n_in; ++r) {
      const float* x = in[r] + base;
      for (size_t i = 0; i < m; ++i) acc[i] += x[i];
    }
    FinishReduce(acc, m, op, world_size);
    std::memcpy(out + base, acc, m * sizeof(float));
  }
}

namespace {

void Widen(const void* in, float* out, size_t n, DataType t) {
  const auto* h = static_cast<const uint16_t*>(in);
  if (t == DataType::kBFloat16) {
    for (size_t i = 0; i < n; ++i) out[i] = Bf16ToFloat(h[i]);
  } else {
    for (size_t i = 0; i < n; ++i) out[i] = HalfToFloat(h[i]);
  }
}

void Narrow(const float* in, void* out, size_t n, DataType t) {
  auto* h = static_cast<uint16_t*>(out);
  if (t == DataType::kBFloat16) {
    for (size_t i = 0; i < n; ++i) h[i] = FloatToBf16(in[i]);
  } else {
    for (size_t i = 0; i < n; ++i) h[i] = FloatToHalf(in[i]);
  }
}

}  // namespace

Status AllReduceWidened(Communicator& c, void* buf, size_t count, DataType type, ReduceOp op) {
  COHORT_CHECK(type != DataType::kFloat32);
  std::vector<float> wide(count);
  Widen(buf, wide.data(), count, type);
  RETURN_IF_ERROR(c.AllReduce(wide.data(), count, DataType::kFloat32, op));
  Narrow(wide.data(), buf, count, type);
  return Status::Ok();
}

Status ReduceScatterWidened(Communicator& c, const void* in, void* out, size_t count,
                            DataType type, ReduceOp op) {
  COHORT_CHECK(type != DataType::kFloat32);
  std::vector<float> wide_in(count * static_cast<size_t>(c.size()));
  std::vector<float> wide_out(count);
  Widen(in, wide_in.data(), wide_in.size(), type);
  RETURN_IF_ERROR(c.ReduceScatter(wide_in.data(), wide_out.data(), count, DataType::kFloat32, op));
  Narrow(wide_out.data(), out, count, type);
  return Status::Ok();
}

Status AllGatherWidened(Communicator& c, const void* in, void* out, size_t count, DataType type) {
  COHORT_CHECK(type != DataType::kFloat32);
  // No arithmetic here: each 16-bit value rides in the low half of a 32-bit slot, so every bit
  // pattern (NaN payloads included) arrives unchanged.
  const auto* src = static_cast<const uint16_t*>(in);
  auto* dst = static_cast<uint16_t*>(out);
  std::vector<uint32_t> slots_in(count);
  std::vector<uint32_t> slots_out(count * static_cast<size_t>(c.size()));
  for (size_t i = 0; i < count; ++i) slots_in[i] = src[i];
  RETURN_IF_ERROR(c.AllGather(slots_in.data(), slots_out.data(), count, DataType::kFloat32));
  for (size_t i = 0; i < slots_out.size(); ++i) dst[i] = static_cast<uint16_t>(slots_out[i]);
  return Status::Ok();
}

}  // namespace cohort::collectives
