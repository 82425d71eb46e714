// The coordinator's durable state: jobs, their attempts and allocations, and the workers, in one
// SQLite database (WAL journal, synchronous=FULL: a transaction that returned is on disk, and a
// kill -9 at any moment leaves the database as of the last one). Every change a caller makes is
// one transaction, so a restarted coordinator finds each job exactly as it was last acknowledged.
//
// Job lifecycle: QUEUED -> (StartAttempt) RUNNING -> (EndAttempt) SUCCEEDED, or QUEUED again
// after a failure while restarts remain (not before a backoff of base * 2^restarts, capped), or
// FAILED; CancelJob moves QUEUED or RUNNING to CANCELLED. Ended jobs never change again.
//
// Fencing: every attempt gets an epoch, unique and growing across all jobs and restarts of the
// coordinator (never reused, even after deletes). A report about an attempt that is no longer the
// job's open one (a stale epoch) is refused.
//
// Errors: kIo for SQLite failures (naming the database file and SQLite's message), kNotFound for
// unknown jobs or epochs, kInvalidArgument for transitions the lifecycle does not allow (naming
// the job, its state and the epoch). Thread safety: one StateStore per thread (SQLite connection);
// the coordinator uses it from its one event-loop thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/scheduler.h"

struct sqlite3;

namespace cohort::coordinator {

enum class JobState { kQueued, kRunning, kSucceeded, kFailed, kCancelled };
std::string_view JobStateName(JobState s);  // "queued", "running", ...
bool IsFinal(JobState s);

struct NewJob {
  std::string name;
  std::string spec_yaml;
  std::string source;       // where it was submitted from (a path), for messages
  int ranks = 1;
  int priority = 0;
  int max_restarts = 0;
  int64_t time_limit_ms = 0;  // 0: none
};

struct JobRecord {
  uint64_t id = 0;
  NewJob spec;
  JobState state = JobState::kQueued;
  uint64_t queue_order = 0;  // FIFO position within its priority
  int restarts = 0;          // attempts started after the first
  int64_t not_before_ms = 0; // a requeued job waits for its backoff until then
  std::string message;       // why it failed or was cancelled
  int64_t submitted_ms = 0;
  int64_t updated_ms = 0;
  uint64_t open_epoch = 0;   // the running attempt's epoch; 0 when none
};

enum class Outcome { kSucceeded, kFailed, kCancelled };

struct AttemptRecord {
  uint64_t epoch = 0;
  uint64_t job_id = 0;
  std::vector<Placement> placements;
  int64_t started_ms = 0;
  int64_t ended_ms = 0;      // 0 while open
  bool open = true;
  Outcome outcome = Outcome::kFailed;  // when ended
  int exit_rank = -1;
  int exit_status = 0;
  std::string log_tail;
  std::string message;       // why it ended, when it did not succeed
};

struct WorkerRecord {
  std::string name;
  int slots = 0;
  int gpus = 0;
  int64_t registered_ms = 0;  // its last registration
};

struct Backoff {
  int64_t base_ms = 1000;
  int64_t max_ms = 5 * 60 * 1000;
};

class StateStore {
 public:
  // Opens (creating if needed) the database at `path`. kIo naming the path if it cannot be opened
  // or is not a Cohort state database of this version; kDataLoss if SQLite's integrity check fails.
  static Result<std::unique_ptr<StateStore>> Open(const std::string& path, Backoff backoff = Backoff());
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  // A new QUEUED job, behind every job submitted before it; returns its id.
  Result<uint64_t> AddJob(const NewJob& job, int64_t now_ms);
  Result<JobRecord> Job(uint64_t id);
  // Every job, in id order (ended ones too).
  Result<std::vector<JobRecord>> Jobs();
  // How many jobs are in each state (for metrics), without reading them.
  Result<std::vector<std::pair<JobState, int64_t>>> CountJobs();
  Result<std::vector<AttemptRecord>> Attempts(uint64_t job_id);
  // Attempts not yet ended, with their jobs RUNNING (what a restarted coordinator must re-attach).
  Result<std::vector<AttemptRecord>> OpenAttempts();

  // QUEUED job -> RUNNING with a new attempt on these placements; returns the attempt's epoch.
  Result<uint64_t> StartAttempt(uint64_t job_id, const std::vector<Placement>& placements, int64_t now_ms);

  // Ends the job's open attempt `epoch`, recording how. kSucceeded ends the job. kFailed (a rank
  // exited non-zero, a worker was lost, the attempt could not be re-attached) requeues the job
  // while restarts remain (restarts < max_restarts: so a job is launched at most max_restarts + 1
  // times), behind its backoff; else the job is FAILED with `message`. kCancelled cancels the job.
  // Returns the job as it now is. A stale epoch (the attempt has ended) is InvalidArgument.
  struct End {
    Outcome outcome = Outcome::kFailed;
    int exit_rank = -1;      // the first rank that failed; -1 when none
    int exit_status = 0;
    std::string log_tail;
    std::string message;     // for the job: why it failed or was cancelled
    bool no_restart = false; // kFailed: fail the job even with restarts left (a time limit hit)
    // kFailed with a restart: not before this either (ranks on a lost node may still be stopping).
    int64_t not_before_ms = 0;
  };
  Result<JobRecord> EndAttempt(uint64_t epoch, const End& end, int64_t now_ms);

  // Records that a rank of the open attempt `epoch` exited with `status` (one transaction): the
  // ranks that finished are known again after a coordinator restart. InvalidArgument for a stale
  // epoch, NotFound for an unknown one.
  Status RecordRankExit(uint64_t epoch, int rank, int status);
  // (rank, status) of every recorded exit of the attempt.
  Result<std::vector<std::pair<int, int>>> RankExits(uint64_t epoch);

  // QUEUED -> FAILED with `message`, for a job that can never start (its stored spec no longer
  // parses). InvalidArgument if it is not queued.
  Result<JobRecord> FailQueuedJob(uint64_t job_id, const std::string& message, int64_t now_ms);

  // QUEUED or RUNNING -> CANCELLED (a RUNNING job's attempt is ended too; the caller stops its
  // ranks). Returns the epoch of the attempt that was running, 0 if none. Cancelling an ended job
  // is InvalidArgument naming its state.
  Result<uint64_t> CancelJob(uint64_t job_id, const std::string& message, int64_t now_ms);

  // Records a worker's registration (heartbeats are kept in memory, not here: at thousands of
  // workers a durable write per heartbeat would be thousands of fsyncs a second).
  Status UpsertWorker(const std::string& name, int slots, int gpus, int64_t now_ms);
  // Several registrations in one transaction (one fsync): a coordinator that thousands of workers
  // register with at once (after its restart) writes them in batches.
  Status UpsertWorkers(const std::vector<WorkerRecord>& workers);
  Result<std::vector<WorkerRecord>> Workers();

  const std::string& path() const { return path_; }

 private:
  StateStore(sqlite3* db, std::string path, Backoff backoff);
  Status Exec(const char* sql);
  Status Begin();
  Status Commit();
  Status CommitOrRollback();
  // The job of the open attempt `epoch`: NotFound if unknown, InvalidArgument if it has ended.
  Result<uint64_t> OpenAttemptJob(uint64_t epoch);  // a failed COMMIT leaves the transaction open: roll it back
  void Rollback();
  Status Fail(const std::string& what) const;  // kIo with SQLite's message

  sqlite3* db_;
  std::string path_;
  Backoff backoff_;
};

}  // namespace cohort::coordinator
