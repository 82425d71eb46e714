// The coordinator's building blocks: the wire format (frames, limits, handshake), the scheduling
// policy, and the durable state, including kill -9 of a process in the middle of its writes.
#include <endian.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "coordinator/scheduler.h"
#include "coordinator/state.h"
#include "coordinator/wire.h"
#include "test_util.h"

namespace cohort::coordinator {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// ---------------------------------------------------------------------------------------------
// Wire format

proto::Envelope Submit(uint64_t id, const std::string& yaml) {
  proto::Envelope e;
  e.set_request_id(id);
  e.mutable_submit()->set_spec_yaml(yaml);
  e.mutable_submit()->set_source("job.yaml");
  return e;
}

std::string Frame(const proto::Envelope& e) {
  std::string out;
  Status st = AppendFrame(e, WireLimits(), &out);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return out;
}

// A frame whose payload is `payload`, whatever it holds (for frames a correct sender never makes).
std::string RawFrame(const std::string& payload) {
  const uint32_t n = htole32(static_cast<uint32_t>(payload.size()));
  return std::string(reinterpret_cast<const char*>(&n), 4) + payload;
}

TEST(Wire, FramesSurviveAnySplitOfTheStream) {
  proto::Envelope a = Submit(1, "name: a\n");
  proto::Envelope b;
  b.set_request_id(2);
  auto* hb = b.mutable_heartbeat();
  for (int r = 0; r < 3; ++r) {
    auto* x = hb->add_running();
    x->set_job_id(7);
    x->set_epoch(9);
    x->set_rank(r);
    x->set_pid(1000 + r);
  }
  proto::Envelope c;
  c.set_request_id(3);
  c.mutable_launch()->mutable_env()->insert({"RANK", "0"});
  const std::string stream = Frame(a) + Frame(b) + Frame(c);
  for (size_t chunk : {size_t{1}, size_t{3}, size_t{7}, stream.size()}) {
    FrameDecoder d;
    std::vector<proto::Envelope> got;
    for (size_t at = 0; at < stream.size(); at += chunk) {
      ASSERT_TRUE(d.Feed(stream.data() + at, std::min(chunk, stream.size() - at)).ok());
      proto::Envelope e;
      for (;;) {
        Result<bool> r = d.Next(&e);
        ASSERT_TRUE(r.ok()) << r.status().ToString();
        if (!*r) break;
        got.push_back(e);
      }
    }
    ASSERT_EQ(got.size(), 3u) << "chunk " << chunk;
    EXPECT_EQ(got[0].SerializeAsString(), a.SerializeAsString());
    EXPECT_EQ(got[1].SerializeAsString(), b.SerializeAsString());
    EXPECT_EQ(got[2].SerializeAsString(), c.SerializeAsString());
    EXPECT_EQ(d.buffered(), 0u);
  }
}

TEST(Wire, AnOversizedFrameIsRefusedFromItsHeaderAlone) {
  WireLimits limits;
  limits.max_frame_bytes = 1000;
  FrameDecoder d(limits);
  const uint32_t n = htole32(1001);
  Status st = d.Feed(&n, 4);  // no payload byte sent: nothing of it is buffered or awaited
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("1001 bytes"));
  EXPECT_THAT(st.message(), HasSubstr("limit 1000"));
  proto::Envelope e;
  EXPECT_FALSE(d.Next(&e).ok()) << "the error is sticky";
  EXPECT_FALSE(d.Feed("x", 1).ok());
}

TEST(Wire, AnOversizedFrameAfterAGoodOneFailsTheNextCall) {
  WireLimits limits;
  limits.max_frame_bytes = 1000;
  FrameDecoder d(limits);
  const uint32_t n = htole32(1u << 30);
  const std::string stream = Frame(Submit(1, "x")) + std::string(reinterpret_cast<const char*>(&n), 4);
  // Feed looks at the first frame's header only; the second one's is checked once the first is
  // taken, before any of its payload arrives.
  ASSERT_TRUE(d.Feed(stream.data(), stream.size()).ok());
  proto::Envelope e;
  Result<bool> first = d.Next(&e);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_TRUE(*first);
  EXPECT_EQ(e.request_id(), 1u);
  Result<bool> second = d.Next(&e);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.status().message(), HasSubstr("limit 1000"));
}

