#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <thread>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "collectives/in_process.h"
#include "common/config.h"
#include "dataloader/loader.h"
#include "dataloader/source.h"
#include "dataloader/token_shard.h"
#include "model/gpt.h"
#include "model/optimizer.h"
#include "storage/file_util.h"
#include "tests/unit/hdf5_test_util.h"
#include "tests/unit/test_util.h"
#include "checkpoint/checkpoint.h"
#include "worker/checkpointer.h"
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
  const int B = spec.data.batch_size, T = 32;
  data::SourceOptions so;
  so.patterns = {spec.data.train};
  so.seq_len = T;
  so.vocab_size = 257;
  auto ds = data::OpenSampleSource(so);
  ASSERT_TRUE(ds.ok()) << ds.status().ToString();
  // The training order: micro-batch k of step 0 is global batch k of the seed's stream.
  const data::GlobalSampler sampler((*ds)->num_samples(), spec.train.seed, /*shuffle=*/true);
  std::vector<int32_t> in(B * T), tg(B * T);
  double loss = 0;
  for (int micro = 0; micro < 3; ++micro) {
    ASSERT_TRUE(data::ReadRows(**ds, sampler, static_cast<uint64_t>(micro) * B, 1, 0, in, tg).ok());
    auto l = (*gpt)->ForwardBackward(in.data(), tg.data(), B, T, 1.0f / 3);
    ASSERT_TRUE(l.ok());
    loss += *l;
  }
  const float norm = model::ClipGradNorm((*gpt)->grads(), (*gpt)->num_parameters(), 0.0f);
  EXPECT_DOUBLE_EQ(steps[0].loss, loss / 3);
  EXPECT_FLOAT_EQ(static_cast<float>(steps[0].grad_norm), norm);
  EXPECT_NEAR(steps[0].loss, std::log(257.0), 0.3);
}

