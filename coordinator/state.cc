#include "coordinator/state.h"

#include <sqlite3.h>

#include <algorithm>
#include <functional>

namespace cohort::coordinator {
namespace {

// "Cohr": marks the file as a Cohort state database (PRAGMA application_id).
constexpr int kApplicationId = 0x436f6872;
constexpr int kSchemaVersion = 2;

// Version 2: each rank's exit, so that ranks that finished survive a coordinator restart; and why
// each attempt ended (attempts.message, in the schema above; added to a version 1 database).
constexpr const char* kRankExits = R"sql(
CREATE TABLE rank_exits(
  epoch INTEGER NOT NULL REFERENCES attempts(epoch),
  rank INTEGER NOT NULL,
  status INTEGER NOT NULL,
  PRIMARY KEY(epoch, rank));
)sql";

constexpr const char* kSchema = R"sql(
CREATE TABLE jobs(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  spec_yaml TEXT NOT NULL,
  source TEXT NOT NULL,
  ranks INTEGER NOT NULL CHECK(ranks >= 1),
  priority INTEGER NOT NULL,
  max_restarts INTEGER NOT NULL CHECK(max_restarts >= 0),
  time_limit_ms INTEGER NOT NULL CHECK(time_limit_ms >= 0),
  state TEXT NOT NULL CHECK(state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
  queue_order INTEGER NOT NULL,
  restarts INTEGER NOT NULL DEFAULT 0,
  not_before_ms INTEGER NOT NULL DEFAULT 0,
  message TEXT NOT NULL DEFAULT '',
  submitted_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL);
CREATE TABLE attempts(
  epoch INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id INTEGER NOT NULL REFERENCES jobs(id),
  started_ms INTEGER NOT NULL,
  ended_ms INTEGER,
  outcome TEXT CHECK(outcome IN ('succeeded', 'failed', 'cancelled')),
  exit_rank INTEGER NOT NULL DEFAULT -1,
  exit_status INTEGER NOT NULL DEFAULT 0,
  log_tail TEXT NOT NULL DEFAULT '',
  message TEXT NOT NULL DEFAULT '');
CREATE INDEX attempts_by_job ON attempts(job_id);
-- At most one open attempt per job.
CREATE UNIQUE INDEX one_open_attempt ON attempts(job_id) WHERE ended_ms IS NULL;
CREATE TABLE allocations(
  epoch INTEGER NOT NULL REFERENCES attempts(epoch),
  worker TEXT NOT NULL,
  first_rank INTEGER NOT NULL,
  count INTEGER NOT NULL CHECK(count >= 1),
  PRIMARY KEY(epoch, worker));
CREATE TABLE workers(
  name TEXT PRIMARY KEY,
  slots INTEGER NOT NULL,
  gpus INTEGER NOT NULL,
  registered_ms INTEGER NOT NULL);
)sql";

// A prepared statement (RAII). Bind and column indexes as SQLite's: binds from 1, columns from 0.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr); }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  bool prepared() const { return rc_ == SQLITE_OK; }
  Stmt& Bind(int i, int64_t v) {
    if (rc_ == SQLITE_OK) rc_ = sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& Bind(int i, const std::string& v) {
    if (rc_ == SQLITE_OK) rc_ = sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindNull(int i) {
    if (rc_ == SQLITE_OK) rc_ = sqlite3_bind_null(s_, i);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE, or an error code (also a failed prepare or bind).
  int Step() {
    if (rc_ != SQLITE_OK) return rc_;
    const int rc = sqlite3_step(s_);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) rc_ = rc;
    return rc;
  }
  int64_t Int(int col) const { return sqlite3_column_int64(s_, col); }
  bool IsNull(int col) const { return sqlite3_column_type(s_, col) == SQLITE_NULL; }
  std::string Text(int col) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, col));
    return p == nullptr ? std::string() : std::string(p, static_cast<size_t>(sqlite3_column_bytes(s_, col)));
  }

 private:
  sqlite3_stmt* s_ = nullptr;
  int rc_;
};