TEST(Wire, ATruncatedFrameIsVisibleAsBufferedBytes) {
  const std::string f = Frame(Submit(1, "name: a\n"));
  FrameDecoder d;
  ASSERT_TRUE(d.Feed(f.data(), f.size() - 1).ok());
  proto::Envelope e;
  Result<bool> r = d.Next(&e);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
  EXPECT_EQ(d.buffered(), f.size() - 1);
}

TEST(Wire, GarbageAndEmptyPayloadsAreRefused) {
  {
    FrameDecoder d;
    const std::string f = RawFrame(std::string(16, '\xff'));
    ASSERT_TRUE(d.Feed(f.data(), f.size()).ok());
    proto::Envelope e;
    Result<bool> r = d.Next(&e);
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(r.status().message(), HasSubstr("not a valid envelope"));
  }
  {
    // A well-formed envelope with no message (or one from a newer protocol, unknown here).
    proto::Envelope unknown;
    unknown.set_request_id(5);
    unknown.GetReflection()->MutableUnknownFields(&unknown)->AddVarint(999, 1);
    FrameDecoder d;
    const std::string f = RawFrame(unknown.SerializeAsString());
    ASSERT_TRUE(d.Feed(f.data(), f.size()).ok());
    proto::Envelope e;
    Result<bool> r = d.Next(&e);
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(r.status().message(), HasSubstr("no message this coordinator knows"));
  }
  std::string out;
  EXPECT_FALSE(AppendFrame(proto::Envelope(), WireLimits(), &out).ok());
  EXPECT_TRUE(out.empty());
}

TEST(Wire, CountsAndSizesOfFieldsAreLimitedOnBothEnds) {
  WireLimits limits;
  limits.max_repeated = 10;
  limits.max_string_bytes = 100;
  proto::Envelope many;
  for (int i = 0; i < 11; ++i) many.mutable_job_list()->add_jobs()->set_job_id(static_cast<uint64_t>(i));
  std::string out;
  Status st = AppendFrame(many, limits, &out);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("job_list.jobs has 11 entries (limit 10)"));
  EXPECT_TRUE(out.empty());

  FrameDecoder d(limits);
  std::string f = RawFrame(many.SerializeAsString());
  ASSERT_TRUE(d.Feed(f.data(), f.size()).ok());
  proto::Envelope e;
  Result<bool> r = d.Next(&e);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("job_list.jobs"));

  proto::Envelope big = Submit(1, std::string(101, 'x'));
  FrameDecoder d2(limits);
  f = RawFrame(big.SerializeAsString());
  ASSERT_TRUE(d2.Feed(f.data(), f.size()).ok());
  r = d2.Next(&e);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("submit.spec_yaml holds 101 bytes (limit 100 bytes)"));

  // Map entries count as repeated fields, nested messages are checked too.
  proto::Envelope env;
  for (int i = 0; i < 11; ++i) (*env.mutable_launch()->mutable_env())["K" + std::to_string(i)] = "v";
  EXPECT_THAT(AppendFrame(env, limits, &out).message(), HasSubstr("launch.env has 11 entries"));
  proto::Envelope nested;
  nested.mutable_job_status_reply()->add_attempts()->set_log_tail(std::string(101, 'y'));
  EXPECT_THAT(AppendFrame(nested, limits, &out).message(), HasSubstr("job_status_reply.attempts.log_tail holds 101"));
}

TEST(Wire, TheHandshakeChecksVersionRoleAndToken) {
  auto hello = [](uint32_t version, proto::Role role, const std::string& token) {
    proto::Envelope e;
    e.mutable_hello()->set_protocol_version(version);
    e.mutable_hello()->set_role(role);
    e.mutable_hello()->set_token(token);
    return e;
  };
  const std::string user = "user-secret-0123456789", worker = "worker-secret-9876543210";
  Result<proto::Role> ok = CheckHello(hello(kProtocolVersion, proto::ROLE_USER, user), user, worker);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(*ok, proto::ROLE_USER);
  ok = CheckHello(hello(kProtocolVersion, proto::ROLE_WORKER, worker), user, worker);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, proto::ROLE_WORKER);

  struct Bad {
    proto::Envelope e;
    std::string want;
  };
  std::vector<Bad> bad = {
      {hello(kProtocolVersion, proto::ROLE_USER, "user-secret-0123456788"), "authentication failed for the user role"},
      {hello(kProtocolVersion, proto::ROLE_USER, ""), "authentication failed"},
      {hello(kProtocolVersion, proto::ROLE_USER, user + "x"), "authentication failed"},
      {hello(kProtocolVersion, proto::ROLE_USER, worker), "authentication failed for the user role"},
      {hello(kProtocolVersion, proto::ROLE_WORKER, user), "authentication failed for the worker role"},
      {hello(kProtocolVersion + 1, proto::ROLE_USER, user), "protocol version 2, this coordinator version 1"},
      {hello(kProtocolVersion, proto::ROLE_UNSPECIFIED, user), "unknown role"},
      {Submit(1, "x"), "the first message must be hello, not submit"},
  };
  for (const Bad& b : bad) {
    Result<proto::Role> r = CheckHello(b.e, user, worker);
    ASSERT_FALSE(r.ok()) << b.want;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr(b.want));
    EXPECT_THAT(r.status().message(), Not(HasSubstr(user)));
  }
  // An empty configured token disables the role: no token, not even an empty one, gets in.
  EXPECT_FALSE(CheckHello(hello(kProtocolVersion, proto::ROLE_WORKER, ""), user, "").ok());
}