// The same tokens stored as HDF5 (1-D datasets, one file per shard) train exactly like the shards:
// same samples in the same order, so the same losses and the same final weights, bit for bit.
TEST_F(TrainerTest, Hdf5DataTrainsExactlyLikeTheSameShards) {
  std::filesystem::create_directory(dir_ + "/h5");
  for (const char* name : {"train-00000", "train-00001", "val-00000"}) {
    auto shard = data::ReadTokenShard(dir_ + "/" + name + ".bin");
    ASSERT_TRUE(shard.ok()) << shard.status().ToString();
    ::cohort::testing::Write1D(dir_ + "/h5/" + name + ".h5", H5T_STD_U16LE,
                               std::vector<int64_t>(shard->tokens.begin(), shard->tokens.end()));
  }
  auto run = [&](const std::string& train, const std::string& val) {
    std::vector<double> losses;
    std::vector<float> params;
    TrainOptions o;
    o.on_step = [&](const StepMetrics& m) { losses.push_back(m.loss); };
    o.final_params = &params;
    auto r = Train(Spec({"train.steps=12", "train.eval_interval=6", "data.train=" + train, "data.val=" + val}), o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return std::tuple(losses, params, r.ok() ? r->final_val_loss : 0.0);
  };
  const auto shards = run(dir_ + "/train-*.bin", dir_ + "/val-*.bin");
  const auto h5 = run(dir_ + "/h5/train-*.h5", dir_ + "/h5/val-*.h5");
  EXPECT_EQ(std::get<0>(h5).size(), 12u);
  EXPECT_EQ(std::get<0>(h5), std::get<0>(shards));
  EXPECT_EQ(std::get<1>(h5), std::get<1>(shards));
  EXPECT_EQ(std::get<2>(h5), std::get<2>(shards));
}

// A stop that lands between the micro-steps of a gradient accumulation abandons that step
// (never a partial update) and reports the data state from before it, so a resume re-reads exactly
// the abandoned batches. The stop comes from another thread at different moments; with 16
// micro-steps per step nearly every moment is inside an accumulation.
TEST_F(TrainerTest, StopMidAccumulationReportsTheDataStateBeforeTheAbandonedStep) {
  const int B = 8, accum = 16;
  data::SourceOptions so;
  so.patterns = {dir_ + "/train-*.bin"};
  so.seq_len = 32;
  so.vocab_size = 257;
  auto src = data::OpenSampleSource(so);
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  const data::GlobalSampler sampler((*src)->num_samples(), 1337, true);
  for (const int delay_ms : {60, 150, 300}) {
    std::atomic<bool> stop{false};
    TrainOptions o;
    o.stop = &stop;
    std::thread stopper([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      stop = true;
    });
    auto r = Train(Spec({"train.steps=100000", "train.grad_accum=" + std::to_string(accum),
                         "train.eval_interval=0", "train.seed=1337"}), o);
    stopper.join();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(r->interrupted);
    EXPECT_EQ(r->data_state, sampler.StateAt(static_cast<uint64_t>(r->steps) * B * accum))
        << "stopped after " << delay_ms << " ms, " << r->steps << " steps: " << data::ToString(r->data_state);
  }
}

TEST_F(TrainerTest, SequentialOrderTrainsOnTheFilesInOrder) {
  std::vector<StepMetrics> steps;
  TrainOptions o;
  o.on_step = [&](const StepMetrics& m) { steps.push_back(m); };
  auto r = Train(Spec({"train.steps=1", "schedule.warmup_steps=0", "data.order=sequential", "optimizer.grad_clip=0"}), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_EQ(r->data_state.cursor, 8u);  // one batch of 8 consumed
  // By hand: the first 8 windows of train-00000.bin, in order.
  model::GptConfig mc{257, 32, 2, 2, 32};
  auto gpt = model::Gpt::Create(mc);
  ASSERT_TRUE(gpt.ok());
  (*gpt)->InitWeights(1337);
  auto shard = data::ReadTokenShard(dir_ + "/train-00000.bin");
  ASSERT_TRUE(shard.ok());
  const int B = 8, T = 32;
  std::vector<int32_t> in(B * T), tg(B * T);
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      in[static_cast<size_t>(b * T + t)] = static_cast<int32_t>(shard->tokens[static_cast<size_t>(b * T + t)]);
      tg[static_cast<size_t>(b * T + t)] = static_cast<int32_t>(shard->tokens[static_cast<size_t>(b * T + t + 1)]);
    }
  }
  auto l = (*gpt)->ForwardBackward(in.data(), tg.data(), B, T, 1.0f);
  ASSERT_TRUE(l.ok());
  EXPECT_DOUBLE_EQ(steps[0].loss, *l);
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
  EXPECT_THAT(r.status().message(), HasSubstr("shard vocab size 257 exceeds the model's 100"));
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

// ---- checkpoints (worker/checkpointer.h) ----

// Trains `spec`; when stop_after > 0 the run is stopped (as by SIGTERM) after that step.
struct RunResult {
  Result<TrainSummary> summary = Internal("not run");
  std::vector<double> losses;
  std::vector<float> params;
};
RunResult TrainOnce(const config::JobSpec& spec, int64_t stop_after = 0, const std::string& resume = "auto") {
  RunResult run;
  std::atomic<bool> stop{false};
  TrainOptions o;
  o.stop = &stop;
  o.resume = resume;
  o.final_params = &run.params;
  o.on_step = [&](const StepMetrics& m) {
    run.losses.push_back(m.loss);
    if (stop_after > 0 && m.step == stop_after) stop = true;
  };
  run.summary = Train(spec, o);
  return run;
}

// Interrupted and resumed (same world size): the same losses and bit-identical final weights as
// an uninterrupted run; the stop itself writes a checkpoint; saves every 4 steps are committed.
// The steps of the checkpoint directories under `root`, oldest first.
std::vector<int64_t> StepsIn(const std::string& root) {
  std::vector<int64_t> steps;
  auto entries = checkpoint::List(root);
  EXPECT_TRUE(entries.ok()) << entries.status().ToString();
  if (!entries.ok()) return steps;
  for (const auto& e : *entries) {
    EXPECT_TRUE(e.complete) << e.dir << ": " << e.problem;
    steps.push_back(e.step);
  }
  return steps;
}

// The superseded-* directory a run made under `root` ("" when there is none).
std::string SupersededDir(const std::string& root) {
  auto names = storage::ListDirectory(root);
  EXPECT_TRUE(names.ok()) << names.status().ToString();
  if (!names.ok()) return "";
  for (const std::string& n : *names) {
    if (n.rfind("superseded-", 0) == 0) return root + "/" + n;
  }
  return "";
}

TEST_F(TrainerTest, ResumeAfterAStopIsBitExact) {
  const std::vector<std::string> common = {"train.steps=12", "train.eval_interval=0", "optimizer.weight_decay=0.1",
                                           "checkpoint.interval=4"};
  auto with_dir = [&](const std::string& d) {
    auto v = common;
    v.push_back("checkpoint.dir=" + dir_ + "/" + d);
    return Spec(v);
  };
  const RunResult ref = TrainOnce(with_dir("ref"));
  ASSERT_TRUE(ref.summary.ok()) << ref.summary.status().ToString();
  EXPECT_EQ(ref.summary->checkpoints_committed, 3);  // steps 4, 8 and the end, 12
  EXPECT_EQ(ref.summary->last_checkpoint_step, 12);
  EXPECT_EQ(ref.summary->resumed_from_step, -1);

  const RunResult first = TrainOnce(with_dir("run"), /*stop_after=*/6);
  ASSERT_TRUE(first.summary.ok()) << first.summary.status().ToString();
  EXPECT_TRUE(first.summary->interrupted);
  EXPECT_EQ(first.summary->steps, 6);
  EXPECT_EQ(first.summary->last_checkpoint_step, 6);  // written on the stop
  auto latest = checkpoint::FindLatest(dir_ + "/run");
  ASSERT_TRUE(latest.ok()) << latest.status().ToString();
  EXPECT_EQ(latest->step, 6);

  const RunResult second = TrainOnce(with_dir("run"));
  ASSERT_TRUE(second.summary.ok()) << second.summary.status().ToString();
  EXPECT_EQ(second.summary->resumed_from_step, 6);
  EXPECT_EQ(second.summary->steps, 12);
  ASSERT_EQ(second.losses.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(second.losses[i], ref.losses[6 + i]) << "step " << 7 + i;
  EXPECT_EQ(second.params, ref.params);  // bit-identical
  EXPECT_EQ(second.summary->data_state, ref.summary->data_state);

  // Nothing left to do: a third run resumes at step 12 and ends at once with the same weights.
  const RunResult third = TrainOnce(with_dir("run"));
  ASSERT_TRUE(third.summary.ok()) << third.summary.status().ToString();
  EXPECT_EQ(third.summary->resumed_from_step, 12);
  EXPECT_EQ(third.params, ref.params);
  // --resume=never starts over (and trains the same run from scratch). The earlier run's
  // checkpoints are moved aside, whole, not mixed with the new run's or deleted.
  const std::vector<int64_t> before = StepsIn(dir_ + "/run");
  ASSERT_FALSE(before.empty());
  const RunResult fresh = TrainOnce(with_dir("run"), 0, "never");
  ASSERT_TRUE(fresh.summary.ok());
  EXPECT_EQ(fresh.summary->resumed_from_step, -1);
  EXPECT_EQ(fresh.params, ref.params);
  const std::string aside = SupersededDir(dir_ + "/run");
  ASSERT_FALSE(aside.empty()) << "no superseded-* directory";
  EXPECT_EQ(StepsIn(aside), before);  // every one complete, as it was
  EXPECT_EQ(StepsIn(dir_ + "/run"), (std::vector<int64_t>{4, 8, 12}));
}

// Resuming from an older step than the newest in the root starts another timeline: the newer
// checkpoints are moved aside (not kept, to be taken by the next auto-resume or to push this run's
// out of keep_last; not deleted either).
TEST_F(TrainerTest, ResumingFromAnOlderStepMovesTheNewerOnesAside) {
  const std::string root = dir_ + "/older";
  auto spec = Spec({"train.steps=12", "train.eval_interval=0", "checkpoint.interval=4", "checkpoint.dir=" + root});
  ASSERT_TRUE(TrainOnce(spec).summary.ok());  // commits 4, 8, 12
  const RunResult again = TrainOnce(spec, 0, checkpoint::StepDir(root, 4));
  ASSERT_TRUE(again.summary.ok()) << again.summary.status().ToString();
  EXPECT_EQ(again.summary->resumed_from_step, 4);
  const std::string aside = SupersededDir(root);
  ASSERT_FALSE(aside.empty()) << "no superseded-* directory";
  EXPECT_EQ(StepsIn(aside), (std::vector<int64_t>{8, 12}));
  EXPECT_EQ(StepsIn(root), (std::vector<int64_t>{4, 8, 12}));  // this run's 8 and 12, beside the 4 it started from
}

// Flips one bit 100 bytes before the end of `path`: in a checkpoint shard, data of the last
// tensor of the last array (adam_v), which only the rank loading that range reads.
void FlipBitNearTheEnd(const std::string& path) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good()) << path;
  f.seekg(-100, std::ios::end);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 1);
  f.seekp(-100, std::ios::end);
  f.write(&c, 1);
}

