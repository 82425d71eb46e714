// The coordinator service (`cohort coordinator`): accepts jobs from users, schedules their ranks
// onto worker agents, supervises the attempts, and keeps every decision in the durable state
// (state.h) before acting on it, so a kill -9 and a restart lose no job.
//
// One thread runs everything (a Boost.Asio event loop in service.cc): connections, timers and the
// state store, so no locks guard the state.
//
// Behaviour (docs/coordinator.md):
//  - Connections: the wire format of wire.h; the first frame is a Hello checked against the user
//    or the worker token (CheckHello); a client that sends no Hello within handshake_timeout, or a
//    user connection idle for idle_timeout, is closed. Beyond max_connections a new connection is
//    closed at once. A frame breaking a limit closes its connection; others are unaffected.
//  - Workers register (name, slots) and heartbeat; one not heard from for heartbeat_timeout (or
//    disconnected that long without registering again) is down: every attempt with ranks on it
//    fails, its other ranks are stopped, and the job is requeued (restarts left) or fails.
//  - Attempts: the scheduler (scheduler.h) places queued jobs; each start is recorded (an epoch)
//    before LaunchRanks goes out. A rank exiting non-zero fails the attempt (the first failing
//    rank's status and log tail are kept); all ranks exiting 0 succeed it. Reports carrying an
//    epoch that is not open are refused (fencing), and ranks a worker runs for such an epoch are
//    told to stop.
//  - Restart of the coordinator: attempts that were open are given reattach_grace for their
//    workers to register again and list their ranks; an attempt not wholly re-attached by then
//    fails (and is requeued by the usual rules).
//  - Rendezvous: for built-in trainer jobs of more than one rank, a per-attempt key-value store
//    (RendezvousHost) that the ranks' Gloo bootstrap connects to (COHORT_RENDEZVOUS=store://...).
//    Every job's ranks also get the torchrun-style environment (RANK, WORLD_SIZE, LOCAL_RANK,
//    LOCAL_WORLD_SIZE, MASTER_ADDR = the address of rank 0's worker, MASTER_PORT).
//  - Logs: workers stream their ranks' output; it is kept under <state_dir>/logs/<job>/.
//  - Observability: heartbeats carry the latest training step of each job's rank 0 (step, loss,
//    tokens/s, data wait, checkpoint stall); an HTTP port serves them with the queue, workers and
//    slots as Prometheus metrics, and jobs and workers as JSON.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"
#include "coordinator/state.h"
#include "coordinator/wire.h"

namespace cohort::coordinator {

// The service reads time only through this, so tests can drive heartbeat timeouts, backoffs and
// grace periods with a fake clock. Wall time stamps what is recorded (and time limits, which must
// survive a restart); liveness deadlines use the monotonic clock, so a step of the wall clock
// (NTP) or a paused VM does not declare every worker dead at once.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowMs() = 0;     // milliseconds since the Unix epoch
  virtual int64_t SteadyMs() = 0;  // milliseconds on a monotonic clock
};
Clock* SystemClock();

// Serves one key-value store per attempt for the Gloo bootstrap of the ranks it launches. The
// coordinator library does not depend on the collectives; `cohort coordinator` passes an
// implementation over collectives::KvStoreServer.
class RendezvousHost {
 public:
  virtual ~RendezvousHost() = default;
  virtual Result<int> Open(uint64_t epoch) = 0;  // the port of a new store
  virtual void Close(uint64_t epoch) = 0;
};

struct ServiceOptions {
  std::string state_dir;                // required: state.db and logs/
  std::string listen_host = "127.0.0.1";
  int listen_port = 7450;               // 0: any free port (see Service::port)
  // HTTP: /metrics (Prometheus text format), /api/jobs, /api/jobs/<id>, /api/workers (JSON).
  // Unauthenticated, read-only: keep it on loopback or a trusted network. "" = off.
  std::string http_host = "127.0.0.1";
  int http_port = 7451;                 // 0: any free port (see Service::http_port)
  std::string user_token;               // empty: no user may connect
  std::string worker_token;             // empty: no worker may connect
  // The address ranks use to reach the coordinator's rendezvous stores; "" = listen_host (which
  // must then be a specific address, not 0.0.0.0 or ::).
  std::string advertise_host;
  int64_t heartbeat_interval_ms = 1000;
  int64_t heartbeat_timeout_ms = 10000;
  int64_t reattach_grace_ms = 30000;
  int64_t handshake_timeout_ms = 5000;
  int64_t idle_timeout_ms = 10 * 60 * 1000;  // user connections
  int64_t tick_ms = 100;                // housekeeping period (timeouts, backoffs, time limits)
  // After a failed attempt, its slots stay held until the worker reports its ranks gone (they may
  // still be writing a checkpoint, or holding GPU memory), or this long (at least the worker's
  // stop grace).
  int64_t drain_timeout_ms = 60000;
  // A late tick (the loop stalled: slow disk, stopped process) extends the workers' deadlines by
  // the stall, up to one heartbeat timeout per worker between its heartbeats.
  bool forgive_stalls = true;
  Backoff backoff;
  WireLimits limits;
  size_t max_connections = 20000;
  int master_port_base = 29500;         // MASTER_PORT = base + epoch % count
  int master_port_count = 500;
  bool stop_on_signals = true;          // SIGINT / SIGTERM end Run()
};

// Reads coordinator.yaml (docs/coordinator.md). Unknown keys, bad values and unreadable token
// files are InvalidArgument naming the file and the key.
Result<ServiceOptions> LoadServiceOptions(const std::string& path);

class Service {
 public:
  // Opens the state (creating state_dir), binds the listeners. Errors name the address or path.
  static Result<std::unique_ptr<Service>> Create(const ServiceOptions& options, RendezvousHost* rendezvous,
                                                 Clock* clock = SystemClock());
  ~Service();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // Serves until Stop() (or a signal, see stop_on_signals). OK after a requested stop.
  Status Run();
  // Ends Run() soon; callable from any thread.
  void Stop();

  int port() const;       // the bound port of the protocol listener
  int http_port() const;  // the bound HTTP port; -1 when off

  class Impl;

 private:
  explicit Service(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cohort::coordinator