TEST(Wire, SecretsCompareWhole) {
  EXPECT_TRUE(SecretsEqual("abc", "abc"));
  EXPECT_FALSE(SecretsEqual("abd", "abc"));
  EXPECT_FALSE(SecretsEqual("ab", "abc"));
  EXPECT_FALSE(SecretsEqual("abcabc", "abc")) << "the expected secret repeated is not equal";
  EXPECT_FALSE(SecretsEqual("", ""));
  EXPECT_FALSE(SecretsEqual("abc", ""));
}

// ---------------------------------------------------------------------------------------------
// Scheduling

TEST(Pack, FewestWorkersAndBestFitForTheLast) {
  const std::map<std::string, int> free = {{"a", 8}, {"b", 4}, {"c", 4}, {"d", 2}};
  // One worker is enough: the smallest that fits, ties by name.
  EXPECT_EQ(Pack(free, 4), (std::vector<Placement>{{"b", 0, 4}}));
  EXPECT_EQ(Pack(free, 2), (std::vector<Placement>{{"d", 0, 2}}));
  EXPECT_EQ(Pack(free, 5), (std::vector<Placement>{{"a", 0, 5}}));
  // Two workers: the largest, then the smallest that holds the rest.
  EXPECT_EQ(Pack(free, 10), (std::vector<Placement>{{"a", 0, 8}, {"d", 8, 2}}));
  EXPECT_EQ(Pack(free, 11), (std::vector<Placement>{{"a", 0, 8}, {"b", 8, 3}}));
  // Everything.
  EXPECT_EQ(Pack(free, 18), (std::vector<Placement>{{"a", 0, 8}, {"b", 8, 4}, {"c", 12, 4}, {"d", 16, 2}}));
  EXPECT_TRUE(Pack(free, 19).empty());
  EXPECT_TRUE(Pack({{"a", 0}}, 1).empty());
  EXPECT_TRUE(Pack(free, 0).empty());
}

std::vector<uint64_t> Started(const Decision& d) {
  std::vector<uint64_t> ids;
  for (const Start& s : d.starts) ids.push_back(s.job_id);
  return ids;
}

TEST(Schedule, PriorityFirstThenSubmissionOrder) {
  const std::vector<WorkerCapacity> workers = {{"w1", 4, 0}};
  const std::vector<QueuedJob> queue = {
      {1, 0, 1, 4, 0}, {2, 5, 2, 4, 0}, {3, 5, 3, 4, 0}, {4, 0, 4, 4, 0}};
  Decision d = Schedule(queue, workers, {}, 0);
  EXPECT_EQ(Started(d), (std::vector<uint64_t>{2}));
  // With room for all: the same order.
  d = Schedule(queue, {{"w1", 16, 0}}, {}, 0);
  EXPECT_EQ(Started(d), (std::vector<uint64_t>{2, 3, 1, 4}));
  EXPECT_EQ(d.starts[0].placements, (std::vector<Placement>{{"w1", 0, 4}}));
}

TEST(Schedule, AJobStartsWithAllItsRanksOrNotAtAll) {
  const std::vector<WorkerCapacity> workers = {{"w1", 4, 1}, {"w2", 4, 2}};  // 5 free in all
  Decision d = Schedule({{1, 0, 1, 6, 0}}, workers, {}, 0);
  EXPECT_TRUE(d.starts.empty());
  EXPECT_EQ(d.reserved_job, 1u);
  d = Schedule({{1, 0, 1, 5, 0}}, workers, {}, 0);
  ASSERT_EQ(d.starts.size(), 1u);
  EXPECT_EQ(d.starts[0].placements, (std::vector<Placement>{{"w1", 0, 3}, {"w2", 3, 2}}));
}