// A damaged newest checkpoint (one flipped bit) is named and skipped for the one before; a root
// holding only damaged or incomplete checkpoints fails the run rather than starting over.
TEST_F(TrainerTest, ResumeFallsBackPastADamagedCheckpointAndNeverStartsOverSilently) {
  const std::string root = dir_ + "/ck";
  auto spec = [&](int steps) {
    return Spec({"train.steps=" + std::to_string(steps), "train.eval_interval=0", "checkpoint.interval=4",
                 "checkpoint.dir=" + root});
  };
  ASSERT_TRUE(TrainOnce(spec(8)).summary.ok());
  const std::string shard = checkpoint::StepDir(root, 8) + "/" + checkpoint::ShardFileName(0, 1);
  auto flip = [&] { FlipBitNearTheEnd(shard); };
  flip();
  const RunResult resumed = TrainOnce(spec(10));
  ASSERT_TRUE(resumed.summary.ok()) << resumed.summary.status().ToString();
  EXPECT_EQ(resumed.summary->resumed_from_step, 4);
  // That run saved steps 8 (again) and 10. Damage all three: step 8's shard, the manifests of 4
  // and 10. Checkpoint directories exist but none is usable: an error, not a fresh start.
  flip();
  ASSERT_EQ(::unlink((checkpoint::StepDir(root, 4) + "/manifest.pb").c_str()), 0);
  ASSERT_EQ(::unlink((checkpoint::StepDir(root, 10) + "/manifest.pb").c_str()), 0);
  const RunResult refused = TrainOnce(spec(12));
  ASSERT_FALSE(refused.summary.ok());
  EXPECT_EQ(refused.summary.status().code(), Code::kDataLoss) << refused.summary.status().ToString();
  EXPECT_THAT(refused.summary.status().message(), HasSubstr("none is complete and intact"));
  EXPECT_THAT(refused.summary.status().message(), HasSubstr(shard));
  // An explicit path that holds no checkpoint is an error too.
  const RunResult missing = TrainOnce(spec(12), 0, dir_ + "/nowhere");
  EXPECT_FALSE(missing.summary.ok());
  // An explicit step directory whose manifest is gone: the error is about its manifest, not "no
  // checkpoint in it" (as if it were a root).
  const RunResult step4 = TrainOnce(spec(12), 0, checkpoint::StepDir(root, 4));
  ASSERT_FALSE(step4.summary.ok());
  EXPECT_THAT(step4.summary.status().message(), HasSubstr(checkpoint::StepDir(root, 4) + "/manifest.pb"));
}

