// The coordinator service with a fake clock: heartbeat timeouts, restart backoff and fencing are
// driven by moving the clock, not by waiting. Clients are the real client over real loopback TCP;
// the service runs on a thread of its own.
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "coordinator/client.h"
#include "coordinator/service.h"
#include "test_util.h"

namespace cohort::coordinator {
namespace {

using ::testing::HasSubstr;
using std::chrono::milliseconds;

class FakeClock : public Clock {
 public:
  int64_t NowMs() override { return 1'800'000'000'000 + t_.load(); }
  int64_t SteadyMs() override { return t_.load(); }
  void Advance(int64_t ms) { t_ += ms; }
  // Moves the clock in steps the service's ticks see one by one (a single jump would look like a
  // stalled event loop, which the service forgives).
  void Walk(int64_t ms) {
    for (int64_t done = 0; done < ms; done += 250) {
      Advance(std::min<int64_t>(250, ms - done));
      std::this_thread::sleep_for(std::chrono::milliseconds(15));
    }
  }

 private:
  std::atomic<int64_t> t_{1'000'000};
};

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServiceOptions o;
    o.state_dir = dir_.path() + "/state";
    o.listen_port = 0;
    o.http_host.clear();
    o.user_token = "user-token-0123456789";
    o.worker_token = "worker-token-0123456789";
    o.heartbeat_timeout_ms = 10000;
    o.heartbeat_interval_ms = 1000;
    o.tick_ms = 5;
    o.backoff = {1000, 1000};
    o.stop_on_signals = false;
    auto s = Service::Create(o, nullptr, &clock_);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    service_ = std::move(s).value();
    thread_ = std::thread([this] { run_status_ = service_->Run(); });
  }
  void TearDown() override {
    if (service_) service_->Stop();
    if (thread_.joinable()) thread_.join();
  }

  std::unique_ptr<Client> Connect(proto::Role role, const std::string& token) {
    ClientOptions c;
    c.port = service_->port();
    c.role = role;
    c.token = token;
    auto r = Client::Connect(c);
    COHORT_CHECK(r.ok()) << r.status().ToString();
    return std::move(r).value();
  }
  std::unique_ptr<Client> User() { return Connect(proto::ROLE_USER, "user-token-0123456789"); }
  std::unique_ptr<Client> Worker(const std::string& name, int slots) {
    auto w = Connect(proto::ROLE_WORKER, "worker-token-0123456789");
    proto::Envelope reg;
    reg.mutable_register_worker()->set_name(name);
    reg.mutable_register_worker()->set_slots(slots);
    reg.mutable_register_worker()->set_stop_grace_ms(500);  // a lost worker's jobs wait this before restarting
    auto r = w->Call(reg, milliseconds(5000));
    COHORT_CHECK(r.ok() && r->body_case() == proto::Envelope::kRegistered) << r.status().ToString();
    return w;
  }

  // The next LaunchRanks the worker gets (skipping heartbeat acks), within 5 s of real time.
  std::optional<proto::LaunchRanks> NextLaunch(Client& w) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::chrono::steady_clock::now() < deadline) {
      auto m = w.Receive(milliseconds(100));
      if (!m.ok()) return std::nullopt;
      if (m->has_value() && (*m)->body_case() == proto::Envelope::kLaunch) return (*m)->launch();
    }
    return std::nullopt;
  }

  proto::JobStatusReply StatusOf(Client& u, uint64_t id) {
    proto::Envelope q;
    q.mutable_job_status()->set_job_id(id);
    auto r = u.Call(q, milliseconds(5000));
    COHORT_CHECK(r.ok()) << r.status().ToString();
    return r->job_status_reply();
  }

  // Waits (real time, up to 5 s) until the job's status satisfies `pred`.
  template <typename Pred>
  proto::JobStatusReply WaitFor(Client& u, uint64_t id, Pred pred) {
    proto::JobStatusReply s;
    for (int i = 0; i < 500; ++i) {
      s = StatusOf(u, id);
      if (pred(s)) return s;
      std::this_thread::sleep_for(milliseconds(10));
    }
    return s;
  }

  testing::TempDir dir_;
  FakeClock clock_;
  std::unique_ptr<Service> service_;
  std::thread thread_;
  Status run_status_;
};

