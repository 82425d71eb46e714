#include "worker/checkpointer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <mutex>
#include <set>
#include <thread>

#include "common/check.h"
#include "common/logging.h"
#include "storage/file_util.h"

namespace cohort::worker {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Removes a step directory's files and the directory; files already gone are fine. `step` is the
// commit that triggered the removal (for the crash tests).
void RemoveStepDir(const std::string& dir, int64_t step) {
  auto names = storage::ListDirectory(dir);
  if (names.ok()) {
    for (const std::string& name : *names) {
      const std::string path = dir + "/" + name;
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
        COHORT_LOG_WARN("checkpoint retention: cannot remove {}: {}", path, std::strerror(errno));
      }
    }
  }
  checkpoint::CrashPoint("retention", step);
  if (::rmdir(dir.c_str()) != 0 && errno != ENOENT) {
    COHORT_LOG_WARN("checkpoint retention: cannot remove {}: {}", dir, std::strerror(errno));
  }
}

// Committed checkpoints (intact or not) of another timeline, those after step `after`, and
// `latest` move into <root>/superseded-<UTC time>/ (renames: nothing is copied or deleted).
Status SupersedeOtherTimeline(const std::string& root, int64_t after) {
  ASSIGN_OR_RETURN(std::vector<checkpoint::Entry> entries, checkpoint::List(root));
  std::vector<checkpoint::Entry> committed;
  for (const auto& e : entries) {
    if (e.has_manifest && e.step > after) committed.push_back(e);
  }
  if (committed.empty()) return Status::Ok();
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  ::gmtime_r(&now, &utc);
  std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &utc);
  std::string aside = root + "/superseded-" + stamp;
  for (int k = 2; ::access(aside.c_str(), F_OK) == 0; ++k) {  // two starts within a second
    aside = root + "/superseded-" + stamp + "-" + std::to_string(k);
  }
  if (::mkdir(aside.c_str(), 0755) != 0) return ErrnoError(aside + ": create", errno);
  for (const auto& e : committed) {
    const std::string to = aside + "/" + checkpoint::StepDirName(e.step);
    if (::rename(e.dir.c_str(), to.c_str()) != 0) return ErrnoError(e.dir + ": move to " + to, errno);
  }
  const std::string latest = root + "/latest";
  if (::rename(latest.c_str(), (aside + "/latest").c_str()) != 0 && errno != ENOENT) {
    return ErrnoError(latest + ": move to " + aside, errno);
  }
  RETURN_IF_ERROR(storage::SyncDirectory(aside));
  RETURN_IF_ERROR(storage::SyncDirectory(root));
  COHORT_LOG_WARN("checkpoint: moved the {} checkpoint(s) of steps {} to {} in {} to {}: {}. Remove them when "
                  "they are no longer needed",
                  committed.size(), committed.front().step, committed.back().step, root, aside,
                  after < 0 ? "this run starts over (--resume=never)"
                            : "this run continues from step " + std::to_string(after) +
                                  ", they belong to another timeline (or were damaged)");
  return Status::Ok();
}

}  // namespace

struct Checkpointer::Impl {
  CheckpointerOptions o;
  int rank = 0;
  int world = 1;
  std::vector<std::vector<checkpoint::Range>> all_ranges;  // every rank's ranges (for the manifest)

  // A piece of the snapshot: the state is copied in pieces that the writer thread and the trainer
  // claim one at a time, so the trainer waits at most for the pieces in progress, not for a whole
  // copy the writer started (a writer preempted in the middle of a piece still delays it until it
  // runs again).
  struct Piece {
    const float* src;
    unsigned char* dst;  // in a shard image: any alignment
    size_t n;            // floats
  };
  static constexpr size_t kPieceFloats = size_t{1} << 18;  // 1 MiB