// checkpoint.on_busy: a save due while both buffers still hold uncommitted saves (here: three
// saves with no step boundary, i.e. no Poll, between them) waits for the oldest to be written and
// committed, or is skipped; either way what was committed is complete and in order. The run's
// final save (its end, or a stop) is never skipped.
TEST_F(TrainerTest, SavesDueWhileBusyWaitOrAreSkipped) {
  for (const bool skip : {false, true}) {
    const std::string root = dir_ + (skip ? "/skip" : "/wait");
    CheckpointerOptions o;
    o.root = root;
    o.skip_when_busy = skip;
    o.keep_last = 10;
    o.tensors = {{"w", 0, 1000, {1000}}};
    o.ranges = {{0, 1000}};
    o.states = {"model"};
    auto ck = Checkpointer::Create(o);
    ASSERT_TRUE(ck.ok()) << ck.status().ToString();
    std::vector<float> w(1000);
    for (int step = 1; step <= 4; ++step) {  // step 4: the final save, due while both buffers are busy again
      std::fill(w.begin(), w.end(), static_cast<float>(step));
      SaveRequest req;
      req.step = step;
      req.final = step == 4;
      req.source = [&](const std::string&, const checkpoint::Range& r) -> const float* { return w.data() + r.offset; };
      ASSERT_TRUE((*ck)->Save(req).ok());
      (*ck)->WaitForSnapshot();  // before the state changes (the trainer: before its optimizer update)
    }
    ASSERT_TRUE((*ck)->Finish().ok());
    EXPECT_EQ((*ck)->stats().skipped, skip ? 1 : 0);
    EXPECT_EQ((*ck)->stats().committed, skip ? 3 : 4);
    EXPECT_EQ((*ck)->stats().last_committed_step, 4);
    auto entries = checkpoint::List(root);
    ASSERT_TRUE(entries.ok());
    ASSERT_EQ(entries->size(), skip ? 3u : 4u);
    for (const auto& e : *entries) {
      EXPECT_TRUE(e.complete) << e.dir;
      auto m = checkpoint::ReadManifest(e.dir);
      ASSERT_TRUE(m.ok());
      std::vector<float> got(1000);
      ASSERT_TRUE(checkpoint::ReadRange(e.dir, *m, "model", 0, 1000, got.data()).ok());
      EXPECT_EQ(got[999], static_cast<float>(e.step)) << "the snapshot of step " << e.step;
    }
  }
}