TEST(Schedule, ATooLargeJobWaitsWithoutBlockingTheQueue) {
  Decision d = Schedule({{1, 9, 1, 100, 0}, {2, 0, 2, 2, 0}}, {{"w1", 4, 0}}, {}, 0);
  EXPECT_EQ(Started(d), (std::vector<uint64_t>{2}));
  EXPECT_EQ(d.reserved_job, 0u);
}

TEST(Schedule, BackfillNeverDelaysTheReservedJob) {
  // Two workers of 4. Job 100 holds 3 slots on w1 until t=1000; job 101 holds 3 on w2 with no
  // limit. Job 1 (4 ranks) is first in line and does not fit now (2 free: 1 + 1).
  const std::vector<WorkerCapacity> workers = {{"w1", 4, 3}, {"w2", 4, 3}};
  const std::vector<RunningJob> running = {{100, {{"w1", 3}}, 1000}, {101, {{"w2", 3}}, 0}};
  const QueuedJob head{1, 0, 1, 4, 0};
  {
    // It will fit on w1 at t=1000: the shadow time. A 1-rank job ending by then may start now.
    Decision d = Schedule({head, {2, 0, 2, 1, 900}}, workers, running, 0);
    EXPECT_EQ(d.reserved_job, 1u);
    EXPECT_EQ(d.shadow_ms, 1000);
    ASSERT_EQ(Started(d), (std::vector<uint64_t>{2}));
    EXPECT_TRUE(d.starts[0].backfilled);
  }
  {
    // One that would still run at t=1000 may not take w1's slot (the head needs all 4 there)...
    Decision d = Schedule({head, {2, 0, 2, 1, 2000}}, workers, running, 0);
    ASSERT_EQ(Started(d), (std::vector<uint64_t>{2}));
    // ...but w2's free slot is spare at the shadow time, so it goes there.
    EXPECT_EQ(d.starts[0].placements, (std::vector<Placement>{{"w2", 0, 1}}));
    // Without a limit the same holds: it uses only the spare slot.
    d = Schedule({head, {2, 0, 2, 1, 0}}, workers, running, 0);
    ASSERT_EQ(Started(d), (std::vector<uint64_t>{2}));
    EXPECT_EQ(d.starts[0].placements, (std::vector<Placement>{{"w2", 0, 1}}));
  }
  {
    // Two such jobs: only one spare slot.
    Decision d = Schedule({head, {2, 0, 2, 1, 0}, {3, 0, 3, 1, 0}}, workers, running, 0);
    EXPECT_EQ(Started(d), (std::vector<uint64_t>{2}));
  }
  {
    // A 2-rank job fits now (1 + 1) but would need w1's slot past t=1000: refused.
    Decision d = Schedule({head, {2, 0, 2, 2, 5000}}, workers, running, 0);
    EXPECT_TRUE(d.starts.empty());
    // Ending before the shadow time it may.
    d = Schedule({head, {2, 0, 2, 2, 1000}}, workers, running, 0);
    EXPECT_EQ(Started(d), (std::vector<uint64_t>{2}));
  }
}

TEST(Schedule, WithoutTimeLimitsOnlyLimitedJobsBackfill) {
  const std::vector<WorkerCapacity> workers = {{"w1", 4, 3}};
  const std::vector<RunningJob> running = {{100, {{"w1", 3}}, 0}};  // runs for ever, as far as we know
  Decision d = Schedule({{1, 0, 1, 4, 0}, {2, 0, 2, 1, 0}, {3, 0, 3, 1, 60000}}, workers, running, 0);
  EXPECT_EQ(d.reserved_job, 1u);
  EXPECT_EQ(d.shadow_ms, -1);
  EXPECT_EQ(Started(d), (std::vector<uint64_t>{3}));
}

TEST(Schedule, JobsStartedAheadOfTheReservationCountForItsShadow) {
  // Job 1 starts now with a 500 ms limit on 2 of 4 slots; job 2 (4 ranks) then waits for it.
  Decision d = Schedule({{1, 5, 1, 2, 500}, {2, 0, 2, 4, 0}}, {{"w1", 4, 0}}, {}, 100);
  EXPECT_EQ(Started(d), (std::vector<uint64_t>{1}));
  EXPECT_EQ(d.reserved_job, 2u);
  EXPECT_EQ(d.shadow_ms, 600);
}