JobState ParseState(const std::string& s) {
  if (s == "queued") return JobState::kQueued;
  if (s == "running") return JobState::kRunning;
  if (s == "succeeded") return JobState::kSucceeded;
  if (s == "failed") return JobState::kFailed;
  return JobState::kCancelled;  // the schema's CHECK admits nothing else
}

std::string OutcomeName(Outcome o) {
  switch (o) {
    case Outcome::kSucceeded: return "succeeded";
    case Outcome::kFailed: return "failed";
    case Outcome::kCancelled: return "cancelled";
  }
  return "failed";
}

Outcome ParseOutcome(const std::string& s) {
  if (s == "succeeded") return Outcome::kSucceeded;
  if (s == "cancelled") return Outcome::kCancelled;
  return Outcome::kFailed;
}

constexpr const char* kJobColumns =
    "id, name, spec_yaml, source, ranks, priority, max_restarts, time_limit_ms, state, queue_order, restarts, "
    "not_before_ms, message, submitted_ms, updated_ms, "
    "(SELECT epoch FROM attempts a WHERE a.job_id = jobs.id AND a.ended_ms IS NULL)";

JobRecord ReadJob(const Stmt& s) {
  JobRecord j;
  j.id = static_cast<uint64_t>(s.Int(0));
  j.spec.name = s.Text(1);
  j.spec.spec_yaml = s.Text(2);
  j.spec.source = s.Text(3);
  j.spec.ranks = static_cast<int>(s.Int(4));
  j.spec.priority = static_cast<int>(s.Int(5));
  j.spec.max_restarts = static_cast<int>(s.Int(6));
  j.spec.time_limit_ms = s.Int(7);
  j.state = ParseState(s.Text(8));
  j.queue_order = static_cast<uint64_t>(s.Int(9));
  j.restarts = static_cast<int>(s.Int(10));
  j.not_before_ms = s.Int(11);
  j.message = s.Text(12);
  j.submitted_ms = s.Int(13);
  j.updated_ms = s.Int(14);
  j.open_epoch = s.IsNull(15) ? 0 : static_cast<uint64_t>(s.Int(15));
  return j;
}

constexpr const char* kAttemptColumns =
    "epoch, job_id, started_ms, ended_ms, outcome, exit_rank, exit_status, log_tail, message";

AttemptRecord ReadAttempt(const Stmt& s) {
  AttemptRecord a;
  a.epoch = static_cast<uint64_t>(s.Int(0));
  a.job_id = static_cast<uint64_t>(s.Int(1));
  a.started_ms = s.Int(2);
  a.open = s.IsNull(3);
  a.ended_ms = a.open ? 0 : s.Int(3);
  if (!a.open) a.outcome = ParseOutcome(s.Text(4));
  a.exit_rank = static_cast<int>(s.Int(5));
  a.exit_status = static_cast<int>(s.Int(6));
  a.log_tail = s.Text(7);
  a.message = s.Text(8);
  return a;
}

}  // namespace

std::string_view JobStateName(JobState s) {
  switch (s) {
    case JobState::kQueued: return "queued";
    case JobState::kRunning: return "running";
    case JobState::kSucceeded: return "succeeded";
    case JobState::kFailed: return "failed";
    case JobState::kCancelled: return "cancelled";
  }
  return "unknown";
}

bool IsFinal(JobState s) {
  return s == JobState::kSucceeded || s == JobState::kFailed || s == JobState::kCancelled;
}

StateStore::StateStore(sqlite3* db, std::string path, Backoff backoff)
    : db_(db), path_(std::move(path)), backoff_(backoff) {}

StateStore::~StateStore() { sqlite3_close_v2(db_); }

Status StateStore::Fail(const std::string& what) const {
  return IoError("coordinator state " + path_ + ": " + what + ": " + sqlite3_errmsg(db_));
}

Status StateStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err != nullptr ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    return IoError("coordinator state " + path_ + ": " + msg);
  }
  return Status::Ok();
}

// IMMEDIATE: takes the write lock at the start, so a transaction never fails half-way for a lock.
Status StateStore::Begin() { return Exec("BEGIN IMMEDIATE"); }
Status StateStore::Commit() { return Exec("COMMIT"); }
Status StateStore::CommitOrRollback() {
  Status st = Commit();
  if (!st.ok()) Rollback();
  return st;
}
void StateStore::Rollback() { Exec("ROLLBACK").IgnoreError(); }

