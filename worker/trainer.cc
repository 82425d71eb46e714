#include "worker/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "collectives/reducer.h"
#include "common/crc32c.h"
#include "common/hash.h"
#include "common/logging.h"
#include "dataloader/loader.h"
#include "dataloader/source.h"
#include "dataloader/tokenizer.h"
#include "kernels/cpu/cpu_kernels.h"
#include "storage/storage.h"
#include "worker/checkpointer.h"
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

// The ranks of this run (a single rank when there is no communicator or it has one rank).
struct Ranks {
  collectives::Communicator* comm = nullptr;  // null when alone
  int rank = 0;
  int world = 1;
  bool distributed() const { return comm != nullptr; }
};

// Mean loss over the first `batches` validation batches of N*B samples in file order (the same
// ones every time); this rank reads rows [rank*B, (rank+1)*B) of each and the ranks average. Alone,
// a stop request cancels it midway; with several ranks it runs to the end (all ranks must make the
// same calls).
Result<double> Evaluate(model::Gpt& gpt, std::shared_ptr<const data::SampleSource> val, int batches,
                        int B, int T, const Ranks& ranks, std::chrono::milliseconds data_timeout,
                        const TrainOptions& options) {
  // Through a loader of its own (file order, from the start): the reads are prefetched and have
  // the same deadline as training's.
  data::LoaderOptions lo;
  lo.batch_size = B;
  lo.rank = ranks.rank;
  lo.world = ranks.world;
  lo.start = {0, 0, 0};
  lo.shuffle = false;
  lo.depth = 2;
  lo.threads = 1;
  lo.timeout = data_timeout;
  ASSIGN_OR_RETURN(std::unique_ptr<data::DataLoader> loader, data::DataLoader::Create(std::move(val), lo));
  double sum = 0;
  for (int i = 0; i < batches; ++i) {
    if (!ranks.distributed() && StopRequested(options)) {
      return Cancelled("evaluation stopped by signal");
    }
    auto batch = loader->Next();
    if (!batch.ok()) return batch.status().WithContext("data.val");
    ASSIGN_OR_RETURN(float loss, gpt.Forward(batch->inputs.data(), batch->targets.data(), B, T));
    sum += loss;
  }
  double mean = sum / batches;
  if (ranks.distributed()) {
    float x = static_cast<float>(mean);
    RETURN_IF_ERROR(ranks.comm->AllReduce(&x, 1, collectives::DataType::kFloat32,
                                          collectives::ReduceOp::kAvg)
                        .WithContext("validation loss all-reduce"));
    mean = x;
  }
  return mean;
}

// Every rank must train the same job: a rank started with other overrides or other files would
// silently corrupt the average. Compares a hash of the resolved spec (minus per-rank knobs) and
// the model size with rank 0's; all ranks learn the verdict together, so none is left waiting.
Status CheckSameJob(const config::JobSpec& spec, size_t num_params, uint64_t data_fingerprint,
                    const Ranks& ranks) {
  config::JobSpec canonical = spec;
  canonical.train.threads = 0;  // numerics do not depend on the thread count
  const std::string yaml = config::ToYaml(canonical);
  uint64_t mine = HashCombine(HashCombine(Crc32c(yaml.data(), yaml.size()), num_params), data_fingerprint);
  uint64_t root = mine;
  RETURN_IF_ERROR(ranks.comm->Broadcast(&root, sizeof root, 0).WithContext("job spec check"));
  float differ = root != mine ? 1.0f : 0.0f;
  RETURN_IF_ERROR(ranks.comm->AllReduce(&differ, 1, collectives::DataType::kFloat32,
                                        collectives::ReduceOp::kSum)
                      .WithContext("job spec check"));
  if (root != mine) {
    return InvalidArgument("rank " + std::to_string(ranks.rank) +
                           ": the resolved job spec, model size or data files (names, sizes) differ "
                           "from rank 0's (different job file, --set overrides or data on this node?)");
  }
  if (differ > 0) {
    return InvalidArgument(std::to_string(static_cast<int>(differ)) +
                           " rank(s) run a job spec that differs from rank 0's; see their errors");
  }
  return Status::Ok();
}

}  // namespace