// ---------------------------------------------------------------------------------------------
// Durable state

NewJob Spec(const std::string& name, int ranks = 2, int max_restarts = 0) {
  NewJob j;
  j.name = name;
  j.spec_yaml = "name: " + name + "\n";
  j.source = "/jobs/" + name + ".yaml";
  j.ranks = ranks;
  j.max_restarts = max_restarts;
  return j;
}

StateStore::End E(Outcome o, int rank = -1, int status = 0, std::string tail = "", std::string message = "") {
  StateStore::End e;
  e.outcome = o;
  e.exit_rank = rank;
  e.exit_status = status;
  e.log_tail = std::move(tail);
  e.message = std::move(message);
  return e;
}

std::unique_ptr<StateStore> OpenOrDie(const std::string& path, Backoff b = Backoff()) {
  auto s = StateStore::Open(path, b);
  COHORT_CHECK(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

TEST(State, AJobRunsAndSucceeds) {
  testing::TempDir dir;
  auto s = OpenOrDie(dir / "state.db");
  Result<uint64_t> id = s->AddJob(Spec("a"), 1000);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  Result<JobRecord> j = s->Job(*id);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->state, JobState::kQueued);
  EXPECT_EQ(j->spec.spec_yaml, "name: a\n");
  EXPECT_EQ(j->submitted_ms, 1000);

  Result<uint64_t> epoch = s->StartAttempt(*id, {{"w1", 0, 1}, {"w2", 1, 1}}, 2000);
  ASSERT_TRUE(epoch.ok()) << epoch.status().ToString();
  j = s->Job(*id);
  EXPECT_EQ(j->state, JobState::kRunning);
  EXPECT_EQ(j->open_epoch, *epoch);
  auto open = s->OpenAttempts();
  ASSERT_TRUE(open.ok());
  ASSERT_EQ(open->size(), 1u);
  EXPECT_EQ((*open)[0].placements, (std::vector<Placement>{{"w1", 0, 1}, {"w2", 1, 1}}));

  Result<JobRecord> ended = s->EndAttempt(*epoch, E(Outcome::kSucceeded), 3000);
  ASSERT_TRUE(ended.ok()) << ended.status().ToString();
  EXPECT_EQ(ended->state, JobState::kSucceeded);
  EXPECT_EQ(ended->open_epoch, 0u);
  EXPECT_TRUE(s->OpenAttempts()->empty());

  // A second report about the same attempt is stale; the job does not change.
  Result<JobRecord> stale = s->EndAttempt(*epoch, E(Outcome::kFailed), 4000);
  ASSERT_FALSE(stale.ok());
  EXPECT_THAT(stale.status().message(), HasSubstr("stale epoch"));
  EXPECT_EQ(s->Job(*id)->state, JobState::kSucceeded);
  // An ended job cannot start again or be cancelled.
  EXPECT_THAT(s->StartAttempt(*id, {{"w1", 0, 2}}, 5000).status().message(), HasSubstr("succeeded, not queued"));
  EXPECT_THAT(s->CancelJob(*id, "", 5000).status().message(), HasSubstr("has ended (succeeded)"));
}

TEST(State, FailuresRestartUpToTheBudgetThenFailWithTheFirstRanksStatus) {
  testing::TempDir dir;
  auto s = OpenOrDie(dir / "state.db", Backoff{1000, 3000});
  const uint64_t id = *s->AddJob(Spec("flaky", 1, /*max_restarts=*/2), 0);
  std::vector<int64_t> not_before;
  int launches = 0;
  int64_t now = 10;
  for (;;) {
    Result<JobRecord> j = s->Job(id);
    ASSERT_TRUE(j.ok());
    if (j->state != JobState::kQueued) break;
    ASSERT_LE(launches, 10) << "never stops";
    Result<uint64_t> e = s->StartAttempt(id, {{"w", 0, 1}}, now);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    ++launches;
    EXPECT_EQ(s->Job(id)->restarts, launches - 1);
    Result<JobRecord> after = s->EndAttempt(*e, E(Outcome::kFailed, 0, 1, "Traceback...\nboom\n", "rank 0 exited with status 1"), now);
    ASSERT_TRUE(after.ok()) << after.status().ToString();
    if (after->state == JobState::kQueued) not_before.push_back(after->not_before_ms - now);
    now += 100000;
  }
  EXPECT_EQ(launches, 3);
  // Backoff: base, 2 x base (capped at 3000 from then on).
  EXPECT_EQ(not_before, (std::vector<int64_t>{1000, 2000}));
  Result<JobRecord> j = s->Job(id);
  EXPECT_EQ(j->state, JobState::kFailed);
  EXPECT_EQ(j->restarts, 2);
  EXPECT_EQ(j->message, "rank 0 exited with status 1");
  auto attempts = s->Attempts(id);
  ASSERT_EQ(attempts->size(), 3u);
  for (const AttemptRecord& a : *attempts) {
    EXPECT_FALSE(a.open);
    EXPECT_EQ(a.outcome, Outcome::kFailed);
    EXPECT_EQ(a.exit_status, 1);
    EXPECT_EQ(a.log_tail, "Traceback...\nboom\n");
  }
}

TEST(State, CancellingAQueuedOrRunningJob) {
  testing::TempDir dir;
  auto s = OpenOrDie(dir / "state.db");
  const uint64_t queued = *s->AddJob(Spec("q"), 0);
  const uint64_t running = *s->AddJob(Spec("r", 1), 0);
  const uint64_t epoch = *s->StartAttempt(running, {{"w", 0, 1}}, 1);
  Result<uint64_t> c = s->CancelJob(queued, "cancelled by alice", 2);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, 0u);
  c = s->CancelJob(running, "cancelled by bob", 3);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, epoch) << "the caller stops the ranks of this attempt";
  EXPECT_EQ(s->Job(queued)->state, JobState::kCancelled);
  EXPECT_EQ(s->Job(running)->message, "cancelled by bob");
  EXPECT_TRUE(s->OpenAttempts()->empty());
  // The attempt's late exit report is stale.
  EXPECT_THAT(s->EndAttempt(epoch, E(Outcome::kFailed), 4).status().message(), HasSubstr("stale epoch"));
  EXPECT_EQ(s->CancelJob(12345, "", 5).status().code(), Code::kNotFound);
}