Result<std::unique_ptr<StateStore>> StateStore::Open(const std::string& path, Backoff backoff) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close_v2(db);
    return IoError("coordinator state " + path + ": cannot open: " + msg);
  }
  std::unique_ptr<StateStore> s(new StateStore(db, path, backoff));
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, 5000);
  // Is it ours? A new file reads application_id 0 and has no tables.
  int app = 0, version = 0, tables = 0;
  {
    Stmt q(db, "PRAGMA application_id");
    if (q.Step() != SQLITE_ROW) return s->Fail("not a SQLite database, or unreadable");
    app = static_cast<int>(q.Int(0));
  }
  {
    Stmt q(db, "PRAGMA user_version");
    if (q.Step() != SQLITE_ROW) return s->Fail("reading the schema version");
    version = static_cast<int>(q.Int(0));
  }
  {
    Stmt q(db, "SELECT count(*) FROM sqlite_schema");
    if (q.Step() != SQLITE_ROW) return s->Fail("reading the schema");
    tables = static_cast<int>(q.Int(0));
  }
  if (app == 0 && tables > 0) {
    return IoError("coordinator state " + path + ": a SQLite database, but not a Cohort coordinator's");
  }
  if (app != 0 && app != kApplicationId) {
    return IoError("coordinator state " + path + ": a SQLite database of another application (id " +
                   std::to_string(app) + ")");
  }
  // WAL: readers do not block the writer and a commit is one append; FULL: the WAL is fsynced at
  // every commit, so an acknowledged change survives a power loss, not only a kill.
  {
    Stmt q(db, "PRAGMA journal_mode=WAL");
    if (q.Step() != SQLITE_ROW) return s->Fail("setting the WAL journal");
    if (q.Text(0) != "wal") {
      return IoError("coordinator state " + path + ": the file system does not support SQLite's WAL journal (got " +
                     q.Text(0) + ")");
    }
  }
  RETURN_IF_ERROR(s->Exec("PRAGMA synchronous=FULL"));
  RETURN_IF_ERROR(s->Exec("PRAGMA foreign_keys=ON"));
  if (app == 0) {
    RETURN_IF_ERROR(s->Begin());
    Status st = s->Exec(kSchema);
    if (st.ok()) st = s->Exec(kRankExits);
    if (st.ok()) {
      st = s->Exec(("PRAGMA application_id=" + std::to_string(kApplicationId) + "; PRAGMA user_version=" +
                    std::to_string(kSchemaVersion))
                       .c_str());
    }
    if (st.ok()) st = s->Commit();
    if (!st.ok()) {
      s->Rollback();
      return st;
    }
  } else if (version == 1) {
    RETURN_IF_ERROR(s->Begin());
    Status st = s->Exec(kRankExits);
    if (st.ok()) st = s->Exec("ALTER TABLE attempts ADD COLUMN message TEXT NOT NULL DEFAULT ''");
    if (st.ok()) st = s->Exec("PRAGMA user_version=2");
    if (st.ok()) st = s->Commit();
    if (!st.ok()) {
      s->Rollback();
      return st;
    }
  } else if (version != kSchemaVersion) {
    return IoError("coordinator state " + path + ": schema version " + std::to_string(version) +
                   ", this coordinator reads version " + std::to_string(kSchemaVersion));
  } else {
    Stmt q(db, "PRAGMA quick_check");
    if (q.Step() != SQLITE_ROW) return s->Fail("checking the database");
    if (q.Text(0) != "ok") return DataLoss("coordinator state " + path + ": damaged: " + q.Text(0));
  }
  return s;
}