  struct Job {
    SaveRequest request;
    int buffer = 0;
    std::vector<Piece> pieces;             // set in Save, then read-only
    std::atomic<size_t> next_piece{0};     // the next piece to claim
    std::atomic<size_t> pieces_done{0};
    Clock::time_point snapshot_start;      // by the thread that claims piece 0 (published by pieces_done)
    bool snapshot_taken = false;  // under mu
    bool done = false;    // under mu
    Status result;
    checkpoint::ShardFileInfo info;
    double write_seconds = 0;
    double snapshot_seconds = 0;  // under mu
  };
  // The snapshots: each is the image of this rank's shard file, the state copied straight to the
  // places where the file holds it (`layout`); the writer adds HDF5's metadata around it.
  checkpoint::ShardWrite shard;    // the shard's tables (arrays by name only); step set per save
  checkpoint::ShardLayout layout;  // planned once: the same for every save
  std::vector<uint64_t> range_start;  // element index, over this rank's ranges, of each range's first
  checkpoint::ImageBuffer buffers[2];
  bool buffer_busy[2] = {false, false};
  std::deque<std::shared_ptr<Job>> pending;  // saves not yet committed, oldest first

  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Job>> queue;  // for the writer
  bool stop = false;
  std::thread writer;
  Status last_error;  // of a failed save, for Finish

  bool distributed() const { return o.comm != nullptr && o.comm->size() > 1; }

  // Copies pieces of the job's snapshot until none is left to claim (called without `mu`, by the
  // writer and by the trainer); whoever completes the last piece marks the snapshot taken.
  void CopyPieces(Job& job) {
    const size_t n = job.pieces.size();
    for (size_t i = job.next_piece.fetch_add(1); i < n; i = job.next_piece.fetch_add(1)) {
      if (i == 0) job.snapshot_start = Clock::now();
      const Piece& p = job.pieces[i];
      std::memcpy(p.dst, p.src, p.n * sizeof(float));
      if (job.pieces_done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lk(mu);
        job.snapshot_taken = true;
        job.snapshot_seconds = Seconds(job.snapshot_start, Clock::now());
        cv.notify_all();
      }
    }
  }

  void WriterLoop() {
    std::unique_lock<std::mutex> lk(mu);
    for (;;) {
      cv.wait(lk, [&] { return stop || !queue.empty(); });
      if (queue.empty()) return;  // stop, nothing left
      std::shared_ptr<Job> job = queue.front();
      queue.pop_front();
      // The snapshot first: training waits for it before its next optimizer update (and copies
      // what is left of it itself by then).
      lk.unlock();
      CopyPieces(*job);
      lk.lock();
      cv.wait(lk, [&] { return job->snapshot_taken; });
      lk.unlock();
      const auto t0 = Clock::now();
      checkpoint::ShardWrite w = shard;
      w.step = job->request.step;
      auto info = checkpoint::WriteShardImage(checkpoint::StepDir(o.root, job->request.step), w, layout,
                                              &buffers[job->buffer]);
      const double secs = Seconds(t0, Clock::now());
      lk.lock();
      job->write_seconds = secs;
      if (info.ok()) {
        job->info = *info;
      } else {
        job->result = info.status();
      }
      job->done = true;
      cv.notify_all();
    }
  }
};

Checkpointer::Checkpointer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Checkpointer::~Checkpointer() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  if (impl_->writer.joinable()) impl_->writer.join();
}

