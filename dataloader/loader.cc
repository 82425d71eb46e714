#include "dataloader/loader.h"

#include <atomic>
#include <chrono>
#include <cstring>

#include "common/check.h"

namespace cohort::data {
namespace {

// Reads this rank's B rows of the global batch at `start`: idx and sample are caller-owned scratch
// (B indexes, T+1 tokens) so the reader threads allocate nothing per batch.
Status FillRows(const SampleSource& source, const GlobalSampler& sampler, uint64_t start, int world,
                int rank, std::span<uint64_t> idx, std::span<int32_t> sample, int32_t* inputs,
                int32_t* targets) {
  const size_t T = static_cast<size_t>(source.seq_len());
  sampler.RankSlice(start, world, rank, idx);
  for (size_t b = 0; b < idx.size(); ++b) {
    // Rows but the last are read in place: the sample's extra token spills into the next row's
    // first element, which that row's own read overwrites. The targets are the row shifted by one.
    const bool last = b + 1 == idx.size();
    int32_t* row = last ? sample.data() : inputs + b * T;
    RETURN_IF_ERROR(source.Read(idx[b], row));
    if (last) std::memcpy(inputs + b * T, row, T * sizeof(int32_t));
    std::memcpy(targets + b * T, row + 1, T * sizeof(int32_t));
  }
  return Status::Ok();
}

}  // namespace

Status ReadRows(const SampleSource& source, const GlobalSampler& sampler, uint64_t start, int world,
                int rank, std::span<int32_t> inputs, std::span<int32_t> targets) {
  const size_t T = static_cast<size_t>(source.seq_len());
  COHORT_CHECK(inputs.size() == targets.size() && inputs.size() % T == 0 && !inputs.empty())
      << "batch spans of " << inputs.size() << " and " << targets.size() << " for T=" << T;
  std::vector<uint64_t> idx(inputs.size() / T);
  std::vector<int32_t> sample(T + 1);
  return FillRows(source, sampler, start, world, rank, idx, sample, inputs.data(), targets.data());
}

struct DataLoader::Slot {
  enum class State { kFree, kFilling, kReady, kFailed };
  std::vector<int32_t> inputs, targets;
  // Written under mu_; also read without it by the consumer's short spin in Next().
  std::atomic<State> state{State::kFree};
  Status error;
};

bool DataLoader::SlotSettled(const Slot& slot) const {
  const Slot::State st = slot.state.load(std::memory_order_acquire);
  return st == Slot::State::kReady || st == Slot::State::kFailed;
}

Result<std::unique_ptr<DataLoader>> DataLoader::Create(std::shared_ptr<const SampleSource> source,
                                                       const LoaderOptions& o) {
  if (source == nullptr) return InvalidArgument("dataloader: no source");
  if (o.batch_size < 1) return InvalidArgument("dataloader: batch size must be >= 1");
  if (o.world < 1 || o.rank < 0 || o.rank >= o.world) {
    return InvalidArgument("dataloader: rank " + std::to_string(o.rank) + " of " + std::to_string(o.world));
  }
  if (o.depth < 1 || o.depth > 1024) return InvalidArgument("dataloader: prefetch depth must be in [1, 1024]");
  if (o.threads < 1 || o.threads > 256) return InvalidArgument("dataloader: reader threads must be in [1, 256]");
  if (o.start.cursor >= source->num_samples()) {
    return InvalidArgument("dataloader: data state cursor " + std::to_string(o.start.cursor) +
                           " is beyond the dataset's " + std::to_string(source->num_samples()) +
                           " samples (the data changed since the state was saved?)");
  }
  return std::unique_ptr<DataLoader>(new DataLoader(std::move(source), o));
}

DataLoader::DataLoader(std::shared_ptr<const SampleSource> source, const LoaderOptions& options)
    : source_(std::move(source)),
      options_(options),
      sampler_(source_->num_samples(), options.start.seed, options.shuffle),
      T_(source_->seq_len()),
      global_batch_(static_cast<uint64_t>(options.world) * static_cast<uint64_t>(options.batch_size)),
      first_position_(sampler_.Position(options.start)) {
  const size_t rows = static_cast<size_t>(options.batch_size) * static_cast<size_t>(T_);
  for (int i = 0; i < options.depth; ++i) {
    auto slot = std::make_unique<Slot>();
    slot->inputs.resize(rows);
    slot->targets.resize(rows);
    slots_.push_back(std::move(slot));
  }
  for (int t = 0; t < options.threads; ++t) threads_.emplace_back([this, t] { ReaderLoop(t); });
}

DataLoader::~DataLoader() {
  Stop();
  for (auto& t : threads_) t.join();
}

void DataLoader::Stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  free_cv_.notify_all();
  ready_cv_.notify_all();
}