Result<uint64_t> StateStore::AddJob(const NewJob& job, int64_t now_ms) {
  if (job.ranks < 1) return InvalidArgument("job " + job.name + ": ranks must be >= 1");
  if (job.max_restarts < 0) return InvalidArgument("job " + job.name + ": max_restarts must be >= 0");
  if (job.time_limit_ms < 0) return InvalidArgument("job " + job.name + ": time limit must be >= 0");
  RETURN_IF_ERROR(Begin());
  Stmt ins(db_,
           "INSERT INTO jobs(name, spec_yaml, source, ranks, priority, max_restarts, time_limit_ms, state, "
           "queue_order, submitted_ms, updated_ms) VALUES(?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?)");
  ins.Bind(1, job.name).Bind(2, job.spec_yaml).Bind(3, job.source).Bind(4, job.ranks).Bind(5, job.priority);
  ins.Bind(6, job.max_restarts).Bind(7, job.time_limit_ms).Bind(8, now_ms).Bind(9, now_ms);
  if (ins.Step() != SQLITE_DONE) {
    Status st = Fail("adding job " + job.name);
    Rollback();
    return st;
  }
  const auto id = static_cast<uint64_t>(sqlite3_last_insert_rowid(db_));
  // FIFO by submission: the id is the order (AUTOINCREMENT never reuses one).
  Stmt order(db_, "UPDATE jobs SET queue_order = id WHERE id = ?");
  order.Bind(1, static_cast<int64_t>(id));
  if (order.Step() != SQLITE_DONE) {
    Status st = Fail("adding job " + job.name);
    Rollback();
    return st;
  }
  RETURN_IF_ERROR(CommitOrRollback());
  return id;
}

Result<JobRecord> StateStore::Job(uint64_t id) {
  Stmt q(db_, (std::string("SELECT ") + kJobColumns + " FROM jobs WHERE id = ?").c_str());
  q.Bind(1, static_cast<int64_t>(id));
  const int rc = q.Step();
  if (rc == SQLITE_ROW) return ReadJob(q);
  if (rc == SQLITE_DONE) return NotFound("no job " + std::to_string(id));
  return Fail("reading job " + std::to_string(id));
}

Result<std::vector<JobRecord>> StateStore::Jobs() {
  Stmt q(db_, (std::string("SELECT ") + kJobColumns + " FROM jobs ORDER BY id").c_str());
  std::vector<JobRecord> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) out.push_back(ReadJob(q));
  if (rc != SQLITE_DONE) return Fail("listing jobs");
  return out;
}

Result<std::vector<std::pair<JobState, int64_t>>> StateStore::CountJobs() {
  Stmt q(db_, "SELECT state, count(*) FROM jobs GROUP BY state");
  std::vector<std::pair<JobState, int64_t>> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) out.emplace_back(ParseState(q.Text(0)), q.Int(1));
  if (rc != SQLITE_DONE) return Fail("counting jobs");
  return out;
}

namespace {

Status ReadPlacements(sqlite3* db, AttemptRecord* a, const std::function<Status(const std::string&)>& fail) {
  Stmt q(db, "SELECT worker, first_rank, count FROM allocations WHERE epoch = ? ORDER BY first_rank");
  q.Bind(1, static_cast<int64_t>(a->epoch));
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) {
    a->placements.push_back({q.Text(0), static_cast<int>(q.Int(1)), static_cast<int>(q.Int(2))});
  }
  if (rc != SQLITE_DONE) return fail("reading the allocation of epoch " + std::to_string(a->epoch));
  return Status::Ok();
}

}  // namespace

Result<std::vector<AttemptRecord>> StateStore::Attempts(uint64_t job_id) {
  Stmt q(db_, (std::string("SELECT ") + kAttemptColumns + " FROM attempts WHERE job_id = ? ORDER BY epoch").c_str());
  q.Bind(1, static_cast<int64_t>(job_id));
  std::vector<AttemptRecord> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) out.push_back(ReadAttempt(q));
  if (rc != SQLITE_DONE) return Fail("reading the attempts of job " + std::to_string(job_id));
  for (AttemptRecord& a : out) RETURN_IF_ERROR(ReadPlacements(db_, &a, [this](const std::string& w) { return Fail(w); }));
  return out;
}

Result<std::vector<AttemptRecord>> StateStore::OpenAttempts() {
  Stmt q(db_, (std::string("SELECT ") + kAttemptColumns + " FROM attempts WHERE ended_ms IS NULL ORDER BY epoch").c_str());
  std::vector<AttemptRecord> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) out.push_back(ReadAttempt(q));
  if (rc != SQLITE_DONE) return Fail("reading the open attempts");
  for (AttemptRecord& a : out) RETURN_IF_ERROR(ReadPlacements(db_, &a, [this](const std::string& w) { return Fail(w); }));
  return out;
}

