// bench_train_step: time one full training step (forward, backward, clip, AdamW) of Cohort's GPT.
// Prints one JSON object: tokens/s, ms/step and peak resident memory. Driven by bench/train_step,
// which runs PyTorch on the same shapes in the same run.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include <CLI/CLI.hpp>

#include "kernels/cpu/cpu_kernels.h"
#include "model/gpt.h"
#include "model/optimizer.h"

int main(int argc, char** argv) {
  CLI::App app{"Cohort training-step benchmark"};
  cohort::model::GptConfig c;
  int B = 4, T = 64, threads = 2, steps = 10, warmup = 2;
  app.add_option("--vocab", c.vocab_size);
  app.add_option("--ctx", c.context_length);
  app.add_option("--layers", c.n_layer);
  app.add_option("--heads", c.n_head);
  app.add_option("--embd", c.n_embd);
  app.add_option("--batch", B);
  app.add_option("--seq", T);
  app.add_option("--threads", threads);
  app.add_option("--steps", steps);
  app.add_option("--warmup", warmup);
  CLI11_PARSE(app, argc, argv);
  if (steps < 1 || warmup < 0) {
    std::fprintf(stderr, "--steps must be >= 1 and --warmup >= 0\n");
    return 2;
  }

  cohort::kernels::SetNumThreads(threads);
  auto gpt = cohort::model::Gpt::Create(c);
  if (!gpt.ok()) {
    std::fprintf(stderr, "%s\n", gpt.status().ToString().c_str());
    return 2;
  }
  (*gpt)->InitWeights(1);
  cohort::model::AdamWConfig oc;
  oc.lr = 1e-4f;
  oc.weight_decay = 0.1f;
  auto adamw = cohort::model::AdamW::Create(oc, (*gpt)->tensors());
  if (!adamw.ok()) return 2;

  std::mt19937 rng(42);
  std::uniform_int_distribution<int> tok(0, c.vocab_size - 1);
  std::vector<int32_t> in(static_cast<size_t>(B) * T), tg(in.size());
  for (auto& x : in) x = tok(rng);
  for (auto& x : tg) x = tok(rng);

  using Clock = std::chrono::steady_clock;
  std::vector<double> times;
  float loss = 0;
  for (int s = 0; s < warmup + steps; ++s) {
    auto t0 = Clock::now();
    (*gpt)->ZeroGrad();
    auto l = (*gpt)->ForwardBackward(in.data(), tg.data(), B, T, 1.0f);
    if (!l.ok()) {
      std::fprintf(stderr, "%s\n", l.status().ToString().c_str());
      return 1;
    }
    loss = *l;
    cohort::model::ClipGradNorm((*gpt)->grads(), (*gpt)->num_parameters(), 1.0f);
    (*adamw)->Step((*gpt)->params(), (*gpt)->grads(), oc.lr);
    double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    if (s >= warmup) times.push_back(dt);
  }
  std::sort(times.begin(), times.end());
  double median = times[times.size() / 2];
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  std::printf(
      "{\"impl\": \"cohort\", \"tokens_per_s\": %.1f, \"ms_per_step\": %.3f, \"peak_rss_mb\": %.1f, "
      "\"params\": %zu, \"loss\": %.5f}\n",
      B * T / median, 1e3 * median, ru.ru_maxrss / 1024.0, (*gpt)->num_parameters(), loss);
  return 0;
}
