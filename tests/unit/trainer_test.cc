#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/config.h"
#include "dataloader/token_shard.h"
#include "model/gpt.h"
#include "model/optimizer.h"
#include "tests/unit/test_util.h"
#include "worker/trainer.h"

namespace cohort::worker {
namespace {

using ::testing::HasSubstr;

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.path();
    // A learnable byte stream: a few English sentences repeated with variations.
    const std::string text =
        "the quick brown fox jumps over the lazy dog. a stitch in time saves nine. "
        "all that glitters is not gold. the early bird catches the worm. ";
    std::vector<uint32_t> train, val;
    for (int rep = 0; rep < 60; ++rep) {
      for (char c : text) train.push_back(static_cast<unsigned char>(c));
      train.push_back(256);
    }
    for (int rep = 0; rep < 8; ++rep) {
      for (char c : text) val.push_back(static_cast<unsigned char>(c));
      val.push_back(256);
    }
    ASSERT_TRUE(data::WriteTokenShard(dir_ + "/train-00000.bin",
                                      std::span(train).first(train.size() / 2), 257, "byte").ok());
    ASSERT_TRUE(data::WriteTokenShard(dir_ + "/train-00001.bin",
                                      std::span(train).subspan(train.size() / 2), 257, "byte").ok());
    ASSERT_TRUE(data::WriteTokenShard(dir_ + "/val-00000.bin", val, 257, "byte").ok());
  }

  config::JobSpec Spec(std::vector<std::string> overrides = {}) {
    std::string yaml =
        "model: {n_layer: 2, n_head: 2, n_embd: 32, context_length: 32}\n"
        "data: {train: '" + dir_ + "/train-*.bin', val: '" + dir_ + "/val-*.bin', batch_size: 8}\n"
        "optimizer: {lr: 3.0e-3, weight_decay: 0.0}\n"
        "schedule: {warmup_steps: 5, min_lr: 3.0e-4}\n"
        "train: {steps: 80, eval_interval: 40, eval_batches: 4, log_interval: 20, threads: 2}\n";
    auto r = config::ParseJobSpec(yaml, "test.yaml", config::Limits(), overrides);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return *r;
  }

  ::cohort::testing::TempDir tmp_;
  std::string dir_;
};

TEST_F(TrainerTest, LossFallsOnLearnableData) {
  auto r = Train(Spec(), TrainOptions());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->steps, 80);
  EXPECT_FALSE(r->interrupted);
  // Uniform over 257 tokens is ln(257) = 5.55; the model must start near it and learn the text.
  EXPECT_NEAR(r->initial_val_loss, std::log(257.0), 0.3);
  EXPECT_LT(r->final_val_loss, 0.6 * r->initial_val_loss);
  EXPECT_LT(r->last_loss, 0.6 * r->first_loss);
  EXPECT_GT(r->tokens_per_second, 0);
}

TEST_F(TrainerTest, SameSeedSameRunDifferentSeedDifferentRun) {
  std::vector<double> a, b, c;
  TrainOptions o;
  auto collect = [](std::vector<double>* out) {
    return [out](const StepMetrics& m) { out->push_back(m.loss); };
  };
  o.on_step = collect(&a);
  ASSERT_TRUE(Train(Spec({"train.steps=10"}), o).ok());
  o.on_step = collect(&b);
  ASSERT_TRUE(Train(Spec({"train.steps=10"}), o).ok());
  o.on_step = collect(&c);
  ASSERT_TRUE(Train(Spec({"train.steps=10", "train.seed=99"}), o).ok());
  ASSERT_EQ(a.size(), 10u);
  EXPECT_EQ(a, b);  // bit-identical, not just close
  EXPECT_NE(a, c);
}

TEST_F(TrainerTest, ThreadCountDoesNotChangeTheResult) {
  std::vector<double> one, two;
  TrainOptions o;
  o.on_step = [&](const StepMetrics& m) { one.push_back(m.loss); };
  ASSERT_TRUE(Train(Spec({"train.steps=5", "train.threads=1"}), o).ok());
  o.on_step = [&](const StepMetrics& m) { two.push_back(m.loss); };
  ASSERT_TRUE(Train(Spec({"train.steps=5", "train.threads=2"}), o).ok());
  EXPECT_EQ(one, two);
  std::vector<double> three;
  o.on_step = [&](const StepMetrics& m) { three.push_back(m.loss); };
  ASSERT_TRUE(Train(Spec({"train.steps=5", "train.threads=3"}), o).ok());
  EXPECT_EQ(one, three);
}

