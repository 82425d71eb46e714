// The training dataloader of one rank: background threads read this rank's slice of the next
// global batches (sampler.h) from a SampleSource into a bounded ring of reusable buffers, so the
// trainer finds its batch ready.
//
// Batches are delivered strictly in stream order. Each micro-step's batch is the next global batch
// of world * batch_size positions; this rank's rows are positions [start + rank*B, start +
// (rank+1)*B). Memory is fixed at Create: `depth` buffers of 2 * B * T int32 (inputs and targets;
// or B * (T+1) stored tokens, see Layout) plus B sample indexes per thread; nothing is allocated per batch.
//
// Errors: the first read error (naming the file, offset or element) stops the readers and is
// returned by Next() for the batch that failed — the trainer gets it as soon as it needs that
// batch (at most `depth` batches after the failure happened), never a skipped sample. A read that
// does not return at all (stalled storage) ends Next() after `timeout` with DeadlineExceeded
// naming where the reader is stuck, so the trainer never hangs on data. Stop() ends the readers
// promptly even when they are blocked waiting for a free buffer; destruction waits briefly for a
// thread inside a storage read and then leaves it behind (detached) rather than hang.
//
// Thread safety: Next(), state(), and the statistics are for one consumer thread; Stop() may be
// called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "common/status.h"
#include "dataloader/sampler.h"
#include "dataloader/source.h"

namespace cohort::data {

// How a batch's tokens are handed over.
enum class Layout {
  kPairs,       // Batch::inputs and Batch::targets: B*T int32 each
  // Batch::rows: B rows of T+1 little-endian tokens of Batch::token_width bytes, as the source
  // stores them (token shards: 2 bytes up to 65,536 tokens); the model widens them
  // (Gpt::ForwardBackwardRows). A quarter of the bytes kPairs writes per token.
  kStoredRows,
};

struct LoaderOptions {
  int batch_size = 1;  // B: rows per micro-batch on this rank
  int rank = 0;
  int world = 1;
  DataState start;     // where the stream starts (resume); start.seed keys the order
  bool shuffle = true;
  Layout layout = Layout::kPairs;
  int depth = 4;       // batches read ahead (buffers in the ring), >= 1
  int threads = 2;     // reader threads, >= 1
  // Longest the trainer waits in Next() for one batch before the loader gives up with
  // DeadlineExceeded naming the file and offset a reader is stuck on (a stalled storage read).
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
};

// One rank's rows of one global batch. Valid until the next Next() call.
struct Batch {
  std::span<const int32_t> inputs;   // B * T, row-major
  std::span<const int32_t> targets;  // B * T: inputs shifted left by one token
  std::span<const unsigned char> rows;  // kStoredRows: B * (T+1) * token_width bytes
  int token_width = 0;                  // kStoredRows: bytes per token in rows (2 or 4)
  uint64_t position = 0;             // global stream position of the global batch's first row
};

// Reads the rows [first_row, first_row + B) of the global batch starting at `start` (B = rows in
// inputs / T) synchronously, for validation and tests. Same errors as the loader.
Status ReadRows(const SampleSource& source, const GlobalSampler& sampler, uint64_t start,
                int world, int rank, std::span<int32_t> inputs, std::span<int32_t> targets);

class DataLoader {
 public:
  // InvalidArgument for options out of range (naming the field). The loader co-owns the source.
  // Starts the reader threads.
  static Result<std::unique_ptr<DataLoader>> Create(std::shared_ptr<const SampleSource> source,
                                                    const LoaderOptions& options);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next batch, waiting for it if needed (the wait is timed). The previous batch's buffer is
  // handed back to the readers first. A read error is returned once and then again by every later
  // call; Cancelled after Stop().
  Result<Batch> Next();

  // The data state after the last batch Next() returned (Create's start before the first): what a
  // checkpoint taken now must store. The same value on every rank.
  DataState state() const;

  // Ends the readers; Next() then returns Cancelled. Idempotent; safe from any thread.
  void Stop();

  // Seconds the consumer spent waiting in Next() for a batch that was not ready: in the last call
  // (0 when it was ready), and in total. Handing the previous buffer back is not counted.
  double last_wait_seconds() const { return last_wait_; }
  double total_wait_seconds() const { return total_wait_; }
  uint64_t batches_delivered() const { return delivered_; }

 private:
  struct Shared;
  explicit DataLoader(std::shared_ptr<Shared> shared);
  Status Start();  // starts the reader threads
  static void ReaderLoop(std::shared_ptr<Shared> shared, int thread_index);

  // Everything the reader threads touch lives in `shared_`, which each thread co-owns: a reader
  // stuck in a storage read that never returns (a hung network file system) is detached by the
  // destructor and keeps only this alive, so destroying the loader never hangs.
  std::shared_ptr<Shared> shared_;
  std::vector<std::thread> threads_;
  double last_wait_ = 0;
  double total_wait_ = 0;
  uint64_t delivered_ = 0;
};

}  // namespace cohort::data
