#include "dataloader/loader.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "common/check.h"

namespace cohort::data {
namespace {

// Reads this rank's B rows of the global batch at `start`: idx and sample are caller-owned scratch
// (B indexes, T+1 tokens) so the reader threads allocate nothing per batch.
Status FillRows(const SampleSource& source, const GlobalSampler& sampler, uint64_t start, int world,
                int rank, std::span<uint64_t> idx, std::span<int32_t> sample, int32_t* inputs,
                int32_t* targets, std::atomic<uint64_t>* reading = nullptr) {
  const size_t T = static_cast<size_t>(source.seq_len());
  sampler.RankSlice(start, world, rank, idx);
  for (size_t b = 0; b < idx.size(); ++b) {
    // Rows but the last are read in place: the sample's extra token spills into the next row's
    // first element, which that row's own read overwrites. The targets are the row shifted by one.
    const bool last = b + 1 == idx.size();
    int32_t* row = last ? sample.data() : inputs + b * T;
    if (reading != nullptr) reading->store(idx[b], std::memory_order_relaxed);
    const Status st = source.Read(idx[b], row);
    if (reading != nullptr) reading->store(UINT64_MAX, std::memory_order_relaxed);
    RETURN_IF_ERROR(st);
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

namespace {

enum class SlotState { kFree, kFilling, kReady, kFailed };

struct Slot {
  std::vector<int32_t> inputs, targets;
  // Written under Shared::mu; also read without it by the consumer's short spin in Next().
  std::atomic<SlotState> state{SlotState::kFree};
  Status error;
};

bool Settled(const Slot& slot) {
  const SlotState st = slot.state.load(std::memory_order_acquire);
  return st == SlotState::kReady || st == SlotState::kFailed;
}

constexpr uint64_t kIdle = UINT64_MAX;

}  // namespace

struct DataLoader::Shared {
  Shared(std::shared_ptr<const SampleSource> src, const LoaderOptions& o)
      : source(std::move(src)),
        options(o),
        sampler(source->num_samples(), o.start.seed, o.shuffle),
        T(source->seq_len()),
        global_batch(static_cast<uint64_t>(o.world) * static_cast<uint64_t>(o.batch_size)),
        first_position(sampler.Position(o.start)),
        reading(static_cast<size_t>(o.threads)) {
    for (auto& r : reading) r.store(kIdle);
  }

  const std::shared_ptr<const SampleSource> source;
  const LoaderOptions options;
  const GlobalSampler sampler;
  const int T;
  const uint64_t global_batch;  // world * batch_size positions per batch
  const uint64_t first_position;

  std::mutex mu;
  std::condition_variable ready_cv;  // a slot became ready (or failed)
  std::condition_variable free_cv;   // a slot was handed back, or stop
  std::condition_variable exit_cv;   // a reader thread ended
  std::vector<std::unique_ptr<Slot>> slots;
  uint64_t next_to_claim = 0;  // batch sequence number the next idle reader takes
  uint64_t next_to_deliver = 0;
  bool holding = false;  // the consumer holds batch next_to_deliver - 1
  bool stop = false;
  Status error;          // the first read error (sticky)
  uint64_t error_batch = UINT64_MAX;
  int running = 0;       // reader threads that have not ended
  // The sample each reader is reading (kIdle when none), for the message when one is stuck.
  std::vector<std::atomic<uint64_t>> reading;
};

Result<std::unique_ptr<DataLoader>> DataLoader::Create(std::shared_ptr<const SampleSource> source,
                                                       const LoaderOptions& o) {
  if (source == nullptr) return InvalidArgument("dataloader: no source");
  if (o.batch_size < 1) return InvalidArgument("dataloader: batch size must be >= 1");
  if (o.world < 1 || o.rank < 0 || o.rank >= o.world) {
    return InvalidArgument("dataloader: rank " + std::to_string(o.rank) + " of " + std::to_string(o.world));
  }
  if (o.depth < 1 || o.depth > 1024) return InvalidArgument("dataloader: prefetch depth must be in [1, 1024]");
  if (o.threads < 1 || o.threads > 256) return InvalidArgument("dataloader: reader threads must be in [1, 256]");
  if (o.timeout.count() < 1) return InvalidArgument("dataloader: timeout must be at least 1 ms");
  if (o.start.cursor >= source->num_samples()) {
    return InvalidArgument("dataloader: data state cursor " + std::to_string(o.start.cursor) +
                           " is beyond the dataset's " + std::to_string(source->num_samples()) +
                           " samples (the data changed since the state was saved?)");
  }
  auto shared = std::make_shared<Shared>(std::move(source), o);
  const size_t rows = static_cast<size_t>(o.batch_size) * static_cast<size_t>(shared->T);
  for (int i = 0; i < o.depth; ++i) {
    auto slot = std::make_unique<Slot>();
    slot->inputs.resize(rows);
    slot->targets.resize(rows);
    shared->slots.push_back(std::move(slot));
  }
  return std::unique_ptr<DataLoader>(new DataLoader(std::move(shared)));
}

DataLoader::DataLoader(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {
  shared_->running = shared_->options.threads;
  for (int t = 0; t < shared_->options.threads; ++t) {
    threads_.emplace_back([s = shared_, t] { ReaderLoop(s, t); });
  }
}

DataLoader::~DataLoader() {
  Stop();
  // Readers blocked on a full ring end at once; one inside a storage read ends after that read.
  // One whose read does not return within a grace period is left behind: it co-owns the shared
  // state (and the source), so it can finish later without touching freed memory.
  bool all_ended = false;
  {
    std::unique_lock<std::mutex> lk(shared_->mu);
    all_ended = shared_->exit_cv.wait_for(lk, std::chrono::seconds(2), [&] { return shared_->running == 0; });
  }
  for (auto& t : threads_) {
    if (all_ended) {
      t.join();
    } else {
      t.detach();
    }
  }
}

void DataLoader::Stop() {
  {
    std::lock_guard<std::mutex> lk(shared_->mu);
    shared_->stop = true;
  }
  shared_->free_cv.notify_all();
  shared_->ready_cv.notify_all();
}

void DataLoader::ReaderLoop(std::shared_ptr<Shared> sp, int thread_index) {
  Shared& s = *sp;
  std::vector<uint64_t> idx(static_cast<size_t>(s.options.batch_size));
  std::vector<int32_t> sample(static_cast<size_t>(s.T) + 1);
  const size_t depth = s.slots.size();
  std::atomic<uint64_t>& reading = s.reading[static_cast<size_t>(thread_index)];
  std::unique_lock<std::mutex> lk(s.mu);
  for (;;) {
    // Claim the next batch once its slot has been handed back (batch b uses slot b % depth, free
    // again when the consumer has moved past batch b - depth). After an error nothing new is read:
    // the failed batch is the last one the consumer can get to.
    s.free_cv.wait(lk, [&] {
      return s.stop || !s.error.ok() || s.slots[s.next_to_claim % depth]->state == SlotState::kFree;
    });
    if (s.stop || !s.error.ok()) break;
    const uint64_t b = s.next_to_claim++;
    Slot& slot = *s.slots[b % depth];
    slot.state = SlotState::kFilling;
    lk.unlock();
    Status st = FillRows(*s.source, s.sampler, s.first_position + b * s.global_batch, s.options.world,
                         s.options.rank, idx, sample, slot.inputs.data(), slot.targets.data(), &reading);
    lk.lock();
    if (slot.state != SlotState::kFilling) {
      // The consumer gave up on this batch (timeout) while the read was stuck: leave its verdict.
    } else if (st.ok()) {
      slot.state = SlotState::kReady;
    } else {
      slot.state = SlotState::kFailed;
      slot.error = st;
      if (b < s.error_batch) {
        s.error_batch = b;
        s.error = st;
      }
      s.free_cv.notify_all();  // other readers stop claiming
    }
    s.ready_cv.notify_all();
  }
  --s.running;
  s.exit_cv.notify_all();
}

Result<Batch> DataLoader::Next() {
  Shared& s = *shared_;
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lk(s.mu);
  const size_t depth = s.slots.size();
  if (s.holding) {
    s.slots[(s.next_to_deliver - 1) % depth]->state = SlotState::kFree;
    s.holding = false;
    s.free_cv.notify_all();
  }
  Slot& slot = *s.slots[s.next_to_deliver % depth];
  // A batch that is nearly ready is waited for by spinning a few microseconds first: sleeping on
  // the condition variable costs two futex system calls, expensive on virtual machines (~20 us a
  // batch here), more than most such waits last.
  if (!Settled(slot)) {
    lk.unlock();
    const auto spin_until = t0 + std::chrono::microseconds(30);
    while (!Settled(slot) && std::chrono::steady_clock::now() < spin_until) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    lk.lock();
  }
  const bool settled = s.ready_cv.wait_until(lk, t0 + s.options.timeout, [&] {
    return s.stop || Settled(slot);
  });
  last_wait_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  total_wait_ += last_wait_;
  if (!settled) {
    // Nothing arrived in time: a reader is stuck in storage. Name where, and stop for good.
    std::string where;
    for (size_t t = 0; t < s.reading.size(); ++t) {
      const uint64_t i = s.reading[t].load();
      if (i == kIdle) continue;
      where += (where.empty() ? "" : "; ") + std::string("reader ") + std::to_string(t) + " is reading " +
               s.source->Locate(i);
    }
    char secs[32];
    std::snprintf(secs, sizeof secs, "%.1f", static_cast<double>(s.options.timeout.count()) / 1000.0);
    s.error = Status(Code::kDeadlineExceeded,
                     std::string("no batch after ") + secs + " s (" +
                         (where.empty() ? "no read in progress" : where) + "): is the storage stalled?");
    s.error_batch = s.next_to_deliver;
    s.stop = true;
    s.free_cv.notify_all();
    slot.error = s.error;
    slot.state = SlotState::kFailed;  // sticky, like a read error
    return s.error;
  }
  // Sticky: nothing moves past the first failed batch, whatever happened since.
  if (!s.error.ok() && s.error_batch <= s.next_to_deliver) return s.error;
  if (slot.state == SlotState::kFailed) return slot.error;
  if (s.stop) return Cancelled("dataloader stopped");
  const uint64_t b = s.next_to_deliver++;
  s.holding = true;
  ++delivered_;
  Batch batch;
  batch.inputs = slot.inputs;
  batch.targets = slot.targets;
  batch.position = s.first_position + b * s.global_batch;
  return batch;
}

DataState DataLoader::state() const {
  // Only the consumer changes delivered_, and only the consumer calls this.
  return shared_->sampler.StateAt(shared_->first_position + delivered_ * shared_->global_batch);
}

}  // namespace cohort::data