Result<uint64_t> StateStore::StartAttempt(uint64_t job_id, const std::vector<Placement>& placements,
                                          int64_t now_ms) {
  RETURN_IF_ERROR(Begin());
  auto abort = [&](Status st) {
    Rollback();
    return st;
  };
  const std::string job = "job " + std::to_string(job_id);
  int ranks = 0, attempts = 0;
  {
    Stmt q(db_, "SELECT state, ranks, (SELECT count(*) FROM attempts WHERE job_id = jobs.id) FROM jobs WHERE id = ?");
    q.Bind(1, static_cast<int64_t>(job_id));
    const int rc = q.Step();
    if (rc == SQLITE_DONE) return abort(NotFound("no " + job));
    if (rc != SQLITE_ROW) return abort(Fail("reading " + job));
    if (q.Text(0) != "queued") return abort(InvalidArgument(job + " is " + q.Text(0) + ", not queued: cannot start it"));
    ranks = static_cast<int>(q.Int(1));
    attempts = static_cast<int>(q.Int(2));
  }
  // The placements must cover ranks [0, ranks) exactly once.
  std::vector<Placement> sorted = placements;
  std::sort(sorted.begin(), sorted.end(), [](const Placement& a, const Placement& b) { return a.first_rank < b.first_rank; });
  int next = 0;
  for (const Placement& p : sorted) {
    if (p.count < 1 || p.first_rank != next || p.worker.empty()) {
      return abort(InvalidArgument(job + ": the placements do not cover ranks 0.." + std::to_string(ranks - 1) +
                                   " exactly once"));
    }
    next += p.count;
  }
  if (next != ranks) {
    return abort(InvalidArgument(job + ": the placements hold " + std::to_string(next) + " ranks, the job has " +
                                 std::to_string(ranks)));
  }
  Stmt ins(db_, "INSERT INTO attempts(job_id, started_ms) VALUES(?, ?)");
  ins.Bind(1, static_cast<int64_t>(job_id)).Bind(2, now_ms);
  if (ins.Step() != SQLITE_DONE) return abort(Fail("starting an attempt of " + job));
  const auto epoch = static_cast<uint64_t>(sqlite3_last_insert_rowid(db_));
  for (const Placement& p : sorted) {
    Stmt a(db_, "INSERT INTO allocations(epoch, worker, first_rank, count) VALUES(?, ?, ?, ?)");
    a.Bind(1, static_cast<int64_t>(epoch)).Bind(2, p.worker).Bind(3, p.first_rank).Bind(4, p.count);
    if (a.Step() != SQLITE_DONE) return abort(Fail("allocating " + job + " on " + p.worker));
  }
  Stmt up(db_, "UPDATE jobs SET state = 'running', restarts = ?, updated_ms = ? WHERE id = ?");
  up.Bind(1, attempts).Bind(2, now_ms).Bind(3, static_cast<int64_t>(job_id));
  if (up.Step() != SQLITE_DONE) return abort(Fail("starting " + job));
  RETURN_IF_ERROR(CommitOrRollback());
  return epoch;
}

Result<uint64_t> StateStore::OpenAttemptJob(uint64_t epoch) {
  const std::string attempt = "attempt (epoch " + std::to_string(epoch) + ")";
  Stmt q(db_, "SELECT job_id, ended_ms FROM attempts WHERE epoch = ?");
  q.Bind(1, static_cast<int64_t>(epoch));
  const int rc = q.Step();
  if (rc == SQLITE_DONE) return NotFound("no " + attempt);
  if (rc != SQLITE_ROW) return Fail("reading " + attempt);
  const auto job_id = static_cast<uint64_t>(q.Int(0));
  if (!q.IsNull(1)) {
    return InvalidArgument(attempt + " of job " + std::to_string(job_id) + " has ended already: a stale epoch");
  }
  return job_id;
}