TEST_F(TrainerTest, GradAccumulationAveragesMicroBatches) {
  // One step of 3 micro-batches with clipping off: the trainer's loss and gradient norm must equal
  // those of the model driven by hand with loss_scale 1/3 on the same three batches.
  std::vector<StepMetrics> steps;
  TrainOptions o;
  o.on_step = [&](const StepMetrics& m) { steps.push_back(m); };
  config::JobSpec spec = Spec({"train.steps=1", "train.grad_accum=3", "schedule.warmup_steps=0",
                               "optimizer.grad_clip=0"});
  auto r = Train(spec, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(steps.size(), 1u);

  model::GptConfig mc{257, 32, 2, 2, 32};
  auto gpt = model::Gpt::Create(mc);
  ASSERT_TRUE(gpt.ok());
  (*gpt)->InitWeights(spec.train.seed);
  auto ds = data::TokenDataset::Open(spec.data.train);
  ASSERT_TRUE(ds.ok());
  const int B = spec.data.batch_size, T = 32;
  std::vector<int32_t> in(B * T), tg(B * T);
  double loss = 0;
  for (int micro = 0; micro < 3; ++micro) {
    ASSERT_TRUE(ds->FillRandom(spec.train.seed, 0, micro, B, T, in, tg).ok());
    auto l = (*gpt)->ForwardBackward(in.data(), tg.data(), B, T, 1.0f / 3);
    ASSERT_TRUE(l.ok());
    loss += *l;
  }
  const float norm = model::ClipGradNorm((*gpt)->grads(), (*gpt)->num_parameters(), 0.0f);
  EXPECT_DOUBLE_EQ(steps[0].loss, loss / 3);
  EXPECT_FLOAT_EQ(static_cast<float>(steps[0].grad_norm), norm);
  EXPECT_NEAR(steps[0].loss, std::log(257.0), 0.3);
}

TEST_F(TrainerTest, WarmupStartsAtAFractionOfThePeakRate) {
  std::vector<StepMetrics> steps;
  TrainOptions o;
  o.on_step = [&](const StepMetrics& m) { steps.push_back(m); };
  ASSERT_TRUE(Train(Spec({"train.steps=7"}), o).ok());
  ASSERT_EQ(steps.size(), 7u);
  EXPECT_NEAR(steps[0].lr, 3e-3 / 5, 1e-9);  // warmup step 1 of 5
  EXPECT_NEAR(steps[4].lr, 3e-3, 1e-9);      // peak at the end of warmup
  EXPECT_NEAR(steps[5].lr, 3e-3, 1e-9);      // cosine starts from the peak...
  EXPECT_NEAR(steps[6].lr, 3e-4 + 0.5 * (3e-3 - 3e-4), 1e-9);  // ...halfway to min_lr
}

TEST_F(TrainerTest, StopFlagEndsTheRunCleanly) {
  std::atomic<bool> stop{false};
  TrainOptions o;
  o.stop = &stop;
  o.on_step = [&](const StepMetrics& m) {
    if (m.step == 3) stop = true;
  };
  auto r = Train(Spec(), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->interrupted);
  EXPECT_EQ(r->steps, 3);
}

TEST_F(TrainerTest, StopDuringEvaluationEndsTheRunCleanly) {
  // The stop arrives while the first evaluation runs (set before Train; evaluation checks it
  // before each batch): no step is taken and the result is "interrupted", not an error.
  std::atomic<bool> stop{true};
  TrainOptions o;
  o.stop = &stop;
  auto r = Train(Spec({"train.eval_batches=100000"}), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->interrupted);
  EXPECT_EQ(r->steps, 0);
  EXPECT_TRUE(std::isnan(r->initial_val_loss));
}

TEST_F(TrainerTest, MismatchedTokenizerNamesTheFile) {
  auto r = Train(Spec({"data.tokenizer=gpt2"}), TrainOptions());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("data.tokenizer is 'gpt2'"));
  EXPECT_THAT(r.status().message(), HasSubstr("train-00000.bin"));
}

TEST_F(TrainerTest, VocabularySmallerThanTheShardsIsRefused) {
  auto r = Train(Spec({"model.vocab_size=100"}), TrainOptions());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("model.vocab_size (100) is smaller"));
}

TEST_F(TrainerTest, PaddedVocabularyTrains) {
  auto r = Train(Spec({"model.vocab_size=320", "train.steps=3", "schedule.warmup_steps=0"}), TrainOptions());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
}

TEST_F(TrainerTest, MissingDataIsNamed) {
  auto r = Train(Spec({"data.train=" + dir_ + "/nothing-*.bin"}), TrainOptions());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("nothing-*.bin"));
}

TEST_F(TrainerTest, SequenceLongerThanTheDataIsRefused) {
  std::vector<uint32_t> tiny = {1, 2, 3};
  ASSERT_TRUE(data::WriteTokenShard(dir_ + "/tiny.bin", tiny, 257, "byte").ok());
  auto r = Train(Spec({"data.train=" + dir_ + "/tiny.bin"}), TrainOptions());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("data.train"));
  EXPECT_THAT(r.status().message(), HasSubstr("tiny.bin"));
}

TEST_F(TrainerTest, ReservedFeaturesAreRefusedNotIgnored) {
  auto r = Train(Spec({"checkpoint.interval=10", "checkpoint.dir=/tmp/x"}), TrainOptions());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("checkpoint.interval"));
  r = Train(Spec({"parallel.strategy=zero1"}), TrainOptions());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("parallel.strategy"));
}

}  // namespace
}  // namespace cohort::worker