Result<std::unique_ptr<Checkpointer>> Checkpointer::Create(CheckpointerOptions options) {
  if (options.root.empty()) return InvalidArgument("checkpoint.dir: empty");
  if (options.states.empty()) return InvalidArgument("checkpointer: no arrays to save");
  auto impl = std::make_unique<Impl>();
  impl->o = std::move(options);
  if (impl->distributed()) {
    impl->rank = impl->o.comm->rank();
    impl->world = impl->o.comm->size();
  }
  RETURN_IF_ERROR(storage::MakeDirectories(impl->o.root).WithContext("checkpoint.dir"));
  if (impl->rank == 0) {
    // Leftovers of saves interrupted before their commit (a crashed or preempted earlier run).
    const int removed = checkpoint::RemoveInterruptedSaves(impl->o.root);
    if (removed > 0) COHORT_LOG_INFO("checkpoint: removed {} file(s) of saves an earlier run did not commit", removed);
  }
  // Rank 0 prepares the root; every rank hears whether that worked before the collective below.
  Status prepared;
  if (impl->rank == 0 && impl->o.supersede_after) {
    prepared = SupersedeOtherTimeline(impl->o.root, *impl->o.supersede_after);
  }
  if (impl->distributed()) {
    uint32_t ok = prepared.ok() ? 1 : 0;
    RETURN_IF_ERROR(impl->o.comm->Broadcast(&ok, sizeof ok, 0).WithContext("checkpoint setup"));
    if (!ok && impl->rank != 0) prepared = IoError("checkpoint.dir: rank 0 could not prepare " + impl->o.root + " (see its log)");
  }
  RETURN_IF_ERROR(prepared.WithContext("checkpoint.dir"));
  // Rank 0 writes the manifest, which lists every rank's ranges: gather them once.
  impl->all_ranges.resize(static_cast<size_t>(impl->world));
  impl->all_ranges[static_cast<size_t>(impl->rank)] = impl->o.ranges;
  if (impl->distributed()) {
    for (int r = 0; r < impl->world; ++r) {
      uint64_t count = r == impl->rank ? impl->o.ranges.size() : 0;
      RETURN_IF_ERROR(impl->o.comm->Broadcast(&count, sizeof count, r).WithContext("checkpoint layout exchange"));
      std::vector<checkpoint::Range>& theirs = impl->all_ranges[static_cast<size_t>(r)];
      theirs.resize(count);
      if (count > 0) {
        RETURN_IF_ERROR(impl->o.comm->Broadcast(theirs.data(), count * sizeof(checkpoint::Range), r)
                            .WithContext("checkpoint layout exchange"));
      }
    }
  }
  // Where the shard file holds each piece of the state: one build of the file's metadata, now.
  checkpoint::ShardWrite& w = impl->shard;
  w.rank = impl->rank;
  w.world = impl->world;
  w.tensors = impl->o.tensors;
  w.ranges = impl->o.ranges;
  for (const std::string& state : impl->o.states) w.arrays.push_back({state, nullptr});
  ASSIGN_OR_RETURN(impl->layout, checkpoint::PlanShard(w));
  uint64_t start = 0;
  for (const checkpoint::Range& r : impl->o.ranges) {
    impl->range_start.push_back(start);
    start += r.size;
  }
  for (auto& b : impl->buffers) {
    if (!b.Reserve(static_cast<size_t>(impl->layout.file_size))) {
      return Internal("checkpoint: out of memory for two snapshots of " + std::to_string(impl->layout.file_size) +
                      " bytes");
    }
  }
  Impl* raw = impl.get();
  impl->writer = std::thread([raw] { raw->WriterLoop(); });
  return std::unique_ptr<Checkpointer>(new Checkpointer(std::move(impl)));
}

Status Checkpointer::Save(const SaveRequest& request) {
  Impl& s = *impl_;
  const auto t0 = Clock::now();
  // Both buffers in use (one being written, one queued or waiting for its commit): the policy.
  // Buffers are freed only by the collective commit, so every rank sees the same answer here.
  while (s.buffer_busy[0] && s.buffer_busy[1]) {
    if (s.o.skip_when_busy && !request.final) {
      ++stats_.skipped;
      COHORT_LOG_WARN("checkpoint: skipping the save of step {}: the saves of steps {} are still being "
                      "written (checkpoint.on_busy: skip)",
                      request.step, s.pending.front()->request.step);
      return Status::Ok();
    }
    RETURN_IF_ERROR(CommitOldest(/*wait=*/true));
  }
  const int b = s.buffer_busy[0] ? 1 : 0;
  s.buffer_busy[b] = true;
  auto job = std::make_shared<Impl::Job>();
  job->request = request;
  job->buffer = b;
  COHORT_CHECK(request.source != nullptr) << "checkpoint save of step " << request.step << " without a source";
  // The pieces: each dataset of the shard (an array's part of one tensor in one range), from the
  // state to its place in the file image, in pieces of at most kPieceFloats.
  const size_t nr = s.o.ranges.size();
  std::vector<const float*> sources(s.o.states.size() * nr);
  for (size_t a = 0; a < s.o.states.size(); ++a) {
    for (size_t r = 0; r < nr; ++r) sources[a * nr + r] = request.source(s.o.states[a], s.o.ranges[r]);
  }
  unsigned char* image = s.buffers[b].data();
  for (const checkpoint::ShardLayout::Extent& e : s.layout.extents) {
    // The range holding the extent (a dataset never crosses ranges).
    const size_t r = static_cast<size_t>(
        std::upper_bound(s.range_start.begin(), s.range_start.end(), e.element) - s.range_start.begin() - 1);
    const float* src = sources[e.array * nr + r] + (e.element - s.range_start[r]);
    for (uint64_t off = 0; off < e.count; off += Impl::kPieceFloats) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(Impl::kPieceFloats, e.count - off));
      job->pieces.push_back({src + off, image + e.offset + off * sizeof(float), n});
    }
  }
  if (job->pieces.empty()) job->snapshot_taken = true;  // nothing in this rank's ranges
  job->request.source = nullptr;
  s.pending.push_back(job);
  {
    std::lock_guard<std::mutex> lk(s.mu);
    s.queue.push_back(job);
  }
  s.cv.notify_all();
  ++stats_.saves;
  stats_.last_stall_seconds = Seconds(t0, Clock::now());
  stats_.total_stall_seconds += stats_.last_stall_seconds;
  return Status::Ok();
}