TEST_F(ServiceTest, ASilentWorkerIsDownAfterTheTimeoutAndItsJobRestartsElsewhereFenced) {
  auto user = User();
  auto w1 = Worker("w1", 2);
  proto::Envelope submit;
  submit.mutable_submit()->set_spec_yaml("name: sleeper\ncommand: 'sleep 100'\nlaunch: {ranks: 2, max_restarts: 1}\n");
  submit.mutable_submit()->set_source("/jobs/sleeper.yaml");
  auto r = user->Call(submit, milliseconds(5000));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const uint64_t id = r->submit_reply().job_id();
  auto first = NextLaunch(*w1);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->ranks_size(), 2);
  EXPECT_EQ(first->world_size(), 2);
  EXPECT_EQ(first->env().at("COHORT_RESTART_COUNT"), "0");
  EXPECT_EQ(first->env().at("MASTER_ADDR"), "127.0.0.1");

  // 9.9 s without a heartbeat: still up. 10.1 s: down, the attempt fails, the job is requeued.
  clock_.Walk(9900);
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_EQ(StatusOf(*user, id).job().state(), proto::JOB_RUNNING);
  clock_.Walk(200);
  auto s = WaitFor(*user, id, [](const proto::JobStatusReply& x) { return x.job().state() == proto::JOB_QUEUED; });
  ASSERT_EQ(s.job().state(), proto::JOB_QUEUED);
  ASSERT_EQ(s.attempts_size(), 1);
  EXPECT_THAT(s.attempts(0).message(), HasSubstr("worker w1 lost: no heartbeat for 10"));

  // A new worker: nothing starts before the backoff (1 s of the fake clock) has passed.
  auto w2 = Worker("w2", 2);
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_EQ(StatusOf(*user, id).job().state(), proto::JOB_QUEUED);
  clock_.Walk(1000);
  auto second = NextLaunch(*w2);
  ASSERT_TRUE(second.has_value());
  EXPECT_GT(second->epoch(), first->epoch());
  EXPECT_EQ(second->env().at("COHORT_RESTART_COUNT"), "1");

  // The old worker's late report of the old epoch is stale: the restarted attempt is unaffected.
  proto::Envelope late;
  auto* x = late.mutable_rank_exited();
  x->set_job_id(id);
  x->set_epoch(first->epoch());
  x->set_rank(0);
  x->set_exit_status(1);
  auto ack = w1->Call(late, milliseconds(5000));
  // w1 was declared down and its connection closed; a reconnecting w1 would be told to stop.
  if (ack.ok()) {
    EXPECT_EQ(ack->body_case(), proto::Envelope::kAck);
  }
  auto w1b = Worker("w1", 2);
  proto::Envelope hb;
  auto* running = hb.mutable_heartbeat()->add_running();
  running->set_job_id(id);
  running->set_epoch(first->epoch());
  running->set_rank(0);
  ASSERT_TRUE(w1b->Send(hb, milliseconds(5000)).ok());
  bool told_to_stop = false;
  for (int i = 0; i < 50 && !told_to_stop; ++i) {
    auto m = w1b->Receive(milliseconds(100));
    ASSERT_TRUE(m.ok());
    if (m->has_value() && (*m)->body_case() == proto::Envelope::kStop) {
      EXPECT_EQ((*m)->stop().epoch(), first->epoch());
      told_to_stop = true;
    }
  }
  EXPECT_TRUE(told_to_stop) << "ranks of an ended epoch must be stopped";
  s = StatusOf(*user, id);
  EXPECT_EQ(s.job().state(), proto::JOB_RUNNING);
  EXPECT_EQ(s.job().restarts(), 1u);
}

TEST_F(ServiceTest, AnAttemptPastItsTimeLimitFailsTheJobWithoutARestart) {
  auto user = User();
  auto w = Worker("w", 1);
  proto::Envelope submit;
  submit.mutable_submit()->set_spec_yaml(
      "name: slow\ncommand: 'sleep 100'\nlaunch: {ranks: 1, max_restarts: 3, time_limit_s: 60}\n");
  auto r = user->Call(submit, milliseconds(5000));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const uint64_t id = r->submit_reply().job_id();
  auto launch = NextLaunch(*w);
  ASSERT_TRUE(launch.has_value());
  // Heartbeats listing the rank keep the worker up while the clock passes the limit.
  proto::Envelope hb;
  auto* rr = hb.mutable_heartbeat()->add_running();
  rr->set_job_id(id);
  rr->set_epoch(launch->epoch());
  rr->set_rank(0);
  for (int i = 0; i < 70; ++i) {
    clock_.Walk(1000);
    ASSERT_TRUE(w->Send(hb, milliseconds(5000)).ok());
  }
  auto s = WaitFor(*user, id, [](const proto::JobStatusReply& x) { return x.job().state() == proto::JOB_FAILED; });
  EXPECT_EQ(s.job().state(), proto::JOB_FAILED);
  EXPECT_THAT(s.job().message(), HasSubstr("time limit of 60 s reached"));
  EXPECT_EQ(s.job().restarts(), 0u);
}

}  // namespace
}  // namespace cohort::coordinator