// keep_last committed checkpoints plus the multiples of keep_every; nothing else stays.
TEST_F(TrainerTest, RetentionKeepsTheLastAndEveryMth) {
  const std::string root = dir_ + "/ret";
  const RunResult run = TrainOnce(Spec({"train.steps=20", "train.eval_interval=0", "checkpoint.interval=2",
                                  "checkpoint.keep_last=2", "checkpoint.keep_every=8", "checkpoint.dir=" + root}));
  ASSERT_TRUE(run.summary.ok()) << run.summary.status().ToString();
  EXPECT_EQ(run.summary->checkpoints_committed, 10);
  EXPECT_EQ(StepsIn(root), (std::vector<int64_t>{8, 16, 18, 20}));
  // A committed checkpoint whose manifest is now damaged is reported, never deleted by retention:
  // the next run (resuming from 20) commits 22 and 24 and keeps step 8's directory as it is.
  FlipBitNearTheEnd(checkpoint::StepDir(root, 8) + "/manifest.pb");
  const RunResult more = TrainOnce(Spec({"train.steps=24", "train.eval_interval=0", "checkpoint.interval=2",
                                         "checkpoint.keep_last=2", "checkpoint.keep_every=8", "checkpoint.dir=" + root}));
  ASSERT_TRUE(more.summary.ok()) << more.summary.status().ToString();
  EXPECT_EQ(more.summary->resumed_from_step, 20);
  auto entries = checkpoint::List(root);
  ASSERT_TRUE(entries.ok());
  std::vector<int64_t> steps;
  for (const auto& e : *entries) {
    steps.push_back(e.step);
    if (e.step == 8) {
      EXPECT_TRUE(e.has_manifest);
      EXPECT_FALSE(e.complete);
    }
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{8, 16, 22, 24}));
}

// ---- data parallelism, N ranks as threads of an in-process group ----

struct RankResult {
  Result<TrainSummary> summary = Internal("not run");
  std::vector<double> losses;
  std::vector<double> norms;
  std::vector<float> params;
};

