#include "worker/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "common/logging.h"
#include "dataloader/token_shard.h"
#include "kernels/cpu/cpu_kernels.h"
#include "model/gpt.h"
#include "model/optimizer.h"
#include "model/schedule.h"

namespace cohort::worker {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string HumanCount(double n) {
  char buf[32];
  if (n >= 1e9) std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  else if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1e3) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

std::string HumanDuration(double s) {
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(s) % 60);
  else std::snprintf(buf, sizeof buf, "%.0fs", s);
  return buf;
}

// The progress line: redrawn in place on a TTY, erased before each log line so the two never mix.
class ProgressLine {
 public:
  explicit ProgressLine(bool enabled) : enabled_(enabled) {}
  ~ProgressLine() { Clear(); }

  void Draw(int64_t step, int64_t total, double loss, double tok_s, double eta_s) {
    if (!enabled_) return;
    constexpr int kWidth = 30;
    int filled = total > 0 ? static_cast<int>(kWidth * step / total) : 0;
    std::string bar(static_cast<size_t>(filled), '=');
    if (filled < kWidth) bar += '>';
    bar.resize(kWidth, ' ');
    std::fprintf(stderr, "\r\033[K[%s] %lld/%lld loss %.4f | %s tok/s | eta %s", bar.c_str(),
                 static_cast<long long>(step), static_cast<long long>(total), loss,
                 HumanCount(tok_s).c_str(), HumanDuration(eta_s).c_str());
    std::fflush(stderr);
    drawn_ = true;
  }
  void Clear() {
    if (!enabled_ || !drawn_) return;
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    drawn_ = false;
  }

 private:
  bool enabled_;
  bool drawn_ = false;
};

bool StopRequested(const TrainOptions& o) {
  return o.stop != nullptr && o.stop->load(std::memory_order_relaxed);
}

// Mean loss over the first `batches` sequential validation batches (the same ones every time).
// Cancelled when a stop is requested midway.
Result<double> Evaluate(model::Gpt& gpt, const data::TokenDataset& val, int batches, int B, int T,
                        std::vector<int32_t>& inputs, std::vector<int32_t>& targets,
                        const TrainOptions& options) {
  double sum = 0;
  for (int i = 0; i < batches; ++i) {
    if (StopRequested(options)) return Cancelled("evaluation stopped by signal");
    RETURN_IF_ERROR(val.FillSequential(static_cast<uint64_t>(i), B, T, inputs, targets));
    ASSIGN_OR_RETURN(float loss, gpt.Forward(inputs.data(), targets.data(), B, T));
    sum += loss;
  }
  return sum / batches;
}

}  // namespace

