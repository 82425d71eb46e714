#include "dataloader/loader.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <system_error>

#include "common/check.h"

namespace cohort::data {
namespace {

// Reads this rank's B rows of the global batch at `start` into inputs and targets; idx is
// caller-owned scratch (B indexes) so the reader threads allocate nothing per batch. The samples a
// few rows ahead are prefetched: each lies at a random place, so reading them one after another
// would start every row with a full memory (or page-cache) latency.
// With `rows` set (Layout::kStoredRows) the samples go there as stored, else to inputs and targets.
Status FillRows(const SampleSource& source, const GlobalSampler& sampler, uint64_t start, int world,
                int rank, std::span<uint64_t> idx, int32_t* inputs, int32_t* targets,
                std::atomic<uint64_t>* reading = nullptr, unsigned char* rows = nullptr) {
  constexpr size_t kAhead = 2;  // measured: 0, 1, 2, 4, 8 rows ahead; 0 is 25% slower, the rest within noise
  const size_t T = static_cast<size_t>(source.seq_len());
  sampler.RankSlice(start, world, rank, idx);
  for (size_t b = 0; b < std::min(kAhead, idx.size()); ++b) source.Prefetch(idx[b]);
  for (size_t b = 0; b < idx.size(); ++b) {
    if (b + kAhead < idx.size()) source.Prefetch(idx[b + kAhead]);
    if (reading != nullptr) reading->store(idx[b], std::memory_order_relaxed);
    const Status st = rows != nullptr
                          ? source.ReadStored(idx[b], rows + b * (T + 1) * static_cast<size_t>(source.stored_width()))
                          : source.ReadRow(idx[b], inputs + b * T, targets + b * T);
    if (reading != nullptr) reading->store(UINT64_MAX, std::memory_order_relaxed);
    RETURN_IF_ERROR(st);
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
  return FillRows(source, sampler, start, world, rank, idx, inputs.data(), targets.data());
}

namespace {

// One cache line: atomics written by different threads are kept on lines of their own, or every
// write of one moves the line away from the other threads that use theirs (false sharing).
constexpr size_t kLine = 64;

// One buffer of the ring. Batch b uses slot b % depth; `done` = b + 1 once batch b is settled
// (read, or failed with `error`): the release store publishes the rows (or the error) to the
// consumer's acquire load. Slots are filled by different readers, hence a line each.
struct alignas(kLine) Slot {
  std::vector<int32_t> inputs, targets;  // Layout::kPairs
  std::vector<unsigned char> rows;       // Layout::kStoredRows
  std::atomic<uint64_t> done{0};
  bool failed = false;
  Status error;
};

constexpr uint64_t kIdle = UINT64_MAX;

// The sample a reader is reading: each reader stores it twice per sample.
struct alignas(kLine) ReadingSlot {
  std::atomic<uint64_t> index{kIdle};
};

}  // namespace

// The hot path takes no lock: readers claim batches with an atomic counter and may fill batch b
// once the consumer has handed back batch b - depth (`released`); the consumer sees a batch
// through its slot's `done`. The mutex and condition variables are only for sleeping, and a side
// wakes the other only when it announced that it sleeps (`consumer_sleeping`, `readers_sleeping`;
// the announcement and the state it waits for are sequentially consistent, so a wake-up cannot be
// missed). On this VM a contended mutex or a futex wake costs 10-20 us, longer than reading a
// whole batch, so a lock per batch made synchronization most of the loader's time.
struct DataLoader::Shared {
  Shared(std::shared_ptr<const SampleSource> src, const LoaderOptions& o)
      : source(std::move(src)),
        options(o),
        sampler(source->num_samples(), o.start.seed, o.shuffle),
        T(source->seq_len()),
        global_batch(static_cast<uint64_t>(o.world) * static_cast<uint64_t>(o.batch_size)),
        first_position(sampler.Position(o.start)),
        reading(static_cast<size_t>(o.threads)) {}

  const std::shared_ptr<const SampleSource> source;
  const LoaderOptions options;
  const GlobalSampler sampler;
  const int T;
  const uint64_t global_batch;  // world * batch_size positions per batch
  const uint64_t first_position;
  std::vector<std::unique_ptr<Slot>> slots;

  // Lines apart by who writes them (measured: with these and `reading` packed together, the
  // loader ran at ~75% of the same reads done without a consumer).
  alignas(kLine) std::atomic<uint64_t> next_to_claim{0};  // batch sequence number the next reader takes (readers)
  alignas(kLine) std::atomic<uint64_t> released{0};       // batches [0, released) handed back (consumer)
  alignas(kLine) std::atomic<bool> consumer_sleeping{false};  // (consumer, when it sleeps)
  std::atomic<uint64_t> waiting_for{0};                   // the batch a sleeping consumer waits for
  alignas(kLine) std::atomic<int> readers_sleeping{0};    // (readers, when they sleep)
  alignas(kLine) std::atomic<bool> stop{false};           // (rarely written; the sleeping state below
  std::atomic<bool> failed{false};                        // shares their line, used only around sleeps)

  std::mutex mu;
  std::condition_variable ready_cv;  // a batch settled, or stop / error
  std::condition_variable free_cv;   // a batch was handed back, or stop / error
  std::condition_variable exit_cv;   // a reader thread ended
  Status error;                      // the first failure, sticky (under mu)
  uint64_t error_batch = UINT64_MAX;
  int running = 0;                   // reader threads that have not ended (under mu)
  // The sample each reader is reading (kIdle when none), for the message when one is stuck.
  std::vector<ReadingSlot> reading;

  bool Ending() const {
    return stop.load(std::memory_order_acquire) || failed.load(std::memory_order_acquire);
  }
  bool Settled(uint64_t b) const {
    return slots[b % slots.size()]->done.load(std::memory_order_acquire) == b + 1;
  }
  // After a reader published a batch: wakes a sleeping consumer once the batch it waits for and the
  // `refill` - 1 after it are all ready (`eager`: once its own batch is, e.g. before the reader
  // sleeps), so a trainer faster than the readers is woken once per few batches.
  void WakeConsumer(bool eager) {
    if (!consumer_sleeping.load()) return;
    const uint64_t w = waiting_for.load();
    const uint64_t n = eager ? 1 : refill;
    // Sequentially consistent loads: two readers publishing the last two missing batches at once
    // must not both miss the other's store (each sees its own first), or neither would wake the
    // consumer, which would then only notice at its next poll. (Free on x86.)
    for (uint64_t k = 0; k < n; ++k) {
      if (slots[(w + k) % slots.size()]->done.load() != w + k + 1) return;
    }
    { std::lock_guard<std::mutex> lk(mu); }
    ready_cv.notify_one();
  }
  // Sleeping readers wake when this many buffers are free: half the ring.
  uint64_t refill = 1;

  void WakeReaders() {
    if (readers_sleeping.load() > 0 &&
        next_to_claim.load() + refill <= released.load(std::memory_order_relaxed) + slots.size()) {
      { std::lock_guard<std::mutex> lk(mu); }
      free_cv.notify_all();
    }
  }
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
  // The stream position epoch * samples + cursor must fit 64 bits with room to read on (2^63).
  if (o.start.epoch > ((uint64_t{1} << 63) - o.start.cursor) / source->num_samples()) {
    return InvalidArgument("dataloader: data state epoch " + std::to_string(o.start.epoch) +
                           " is beyond what a stream of " + std::to_string(source->num_samples()) +
                           " samples per epoch can count (a damaged data state?)");
  }
  auto shared = std::make_shared<Shared>(std::move(source), o);
  const size_t B = static_cast<size_t>(o.batch_size), T = static_cast<size_t>(shared->T);
  const int width = shared->source->stored_width();
  if (o.layout == Layout::kStoredRows && width != 2 && width != 4) {
    return InvalidArgument("dataloader: " + shared->source->kind() + " store " + std::to_string(width) +
                           "-byte tokens; the stored-rows layout takes 2 or 4");
  }
  for (int i = 0; i < o.depth; ++i) {
    auto slot = std::make_unique<Slot>();
    if (o.layout == Layout::kStoredRows) {
      slot->rows.resize(B * (T + 1) * static_cast<size_t>(width));
    } else {
      slot->inputs.resize(B * T);
      slot->targets.resize(B * T);
    }
    shared->slots.push_back(std::move(slot));
  }
  shared->refill = std::max<uint64_t>(1, shared->slots.size() / 2);
  std::unique_ptr<DataLoader> loader(new DataLoader(std::move(shared)));
  RETURN_IF_ERROR(loader->Start());
  return loader;
}

DataLoader::DataLoader(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}

Status DataLoader::Start() {
  const int n = shared_->options.threads;
  {
    std::lock_guard<std::mutex> lk(shared_->mu);
    shared_->running = n;
  }
  for (int t = 0; t < n; ++t) {
    try {
      threads_.emplace_back([s = shared_, t] { ReaderLoop(s, t); });
    } catch (const std::system_error& e) {
      // Out of threads (e.g. the process limit): the ones started stop, and the caller hears why.
      {
        std::lock_guard<std::mutex> lk(shared_->mu);
        shared_->running -= n - t;
      }
      Stop();
      return Status(Code::kUnavailable, "dataloader: cannot start reader thread " + std::to_string(t + 1) + " of " +
                               std::to_string(n) + ": " + e.what());
    }
  }
  return Status::Ok();
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
    shared_->stop.store(true);
  }
  shared_->free_cv.notify_all();
  shared_->ready_cv.notify_all();
}

void DataLoader::ReaderLoop(std::shared_ptr<Shared> sp, int thread_index) {
  Shared& s = *sp;
  std::vector<uint64_t> idx(static_cast<size_t>(s.options.batch_size));
  const uint64_t depth = s.slots.size();
  std::atomic<uint64_t>& reading = s.reading[static_cast<size_t>(thread_index)].index;
  // After an error nothing new is claimed: the failed batch is the last one the consumer gets to.
  while (!s.Ending()) {
    uint64_t b = s.next_to_claim.load();
    if (b >= s.released.load() + depth) {
      // Batch b's buffer still holds batch b - depth, which the consumer has not handed back.
      // Sleep until a few buffers are free (s.refill), not just one, so that a reader faster than
      // the trainer sleeps and wakes once per few batches rather than once per batch.
      s.WakeConsumer(/*eager=*/true);
      std::unique_lock<std::mutex> lk(s.mu);
      s.readers_sleeping.fetch_add(1);
      s.free_cv.wait(lk, [&] {
        return s.Ending() || s.next_to_claim.load() + s.refill <= s.released.load() + depth;
      });
      s.readers_sleeping.fetch_sub(1);
      continue;
    }
    if (!s.next_to_claim.compare_exchange_weak(b, b + 1)) continue;
    Slot& slot = *s.slots[b % depth];
    Status st = FillRows(*s.source, s.sampler, s.first_position + b * s.global_batch, s.options.world,
                         s.options.rank, idx, slot.inputs.data(), slot.targets.data(), &reading,
                         slot.rows.empty() ? nullptr : slot.rows.data());
    if (!st.ok()) {
      std::lock_guard<std::mutex> lk(s.mu);
      slot.failed = true;
      slot.error = st;
      if (b < s.error_batch) {
        s.error_batch = b;
        s.error = st;
      }
      s.failed.store(true);
      slot.done.store(b + 1);
      s.free_cv.notify_all();  // other readers stop claiming
      s.ready_cv.notify_all();
      break;
    }
    slot.done.store(b + 1);  // seq_cst: ordered before WakeConsumer's load (see Shared)
    s.WakeConsumer(/*eager=*/false);
  }
  s.WakeConsumer(/*eager=*/true);
  std::lock_guard<std::mutex> lk(s.mu);
  --s.running;
  s.exit_cv.notify_all();
}

Result<Batch> DataLoader::Next() {
  Shared& s = *shared_;
  const uint64_t depth = s.slots.size();
  const uint64_t b = delivered_;
  if (b > 0 && s.released.load(std::memory_order_relaxed) < b) {
    s.released.store(b);  // hands batch b - 1's buffer back
    s.WakeReaders();
  }
  Slot& slot = *s.slots[b % depth];
  auto settled = [&] { return s.Settled(b); };
  // No spinning for a batch that is not ready: the spin would take a core from the readers (two
  // cores here), and when training, a sleep's 10-20 us are nothing against a step.
  bool ready = settled();
  std::unique_lock<std::mutex> lk(s.mu, std::defer_lock);
  last_wait_ = 0;  // a batch that is ready costs no wait: the clock is read only when it is not
  if (!ready || s.Ending()) {
    const auto t0 = std::chrono::steady_clock::now();
    lk.lock();
    s.waiting_for.store(b);
    s.consumer_sleeping.store(true);
    // Orders the store above before the loads of `done` below (Settled's loads are only acquire):
    // with the reader's seq_cst store of `done` and load of `consumer_sleeping`, one side always
    // sees the other, so a wake-up cannot be missed.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // A failure of a later batch does not end this wait: every batch before it was claimed and
    // will be delivered (the error comes at its own batch). Readers wake this wait once a few
    // batches are ready (WakeConsumer); it also looks on its own after 1, 2, 4 .. 64 ms, in case
    // the batches after this one are held up by a slow read (so that costs at most about as long
    // again as the wait had lasted, or 64 ms).
    const auto deadline = t0 + s.options.timeout;
    auto done = [&] { return s.stop.load() || (s.failed.load() && s.error_batch <= b) || settled(); };
    auto poll = std::chrono::milliseconds(1);
    while (!(ready = done())) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) break;
      s.ready_cv.wait_until(lk, std::min(deadline, now + poll));
      poll = std::min(poll * 2, std::chrono::milliseconds(64));
    }
    s.consumer_sleeping.store(false);
    last_wait_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    total_wait_ += last_wait_;
  }
  if (lk.owns_lock()) {
    if (!ready) {
      // Nothing arrived in time: a reader is stuck in storage. Name where, and stop for good.
      std::string where;
      for (size_t t = 0; t < s.reading.size(); ++t) {
        const uint64_t i = s.reading[t].index.load();
        if (i == kIdle) continue;
        where += (where.empty() ? "" : "; ") + std::string("reader ") + std::to_string(t) + " is reading " +
                 s.source->Locate(i);
      }
      char secs[32];
      std::snprintf(secs, sizeof secs, "%.1f", static_cast<double>(s.options.timeout.count()) / 1000.0);
      s.error = Status(Code::kDeadlineExceeded,
                       std::string("no batch after ") + secs + " s (" +
                           (where.empty() ? "no read in progress" : where) + "): is the storage stalled?");
      s.error_batch = b;
      s.failed.store(true);
      s.free_cv.notify_all();
      return s.error;
    }
    // Sticky: nothing moves past the first failed batch, whatever happened since.
    if (!s.error.ok() && s.error_batch <= b) return s.error;
    if (settled() && slot.failed) return slot.error;
    if (s.stop.load()) return Cancelled("dataloader stopped");
  }
  ++delivered_;
  Batch batch;
  batch.inputs = slot.inputs;
  batch.targets = slot.targets;
  batch.rows = slot.rows;
  if (!slot.rows.empty()) batch.token_width = s.source->stored_width();
  batch.position = s.first_position + b * s.global_batch;
  return batch;
}

DataState DataLoader::state() const {
  // Only the consumer changes delivered_, and only the consumer calls this.
  return shared_->sampler.StateAt(shared_->first_position + delivered_ * shared_->global_batch);
}

}  // namespace cohort::data