TEST(State, PlacementsMustCoverEveryRankOnce) {
  testing::TempDir dir;
  auto s = OpenOrDie(dir / "state.db");
  const uint64_t id = *s->AddJob(Spec("a", 4), 0);
  const std::vector<std::vector<Placement>> bad = {
      {{"w1", 0, 3}},                   // too few
      {{"w1", 0, 3}, {"w2", 2, 2}},     // overlapping
      {{"w1", 0, 2}, {"w2", 3, 1}},     // a gap
      {{"w1", 0, 4}, {"w2", 4, 1}},     // too many
      {{"", 0, 4}},                     // no worker
  };
  for (const auto& p : bad) {
    Result<uint64_t> e = s->StartAttempt(id, p, 1);
    EXPECT_EQ(e.status().code(), Code::kInvalidArgument);
  }
  EXPECT_EQ(s->Job(id)->state, JobState::kQueued);
  EXPECT_TRUE(s->Attempts(id)->empty()) << "a refused start leaves nothing behind";
  EXPECT_TRUE(s->StartAttempt(id, {{"w2", 2, 2}, {"w1", 0, 2}}, 1).ok());
}

TEST(State, EverythingSurvivesReopeningAndEpochsKeepGrowing) {
  testing::TempDir dir;
  std::vector<JobRecord> before;
  uint64_t last_epoch = 0;
  {
    auto s = OpenOrDie(dir / "state.db");
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(s->AddJob(Spec("j" + std::to_string(i), 1, 1), i).ok());
    last_epoch = *s->StartAttempt(1, {{"w", 0, 1}}, 10);
    ASSERT_TRUE(s->EndAttempt(last_epoch, E(Outcome::kFailed, 0, 137, "killed"), 11).ok());
    last_epoch = *s->StartAttempt(1, {{"w", 0, 1}}, 20);
    ASSERT_TRUE(s->UpsertWorker("w", 8, 0, 5).ok());
    ASSERT_TRUE(s->CancelJob(3, "no longer needed", 30).ok());
    before = *s->Jobs();
  }
  auto s = OpenOrDie(dir / "state.db");
  std::vector<JobRecord> after = *s->Jobs();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i].id, before[i].id);
    EXPECT_EQ(after[i].state, before[i].state);
    EXPECT_EQ(after[i].spec.spec_yaml, before[i].spec.spec_yaml);
    EXPECT_EQ(after[i].restarts, before[i].restarts);
    EXPECT_EQ(after[i].not_before_ms, before[i].not_before_ms);
    EXPECT_EQ(after[i].message, before[i].message);
    EXPECT_EQ(after[i].open_epoch, before[i].open_epoch);
    EXPECT_EQ(after[i].updated_ms, before[i].updated_ms);
  }
  EXPECT_EQ(after[0].open_epoch, last_epoch);
  auto workers = s->Workers();
  ASSERT_EQ(workers->size(), 1u);
  EXPECT_EQ((*workers)[0].slots, 8);
  // A new attempt gets a larger epoch than any before the restart.
  const uint64_t next = *s->StartAttempt(2, {{"w", 0, 1}}, 40);
  EXPECT_GT(next, last_epoch);
}