Result<TrainSummary> Train(const config::JobSpec& spec, const TrainOptions& options) {
  // Reserved sections: refuse rather than silently train without what the user asked for.
  if (spec.checkpoint.interval > 0) {
    return InvalidArgument("checkpoint.interval: checkpointing is not implemented in this version; "
                           "set checkpoint.interval: 0");
  }
  if (spec.parallel.strategy != "ddp") {
    return InvalidArgument("parallel.strategy: '" + spec.parallel.strategy +
                           "' is not implemented in this version (single-process training only)");
  }
  // 0 = every core this process may run on (OpenMP's count honours affinity and cpusets, unlike
  // std::thread::hardware_concurrency).
  kernels::SetNumThreads(spec.train.threads);
  const int threads = kernels::NumThreads();

  // ---- data ----
  ASSIGN_OR_RETURN(data::TokenDataset train_data, data::TokenDataset::Open(spec.data.train));
  std::unique_ptr<data::TokenDataset> val_data;
  if (!spec.data.val.empty()) {
    ASSIGN_OR_RETURN(data::TokenDataset v, data::TokenDataset::Open(spec.data.val));
    val_data = std::make_unique<data::TokenDataset>(std::move(v));
  }
  for (const data::TokenDataset* ds : {&train_data, val_data.get()}) {
    if (ds == nullptr) continue;
    if (!ds->tokenizer().empty() && ds->tokenizer() != spec.data.tokenizer) {
      return InvalidArgument("data.tokenizer is '" + spec.data.tokenizer + "' but " +
                             ds->files().front() + " was made with '" + ds->tokenizer() + "'");
    }
  }
  if (val_data && val_data->vocab_size() != train_data.vocab_size()) {
    return InvalidArgument("validation shards (" + val_data->files().front() + ") have vocab size " +
                           std::to_string(val_data->vocab_size()) + " but training shards (" +
                           train_data.files().front() + ") have " +
                           std::to_string(train_data.vocab_size()));
  }

  const int B = spec.data.batch_size;
  const int T = spec.effective_seq_len();
  RETURN_IF_ERROR(train_data.CheckWindow(T).WithContext("data.train"));
  if (val_data) RETURN_IF_ERROR(val_data->CheckWindow(T).WithContext("data.val"));

  // ---- model and optimizer ----
  model::GptConfig mc;
  mc.vocab_size = spec.model.vocab_size > 0 ? spec.model.vocab_size
                                            : static_cast<int>(train_data.vocab_size());
  if (static_cast<uint32_t>(mc.vocab_size) < train_data.vocab_size()) {
    return InvalidArgument("model.vocab_size (" + std::to_string(mc.vocab_size) +
                           ") is smaller than the shards' vocabulary (" +
                           std::to_string(train_data.vocab_size()) + ", " +
                           train_data.files().front() + ")");
  }
  mc.context_length = spec.model.context_length;
  mc.n_layer = spec.model.n_layer;
  mc.n_head = spec.model.n_head;
  mc.n_embd = spec.model.n_embd;
  ASSIGN_OR_RETURN(std::unique_ptr<model::Gpt> gpt, model::Gpt::Create(mc));
  gpt->InitWeights(spec.train.seed);

  model::AdamWConfig oc;
  oc.lr = static_cast<float>(spec.optimizer.lr);
  oc.beta1 = static_cast<float>(spec.optimizer.beta1);
  oc.beta2 = static_cast<float>(spec.optimizer.beta2);
  oc.eps = static_cast<float>(spec.optimizer.eps);
  oc.weight_decay = static_cast<float>(spec.optimizer.weight_decay);
  ASSIGN_OR_RETURN(std::unique_ptr<model::AdamW> adamw, model::AdamW::Create(oc, gpt->tensors()));

  model::LrSchedule schedule;
  schedule.kind = spec.schedule.decay == "constant" ? model::LrSchedule::Kind::kConstant
                                                    : model::LrSchedule::Kind::kCosine;
  schedule.max_lr = oc.lr;
  schedule.min_lr = static_cast<float>(spec.schedule.min_lr);
  schedule.warmup_steps = spec.schedule.warmup_steps;
  schedule.total_steps = spec.train.steps;
  RETURN_IF_ERROR(schedule.Validate());

  const int accum = spec.train.grad_accum;
  const double tokens_per_step = static_cast<double>(B) * T * accum;
  COHORT_LOG_INFO("job '{}': resolved spec:\n{}", spec.name, config::ToYaml(spec));
  COHORT_LOG_INFO(
      "model: {} parameters (L={} H={} C={} V={} ctx={}); data: {} train tokens in {} file(s){}; "
      "{} tokens/step (B={} T={} accum={}); {} thread(s)",
      gpt->num_parameters(), mc.n_layer, mc.n_head, mc.n_embd, mc.vocab_size, mc.context_length,
      train_data.size(), train_data.files().size(),
      val_data ? ", " + std::to_string(val_data->size()) + " val tokens" : std::string(),
      static_cast<int64_t>(tokens_per_step), B, T, accum, threads);

  TrainSummary summary;
  summary.num_parameters = static_cast<int64_t>(gpt->num_parameters());
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T);
  std::vector<int32_t> targets(inputs.size());
  ProgressLine progress(options.progress);

  auto run_eval = [&](int64_t step) -> Result<double> {
    ASSIGN_OR_RETURN(double v, Evaluate(*gpt, *val_data, spec.train.eval_batches, B, T, inputs,
                                        targets, options));
    progress.Clear();
    COHORT_LOG_INFO("step {:>6}/{} | val loss {:.4f}", step, spec.train.steps, v);
    return v;
  };

  // An evaluation cut short by a stop request ends the run as interrupted, not as an error.
  auto interrupted = [&](const Status& st) { return st.code() == Code::kCancelled; };
  if (val_data) {
    auto v = run_eval(0);
    if (!v.ok() && !interrupted(v.status())) return v.status();
    if (v.ok()) summary.initial_val_loss = *v;
  }

  const Clock::time_point start = Clock::now();
  double timed_seconds = 0;  // steps after the first (which pays one-time allocation costs)
  double timed_tokens = 0;
  int64_t step = 0;
  for (; step < spec.train.steps; ++step) {
    if (StopRequested(options)) break;
    const Clock::time_point t0 = Clock::now();
    const float lr = schedule.At(step);
    gpt->ZeroGrad();
    double loss_sum = 0;
    double data_seconds = 0;
    bool stopped = false;
    for (int micro = 0; micro < accum; ++micro) {
      if (micro > 0 && StopRequested(options)) {
        stopped = true;
        break;
      }
      const Clock::time_point d0 = Clock::now();
      RETURN_IF_ERROR(train_data.FillRandom(spec.train.seed, static_cast<uint64_t>(step),
                                            static_cast<uint64_t>(micro), B, T, inputs, targets));
      data_seconds += Seconds(d0, Clock::now());
      ASSIGN_OR_RETURN(float loss, gpt->ForwardBackward(inputs.data(), targets.data(), B, T,
                                                        1.0f / static_cast<float>(accum)));
      loss_sum += loss;
    }
    if (stopped) break;  // never apply a partial accumulation
    const double loss = loss_sum / accum;
    if (!std::isfinite(loss)) {
      return Internal("training loss is " + std::to_string(loss) + " at step " +
                      std::to_string(step + 1) +
                      "; the run diverged (try a lower optimizer.lr or a longer "
                      "schedule.warmup_steps)");
    }
    const float norm = model::ClipGradNorm(gpt->grads(), gpt->num_parameters(),
                                           static_cast<float>(spec.optimizer.grad_clip));
    if (!std::isfinite(norm)) {
      return Internal("gradient norm is " + std::to_string(norm) + " at step " +
                      std::to_string(step + 1) + "; the run diverged");
    }
    adamw->Step(gpt->params(), gpt->grads(), lr);
    const double step_seconds = Seconds(t0, Clock::now());

    if (step == 0) summary.first_loss = loss;
    summary.last_loss = loss;
    if (step > 0) {
      timed_seconds += step_seconds;
      timed_tokens += tokens_per_step;
    }
    StepMetrics m;
    m.step = step + 1;
    m.total_steps = spec.train.steps;
    m.loss = loss;
    m.lr = lr;
    m.grad_norm = norm;
    m.step_seconds = step_seconds;
    m.data_seconds = data_seconds;
    m.tokens_per_second = tokens_per_step / step_seconds;
    if (options.on_step) options.on_step(m);

    const bool last = step + 1 == spec.train.steps;
    if ((step + 1) % spec.train.log_interval == 0 || step == 0 || last) {
      progress.Clear();
      COHORT_LOG_INFO(
          "step {:>6}/{} | loss {:.4f} | lr {:.3e} | norm {:.3f} | {:.1f} ms | data {:.2f} ms | "
          "{:.0f} tok/s",
          m.step, m.total_steps, m.loss, m.lr, m.grad_norm, 1e3 * step_seconds,
          1e3 * data_seconds, m.tokens_per_second);
    }
    if (options.progress) {
      const double rate = timed_seconds > 0 ? timed_tokens / timed_seconds : m.tokens_per_second;
      const double eta = (spec.train.steps - m.step) * tokens_per_step / rate;
      progress.Draw(m.step, m.total_steps, loss, rate, eta);
    }
    if (val_data && !last && spec.train.eval_interval > 0 &&
        (step + 1) % spec.train.eval_interval == 0) {
      auto v = run_eval(step + 1);
      if (!v.ok() && !interrupted(v.status())) return v.status();
    }
  }
  summary.steps = step;
  summary.interrupted = step < spec.train.steps;
  summary.tokens_per_second = timed_seconds > 0 ? timed_tokens / timed_seconds : 0;
  progress.Clear();

  if (summary.interrupted) {
    COHORT_LOG_WARN("stopped by signal after {} of {} steps", step, spec.train.steps);
  } else if (val_data) {
    auto v = run_eval(step);
    if (!v.ok() && !interrupted(v.status())) return v.status();
    if (v.ok()) summary.final_val_loss = *v;
    else summary.interrupted = true;
  }
  COHORT_LOG_INFO("done: {} steps in {:.1f} s, {:.0f} tok/s{}", step, Seconds(start, Clock::now()),
                  summary.tokens_per_second,
                  val_data && !summary.interrupted
                      ? fmt::format(", val loss {:.4f} -> {:.4f}", summary.initial_val_loss,
                                    summary.final_val_loss)
                      : std::string());
  return summary;
}

}  // namespace cohort::worker