void Checkpointer::WaitForSnapshot() {
  Impl& s = *impl_;
  if (s.pending.empty()) return;
  const auto t0 = Clock::now();
  // What the writer has not copied yet (it is still writing an earlier save, or has not been
  // scheduled: the compute threads hold the cores) is copied here rather than waited for, so the
  // wait is at most the rest of the copy, plus the pieces the writer is copying at the time.
  for (const auto& job : s.pending) {
    s.CopyPieces(*job);
    std::unique_lock<std::mutex> lk(s.mu);
    s.cv.wait(lk, [&] { return job->snapshot_taken; });
    stats_.last_snapshot_seconds = job->snapshot_seconds;
  }
  const double waited = Seconds(t0, Clock::now());
  stats_.last_stall_seconds += waited;
  stats_.total_stall_seconds += waited;
}

Status Checkpointer::Poll() {
  if (impl_->pending.empty()) return Status::Ok();  // the same on every rank
  return CommitOldest(/*wait=*/false);
}

Status Checkpointer::Finish() {
  while (!impl_->pending.empty()) RETURN_IF_ERROR(CommitOldest(/*wait=*/true));
  Status e = impl_->last_error;
  impl_->last_error = Status::Ok();
  return e;
}

Status Checkpointer::CommitOldest(bool wait) {
  Impl& s = *impl_;
  if (s.pending.empty()) return Status::Ok();
  std::shared_ptr<Impl::Job> job = s.pending.front();
  bool done = false;
  {
    std::unique_lock<std::mutex> lk(s.mu);
    if (wait) s.cv.wait(lk, [&] { return job->done; });
    done = job->done;
  }
  // 1. Has every rank written its shard? (One float per rank: a count.)
  if (s.distributed()) {
    float count = done ? 1.0f : 0.0f;
    RETURN_IF_ERROR(s.o.comm->AllReduce(&count, 1, collectives::DataType::kFloat32, collectives::ReduceOp::kSum)
                        .WithContext("checkpoint commit"));
    if (static_cast<int>(count) < s.world) return Status::Ok();  // not yet: next step
  } else if (!done) {
    return Status::Ok();
  }
  // 2. Every rank's outcome (ok, size, CRC32C) to every rank.
  struct Outcome {
    uint64_t size;
    uint32_t crc;
    uint32_t ok;
  };
  std::vector<Outcome> outcomes(static_cast<size_t>(s.world));
  outcomes[static_cast<size_t>(s.rank)] = {job->info.size, job->info.crc32c, job->result.ok() ? 1u : 0u};
  if (s.distributed()) {
    for (int r = 0; r < s.world; ++r) {
      RETURN_IF_ERROR(s.o.comm->Broadcast(&outcomes[static_cast<size_t>(r)], sizeof(Outcome), r)
                          .WithContext("checkpoint commit"));
    }
  }
  const int64_t step = job->request.step;
  const std::string dir = checkpoint::StepDir(s.o.root, step);
  std::string failed_ranks;
  for (int r = 0; r < s.world; ++r) {
    if (!outcomes[static_cast<size_t>(r)].ok) failed_ranks += (failed_ranks.empty() ? "" : ", ") + std::to_string(r);
  }
  stats_.last_write_seconds = job->write_seconds;
  stats_.last_write_bytes = static_cast<double>(job->info.size);
  // 3. Rank 0 commits; the others learn whether it worked.
  Status commit;
  std::string commit_warning;  // committed, but maybe not durable: retention waits for a clean one
  if (failed_ranks.empty() && s.rank == 0) {
    checkpoint::Manifest m;
    m.step = step;
    m.world_size = s.world;
    m.strategy = s.o.strategy;
    m.job_spec_yaml = s.o.job_spec_yaml;
    m.data = job->request.data;
    m.optimizer_step = job->request.optimizer_step;
    for (const checkpoint::TensorSpec& t : s.o.tensors) m.num_parameters += t.numel;
    m.states = s.o.states;
    for (int r = 0; r < s.world; ++r) {
      m.files.push_back({checkpoint::ShardFileName(r, s.world), outcomes[static_cast<size_t>(r)].size,
                         outcomes[static_cast<size_t>(r)].crc, r, s.all_ranges[static_cast<size_t>(r)]});
    }
    commit = checkpoint::Commit(s.o.root, m, &commit_warning);
    if (!commit_warning.empty()) {
      COHORT_LOG_WARN("checkpoint of step {}: committed, but {}; no older checkpoint is removed after it", step,
                      commit_warning);
    }
  }
  if (failed_ranks.empty() && s.distributed()) {
    uint32_t ok = commit.ok() ? 1 : 0;
    RETURN_IF_ERROR(s.o.comm->Broadcast(&ok, sizeof ok, 0).WithContext("checkpoint commit"));
    if (!ok && s.rank != 0) commit = IoError("checkpoint of step " + std::to_string(step) + ": rank 0 could not commit it (see its log)");
  }
  const bool committed = failed_ranks.empty() && commit.ok();
  if (committed) {
    ++stats_.committed;
    stats_.last_committed_step = step;
    COHORT_LOG_INFO("checkpoint: step {} committed to {} (stall {:.1f} ms; this rank wrote {:.1f} MB in {:.2f} s, {:.0f} MB/s)",
                    step, dir, 1e3 * stats_.last_stall_seconds, job->info.size / 1e6, job->write_seconds,
                    job->write_seconds > 0 ? job->info.size / 1e6 / job->write_seconds : 0.0);
  } else {
    ++stats_.failed;
    Status why = !job->result.ok() ? job->result
                 : !commit.ok()    ? commit
                                   : IoError("checkpoint of step " + std::to_string(step) + ": rank(s) " + failed_ranks +
                                             " failed to write their shard (see their log)");
    COHORT_LOG_ERROR("checkpoint of step {} abandoned, the previous ones are intact: {}", step, why.ToString());
    if (s.last_error.ok()) s.last_error = why;
    // Remove this rank's shard of the abandoned step; rank 0 also the directory once empty. An
    // earlier commit of the same step (a re-save) is withdrawn first: its shards are being removed.
    if (Status w = checkpoint::WithdrawCommit(dir); !w.ok()) COHORT_LOG_WARN("checkpoint: {}", w.ToString());
    const std::string shard = dir + "/" + checkpoint::ShardFileName(s.rank, s.world);
    ::unlink(shard.c_str());
    if (s.rank == 0) ::rmdir(dir.c_str());  // fails harmlessly while others' files remain
  }
  s.buffer_busy[job->buffer] = false;
  s.pending.pop_front();
  // 4. Retention (rank 0, after a commit): keep the newest keep_last committed checkpoints and the
  // multiples of keep_every; remove the other committed ones, and leftovers of interrupted saves
  // (no manifest) older than this one. Never the one just committed (the latest), nor a directory
  // whose manifest is there but could not be read or does not match its files (reported by
  // `cohort ckpt list`, not deleted); missing files are fine.
  if (committed && s.rank == 0 && commit_warning.empty()) {
    auto entries = checkpoint::List(s.o.root);
    if (entries.ok()) {
      std::vector<int64_t> complete;
      for (const auto& e : *entries) {
        if (e.complete) complete.push_back(e.step);
      }
      std::set<int64_t> keep(complete.end() - std::min<ptrdiff_t>(static_cast<ptrdiff_t>(complete.size()), s.o.keep_last),
                             complete.end());
      keep.insert(step);
      for (const auto& e : *entries) {
        const bool every = s.o.keep_every > 0 && e.step % s.o.keep_every == 0;
        if (e.complete ? (keep.count(e.step) || every) : (e.step >= step || e.has_manifest)) continue;
        COHORT_LOG_INFO("checkpoint retention: removing {}{}", e.dir, e.complete ? "" : " (an interrupted save)");
        RemoveStepDir(e.dir, step);
      }
    }
  }
  return Status::Ok();
}

