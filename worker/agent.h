// The node agent (`cohort worker`): registers this node's slots with the coordinator, starts the
// rank processes it is told to, streams their output, reports their exits, and stops them when
// told or when it loses the coordinator for longer than its lease.
//
// Ranks:
//  - Each rank is a child process in its own process group (stopping a rank signals the whole
//    group: its own children too), killed by the kernel if the agent dies (PR_SET_PDEATHSIG). The
//    processes a rank started, which PR_SET_PDEATHSIG does not reach, are found by their process
//    group when the agent starts again (groups recorded in <work_dir>/process-groups) and killed:
//    a killed agent leaves nothing running behind the coordinator's back once it is back.
//  - A rank inherits no descriptor of the agent's (above all not its coordinator connection).
//  - The environment is the agent's plus the job's (LaunchRanks.env) plus, per rank, RANK,
//    LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE (torchrun style), and on a node with GPUs
//    (--gpus G) CUDA_VISIBLE_DEVICES: the launch's ranks get one free GPU each, listed in the same
//    order for all of them, so that LOCAL_RANK picks a rank's own device (as under torchrun).
//    GPUs are named as in the agent's own CUDA_VISIBLE_DEVICES when set. A launch with more ranks
//    than free GPUs is refused: its ranks are reported failed, naming the shortfall.
//  - The command is the job's `command:`, or this binary's `train <spec> --resume=auto`.
//  - stdout and stderr go, line by line, to <work_dir>/<job>/rank-<r>.log and to the coordinator.
//  - Stopping: SIGTERM to the group (the trainer checkpoints and exits), SIGKILL after stop_grace.
//  - Exits are reported with the rank's status (exit code, or 128 + signal) and the end of its
//    output, and sent again after a reconnect until the coordinator acknowledges them.
// Fencing: every LaunchRanks / StopRanks carries the job's attempt epoch; a launch older than an
// epoch already seen for the job is refused, and a stop ends only ranks of that epoch or older.
//
// Thread safety: Run() on one thread; Stop() from any thread or a signal handler's thread.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "common/status.h"

namespace cohort::worker {

struct AgentOptions {
  std::string coordinator_host = "127.0.0.1";
  int coordinator_port = 7450;
  std::string token;            // the coordinator's worker token
  std::string name;             // unique per node; "" = the host name
  // Where ranks on other nodes reach this node's ranks (MASTER_ADDR when rank 0 runs here); "" =
  // this side's address of the connection to the coordinator.
  std::string address;
  int slots = 1;
  int gpus = 0;
  std::string work_dir;         // spec files and rank logs; "" = $TMPDIR/cohort-worker-<name>
  std::string self_exe;         // the cohort binary, for built-in trainer jobs; "" = /proc/self/exe
  std::chrono::milliseconds stop_grace{std::chrono::seconds(30)};
  std::chrono::milliseconds reconnect_max{std::chrono::seconds(5)};
};

class Agent {
 public:
  static Result<std::unique_ptr<Agent>> Create(const AgentOptions& options);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Serves until Stop(). Then stops every rank (SIGTERM, SIGKILL after the grace) and returns OK.
  // A coordinator that refuses the first connection (a wrong token) ends it with that error;
  // one that cannot be reached is retried for ever.
  Status Run();
  void Stop() { stop_.store(true); }

  class Impl;

 private:
  explicit Agent(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::atomic<bool> stop_{false};
};

}  // namespace cohort::worker