Result<JobRecord> StateStore::EndAttempt(uint64_t epoch, const End& end, int64_t now_ms) {
  RETURN_IF_ERROR(Begin());
  auto abort = [&](Status st) {
    Rollback();
    return st;
  };
  const std::string attempt = "attempt (epoch " + std::to_string(epoch) + ")";
  Result<uint64_t> open = OpenAttemptJob(epoch);
  if (!open.ok()) return abort(open.status());
  const uint64_t job_id = *open;
  int restarts = 0, max_restarts = 0;
  {
    Stmt q(db_, "SELECT restarts, max_restarts FROM jobs WHERE id = ?");
    q.Bind(1, static_cast<int64_t>(job_id));
    if (q.Step() != SQLITE_ROW) return abort(Fail("reading job " + std::to_string(job_id)));
    restarts = static_cast<int>(q.Int(0));
    max_restarts = static_cast<int>(q.Int(1));
  }
  Stmt a(db_,
         "UPDATE attempts SET ended_ms = ?, outcome = ?, exit_rank = ?, exit_status = ?, log_tail = ?, message = ? "
         "WHERE epoch = ?");
  a.Bind(1, now_ms).Bind(2, OutcomeName(end.outcome)).Bind(3, end.exit_rank).Bind(4, end.exit_status);
  a.Bind(5, end.log_tail).Bind(6, end.message).Bind(7, static_cast<int64_t>(epoch));
  if (a.Step() != SQLITE_DONE) return abort(Fail("ending " + attempt));
  std::string state;
  int64_t not_before = 0;
  switch (end.outcome) {
    case Outcome::kSucceeded: state = "succeeded"; break;
    case Outcome::kCancelled: state = "cancelled"; break;
    case Outcome::kFailed:
      if (restarts < max_restarts && !end.no_restart) {
        state = "queued";
        // base * 2^restarts, capped (the shift is bounded so it cannot overflow).
        const int64_t grown = backoff_.base_ms << std::min(restarts, 30);
        not_before = now_ms + std::min(backoff_.max_ms, grown < backoff_.base_ms ? backoff_.max_ms : grown);
        not_before = std::max(not_before, end.not_before_ms);
      } else {
        state = "failed";
      }
      break;
  }
  Stmt up(db_, "UPDATE jobs SET state = ?, not_before_ms = ?, message = ?, updated_ms = ? WHERE id = ?");
  up.Bind(1, state).Bind(2, not_before).Bind(3, state == "queued" ? std::string() : end.message);
  up.Bind(4, now_ms).Bind(5, static_cast<int64_t>(job_id));
  if (up.Step() != SQLITE_DONE) return abort(Fail("ending " + attempt));
  RETURN_IF_ERROR(CommitOrRollback());
  return Job(job_id);
}

Status StateStore::RecordRankExit(uint64_t epoch, int rank, int status) {
  RETURN_IF_ERROR(Begin());
  if (Result<uint64_t> open = OpenAttemptJob(epoch); !open.ok()) {
    Rollback();
    return open.status();
  }
  Stmt ins(db_, "INSERT OR REPLACE INTO rank_exits(epoch, rank, status) VALUES(?, ?, ?)");
  ins.Bind(1, static_cast<int64_t>(epoch)).Bind(2, rank).Bind(3, status);
  if (ins.Step() != SQLITE_DONE) {
    Status st = Fail("recording the exit of rank " + std::to_string(rank) + " (epoch " + std::to_string(epoch) + ")");
    Rollback();
    return st;
  }
  RETURN_IF_ERROR(CommitOrRollback());
  return Status::Ok();
}

Result<std::vector<std::pair<int, int>>> StateStore::RankExits(uint64_t epoch) {
  Stmt q(db_, "SELECT rank, status FROM rank_exits WHERE epoch = ? ORDER BY rank");
  q.Bind(1, static_cast<int64_t>(epoch));
  std::vector<std::pair<int, int>> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) out.emplace_back(static_cast<int>(q.Int(0)), static_cast<int>(q.Int(1)));
  if (rc != SQLITE_DONE) return Fail("reading the rank exits of epoch " + std::to_string(epoch));
  return out;
}

