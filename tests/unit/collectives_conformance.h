// The Communicator conformance checks, shared by every backend's test: the in-process backend
// runs them on N threads (tests/unit/collectives_test.cc), MPI under a real mpirun
// (tests/mp/collectives_mpi_test.cc). Each check runs on every rank and returns the first
// mismatch as a Status naming the rank, the operation and the element.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "collectives/float16.h"

namespace cohort::collectives::conformance {

// A value whose sums over up to 8 ranks are exact in float.
inline float Value(int rank, size_t i) {
  return static_cast<float>((rank + 1) * static_cast<int>(i % 97)) + 0.5f;
}
inline float SumOver(int n, size_t i) {
  float s = 0;
  for (int r = 0; r < n; ++r) s += Value(r, i);
  return s;
}
inline Status Mismatch(const Communicator& c, const char* op, size_t i, float got, float want) {
  return Internal("rank " + std::to_string(c.rank()) + ": " + op + " element " + std::to_string(i) +
                  ": got " + std::to_string(got) + ", want " + std::to_string(want));
}

inline Status AllReduceSumAndAvg(Communicator& c, size_t count) {
  const int n = c.size();
  std::vector<float> buf(count);
  for (size_t i = 0; i < count; ++i) buf[i] = Value(c.rank(), i);
  RETURN_IF_ERROR(c.AllReduce(buf.data(), count, DataType::kFloat32, ReduceOp::kSum));
  for (size_t i = 0; i < count; ++i) {
    if (buf[i] != SumOver(n, i)) return Mismatch(c, "all-reduce sum", i, buf[i], SumOver(n, i));
  }
  for (size_t i = 0; i < count; ++i) buf[i] = Value(c.rank(), i);
  RETURN_IF_ERROR(c.AllReduce(buf.data(), count, DataType::kFloat32, ReduceOp::kAvg));
  for (size_t i = 0; i < count; ++i) {
    const float want = SumOver(n, i) * (1.0f / static_cast<float>(n));
    if (buf[i] != want) return Mismatch(c, "all-reduce avg", i, buf[i], want);
  }
  return Status::Ok();
}

// Rank r's random inputs: inexact floats whose sum depends on the summation order.
inline std::vector<float> RandomInput(int rank, size_t n) {
  std::mt19937 gen(1234 + static_cast<unsigned>(rank));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen) * 1000.0f;
  return v;
}

// The sum over ranks 0..n-1 of RandomInput, added in rank order starting from +0.0f.
inline std::vector<float> RankOrderSum(int n, size_t count) {
  std::vector<float> sum(count, 0.0f);
  for (int r = 0; r < n; ++r) {
    const std::vector<float> x = RandomInput(r, count);
    for (size_t i = 0; i < count; ++i) sum[i] += x[i];
  }
  return sum;
}

inline Status FirstDifference(const Communicator& c, const char* op, const std::vector<float>& got,
                              const std::vector<float>& want) {
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) return Mismatch(c, op, i, got[i], want[i]);
  }
  return Status::Ok();
}

// Data-parallel replicas stay in sync only if every rank gets the same bits from an all-reduce,
// whatever the summation order: rank 0's result is broadcast and compared bit for bit.
inline Status AllReduceIdenticalEverywhere(Communicator& c, size_t count) {
  std::vector<float> buf = RandomInput(c.rank(), count);
  RETURN_IF_ERROR(c.AllReduce(buf.data(), count, DataType::kFloat32, ReduceOp::kSum));
  std::vector<float> zero = buf;
  RETURN_IF_ERROR(c.Broadcast(zero.data(), count * sizeof(float), 0));
  return FirstDifference(c, "all-reduce differs from rank 0's", buf, zero);
}

// For backends that promise it (Gloo; MPI's one-shot path for small buffers): every rank holds
// exactly the rank-order sum, so those backends agree bit for bit with each other.
inline Status AllReduceInRankOrder(Communicator& c, size_t count) {
  std::vector<float> buf = RandomInput(c.rank(), count);
  RETURN_IF_ERROR(c.AllReduce(buf.data(), count, DataType::kFloat32, ReduceOp::kSum));
  return FirstDifference(c, "all-reduce (rank order)", buf, RankOrderSum(c.size(), count));
}

inline Status ReduceScatterThenAllGather(Communicator& c, size_t count) {
  const int n = c.size();
  std::vector<float> in(count * static_cast<size_t>(n)), shard(count), all(in.size());
  for (size_t i = 0; i < in.size(); ++i) in[i] = Value(c.rank(), i);
  RETURN_IF_ERROR(c.ReduceScatter(in.data(), shard.data(), count, DataType::kFloat32, ReduceOp::kSum));
  for (size_t i = 0; i < count; ++i) {
    const float want = SumOver(n, static_cast<size_t>(c.rank()) * count + i);
    if (shard[i] != want) return Mismatch(c, "reduce-scatter", i, shard[i], want);
  }
  RETURN_IF_ERROR(c.AllGather(shard.data(), all.data(), count, DataType::kFloat32));
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i] != SumOver(n, i)) return Mismatch(c, "all-gather", i, all[i], SumOver(n, i));
  }
  return Status::Ok();
}