Result<ResumeCandidates> FindResumeCandidates(const std::string& resume, const std::string& root) {
  ResumeCandidates c;
  if (resume == "never") return c;
  std::string search_root = root;
  if (resume != "auto") {
    // A step directory: exactly that checkpoint (its manifest must be valid and its files there).
    // A directory named like one, or holding a manifest, is one even when the manifest is damaged
    // or missing: the user hears what is wrong with it, not that it holds no checkpoints.
    auto m = checkpoint::ReadManifest(resume);
    std::string base = resume;
    while (base.size() > 1 && base.back() == '/') base.pop_back();
    base = base.substr(base.find_last_of('/') == std::string::npos ? 0 : base.find_last_of('/') + 1);
    const bool step_name = checkpoint::StepFromDirName(base).has_value();
    const bool has_manifest = ::access((resume + "/manifest.pb").c_str(), F_OK) == 0;
    if (m.ok() || step_name || has_manifest || !checkpoint::List(resume).ok()) {
      if (!m.ok()) return m.status().WithContext("--resume " + resume);
      c.dirs.push_back(resume);
      c.exact = true;
      c.where = "--resume " + resume;
      return c;
    }
    search_root = resume;  // a root: its newest good checkpoint, as with auto
  } else if (root.empty() || !storage::IsDirectory(root)) {
    return c;  // nothing saved yet: a fresh start
  }
  c.where = "resume (" + resume + "): " + search_root;
  ASSIGN_OR_RETURN(std::vector<checkpoint::Entry> entries, checkpoint::List(search_root));
  // Directories without a manifest were never committed (a save interrupted before its commit):
  // they hold nothing to resume. With only such leftovers nothing was ever saved, so auto starts
  // at step 0; but a checkpoint that was committed and is now damaged is never passed over for a
  // fresh start.
  const bool any_committed =
      std::any_of(entries.begin(), entries.end(), [](const checkpoint::Entry& e) { return e.has_manifest; });
  if (!any_committed) {
    if (resume == "auto") {
      if (!entries.empty()) {
        COHORT_LOG_WARN("resume: {} holds {} step director{} from interrupted saves and no committed checkpoint: "
                        "starting at step 0",
                        search_root, entries.size(), entries.size() == 1 ? "y" : "ies");
      }
      return c;
    }
    return NotFound("--resume " + resume + ": no committed checkpoint in it");
  }
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    if (it->complete) {
      c.dirs.push_back(it->dir);
    } else if (c.dirs.empty()) {  // newer than every complete one: say why it was passed over
      c.skipped += "; " + checkpoint::StepDirName(it->step) + ": " + it->problem;
    }
  }
  if (c.dirs.empty()) return NoUsableCheckpoint(c, "");
  if (!c.skipped.empty()) COHORT_LOG_WARN("resume: newer checkpoints skipped{}", c.skipped);
  return c;
}

Status NoUsableCheckpoint(const ResumeCandidates& c, const std::string& why) {
  if (c.exact) return DataLoss(c.where + ": the checkpoint is damaged" + why);
  return DataLoss(c.where +
                  " holds checkpoint directories but none is complete and intact, so the run is not started "
                  "over silently (use --resume=never to start over)" + c.skipped + why);
}

}  // namespace cohort::worker
