// bench_checkpoint: the checkpoint figures for bench/checkpoint (which runs the peers: torch.save
// and dd). Prints one JSON object.
//
//   --mode table   the model's tensor table (names, shapes) for the torch.save peer
//   --mode save    --dir DIR --reps R: for the weights + AdamW moments of the model,
//                  async: as the trainer saves: Save(), one training step (forward + backward of
//                         B=1 x T=128, which only reads the weights) while the writer thread copies
//                         the snapshot, then WaitForSnapshot() before the optimizer update; the
//                         stall is the time in Save and WaitForSnapshot. Also the copy's own time
//                         and the writer's time and bytes for the shard;
//                  sync:  Save + WaitForSnapshot + Finish with nothing in between: snapshot,
//                         write, fsync and commit before training may go on. The writer's
//                         throughput is taken here, with the writer alone on the machine as dd
//                         is (also reported: beside the training step, sharing its cores).
//   Model flags as bench_train_step (--vocab --ctx --layers --heads --embd).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "kernels/cpu/cpu_kernels.h"
#include "model/gpt.h"
#include "model/optimizer.h"
#include "worker/checkpointer.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace cohort;

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Fail(const Status& s) {
  std::fprintf(stderr, "bench_checkpoint: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Cohort checkpoint benchmark"};
  std::string mode, dir;
  int reps = 3;
  model::GptConfig c{257, 128, 4, 4, 128};
  app.add_option("--mode", mode)->required()->check(CLI::IsMember({"table", "save"}));
  app.add_option("--dir", dir);
  app.add_option("--reps", reps);
  app.add_option("--layers", c.n_layer);
  app.add_option("--embd", c.n_embd);
  app.add_option("--heads", c.n_head);
  app.add_option("--ctx", c.context_length);
  app.add_option("--vocab", c.vocab_size);
  CLI11_PARSE(app, argc, argv);

  auto gpt = model::Gpt::Create(c);
  if (!gpt.ok()) return Fail(gpt.status());
  if (mode == "table") {
    std::printf("{\"tensors\": [");
    for (size_t i = 0; i < (*gpt)->tensors().size(); ++i) {
      const auto& t = (*gpt)->tensors()[i];
      std::printf("%s{\"name\": \"%s\", \"shape\": [", i ? ", " : "", t.name.c_str());
      for (size_t k = 0; k < t.shape.size(); ++k) std::printf("%s%lld", k ? ", " : "", static_cast<long long>(t.shape[k]));
      std::printf("]}");
    }
    std::printf("]}\n");
    return 0;
  }
  (*gpt)->InitWeights(1);
  const size_t n = (*gpt)->num_parameters();
  auto adamw = model::AdamW::Create(model::AdamWConfig{}, (*gpt)->tensors());
  if (!adamw.ok()) return Fail(adamw.status());
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.0f, 1e-3f);
  for (size_t i = 0; i < n; ++i) {
    (*adamw)->m()[i] = d(rng);
    (*adamw)->v()[i] = d(rng) * d(rng);
  }
  auto make = [&](const std::string& root) {
    worker::CheckpointerOptions o;
    o.root = root;
    o.keep_last = 1;
    for (const auto& t : (*gpt)->tensors()) o.tensors.push_back({t.name, t.offset, t.numel, t.shape});
    o.ranges = {{0, n}};
    o.states = {"model", "adam_m", "adam_v"};
    return worker::Checkpointer::Create(std::move(o));
  };
  worker::SaveRequest req;
  req.source = [&](const std::string& state, const checkpoint::Range& r) -> const float* {
    const float* src = state == "model" ? (*gpt)->params() : state == "adam_m" ? (*adamw)->m() : (*adamw)->v();
    return src + r.offset;  // copied by the writer thread (and the trainer's thread), as the trainer's
  };
  const int T = std::min(128, c.context_length);
  std::vector<int32_t> tokens(static_cast<size_t>(T) + 1);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab_size));
  auto step = [&]() -> Status {  // forward + backward: reads the weights, writes only gradients
    auto l = (*gpt)->ForwardBackward(tokens.data(), tokens.data() + 1, 1, T);
    return l.ok() ? Status::Ok() : l.status();
  };
  if (Status s = step(); !s.ok()) return Fail(s);  // warm-up
  std::vector<double> alone;  // the same step without a snapshot being copied beside it
  for (int r = 0; r < reps; ++r) {
    const auto t = Clock::now();
    if (Status s = step(); !s.ok()) return Fail(s);
    alone.push_back(Since(t));
  }
  std::vector<double> stall, snapshot_s, step_s, write_s, write_bytes, sync_s, sync_write_s;
  {
    auto ck = make(dir + "/async");
    if (!ck.ok()) return Fail(ck.status());
    for (int r = 0; r < reps + 1; ++r) {  // the first save pays one-time page faults: not counted
      req.step = r + 1;
      Status s = (*ck)->Save(req);
      if (!s.ok()) return Fail(s);
      const auto t_step = Clock::now();
      if (s = step(); !s.ok()) return Fail(s);
      const double st_step = Since(t_step);
      (*ck)->WaitForSnapshot();
      const double st = (*ck)->stats().last_stall_seconds;
      s = (*ck)->Finish();
      if (!s.ok()) return Fail(s);
      if (r == 0) continue;
      stall.push_back(st);
      step_s.push_back(st_step);
      snapshot_s.push_back((*ck)->stats().last_snapshot_seconds);
      write_s.push_back((*ck)->stats().last_write_seconds);
      write_bytes.push_back((*ck)->stats().last_write_bytes);
    }
  }
  {
    auto ck = make(dir + "/sync");
    if (!ck.ok()) return Fail(ck.status());
    for (int r = 0; r < reps + 1; ++r) {
      req.step = r + 1;
      const auto t0 = Clock::now();
      Status s = (*ck)->Save(req);
      (*ck)->WaitForSnapshot();
      if (s.ok()) s = (*ck)->Finish();
      if (!s.ok()) return Fail(s);
      if (r > 0) {
        sync_s.push_back(Since(t0));
        sync_write_s.push_back((*ck)->stats().last_write_seconds);
      }
    }
  }
  std::printf(
      "{\"parameters\": %zu, \"state_bytes\": %zu, \"shard_bytes\": %.0f, \"async_stall_s\": %.6f, "
      "\"snapshot_s\": %.6f, \"step_s\": %.6f, \"step_alone_s\": %.6f, \"sync_save_s\": %.6f, \"write_s\": %.6f, \"write_bytes_per_s\": %.0f, "
      "\"write_bytes_per_s_beside_a_step\": %.0f}\n",
      n, 3 * n * sizeof(float), Median(write_bytes), Median(stall), Median(snapshot_s), Median(step_s), Median(alone), Median(sync_s),
      Median(sync_write_s), Median(write_bytes) / Median(sync_write_s), Median(write_bytes) / Median(write_s));
  return 0;
}