inline Status BroadcastFromEveryRoot(Communicator& c, size_t count) {
  for (int root = 0; root < c.size(); ++root) {
    std::vector<float> buf(count);
    for (size_t i = 0; i < count; ++i) buf[i] = Value(c.rank(), i);
    RETURN_IF_ERROR(c.Broadcast(buf.data(), count * sizeof(float), root));
    for (size_t i = 0; i < count; ++i) {
      if (buf[i] != Value(root, i)) return Mismatch(c, "broadcast", i, buf[i], Value(root, i));
    }
  }
  return c.Barrier();
}

// 16-bit buffers (bf16 and fp16): all-reduce sum/avg, reduce-scatter, all-gather. Values are
// small integers, so sums are exact in both formats; the average is the sum scaled by 1/N in
// fp32 and rounded once (what the host backends do).
inline float Value16(int rank, size_t i) { return static_cast<float>((rank + 1) * static_cast<int>(i % 7) - 3); }
inline Status SixteenBit(Communicator& c, size_t count) {
  const int n = c.size();
  for (DataType t : {DataType::kBFloat16, DataType::kFloat16}) {
    auto narrow = [t](float f) { return t == DataType::kBFloat16 ? FloatToBf16(f) : FloatToHalf(f); };
    auto widen = [t](uint16_t h) { return t == DataType::kBFloat16 ? Bf16ToFloat(h) : HalfToFloat(h); };
    auto sum = [n](size_t i) {
      float s = 0;
      for (int r = 0; r < n; ++r) s += Value16(r, i);
      return s;
    };
    const std::string name(Name(t));
    std::vector<uint16_t> buf(count);
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg}) {
      for (size_t i = 0; i < count; ++i) buf[i] = narrow(Value16(c.rank(), i));
      RETURN_IF_ERROR(c.AllReduce(buf.data(), count, t, op));
      for (size_t i = 0; i < count; ++i) {
        const float want = widen(narrow(op == ReduceOp::kSum ? sum(i) : sum(i) * (1.0f / static_cast<float>(n))));
        if (buf[i] != narrow(want)) {
          return Mismatch(c, (name + " all-reduce " + std::string(Name(op))).c_str(), i, widen(buf[i]), want);
        }
      }
    }
    std::vector<uint16_t> in(count * static_cast<size_t>(n)), shard(count), all(in.size());
    for (size_t i = 0; i < in.size(); ++i) in[i] = narrow(Value16(c.rank(), i));
    RETURN_IF_ERROR(c.ReduceScatter(in.data(), shard.data(), count, t, ReduceOp::kSum));
    for (size_t i = 0; i < count; ++i) {
      const float want = sum(static_cast<size_t>(c.rank()) * count + i);
      if (widen(shard[i]) != want) return Mismatch(c, (name + " reduce-scatter").c_str(), i, widen(shard[i]), want);
    }
    RETURN_IF_ERROR(c.AllGather(shard.data(), all.data(), count, t));
    for (size_t i = 0; i < all.size(); ++i) {
      if (widen(all[i]) != sum(i)) return Mismatch(c, (name + " all-gather").c_str(), i, widen(all[i]), sum(i));
    }
  }
  return Status::Ok();
}

// Sizes every backend is checked at: one element, odd sizes, and large buffers.
inline std::vector<size_t> Sizes() {
  return {1, 7, 1000, 8191, 65537, (size_t{1} << 20) + 3};
}

// For the process-per-rank runners (MPI, Gloo, NCCL): counts checks, printing each failure.
struct Tally {
  int passes = 0;
  int failures = 0;
  void Check(const Communicator& c, const char* name, size_t count, const Status& s) {
    if (s.ok()) {
      ++passes;
    } else {
      ++failures;
      std::fprintf(stderr, "FAIL rank %d: %s count=%zu: %s\n", c.rank(), name, count,
                   s.ToString().c_str());
    }
  }
};

// Every shared check at every Sizes() count; with `large`, also a 64 MiB all-reduce (the size the
// gradient buckets reach).
inline void RunSuite(Communicator& c, Tally& t, bool large) {
  for (size_t count : Sizes()) {
    t.Check(c, "all-reduce", count, AllReduceSumAndAvg(c, count));
    t.Check(c, "all-reduce identical on every rank", count, AllReduceIdenticalEverywhere(c, count));
    t.Check(c, "reduce-scatter/all-gather", count, ReduceScatterThenAllGather(c, count));
    t.Check(c, "broadcast", count, BroadcastFromEveryRoot(c, count));
    t.Check(c, "bf16/fp16", count, SixteenBit(c, count));
  }
  if (large) {
    const size_t n = size_t{16} << 20;
    t.Check(c, "all-reduce 64MiB", n, AllReduceSumAndAvg(c, n));
  }
}

}  // namespace cohort::collectives::conformance
