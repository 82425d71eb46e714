// The trainer's asynchronous checkpointing on top of checkpoint/ (docs/checkpoint-format.md).
//
// Save() hands this rank's ranges of every array (weights, AdamW moments) to the writer thread,
// which first copies them into one of two reusable host buffers (the snapshot; the trainer copies
// what is left of it in WaitForSnapshot), then writes the shard durably. Each buffer is the image
// of the rank's shard file: the state goes straight to where the file holds it
// (checkpoint::PlanShard, once at Create) and the writer adds HDF5's metadata around it, so the
// state is copied once per save and held at most twice. The snapshot is taken
// while training goes on: the state only has to stay
// unchanged until WaitForSnapshot() returns, which the trainer calls just before its next
// optimizer update (forward and backward only read the weights), so the copy overlaps the next
// step's compute and the training stall is only what is left of it by then. Poll(), called by every rank at every step boundary,
// runs the commit once every rank's shard of the oldest pending save is durable: a collective
// decision (all done? all succeeded?), then rank 0 writes the manifest and moves `latest`, and
// applies retention. A save that failed on any rank is abandoned on every rank and its shards
// removed; training goes on and the error is logged (Finish() returns it for the last save).
//
// When a save is due while both buffers are still in use, the policy decides: wait for the oldest
// to be written and committed, or skip this save (logged). Every decision that involves other
// ranks is taken collectively, so all ranks stay in step; Save, Poll and Finish are collective.
// Not thread-safe: one training thread calls everything.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "collectives/communicator.h"
#include "common/status.h"

namespace cohort::worker {

struct CheckpointerOptions {
  std::string root;                              // checkpoint.dir
  collectives::Communicator* comm = nullptr;     // null or one rank: alone
  bool skip_when_busy = false;                   // checkpoint.on_busy: skip (else wait)
  int keep_last = 3;                             // committed checkpoints kept, newest first
  int64_t keep_every = 0;                        // also keep steps that are multiples of this; 0 = none
  std::string strategy = "ddp";
  std::string job_spec_yaml;
  std::vector<checkpoint::TensorSpec> tensors;   // the model's table
  std::vector<checkpoint::Range> ranges;         // this rank's ranges (the same for every array)
  std::vector<std::string> states;               // e.g. {"model", "adam_m", "adam_v"}
  // Committed checkpoints in the root at steps after this one belong to another timeline than this
  // run's: the run started over (--resume=never: -1, all of them), or resumed from an older step
  // (an explicit one, or past damaged newer ones). They are moved into
  // <root>/superseded-<UTC time>/ at Create, so that they neither mix with this run's (a later
  // resume would take the newest step in the root) nor are deleted by its retention. Unset: none.
  std::optional<int64_t> supersede_after;
};

struct SaveRequest {
  int64_t step = 0;
  int64_t optimizer_step = 0;
  checkpoint::DataState data;
  // The run's last save (its end, or a stop signal): never skipped by checkpoint.on_busy: skip, it
  // waits for a buffer instead (a requeued job continues from it).
  bool final = false;
  // Where this rank's range `r` (one of CheckpointerOptions::ranges) of array `state`
  // (CheckpointerOptions::states) lives: r.size floats, read until WaitForSnapshot() returns. Called
  // in Save(); the copy is made from there by the writer thread while training goes on, and by the
  // trainer itself in WaitForSnapshot() for whatever the writer has not copied yet.
  std::function<const float*(const std::string& state, const checkpoint::Range& r)> source;
};

struct CheckpointStats {
  int64_t saves = 0;          // snapshots taken
  int64_t committed = 0;
  int64_t skipped = 0;        // due while busy, policy skip
  int64_t failed = 0;
  double last_stall_seconds = 0;   // training blocked by the last save: in Save() and WaitForSnapshot()
  double total_stall_seconds = 0;
  double last_snapshot_seconds = 0;  // the copy of the last snapshot, from its first piece to its last
                                     // (overlapping training)
  double last_write_seconds = 0;   // the writer's time for the last shard of this rank
  double last_write_bytes = 0;
  int64_t last_committed_step = -1;
};

class Checkpointer {
 public:
  static Result<std::unique_ptr<Checkpointer>> Create(CheckpointerOptions options);
  ~Checkpointer();  // waits for the writer thread (never commits: call Finish for that)
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Queues a save (collective); the snapshot is taken by the writer thread (and the trainer, in
  // WaitForSnapshot, for what the writer has not reached). Errors only for
  // collective failures (a dead peer); a failed write is reported by Poll / Finish.
  Status Save(const SaveRequest& request);
  // Blocks until the snapshot of every queued save has been taken: call before changing the
  // saved state (the optimizer update). Cheap when there is none. Not collective.
  void WaitForSnapshot();
  // Commits what every rank has written (collective; cheap when nothing is pending).
  Status Poll();
  // Waits for every pending save and commits it (collective). Returns the error of a save that
  // failed since the last Finish (e.g. a full disk), naming the file.
  Status Finish();

  const CheckpointStats& stats() const { return stats_; }

 private:
  struct Impl;
  explicit Checkpointer(std::unique_ptr<Impl> impl);
  Status CommitOldest(bool wait);

  std::unique_ptr<Impl> impl_;
  CheckpointStats stats_;
};

// The checkpoints `--resume` may load, in the order to try them: the newest complete one first,
// each next one the fallback if the one before turns out damaged while it is loaded (every piece
// a rank reads is checked against its CRC32C, so each byte of the checkpoint is read once, by the
// rank that needs it, and no rank reads the whole checkpoint first). No dirs: a fresh start.
struct ResumeCandidates {
  std::vector<std::string> dirs;
  // Why newer step directories were passed over already ("; step-…: why"), for the error when
  // none loads.
  std::string skipped;
  std::string where;  // what was searched, for that error
  bool exact = false;  // PATH named one step directory: no fallback
};

// Resolves `resume` (auto | never | PATH) against the checkpoint root. auto: the complete
// checkpoints newest first, or a fresh start when the root holds no committed step directory.
// PATH: a step directory (that one only) or a root (as auto, but it must hold a committed one).
// Fails when there are committed step directories and none is complete (a resume that silently
// starts over would throw away the run), saying why each was skipped.
Result<ResumeCandidates> FindResumeCandidates(const std::string& resume, const std::string& root);

// The error when every candidate failed to load: never a silent fresh start. `why` lists the
// failures ("; step-…: why").
Status NoUsableCheckpoint(const ResumeCandidates& c, const std::string& why);

}  // namespace cohort::worker