Result<JobRecord> StateStore::FailQueuedJob(uint64_t job_id, const std::string& message, int64_t now_ms) {
  Stmt up(db_, "UPDATE jobs SET state = 'failed', message = ?, updated_ms = ? WHERE id = ? AND state = 'queued'");
  up.Bind(1, message).Bind(2, now_ms).Bind(3, static_cast<int64_t>(job_id));
  if (up.Step() != SQLITE_DONE) return Fail("failing job " + std::to_string(job_id));
  if (sqlite3_changes(db_) != 1) return InvalidArgument("job " + std::to_string(job_id) + " is not queued");
  return Job(job_id);
}

Result<uint64_t> StateStore::CancelJob(uint64_t job_id, const std::string& message, int64_t now_ms) {
  RETURN_IF_ERROR(Begin());
  auto abort = [&](Status st) {
    Rollback();
    return st;
  };
  const std::string job = "job " + std::to_string(job_id);
  uint64_t epoch = 0;
  {
    Stmt q(db_, (std::string("SELECT ") + kJobColumns + " FROM jobs WHERE id = ?").c_str());
    q.Bind(1, static_cast<int64_t>(job_id));
    const int rc = q.Step();
    if (rc == SQLITE_DONE) return abort(NotFound("no " + job));
    if (rc != SQLITE_ROW) return abort(Fail("reading " + job));
    const JobRecord j = ReadJob(q);
    if (IsFinal(j.state)) {
      return abort(InvalidArgument(job + " has ended (" + std::string(JobStateName(j.state)) + "): nothing to cancel"));
    }
    epoch = j.open_epoch;
  }
  if (epoch != 0) {
    Stmt a(db_, "UPDATE attempts SET ended_ms = ?, outcome = 'cancelled', message = ? WHERE epoch = ?");
    a.Bind(1, now_ms).Bind(2, message).Bind(3, static_cast<int64_t>(epoch));
    if (a.Step() != SQLITE_DONE) return abort(Fail("cancelling " + job));
  }
  Stmt up(db_, "UPDATE jobs SET state = 'cancelled', message = ?, updated_ms = ? WHERE id = ?");
  up.Bind(1, message).Bind(2, now_ms).Bind(3, static_cast<int64_t>(job_id));
  if (up.Step() != SQLITE_DONE) return abort(Fail("cancelling " + job));
  RETURN_IF_ERROR(CommitOrRollback());
  return epoch;
}

Status StateStore::UpsertWorker(const std::string& name, int slots, int gpus, int64_t now_ms) {
  return UpsertWorkers({{name, slots, gpus, now_ms}});
}

Status StateStore::UpsertWorkers(const std::vector<WorkerRecord>& workers) {
  for (const WorkerRecord& w : workers) {
    if (w.name.empty()) return InvalidArgument("worker: empty name");
    if (w.slots < 0 || w.gpus < 0) return InvalidArgument("worker " + w.name + ": negative slots or GPUs");
  }
  if (workers.empty()) return Status::Ok();
  RETURN_IF_ERROR(Begin());
  for (const WorkerRecord& w : workers) {
    Stmt q(db_,
           "INSERT INTO workers(name, slots, gpus, registered_ms) VALUES(?, ?, ?, ?) "
           "ON CONFLICT(name) DO UPDATE SET slots = excluded.slots, gpus = excluded.gpus, "
           "registered_ms = excluded.registered_ms");
    q.Bind(1, w.name).Bind(2, w.slots).Bind(3, w.gpus).Bind(4, w.registered_ms);
    if (q.Step() != SQLITE_DONE) {
      Status st = Fail("registering worker " + w.name);
      Rollback();
      return st;
    }
  }
  RETURN_IF_ERROR(CommitOrRollback());
  return Status::Ok();
}

Result<std::vector<WorkerRecord>> StateStore::Workers() {
  Stmt q(db_, "SELECT name, slots, gpus, registered_ms FROM workers ORDER BY name");
  std::vector<WorkerRecord> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) {
    out.push_back({q.Text(0), static_cast<int>(q.Int(1)), static_cast<int>(q.Int(2)), q.Int(3)});
  }
  if (rc != SQLITE_DONE) return Fail("listing workers");
  return out;
}

}  // namespace cohort::coordinator