TEST(State, RankExitsAreDurableAndRefusedForEndedAttempts) {
  testing::TempDir dir;
  uint64_t epoch = 0;
  {
    auto s = OpenOrDie(dir / "state.db");
    const uint64_t id = *s->AddJob(Spec("a", 3), 0);
    epoch = *s->StartAttempt(id, {{"w", 0, 3}}, 1);
    ASSERT_TRUE(s->RecordRankExit(epoch, 2, 0).ok());
    ASSERT_TRUE(s->RecordRankExit(epoch, 0, 0).ok());
  }
  auto s = OpenOrDie(dir / "state.db");
  auto exits = s->RankExits(epoch);
  ASSERT_TRUE(exits.ok());
  EXPECT_EQ(*exits, (std::vector<std::pair<int, int>>{{0, 0}, {2, 0}}));
  ASSERT_TRUE(s->EndAttempt(epoch, E(Outcome::kFailed, 1, 9, "", "rank 1 exited with status 9"), 2).ok());
  EXPECT_THAT(s->RecordRankExit(epoch, 1, 9).message(), HasSubstr("stale epoch"));
  EXPECT_EQ(s->RecordRankExit(12345, 0, 0).code(), Code::kNotFound);
  auto attempts = s->Attempts(1);
  ASSERT_EQ(attempts->size(), 1u);
  EXPECT_EQ((*attempts)[0].message, "rank 1 exited with status 9") << "why an attempt ended is kept";
}

TEST(State, AQueuedJobThatCanNeverRunIsFailed) {
  testing::TempDir dir;
  auto s = OpenOrDie(dir / "state.db");
  const uint64_t id = *s->AddJob(Spec("a"), 0);
  Result<JobRecord> j = s->FailQueuedJob(id, "the job spec no longer parses: x", 5);
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_EQ(j->state, JobState::kFailed);
  EXPECT_EQ(j->message, "the job spec no longer parses: x");
  EXPECT_EQ(s->FailQueuedJob(id, "again", 6).status().code(), Code::kInvalidArgument);
}

TEST(State, AVersionOneDatabaseIsUpgraded) {
  testing::TempDir dir;
  const std::string path = dir / "state.db";
  {
    auto s = OpenOrDie(path);
    const uint64_t id = *s->AddJob(Spec("old", 1), 0);
    ASSERT_TRUE(s->StartAttempt(id, {{"w", 0, 1}}, 1).ok());
  }
  // What version 1 was: no rank_exits table, no attempts.message.
  ASSERT_EQ(std::system(("sqlite3 " + path + " 'DROP TABLE rank_exits; ALTER TABLE attempts DROP COLUMN message; "
                         "PRAGMA user_version=1'").c_str()),
            0);
  auto s = OpenOrDie(path);
  ASSERT_TRUE(s->RecordRankExit(1, 0, 0).ok());
  ASSERT_TRUE(s->EndAttempt(1, E(Outcome::kFailed, -1, 0, "", "lost"), 3).ok());
  EXPECT_EQ((*s->Attempts(1))[0].message, "lost");
  EXPECT_EQ(s->Job(1)->spec.name, "old") << "the jobs survive the upgrade";
}

TEST(State, RefusesFilesThatAreNotItsDatabase) {
  testing::TempDir dir;
  testing::WriteFile(dir / "garbage.db", std::string(8192, 'g'));
  auto r = StateStore::Open(dir / "garbage.db");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr(dir / "garbage.db"));
  // Another application's SQLite database.
  ASSERT_EQ(std::system(("sqlite3 " + dir / "other.db" + " 'CREATE TABLE t(x)'").c_str()), 0);
  r = StateStore::Open(dir / "other.db");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("not a Cohort coordinator's"));
  // A directory that does not exist.
  r = StateStore::Open(dir / "missing/state.db");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("missing/state.db"));
}