// Trains `spec` on `world` ranks (threads, one compute thread each); `tweak(rank, spec, options)`
// may change one rank's inputs.
std::vector<RankResult> TrainRanks(
    int world, const config::JobSpec& spec, std::chrono::milliseconds timeout = std::chrono::seconds(60),
    const std::function<void(int, config::JobSpec&, TrainOptions&, collectives::InProcessGroup&)>& tweak = {}) {
  collectives::InProcessGroup group(world, timeout);
  std::vector<RankResult> out(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      RankResult& me = out[static_cast<size_t>(r)];
      auto comm = group.Connect(r);
      config::JobSpec s = spec;
      TrainOptions o;
      o.comm = comm.get();
      o.final_params = &me.params;
      o.on_step = [&me](const StepMetrics& m) {
        me.losses.push_back(m.loss);
        me.norms.push_back(m.grad_norm);
      };
      if (tweak) tweak(r, s, o, group);
      me.summary = Train(s, o);
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

class DataParallelTest : public TrainerTest,
                         public ::testing::WithParamInterface<std::tuple<int, std::string>> {};

// The correctness criterion: N ranks with batch B follow the trajectory of one rank with
// batch N*B and end with the same weights. Not bit-identical: one rank sums a gradient over N*B
// rows in one GEMM, N ranks sum N partial GEMMs, and ZeRO-1 computes the clipping norm from
// per-shard partial sums. Tolerance: 2e-5 relative on every step's loss and gradient norm, and
// 1e-4 absolute on every final weight (weights are O(0.02..1); observed differences ~1e-6).
// Every rank must end with bit-identical weights.
TEST_P(DataParallelTest, NRanksEqualOneRankWithNTimesTheBatch) {
  const auto [world, strategy] = GetParam();
  // 3 layers of width 96 (~1.4 MB of gradients) with 1 MiB buckets: two buckets, the first
  // reduced while backward still runs; accumulation of 2 micro-steps reduces only the last.
  const std::vector<std::string> common = {
      "model.n_layer=3", "model.n_embd=96", "model.n_head=2", "train.steps=12",
      "train.grad_accum=2", "train.eval_interval=6", "train.eval_batches=2", "train.threads=1",
      "parallel.bucket_mb=1", "optimizer.weight_decay=0.1", "optimizer.grad_clip=0.5"};
  std::vector<std::string> one = common, many = common;
  one.push_back("data.batch_size=" + std::to_string(2 * world));
  many.push_back("data.batch_size=2");
  many.push_back("parallel.strategy=" + strategy);
  std::vector<RankResult> ref = TrainRanks(1, Spec(one));
  ASSERT_TRUE(ref[0].summary.ok()) << ref[0].summary.status().ToString();
  std::vector<RankResult> dp = TrainRanks(world, Spec(many));
  for (int r = 0; r < world; ++r) {
    const RankResult& got = dp[static_cast<size_t>(r)];
    ASSERT_TRUE(got.summary.ok()) << "rank " << r << ": " << got.summary.status().ToString();
    EXPECT_EQ(got.summary->world_size, world);
    ASSERT_EQ(got.losses.size(), ref[0].losses.size());
    for (size_t i = 0; i < got.losses.size(); ++i) {
      EXPECT_NEAR(got.losses[i], ref[0].losses[i], 2e-5 * ref[0].losses[i]) << "step " << i + 1;
      EXPECT_NEAR(got.norms[i], ref[0].norms[i], 2e-5 * ref[0].norms[i]) << "step " << i + 1;
    }
    EXPECT_NEAR(got.summary->final_val_loss, ref[0].summary->final_val_loss,
                2e-5 * ref[0].summary->final_val_loss);
    ASSERT_EQ(got.params.size(), ref[0].params.size());
    float worst = 0;
    for (size_t i = 0; i < got.params.size(); ++i) {
      worst = std::max(worst, std::fabs(got.params[i] - ref[0].params[i]));
    }
    EXPECT_LT(worst, 1e-4f) << "rank " << r;
    EXPECT_EQ(got.params, dp[0].params) << "rank " << r << " diverged from rank 0";
    // ZeRO-1 keeps ~1/N of the optimizer state per rank (plus at most a chunk per bucket).
    const double ratio = static_cast<double>(got.summary->optimizer_state_floats) /
                         static_cast<double>(ref[0].summary->optimizer_state_floats);
    if (strategy == "zero1") {
      EXPECT_NEAR(ratio, 1.0 / world, 0.01) << "rank " << r;
    } else {
      EXPECT_EQ(ratio, 1.0);
    }
  }
}

// A checkpoint written by 2 ranks is resumed by 3 and then by 1 (global batch 6 throughout), for
// DDP and ZeRO-1: optimizer state and data position are resharded, and the run ends where an
// uninterrupted one-rank run with batch 6 ends (within the fp32 reduction-order tolerance of
// NRanksEqualOneRankWithNTimesTheBatch).
TEST_F(TrainerTest, ResumeAtAnotherWorldSize) {
  for (const std::string strategy : {"ddp", "zero1"}) {
    const std::string root = dir_ + "/ws-" + strategy;
    auto spec = [&](int batch) {
      return Spec({"model.n_layer=2", "train.steps=12", "train.eval_interval=0", "train.threads=1",
                   "parallel.bucket_mb=1", "optimizer.weight_decay=0.1", "data.batch_size=" + std::to_string(batch),
                   "parallel.strategy=" + strategy, "checkpoint.interval=100", "checkpoint.dir=" + root});
    };
    auto stop_at = [](int64_t at) {
      return [at](int r, config::JobSpec&, TrainOptions& o, collectives::InProcessGroup&) {
        static std::atomic<bool> flag;
        flag = false;
        o.stop = &flag;
        auto inner = o.on_step;
        o.on_step = [inner, at](const StepMetrics& m) {
          inner(m);
          if (m.step == at) flag = true;
        };
      };
    };
    std::vector<RankResult> ref = TrainRanks(1, Spec({"model.n_layer=2", "train.steps=12", "train.eval_interval=0",
                                                      "train.threads=1", "optimizer.weight_decay=0.1",
                                                      "data.batch_size=6"}));
    ASSERT_TRUE(ref[0].summary.ok());
    std::vector<RankResult> two = TrainRanks(2, spec(3), std::chrono::seconds(60), stop_at(4));
    for (auto& r : two) ASSERT_TRUE(r.summary.ok()) << strategy << ": " << r.summary.status().ToString();
    // Several ranks stop together after the step in which the stop was seen (the vote travels in
    // the next step's reduction): step 5.
    const int64_t first_stop = two[0].summary->last_checkpoint_step;
    EXPECT_EQ(first_stop, 5) << strategy;
    std::vector<RankResult> three = TrainRanks(3, spec(2), std::chrono::seconds(60), stop_at(8));
    for (auto& r : three) {
      ASSERT_TRUE(r.summary.ok()) << strategy << ": " << r.summary.status().ToString();
      EXPECT_EQ(r.summary->resumed_from_step, first_stop);
    }
    const int64_t second_stop = three[0].summary->last_checkpoint_step;
    EXPECT_EQ(second_stop, 9) << strategy;
    std::vector<RankResult> one = TrainRanks(1, spec(6));
    ASSERT_TRUE(one[0].summary.ok()) << strategy << ": " << one[0].summary.status().ToString();
    EXPECT_EQ(one[0].summary->resumed_from_step, second_stop);
    EXPECT_EQ(one[0].summary->steps, 12);
    float worst = 0;
    for (size_t i = 0; i < ref[0].params.size(); ++i) {
      worst = std::max(worst, std::fabs(one[0].params[i] - ref[0].params[i]));
    }
    EXPECT_LT(worst, 1e-4f) << strategy;
    EXPECT_EQ(one[0].summary->data_state, ref[0].summary->data_state) << strategy;
  }
}

// A damaged piece that only one rank reads (ZeRO-1: rank 1's AdamW moments, in rank 1's shard)
// makes every rank fall back together to the checkpoint before: no rank reads the whole checkpoint
// first, so the decision is collective.
TEST_F(TrainerTest, DamageFoundByOneRankMakesEveryRankFallBack) {
  const std::string root = dir_ + "/one-rank-damage";
  auto spec = [&](int steps) {
    return Spec({"train.steps=" + std::to_string(steps), "train.eval_interval=0", "train.threads=1",
                 "data.batch_size=2", "parallel.strategy=zero1", "checkpoint.interval=4", "checkpoint.dir=" + root});
  };
  for (auto& r : TrainRanks(2, spec(8))) ASSERT_TRUE(r.summary.ok()) << r.summary.status().ToString();
  // The last bytes of rank 1's shard are adam_v data of its own range: rank 0 never reads them.
  const std::string shard = checkpoint::StepDir(root, 8) + "/" + checkpoint::ShardFileName(1, 2);
  FlipBitNearTheEnd(shard);
  auto resumed = TrainRanks(2, spec(10));
  for (auto& r : resumed) {
    ASSERT_TRUE(r.summary.ok()) << r.summary.status().ToString();
    EXPECT_EQ(r.summary->resumed_from_step, 4);
    EXPECT_EQ(r.summary->steps, 10);
  }
  EXPECT_EQ(resumed[0].params, resumed[1].params);
}

INSTANTIATE_TEST_SUITE_P(WorldsAndStrategies, DataParallelTest,
                         ::testing::Combine(::testing::Values(2, 4),
                                            ::testing::Values(std::string("ddp"), std::string("zero1"))),
                         [](const auto& info) {
                           return "n" + std::to_string(std::get<0>(info.param)) + "_" +
                                  std::get<1>(info.param);
                         });

TEST_F(TrainerTest, OneRankStoppingStopsAllRanksAfterTheSameStep) {
  std::atomic<bool> stop{false};
  auto ranks = TrainRanks(3, Spec({"train.steps=40", "train.threads=1"}), std::chrono::seconds(60),
                          [&](int r, config::JobSpec&, TrainOptions& o, auto&) {
                            if (r != 2) return;
                            o.stop = &stop;  // only rank 2 gets the "signal"
                            auto inner = o.on_step;
                            o.on_step = [&stop, inner](const StepMetrics& m) {
                              inner(m);
                              if (m.step == 4) stop = true;
                            };
                          });
  for (const RankResult& r : ranks) {
    ASSERT_TRUE(r.summary.ok()) << r.summary.status().ToString();
    EXPECT_TRUE(r.summary->interrupted);
    EXPECT_EQ(r.summary->steps, 5);  // the vote travels with step 5's reduction
    EXPECT_EQ(r.params, ranks[0].params);
  }
}

TEST_F(TrainerTest, RankWithADifferentSpecFailsEveryRank) {
  auto ranks = TrainRanks(2, Spec({"train.steps=3", "schedule.warmup_steps=0", "train.threads=1"}), std::chrono::seconds(60),
                          [](int r, config::JobSpec& s, TrainOptions&, auto&) {
                            if (r == 1) s.optimizer.lr = 1e-4;
                          });
  for (int r = 0; r < 2; ++r) {
    const auto& res = ranks[static_cast<size_t>(r)].summary;
    ASSERT_FALSE(res.ok());
    EXPECT_EQ(res.status().code(), Code::kInvalidArgument) << res.status().ToString();
    EXPECT_THAT(res.status().message(), HasSubstr("from rank 0's"));
  }
}

// A rank that fails on its own (here: its data is missing) aborts the group, so the others do not
// wait for the 60 s collective deadline.
TEST_F(TrainerTest, RankThatFailsAloneReleasesThePeersPromptly) {
  const auto start = std::chrono::steady_clock::now();
  auto ranks = TrainRanks(3, Spec({"train.steps=5", "train.threads=1"}), std::chrono::seconds(60),
                          [this](int r, config::JobSpec& s, TrainOptions&, auto&) {
                            if (r == 2) s.data.train = dir_ + "/nowhere-*.bin";
                          });
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  EXPECT_THAT(ranks[2].summary.status().message(), HasSubstr("nowhere"));
  for (int r = 0; r < 2; ++r) {
    const auto& res = ranks[static_cast<size_t>(r)].summary;
    ASSERT_FALSE(res.ok());
    EXPECT_EQ(res.status().code(), Code::kUnavailable) << res.status().ToString();
    EXPECT_THAT(res.status().message(), HasSubstr("rank 2 failed"));
  }
}

// data.verify: full splits the checksum pass over the ranks of a node (local rank r of L checks
// every L-th file) and the ranks agree on the outcome: the one that checked the corrupt file names
// it, the others fail too. Without a known node layout every rank checks every file.
TEST_F(TrainerTest, CorruptShardFoundByOneRankFailsEveryRank) {
  {  // flip one payload byte of the only validation shard (file 0: local rank 0 checks it)
    std::fstream f(dir_ + "/val-00000.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(64 + 10);
    f.put('\x7f');
  }
  const std::string named = "val-00000.bin: token payload checksum mismatch";
  auto one_node = TrainRanks(2, Spec({"train.steps=5", "train.threads=1"}), std::chrono::seconds(60),
                             [](int r, config::JobSpec&, TrainOptions& o, auto&) {
                               o.local_rank = r;
                               o.local_size = 2;
                             });
  ASSERT_FALSE(one_node[0].summary.ok());
  EXPECT_EQ(one_node[0].summary.status().code(), Code::kDataLoss);
  EXPECT_THAT(one_node[0].summary.status().message(), HasSubstr(named));
  ASSERT_FALSE(one_node[1].summary.ok());
  if (one_node[1].summary.status().code() == Code::kDataLoss) {  // else: released by rank 0's abort
    EXPECT_THAT(one_node[1].summary.status().message(), HasSubstr("1 rank(s) found corrupt data files"));
  }
  auto unknown_layout = TrainRanks(2, Spec({"train.steps=5", "train.threads=1"}));
  for (const auto& r : unknown_layout) {
    ASSERT_FALSE(r.summary.ok());
    EXPECT_THAT(r.summary.status().message(), HasSubstr(named));
  }
  // Alone, the same check runs over every file.
  auto alone = Train(Spec({"train.steps=5"}), TrainOptions());
  ASSERT_FALSE(alone.ok());
  EXPECT_THAT(alone.status().message(), HasSubstr(named));
  // data.verify: header skips the pass; training starts (the flipped byte is an ordinary token).
  EXPECT_TRUE(Train(Spec({"train.steps=5", "data.verify=header"}), TrainOptions()).ok());
}

TEST_F(TrainerTest, DeadPeerFailsTheOthersPromptly) {
  const auto start = std::chrono::steady_clock::now();
  auto ranks = TrainRanks(3, Spec({"train.steps=200", "train.threads=1"}), std::chrono::seconds(60),
                          [](int r, config::JobSpec&, TrainOptions& o, auto& group) {
                            if (r != 1) return;
                            auto inner = o.on_step;
                            o.on_step = [inner, &group](const StepMetrics& m) {
                              inner(m);
                              if (m.step == 3) group.Abort("rank 1 was killed");
                            };
                          });
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
  for (const RankResult& r : ranks) {
    ASSERT_FALSE(r.summary.ok());
    EXPECT_EQ(r.summary.status().code(), Code::kUnavailable) << r.summary.status().ToString();
    EXPECT_THAT(r.summary.status().message(), HasSubstr("rank 1 was killed"));
  }
}

}  // namespace
}  // namespace cohort::worker
