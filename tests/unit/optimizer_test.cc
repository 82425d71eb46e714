// Tests for model/optimizer (AdamW, ClipGradNorm) and model/schedule (LrSchedule).
#include "model/optimizer.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/cpu_kernels.h"
#include "model/schedule.h"

namespace cohort::model {
namespace {

// A small parameter table: a decayed 2-D weight, a bias, another decayed weight, a LN weight.
std::vector<TensorInfo> Table() {
  std::vector<TensorInfo> t;
  size_t off = 0;
  auto add = [&](const char* name, std::vector<int64_t> shape, bool decay) {
    size_t n = 1;
    for (int64_t d : shape) n *= d;
    t.push_back(TensorInfo{name, off, n, shape, decay});
    off += n;
  };
  add("a.weight", {7, 5}, true);
  add("a.bias", {7}, false);
  add("b.weight", {3, 7}, true);
  add("ln.weight", {3}, false);
  return t;
}

size_t Total(const std::vector<TensorInfo>& t) { return t.back().offset + t.back().numel; }

std::vector<float> Random(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

TEST(optimizer, ConfigValidation) {
  AdamWConfig c;
  EXPECT_TRUE(c.Validate().ok());
  c.beta1 = 1.0f;
  EXPECT_NE(c.Validate().message().find("beta1"), std::string::npos);
  c = AdamWConfig();
  c.beta2 = -0.1f;
  EXPECT_NE(c.Validate().message().find("beta2"), std::string::npos);
  c = AdamWConfig();
  c.lr = NAN;
  EXPECT_NE(c.Validate().message().find("lr"), std::string::npos);
  c = AdamWConfig();
  c.weight_decay = -1;
  EXPECT_FALSE(AdamW::Create(c, Table()).ok());
  EXPECT_FALSE(AdamW::Create(AdamWConfig(), Table(), ParamRange{60, 100}).ok());
  std::vector<TensorInfo> gap = Table();
  gap[2].offset += 1;
  EXPECT_FALSE(AdamW::Create(AdamWConfig(), gap).ok());
}

// Three steps against the formula evaluated in double by hand, with the decay mask.
TEST(optimizer, AdamWMatchesHandComputedStepsAndDecayMask) {
  const auto table = Table();
  const size_t n = Total(table);
  AdamWConfig c;
  c.lr = 0.05f;
  c.beta1 = 0.8f;
  c.beta2 = 0.9f;
  c.eps = 1e-6f;
  c.weight_decay = 0.3f;
  auto opt = AdamW::Create(c, table);
  ASSERT_TRUE(opt.ok());
  std::vector<float> p = Random(n, 1, 0.5f);
  std::vector<double> pd(p.begin(), p.end()), m(n, 0.0), v(n, 0.0);
  const float lrs[] = {0.05f, 0.02f, 0.01f};
  for (int t = 1; t <= 3; ++t) {
    const std::vector<float> g = Random(n, 10 + t, 0.1f);
    (*opt)->Step(p.data(), g.data(), lrs[t - 1]);
    EXPECT_EQ((*opt)->step(), t);
    for (const TensorInfo& ti : table) {
      const double wd = ti.decay ? c.weight_decay : 0.0;
      for (size_t i = ti.offset; i < ti.offset + ti.numel; ++i) {
        const double lr = lrs[t - 1];
        pd[i] *= 1 - lr * wd;
        m[i] = c.beta1 * m[i] + (1 - c.beta1) * g[i];
        v[i] = c.beta2 * v[i] + (1 - c.beta2) * double(g[i]) * g[i];
        const double mhat = m[i] / (1 - std::pow(double(c.beta1), t));
        const double vhat = v[i] / (1 - std::pow(double(c.beta2), t));
        pd[i] -= lr * mhat / (std::sqrt(vhat) + c.eps);
      }
    }
    for (size_t i = 0; i < n; ++i) ASSERT_NEAR(p[i], pd[i], 2e-6) << "step " << t << " elem " << i;
  }
  // With zero gradients, only decayed tensors move (by exactly the factor 1 - lr * wd), once
  // the moments are zero: check on a fresh optimizer.
  auto fresh = AdamW::Create(c, table);
  std::vector<float> q = Random(n, 2, 0.5f);
  const std::vector<float> q0 = q;
  const std::vector<float> zero(n, 0.0f);
  (*fresh)->Step(q.data(), zero.data(), 0.1f);
  for (const TensorInfo& ti : table)
    for (size_t i = ti.offset; i < ti.offset + ti.numel; ++i) {
      if (ti.decay) {
        EXPECT_FLOAT_EQ(q[i], q0[i] * (1.0f - 0.1f * 0.3f)) << ti.name;
      } else {
        EXPECT_EQ(q[i], q0[i]) << ti.name;
      }
    }
}

TEST(optimizer, ShardedStateMatchesWholeBuffer) {
  const auto table = Table();
  const size_t n = Total(table);
  AdamWConfig c;
  c.weight_decay = 0.1f;
  auto whole = AdamW::Create(c, table);
  auto lo = AdamW::Create(c, table, ParamRange{0, 20});  // splits a.weight
  auto hi = AdamW::Create(c, table, ParamRange{20, n - 20});
  ASSERT_TRUE(whole.ok() && lo.ok() && hi.ok());
  EXPECT_EQ((*hi)->state_size(), n - 20);
  std::vector<float> p1 = Random(n, 3, 1.0f), p2 = p1;
  for (int t = 0; t < 3; ++t) {
    const std::vector<float> g = Random(n, 20 + t, 1.0f);
    (*whole)->Step(p1.data(), g.data(), 0.01f);
    (*lo)->Step(p2.data(), g.data(), 0.01f);
    (*hi)->Step(p2.data(), g.data(), 0.01f);
  }
  EXPECT_EQ(0, std::memcmp(p1.data(), p2.data(), n * sizeof(float)));
  EXPECT_EQ(0, std::memcmp((*whole)->m() + 20, (*hi)->m(), (n - 20) * sizeof(float)));
}

TEST(optimizer, ClipGradNormFollowsTorchSemantics) {
  const size_t n = 100000;
  std::vector<float> g = Random(n, 4, 0.01f);
  double sq = 0;
  for (float x : g) sq += double(x) * x;
  const float norm = static_cast<float>(std::sqrt(sq));  // ~3.16
  // Below the threshold: returned norm, gradients untouched.
  std::vector<float> below = g;
  EXPECT_NEAR(ClipGradNorm(below.data(), n, 10.0f), norm, 1e-6 * norm);
  EXPECT_EQ(0, std::memcmp(below.data(), g.data(), n * sizeof(float)));
  // Above: scaled by max_norm / (norm + 1e-6); the returned value is the pre-clip norm.
  std::vector<float> above = g;
  EXPECT_NEAR(ClipGradNorm(above.data(), n, 1.0f), norm, 1e-6 * norm);
  const float coef = 1.0f / (norm + 1e-6f);
  for (size_t i = 0; i < n; i += 997) ASSERT_FLOAT_EQ(above[i], g[i] * coef);
  double sq2 = 0;
  for (float x : above) sq2 += double(x) * x;
  EXPECT_NEAR(std::sqrt(sq2), 1.0, 1e-5);
  // max_norm <= 0: norm only.
  std::vector<float> same = g;
  EXPECT_NEAR(ClipGradNorm(same.data(), n, 0.0f), norm, 1e-6 * norm);
  EXPECT_EQ(0, std::memcmp(same.data(), g.data(), n * sizeof(float)));
  // Non-finite: reported, gradients untouched.
  std::vector<float> bad = g;
  bad[123] = INFINITY;
  EXPECT_TRUE(std::isinf(ClipGradNorm(bad.data(), n, 1.0f)));
  EXPECT_EQ(bad[124], g[124]);
  bad[123] = NAN;
  EXPECT_TRUE(std::isnan(ClipGradNorm(bad.data(), n, 1.0f)));
  EXPECT_EQ(bad[0], g[0]);
}

TEST(optimizer_schedule, WarmupThenCosineToMinLr) {
  LrSchedule s;
  s.kind = LrSchedule::Kind::kCosine;
  s.max_lr = 1.0f;
  s.min_lr = 0.1f;
  s.warmup_steps = 10;
  s.total_steps = 110;
  ASSERT_TRUE(s.Validate().ok());
  EXPECT_FLOAT_EQ(s.At(0), 0.1f);   // (0 + 1) / 10
  EXPECT_FLOAT_EQ(s.At(4), 0.5f);
  EXPECT_FLOAT_EQ(s.At(9), 1.0f);   // last warmup step reaches max_lr
  EXPECT_FLOAT_EQ(s.At(10), 1.0f);  // decay starts at max_lr
  EXPECT_FLOAT_EQ(s.At(60), 0.55f); // halfway: min + (max - min) / 2
  EXPECT_NEAR(s.At(35), 0.1 + 0.45 * (1 + std::cos(M_PI * 0.25)), 1e-6);
  EXPECT_GT(s.At(109), 0.1f);
  EXPECT_FLOAT_EQ(s.At(110), 0.1f);
  EXPECT_FLOAT_EQ(s.At(100000), 0.1f);
  EXPECT_FLOAT_EQ(s.At(-3), 0.1f);  // treated as step 0
  for (int64_t i = 10; i < 110; ++i) EXPECT_GE(s.At(i), s.At(i + 1)) << i;  // monotone decay
}

TEST(optimizer_schedule, ConstantAndNoWarmup) {
  LrSchedule s;
  s.kind = LrSchedule::Kind::kConstant;
  s.max_lr = 3e-4f;
  s.warmup_steps = 4;
  ASSERT_TRUE(s.Validate().ok());
  EXPECT_FLOAT_EQ(s.At(0), 0.75e-4f);
  EXPECT_FLOAT_EQ(s.At(3), 3e-4f);
  EXPECT_FLOAT_EQ(s.At(1000000), 3e-4f);
  LrSchedule c;
  c.kind = LrSchedule::Kind::kCosine;
  c.max_lr = 2.0f;
  c.min_lr = 0.0f;
  c.warmup_steps = 0;
  c.total_steps = 4;
  ASSERT_TRUE(c.Validate().ok());
  EXPECT_FLOAT_EQ(c.At(0), 2.0f);
  EXPECT_FLOAT_EQ(c.At(2), 1.0f);
  EXPECT_FLOAT_EQ(c.At(4), 0.0f);
}

TEST(optimizer_schedule, Validation) {
  LrSchedule s;
  s.max_lr = -1;
  EXPECT_NE(s.Validate().message().find("max_lr"), std::string::npos);
  s = LrSchedule();
  s.min_lr = 1.0f;  // > max_lr
  EXPECT_NE(s.Validate().message().find("min_lr"), std::string::npos);
  s = LrSchedule();
  s.warmup_steps = 10;
  s.total_steps = 5;
  EXPECT_NE(s.Validate().message().find("total_steps"), std::string::npos);
  s.kind = LrSchedule::Kind::kConstant;  // total_steps is irrelevant for constant
  EXPECT_TRUE(s.Validate().ok());
  s.warmup_steps = -1;
  EXPECT_NE(s.Validate().message().find("warmup_steps"), std::string::npos);
}

}  // namespace
}  // namespace cohort::model