// A child process runs job lifecycles against the database and reports each transaction after it
// returned ("<job> <state>\n" on a pipe); the test kills it with SIGKILL at a random moment, then
// reopens the database: every reported change must be there (or a later one of the same job), the
// database must pass SQLite's integrity check, and the lifecycle's invariants must hold.
TEST(State, KillMinusNineDuringWritesLosesNoAcknowledgedChange) {
  testing::TempDir dir;
  const std::string path = dir / "state.db";
  { OpenOrDie(path); }
  std::mt19937 rng(20261202);
  std::map<uint64_t, int> reported;  // job -> furthest reported lifecycle step (1 added, 2 running, 3 ended)
  int kills = 0;
  for (int round = 0; round < 12; ++round) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      auto s = StateStore::Open(path);
      if (!s.ok()) ::_exit(3);
      for (int64_t now = 0;; ++now) {
        Result<uint64_t> id = (*s)->AddJob(Spec("crash", 1, 0), now);
        if (!id.ok()) ::_exit(4);
        std::string line = std::to_string(*id) + " 1\n";
        if (::write(fds[1], line.data(), line.size()) < 0) ::_exit(5);
        Result<uint64_t> e = (*s)->StartAttempt(*id, {{"w", 0, 1}}, now);
        if (!e.ok()) ::_exit(6);
        line = std::to_string(*id) + " 2\n";
        if (::write(fds[1], line.data(), line.size()) < 0) ::_exit(5);
        if (!(*s)->EndAttempt(*e, E(Outcome::kSucceeded), now).ok()) ::_exit(7);
        line = std::to_string(*id) + " 3\n";
        if (::write(fds[1], line.data(), line.size()) < 0) ::_exit(5);
      }
    }
    ::close(fds[1]);
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 180));
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the writer ended on its own with status " << WEXITSTATUS(status);
    ++kills;
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    ::close(fds[0]);
    // Whole lines only: the last may have been cut by the kill.
    size_t at = 0;
    for (size_t nl; (nl = out.find('\n', at)) != std::string::npos; at = nl + 1) {
      uint64_t job = 0;
      int step = 0;
      ASSERT_EQ(std::sscanf(out.c_str() + at, "%lu %d", &job, &step), 2);
      reported[job] = std::max(reported[job], step);
    }

    auto s = StateStore::Open(path);
    ASSERT_TRUE(s.ok()) << "after kill " << kills << ": " << s.status().ToString();
    std::vector<JobRecord> jobs = *(*s)->Jobs();
    std::map<uint64_t, const JobRecord*> by_id;
    for (const JobRecord& j : jobs) by_id[j.id] = &j;
    for (const auto& [job, step] : reported) {
      ASSERT_EQ(by_id.count(job), 1u) << "job " << job << " was acknowledged and is gone";
      const JobRecord& j = *by_id[job];
      const int have = j.state == JobState::kQueued ? 1 : j.state == JobState::kRunning ? 2 : 3;
      EXPECT_GE(have, step) << "job " << job << " went back from step " << step;
    }
    for (const JobRecord& j : jobs) {
      auto attempts = *(*s)->Attempts(j.id);
      int open = 0;
      for (const AttemptRecord& a : attempts) open += a.open ? 1 : 0;
      EXPECT_EQ(open, j.state == JobState::kRunning ? 1 : 0) << "job " << j.id;
      EXPECT_EQ(j.state == JobState::kQueued, attempts.empty()) << "job " << j.id;
      if (j.state == JobState::kRunning) {
        // A job left running by the kill: what a restarted coordinator fails (no restarts here).
        ASSERT_TRUE((*s)->EndAttempt(j.open_epoch, E(Outcome::kFailed, -1, 0, "", "coordinator restarted"), 0).ok());
      }
    }
  }
  EXPECT_EQ(kills, 12);
  EXPECT_GT(reported.size(), 12u) << "the writer made progress between kills";
  ASSERT_EQ(std::system(("sqlite3 " + path + " 'PRAGMA integrity_check' | grep -qx ok").c_str()), 0);
}

}  // namespace
}  // namespace cohort::coordinator
