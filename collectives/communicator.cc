#include "collectives/communicator.h"

namespace cohort::collectives {

size_t SizeOf(DataType t) {
  switch (t) {
    case DataType::kFloat32: return 4;
  }
  return 0;
}

std::string_view Name(ReduceOp op) { return op == ReduceOp::kSum ? "sum" : "avg"; }

void FinishReduce(float* x, size_t n, ReduceOp op, int world_size) {
  if (op != ReduceOp::kAvg) return;
  const float inv = 1.0f / static_cast<float>(world_size);
  for (size_t i = 0; i < n; ++i) x[i] *= inv;
}

}  // namespace cohort::collectives