namespace {

Result<TrainSummary> TrainOnThisRank(const config::JobSpec& spec, const TrainOptions& options) {
  Ranks ranks;
  if (options.comm != nullptr && options.comm->size() > 1) {
    ranks.comm = options.comm;
    ranks.rank = options.comm->rank();
    ranks.world = options.comm->size();
  }
  const bool zero1 = spec.parallel.strategy == "zero1" && ranks.distributed();
  // 0 = every core this process may run on (OpenMP's count honours affinity and cpusets, unlike
  // std::thread::hardware_concurrency).
  kernels::SetNumThreads(spec.train.threads);
  const int threads = kernels::NumThreads();

  // ---- data ----
  const int B = spec.data.batch_size;
  const int T = spec.effective_seq_len();
  // With several ranks a rank stuck on storage must report it before its peers give up on it in
  // the next collective (parallel.timeout_s) and end the job without saying why.
  std::chrono::milliseconds data_timeout = std::chrono::seconds(spec.data.timeout_s);
  if (ranks.distributed()) {
    data_timeout = std::min(data_timeout, std::max<std::chrono::milliseconds>(
                                              std::chrono::seconds(1),
                                              std::chrono::seconds(spec.parallel.timeout_s) / 2));
  }
  ASSIGN_OR_RETURN(const uint32_t tokenizer_vocab, data::TokenizerVocabSize(spec.data.tokenizer));
  const uint32_t vocab = spec.model.vocab_size > 0 ? static_cast<uint32_t>(spec.model.vocab_size)
                                                   : tokenizer_vocab;
  data::SourceOptions so;
  so.seq_len = T;
  so.format = spec.data.format;
  so.hdf5_dataset = spec.data.hdf5_dataset;
  so.vocab_size = vocab;
  so.tokenizer = spec.data.tokenizer;
  so.verify_checksums = false;  // below, split over the ranks
  so.patterns = {spec.data.train};
  std::shared_ptr<const data::SampleSource> train_data;
  {
    auto opened = data::OpenSampleSource(so);
    if (!opened.ok()) return opened.status().WithContext("data.train");
    train_data = std::move(*opened);
  }
  std::shared_ptr<const data::SampleSource> val_data;
  if (!spec.data.val.empty()) {
    so.patterns = {spec.data.val};
    auto opened = data::OpenSampleSource(so);
    if (!opened.ok()) return opened.status().WithContext("data.val");
    val_data = std::move(*opened);
  }
  // ---- model and optimizer ----
  model::GptConfig mc;
  mc.vocab_size = static_cast<int>(vocab);
  mc.context_length = spec.model.context_length;
  mc.n_layer = spec.model.n_layer;
  mc.n_head = spec.model.n_head;
  mc.n_embd = spec.model.n_embd;
  ASSIGN_OR_RETURN(std::unique_ptr<model::Gpt> gpt, model::Gpt::Create(mc));
  gpt->InitWeights(spec.train.seed);
  const size_t n = gpt->num_parameters();

  std::unique_ptr<collectives::GradientReducer> reducer;
  if (ranks.distributed()) {
    RETURN_IF_ERROR(CheckSameJob(spec, n, train_data->Fingerprint(), ranks));
    // Identical by construction (same seed), but rank 0's copy is authoritative: this also covers
    // nodes whose kernels round differently (another -march) and, later, loaded weights.
    // In 256 MiB pieces: transports count bytes in int (MPI) and big models exceed 2 GiB.
    constexpr size_t kPiece = size_t{256} << 20;
    const size_t bytes = n * sizeof(float);
    auto* base = reinterpret_cast<uint8_t*>(gpt->params());
    for (size_t off = 0; off < bytes; off += kPiece) {
      RETURN_IF_ERROR(ranks.comm->Broadcast(base + off, std::min(kPiece, bytes - off), 0)
                          .WithContext("initial parameter broadcast"));
    }
    collectives::ReducerOptions ro;
    ro.mode = zero1 ? collectives::ReducerOptions::Mode::kReduceScatter
                    : collectives::ReducerOptions::Mode::kAllReduce;
    ro.bucket_bytes = static_cast<size_t>(spec.parallel.bucket_mb) << 20;
    ASSIGN_OR_RETURN(reducer, collectives::GradientReducer::Create(ranks.comm, gpt->grads(), n, ro));
    // Hand each bucket to the communication thread as soon as backward has finished it.
    collectives::GradientReducer* red = reducer.get();
    model::Gpt* g = gpt.get();
    gpt->SetBackwardHook([red, g](int block) {
      red->MarkFinalFrom(block < 0 ? 0 : g->BlockRange(block).offset);
    });
  }

  if (spec.data.verify == "full") {
    // The payload checksums. Ranks on one node read the same local files, so they split those
    // (local rank r of L checks every L-th file): each node's copy is checked once, not once per
    // rank. Without a known node layout every rank checks every file. The ranks then agree.
    const int part = options.local_size > 1 ? options.local_rank : 0;
    const int parts = options.local_size > 1 ? options.local_size : 1;
    Status mine = train_data->VerifyFiles(part, parts).WithContext("data.train");
    if (mine.ok() && val_data) mine = val_data->VerifyFiles(part, parts).WithContext("data.val");
    if (!mine.ok() && ranks.distributed()) {
      // Printed before the collective: under MPI the peers' abort may end this process first.
      COHORT_LOG_ERROR("{}", mine.ToString());
    }
    if (ranks.distributed()) {
      float failed = mine.ok() ? 0.0f : 1.0f;
      RETURN_IF_ERROR(ranks.comm->AllReduce(&failed, 1, collectives::DataType::kFloat32,
                                            collectives::ReduceOp::kSum)
                          .WithContext("data verification"));
      if (mine.ok() && failed > 0) {
        return DataLoss(std::to_string(static_cast<int>(failed)) +
                        " rank(s) found corrupt data files while checking checksums; see their errors");
      }
    }
    RETURN_IF_ERROR(mine);
  }

  model::AdamWConfig oc;
  oc.lr = static_cast<float>(spec.optimizer.lr);
  oc.beta1 = static_cast<float>(spec.optimizer.beta1);
  oc.beta2 = static_cast<float>(spec.optimizer.beta2);
  oc.eps = static_cast<float>(spec.optimizer.eps);
  oc.weight_decay = static_cast<float>(spec.optimizer.weight_decay);
  // DDP: one AdamW over everything. ZeRO-1: one per owned chunk (a chunk of every bucket), so this
  // rank's moments cover ~1/N of the parameters.
  std::vector<std::unique_ptr<model::AdamW>> optimizers;
  std::vector<collectives::ElementRange> owned{{0, n}};
  if (zero1) owned = reducer->owned_ranges();
  size_t state_floats = 0;
  for (const collectives::ElementRange& r : owned) {
    ASSIGN_OR_RETURN(std::unique_ptr<model::AdamW> opt,
                     model::AdamW::Create(oc, gpt->tensors(), model::ParamRange{r.offset, r.size}));
    state_floats += 2 * opt->state_size();
    optimizers.push_back(std::move(opt));
  }

  model::LrSchedule schedule;
  schedule.kind = spec.schedule.decay == "constant" ? model::LrSchedule::Kind::kConstant
                                                    : model::LrSchedule::Kind::kCosine;
  schedule.max_lr = oc.lr;
  schedule.min_lr = static_cast<float>(spec.schedule.min_lr);
  schedule.warmup_steps = spec.schedule.warmup_steps;
  schedule.total_steps = spec.train.steps;
  RETURN_IF_ERROR(schedule.Validate());

  const int accum = spec.train.grad_accum;
  const double tokens_per_step = static_cast<double>(B) * T * accum * ranks.world;
  COHORT_LOG_INFO("job '{}': resolved spec:\n{}", spec.name, config::ToYaml(spec));
  COHORT_LOG_INFO(
      "model: {} parameters (L={} H={} C={} V={} ctx={}); train data: {}{}; {} tokens/step (B={} "
      "T={} accum={} ranks={}); {} thread(s) per rank",
      n, mc.n_layer, mc.n_head, mc.n_embd, mc.vocab_size, mc.context_length, train_data->Describe(),
      val_data ? "; val data: " + val_data->Describe() : std::string(),
      static_cast<int64_t>(tokens_per_step), B, T, accum, ranks.world, threads);
  if (ranks.distributed()) {
    COHORT_LOG_INFO("data parallel: {} ranks over {}, strategy {}, {} gradient bucket(s) of <= {} "
                    "MiB, optimizer state {:.1f} MB per rank, collective timeout {} s",
                    ranks.world, ranks.comm->backend(), spec.parallel.strategy,
                    reducer->num_buckets(), spec.parallel.bucket_mb, state_floats * 4 / 1e6,
                    spec.parallel.timeout_s);
  }

  TrainSummary summary;
  summary.num_parameters = static_cast<int64_t>(n);
  summary.world_size = ranks.world;
  summary.optimizer_state_floats = state_floats;

  // ---- checkpoints: resume, then save asynchronously (worker/checkpointer.h) ----
  std::string ckpt_root;
  if (!spec.checkpoint.dir.empty()) {
    auto local = storage::LocalPath(spec.checkpoint.dir);
    if (!local.ok()) return local.status().WithContext("checkpoint.dir");
    ckpt_root = *local;
  }
  int64_t start_step = 0;
  data::DataState start_data{spec.train.seed, 0, 0};
  const uint64_t data_fingerprint = train_data->Fingerprint();  // stored with every checkpoint
  if (options.resume != "never" && (!ckpt_root.empty() || options.resume != "auto")) {
    // Rank 0 lists the candidates, newest first; every rank loads its part of each in turn (every
    // piece checked against its CRC32C), and the first one that every rank loaded is it. A damaged
    // one is found while it is loaded, by the rank that reads the damaged piece, so no rank reads
    // the whole checkpoint first.
    ResumeCandidates candidates;
    Status list_status;
    int64_t count = 0;  // candidates; -1: rank 0 failed to list them
    if (ranks.rank == 0) {
      auto c = FindResumeCandidates(options.resume, ckpt_root);
      if (c.ok()) {
        candidates = std::move(*c);
        count = static_cast<int64_t>(candidates.dirs.size());
      } else {
        list_status = c.status();
        count = -1;
      }
    }
    if (ranks.distributed()) RETURN_IF_ERROR(ranks.comm->Broadcast(&count, sizeof count, 0).WithContext("resume"));
    if (count < 0) {
      if (ranks.rank == 0) return list_status;
      return DataLoss("resume: rank 0 found no usable checkpoint (see its error)");
    }
    // Whether a checkpoint fits this job (same model, same data, not past the end): a checkpoint
    // that does not is a fatal error, not a reason to try an older one.
    checkpoint::Manifest manifest;
    auto fits = [&](const std::string& dir) -> Status {
      if (manifest.num_parameters != n) {
        return InvalidArgument(dir + ": the checkpoint holds " + std::to_string(manifest.num_parameters) +
                               " parameters, this model " + std::to_string(n) + " (model section changed?)");
      }
      if (manifest.data.fingerprint != 0 && manifest.data.fingerprint != data_fingerprint) {
        return InvalidArgument(dir + ": the training data differ from the data the checkpoint was trained on "
                               "(files, sizes or data.seq_len changed); its data position would be meaningless");
      }
      if (manifest.step > spec.train.steps) {
        return InvalidArgument(dir + ": the checkpoint is at step " + std::to_string(manifest.step) +
                               ", beyond train.steps = " + std::to_string(spec.train.steps));
      }
      return Status::Ok();
    };
    // Loads this rank's part of `dir` into its model and optimizers; any failure is damage.
    auto load = [&](const std::string& dir) -> Status {
      RETURN_IF_ERROR(checkpoint::ReadRange(dir, manifest, "model", 0, n, gpt->params()));
      for (auto& opt : optimizers) {
        const model::ParamRange r = opt->range();
        RETURN_IF_ERROR(checkpoint::ReadRange(dir, manifest, "adam_m", r.offset, r.size, opt->m()));
        RETURN_IF_ERROR(checkpoint::ReadRange(dir, manifest, "adam_v", r.offset, r.size, opt->v()));
      }
      return Status::Ok();
    };
    std::string why;  // the failures, for the error when none loads
    std::string loaded_dir;
    bool loaded = false;
    for (int64_t k = 0; k < count; ++k) {
      std::string dir = ranks.rank == 0 ? candidates.dirs[static_cast<size_t>(k)] : std::string();
      if (ranks.distributed()) {
        uint64_t len = dir.size();
        RETURN_IF_ERROR(ranks.comm->Broadcast(&len, sizeof len, 0).WithContext("resume"));
        dir.resize(len);
        if (len > 0) RETURN_IF_ERROR(ranks.comm->Broadcast(dir.data(), len, 0).WithContext("resume"));
      }
      Status unfit, st;  // st: damage (an unreadable manifest, or a piece that fails its check)
      auto m = checkpoint::ReadManifest(dir);
      if (!m.ok()) {
        st = m.status();
      } else {
        manifest = std::move(*m);
        unfit = fits(dir);
        if (unfit.ok()) st = load(dir);
      }
      // How many ranks found it damaged, and how many found it unfit for this job.
      float verdict[2] = {st.ok() ? 0.0f : 1.0f, unfit.ok() ? 0.0f : 1.0f};
      if (ranks.distributed()) {
        RETURN_IF_ERROR(ranks.comm->AllReduce(verdict, 2, collectives::DataType::kFloat32, collectives::ReduceOp::kSum)
                            .WithContext("resume"));
      }
      if (verdict[1] > 0) {
        if (!unfit.ok()) return unfit;
        return InvalidArgument("resume: another rank found " + dir + " unfit for this job (see its error)");
      }
      if (verdict[0] == 0) {
        loaded = true;
        loaded_dir = dir;
        break;
      }
      if (!st.ok()) COHORT_LOG_WARN("resume: {} is damaged: {}", dir, st.ToString());
      if (ranks.rank == 0) {
        why += "; " + dir + ": " +
               (st.ok() ? std::to_string(static_cast<int>(verdict[0])) + " rank(s) found it damaged (see their log)"
                        : st.message());
        if (k + 1 < count) COHORT_LOG_WARN("resume: trying the checkpoint before {}", dir);
      }
    }
    if (count > 0 && !loaded) {
      if (ranks.rank == 0) return NoUsableCheckpoint(candidates, why);
      return DataLoss("resume: no checkpoint in the root could be loaded (see rank 0's error)");
    }
    if (loaded) {
      if (ranks.rank == 0 && !manifest.job_spec_yaml.empty()) {
        // Allowed (a new learning rate, more steps), but said: a resume with another job is easy
        // to make by mistake.
        const std::string changes = config::JobSpecChanges(manifest.job_spec_yaml, config::ToYaml(spec));
        if (!changes.empty()) COHORT_LOG_INFO("resume: the job differs from the one {} was saved by: {}", loaded_dir, changes);
      }
      for (auto& opt : optimizers) opt->set_step(manifest.optimizer_step);
      start_step = manifest.step;
      start_data = {manifest.data.seed, manifest.data.epoch, manifest.data.cursor};
      summary.resumed_from_step = start_step;
      COHORT_LOG_INFO("resumed from {} (step {}, written by {} rank(s) with {}; data state {})", loaded_dir,
                      manifest.step, manifest.world_size, manifest.strategy, data::ToString(start_data));
    } else if (ranks.rank == 0 && !ckpt_root.empty()) {
      COHORT_LOG_INFO("checkpoints: none in {} yet, starting at step 0", ckpt_root);
    }
  }
  // This rank's part of every checkpoint: under ZeRO-1 its optimizer chunks; under DDP an even
  // split of the buffer, so the ranks share the writing.
  std::vector<checkpoint::Range> save_ranges;
  if (zero1) {
    for (const auto& r : owned) save_ranges.push_back({r.offset, r.size});
  } else {
    const uint64_t lo = n * static_cast<uint64_t>(ranks.rank) / ranks.world;
    const uint64_t hi = n * static_cast<uint64_t>(ranks.rank + 1) / ranks.world;
    save_ranges.push_back({lo, hi - lo});
  }
  std::unique_ptr<Checkpointer> checkpointer;
  if (!ckpt_root.empty()) {
    CheckpointerOptions co;
    co.root = ckpt_root;
    co.comm = ranks.comm;
    co.skip_when_busy = spec.checkpoint.on_busy == "skip";
    co.keep_last = spec.checkpoint.keep_last;
    co.keep_every = spec.checkpoint.keep_every;
    co.strategy = zero1 ? "zero1" : "ddp";
    co.job_spec_yaml = config::ToYaml(spec);
    for (const model::TensorInfo& t : gpt->tensors()) co.tensors.push_back({t.name, t.offset, t.numel, t.shape});
    co.ranges = save_ranges;
    co.states = {"model", "adam_m", "adam_v"};
    // Another timeline's checkpoints (a fresh start, or a resume from an older step) are moved aside.
    co.supersede_after = options.resume == "never" ? -1 : start_step;
    ASSIGN_OR_RETURN(checkpointer, Checkpointer::Create(std::move(co)));
  }
  // Queues a save of this rank's ranges; the snapshot is copied while training goes on.
  auto save = [&](int64_t at_step, const data::DataState& ds, bool final = false) -> Status {
    SaveRequest req;
    req.step = at_step;
    req.final = final;
    req.optimizer_step = optimizers.front()->step();
    req.data = {ds.seed, ds.epoch, ds.cursor, data_fingerprint};
    // The live weights and moments: copied by the checkpoint writer thread while the next step
    // computes (and by this thread in WaitForSnapshot() below, for what is left); they stay
    // unchanged until then. Each saved range lies within one
    // optimizer's range (ZeRO-1: it is one; DDP: one optimizer covers everything), whose moments
    // are indexed from its own offset.
    req.source = [&](const std::string& state, const checkpoint::Range& r) -> const float* {
      if (state == "model") return gpt->params() + r.offset;
      for (const auto& opt : optimizers) {
        const model::ParamRange o = opt->range();
        if (r.offset < o.offset || r.offset >= o.offset + o.size) continue;
        return (state == "adam_m" ? opt->m() : opt->v()) + (r.offset - o.offset);
      }
      COHORT_CHECK(false) << "saved range at " << r.offset << " lies in no optimizer's range";
      return nullptr;
    };
    return checkpointer->Save(req);
  };
  ProgressLine progress(options.progress && ranks.rank == 0);
  // This rank's rows of every global batch of N*B samples, read ahead by the loader's threads.
  data::LoaderOptions lo;
  lo.batch_size = B;
  lo.rank = ranks.rank;
  lo.world = ranks.world;
  lo.start = start_data;
  lo.shuffle = spec.data.order == "shuffle";
  lo.layout = data::Layout::kStoredRows;  // the model widens the stored tokens itself
  lo.depth = spec.data.prefetch;
  lo.threads = spec.data.loader_threads;
  lo.timeout = data_timeout;
  ASSIGN_OR_RETURN(std::unique_ptr<data::DataLoader> loader, data::DataLoader::Create(train_data, lo));

  auto run_eval = [&](int64_t step) -> Result<double> {
    ASSIGN_OR_RETURN(double v, Evaluate(*gpt, val_data, spec.train.eval_batches, B, T, ranks,
                                        data_timeout, options));
    progress.Clear();
    COHORT_LOG_INFO("step {:>6}/{} | val loss {:.4f}", step, spec.train.steps, v);
    return v;
  };

  // An evaluation cut short by a stop request ends the run as interrupted, not as an error.
  auto interrupted = [&](const Status& st) { return st.code() == Code::kCancelled; };
  if (val_data) {
    const uint64_t wanted = static_cast<uint64_t>(spec.train.eval_batches) * static_cast<uint64_t>(B) *
                            static_cast<uint64_t>(ranks.world);
    if (wanted > val_data->num_samples()) {
      COHORT_LOG_WARN("validation: train.eval_batches x batch_size x ranks = {} rows but data.val holds "
                      "{} samples; some are counted more than once",
                      wanted, val_data->num_samples());
    }
    auto v = run_eval(start_step);
    if (!v.ok() && !interrupted(v.status())) return v.status();
    if (v.ok()) summary.initial_val_loss = *v;
  }

  const Clock::time_point start = Clock::now();
  double timed_seconds = 0;  // steps after the first (which pays one-time allocation costs)
  double timed_tokens = 0;
  double comm_total = 0, exposed_total = 0;
  int64_t step = start_step;
  int64_t last_saved = start_step;  // a resumed run does not save the step it started from again
  bool stop_all = false;  // distributed: some rank asked to stop; all stop after this step
  std::optional<data::DataState> abandoned_state;  // set when a step is cut short
  for (; step < spec.train.steps && !stop_all; ++step) {
    if (!ranks.distributed() && StopRequested(options)) break;
    const Clock::time_point t0 = Clock::now();
    const float lr = schedule.At(step);
    gpt->ZeroGrad();
    double loss_sum = 0;
    double data_seconds = 0;
    bool stopped = false;
    // Where the data stands if this step is abandoned midway (its batches were never applied).
    const data::DataState state_before_step = loader->state();
    for (int micro = 0; micro < accum; ++micro) {
      if (!ranks.distributed() && micro > 0 && StopRequested(options)) {
        stopped = true;
        break;
      }
      auto batch = loader->Next();
      if (!batch.ok()) return batch.status().WithContext("data.train");
      data_seconds += loader->last_wait_seconds();
      {
        // Does this global batch hold the first sample of an epoch (other than the very first)?
        const uint64_t n_samples = train_data->num_samples();
        const uint64_t first = batch->position;
        const uint64_t last = first + static_cast<uint64_t>(B) * static_cast<uint64_t>(ranks.world) - 1;
        if (first > 0 && last / n_samples != (first - 1) / n_samples) {
          progress.Clear();
          COHORT_LOG_INFO("data: epoch {} begins in step {} (each of the {} samples was read once in "
                          "epoch {})",
                          last / n_samples, step + 1, n_samples, last / n_samples - 1);
        }
      }
      // Only the last micro-step's backward reduces: earlier ones just accumulate locally.
      const bool reduce = reducer && micro == accum - 1;
      if (reduce) reducer->Begin();
      auto loss = gpt->ForwardBackwardRows(batch->rows.data(), batch->token_width, B, T,
                                           1.0f / static_cast<float>(accum));
      if (reduce) {
        Status st = reducer->Finish();
        if (!st.ok()) return st;
      }
      if (!loss.ok()) return loss.status();
      loss_sum += *loss;
    }
    if (stopped) {  // never apply a partial accumulation
      abandoned_state = state_before_step;
      break;
    }
    double loss = loss_sum / accum;
    float norm = 0;
    const float max_norm = static_cast<float>(spec.optimizer.grad_clip);
    if (ranks.distributed()) {
      // One small all-reduce per step carries the loss, ZeRO's partial squared norms and the stop
      // votes, so every rank takes the same decisions from the same numbers.
      double sumsq = 0;
      if (zero1) {
        for (const collectives::ElementRange& r : owned) {
          sumsq += kernels::SumOfSquares(gpt->grads() + r.offset, r.size);
        }
      }
      float shared[3] = {static_cast<float>(loss), static_cast<float>(sumsq),
                         StopRequested(options) ? 1.0f : 0.0f};
      RETURN_IF_ERROR(ranks.comm->AllReduce(shared, 3, collectives::DataType::kFloat32,
                                            collectives::ReduceOp::kSum)
                          .WithContext("step " + std::to_string(step + 1) + " metrics all-reduce"));
      loss = shared[0] / ranks.world;
      stop_all = shared[2] > 0;
      if (zero1) {
        norm = std::sqrt(shared[1]);
        // torch.nn.utils.clip_grad_norm_ semantics over the global norm, applied to our shard.
        const float coef = max_norm / (norm + 1e-6f);
        if (max_norm > 0 && coef < 1.0f && std::isfinite(norm)) {
          for (const collectives::ElementRange& r : owned) {
            kernels::Scale(gpt->grads() + r.offset, r.size, coef);
          }
        }
      }
    }
    if (!std::isfinite(loss)) {
      return Internal("training loss is " + std::to_string(loss) + " at step " +
                      std::to_string(step + 1) +
                      "; the run diverged (try a lower optimizer.lr or a longer "
                      "schedule.warmup_steps)");
    }
    if (!zero1) norm = model::ClipGradNorm(gpt->grads(), n, max_norm);
    if (!std::isfinite(norm)) {
      return Internal("gradient norm is " + std::to_string(norm) + " at step " +
                      std::to_string(step + 1) + "; the run diverged");
    }
    // A checkpoint's snapshot of the weights and moments may still be being copied (it overlaps
    // forward and backward, which only read them): it must be complete before they change.
    if (checkpointer) checkpointer->WaitForSnapshot();
    for (auto& opt : optimizers) opt->Step(gpt->params(), gpt->grads(), lr);
    if (zero1) {
      RETURN_IF_ERROR(reducer->AllGatherParams(gpt->params())
                          .WithContext("step " + std::to_string(step + 1)));
    }
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
    if (reducer) {
      m.comm_seconds = reducer->last_stats().comm_seconds;
      m.comm_exposed_seconds = reducer->last_stats().exposed_seconds;
      if (step > 0) {
        comm_total += m.comm_seconds;
        exposed_total += m.comm_exposed_seconds;
      }
    }
    if (checkpointer) {
      m.checkpoint_stall_seconds = checkpointer->stats().total_stall_seconds;
      m.checkpoints_committed = checkpointer->stats().committed;
    }
    if (options.on_step) options.on_step(m);

    const bool last = step + 1 == spec.train.steps;
    if ((step + 1) % spec.train.log_interval == 0 || step == 0 || last) {
      progress.Clear();
      COHORT_LOG_INFO(
          "step {:>6}/{} | loss {:.4f} | lr {:.3e} | norm {:.3f} | {:.1f} ms | data {:.2f} ms | "
          "{:.0f} tok/s{}",
          m.step, m.total_steps, m.loss, m.lr, m.grad_norm, 1e3 * step_seconds,
          1e3 * data_seconds, m.tokens_per_second,
          reducer ? fmt::format(" | comm {:.1f} ms ({:.1f} exposed)", 1e3 * m.comm_seconds,
                                1e3 * m.comm_exposed_seconds)
                  : std::string());
    }
    if (options.progress && ranks.rank == 0) {
      const double rate = timed_seconds > 0 ? timed_tokens / timed_seconds : m.tokens_per_second;
      const double eta = (spec.train.steps - m.step) * tokens_per_step / rate;
      progress.Draw(m.step, m.total_steps, loss, rate, eta);
    }
    if (checkpointer) {
      const int64_t done = step + 1;
      if (spec.checkpoint.interval > 0 && done % spec.checkpoint.interval == 0 && !last && !stop_all) {
        const int64_t skipped = checkpointer->stats().skipped;
        RETURN_IF_ERROR(save(done, loader->state()));
        // A save skipped while busy (checkpoint.on_busy: skip) is not saved: the final save at a
        // stop right after it must still happen.
        if (checkpointer->stats().skipped == skipped) last_saved = done;
      }
      RETURN_IF_ERROR(checkpointer->Poll());
    }
    if (val_data && !last && !stop_all && spec.train.eval_interval > 0 &&
        (step + 1) % spec.train.eval_interval == 0) {
      auto v = run_eval(step + 1);
      if (!v.ok() && !interrupted(v.status())) return v.status();
    }
  }
  summary.steps = step;
  summary.interrupted = step < spec.train.steps;
  summary.data_state = abandoned_state ? *abandoned_state : loader->state();
  summary.data_wait_seconds = loader->total_wait_seconds();
  loader.reset();  // stop the readers before the (possibly long) final evaluation
  if (checkpointer) {
    // The end of the run, or a stop (preemption): the last completed step is saved and committed
    // before Train returns, so a requeued job continues from here.
    if (step > last_saved) RETURN_IF_ERROR(save(step, summary.data_state, /*final=*/true));
    Status fin = checkpointer->Finish();
    const CheckpointStats& cs = checkpointer->stats();
    summary.checkpoints_committed = cs.committed;
    summary.checkpoint_stall_seconds = cs.total_stall_seconds;
    summary.last_checkpoint_step = cs.last_committed_step;
    if (!fin.ok()) return fin.WithContext("checkpoint");
    COHORT_LOG_INFO("checkpoints: {} committed ({} skipped while busy), training stalled {:.1f} ms in all for "
                    "them; the last is step {}",
                    cs.committed, cs.skipped, 1e3 * cs.total_stall_seconds, cs.last_committed_step);
  }
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
  summary.param_l2 = std::sqrt(kernels::SumOfSquares(gpt->params(), n));
  summary.param_crc32c = Crc32c(gpt->params(), n * sizeof(float));
  if (options.final_params != nullptr) {
    options.final_params->assign(gpt->params(), gpt->params() + n);
  }
  const double wall = Seconds(start, Clock::now());
  COHORT_LOG_INFO("done: {} steps in {:.1f} s, {:.0f} tok/s, data wait {:.2f} s ({:.2f}%), data "
                  "state {}{}{}",
                  step, wall, summary.tokens_per_second, summary.data_wait_seconds,
                  wall > 0 ? 100.0 * summary.data_wait_seconds / wall : 0.0,
                  data::ToString(summary.data_state),
                  val_data && !summary.interrupted
                      ? fmt::format(", val loss {:.4f} -> {:.4f}", summary.initial_val_loss,
                                    summary.final_val_loss)
                      : std::string(),
                  comm_total > 0 ? fmt::format(", {:.0f}% of gradient communication hidden "
                                               "behind backward",
                                               std::max(0.0, 100.0 * (1.0 - exposed_total / comm_total)))
                                 : std::string());
  return summary;
}

}  // namespace

Result<TrainSummary> Train(const config::JobSpec& spec, const TrainOptions& options) {
  Result<TrainSummary> result = TrainOnThisRank(spec, options);
  if (!result.ok() && options.comm != nullptr && options.comm->size() > 1) {
    // The peers may be waiting in a collective this rank will never join (a data file missing on
    // this node, a bad token id in its shard...): release them now, not at their deadline.
    options.comm->Abort(result.status().ToString());
  }
  return result;
}

}  // namespace cohort::worker