void DataLoader::ReaderLoop(int thread_index) {
  (void)thread_index;
  std::vector<uint64_t> idx(static_cast<size_t>(options_.batch_size));
  std::vector<int32_t> sample(static_cast<size_t>(T_) + 1);
  const size_t depth = slots_.size();
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    // Claim the next batch once its slot has been handed back (batch b uses slot b % depth, free
    // again when the consumer has moved past batch b - depth). After an error nothing new is read:
    // the failed batch is the last one the consumer can get to.
    free_cv_.wait(lk, [&] {
      return stop_ || !error_.ok() || slots_[next_to_claim_ % depth]->state == Slot::State::kFree;
    });
    if (stop_ || !error_.ok()) return;
    const uint64_t b = next_to_claim_++;
    Slot& slot = *slots_[b % depth];
    slot.state = Slot::State::kFilling;
    lk.unlock();
    Status s = FillRows(*source_, sampler_, first_position_ + b * global_batch_, options_.world,
                        options_.rank, idx, sample, slot.inputs.data(), slot.targets.data());
    lk.lock();
    if (s.ok()) {
      slot.state = Slot::State::kReady;
    } else {
      slot.state = Slot::State::kFailed;
      slot.error = s;
      if (b < error_batch_) {
        error_batch_ = b;
        error_ = s;
      }
      free_cv_.notify_all();  // other readers stop claiming
    }
    ready_cv_.notify_all();
  }
}

Result<Batch> DataLoader::Next() {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lk(mu_);
  const size_t depth = slots_.size();
  if (holding_) {
    slots_[(next_to_deliver_ - 1) % depth]->state = Slot::State::kFree;
    holding_ = false;
    free_cv_.notify_all();
  }
  Slot& slot = *slots_[next_to_deliver_ % depth];
  // A batch that is nearly ready is waited for by spinning a few microseconds first: sleeping on
  // the condition variable costs two futex system calls, expensive on virtual machines (~20 us a
  // batch here), more than most such waits last.
  if (!SlotSettled(slot)) {
    lk.unlock();
    const auto spin_until = t0 + std::chrono::microseconds(30);
    while (!SlotSettled(slot) && std::chrono::steady_clock::now() < spin_until) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    lk.lock();
  }
  ready_cv_.wait(lk, [&] {
    return stop_ || slot.state == Slot::State::kReady || slot.state == Slot::State::kFailed;
  });
  last_wait_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  total_wait_ += last_wait_;
  if (slot.state == Slot::State::kFailed) return slot.error;  // sticky: nothing moves past it
  if (stop_) return Cancelled("dataloader stopped");
  const uint64_t b = next_to_deliver_++;
  holding_ = true;
  ++delivered_;
  Batch batch;
  batch.inputs = slot.inputs;
  batch.targets = slot.targets;
  batch.position = first_position_ + b * global_batch_;
  return batch;
}

DataState DataLoader::state() const {
  // Only the consumer changes delivered_, and only the consumer calls this.
  return sampler_.StateAt(first_position_ + delivered_ * global_batch_);
}

}  // namespace cohort::data
