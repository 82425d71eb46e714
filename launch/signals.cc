#include "launch/signals.h"

#include <signal.h>

namespace cohort::launch {
namespace {

// Written only by the signal handler; lock-free atomics are async-signal-safe. Process-wide by
// nature (signal dispositions are), hence the one exception to "no global mutable state".
std::atomic<bool> g_stop{false};
std::atomic<int> g_stop_signal{0};
static_assert(std::atomic<bool>::is_always_lock_free && std::atomic<int>::is_always_lock_free);

extern "C" void OnStopSignal(int sig) {
  if (g_stop.exchange(true)) {
    if (sig == SIGINT) {
      // Second Ctrl-C: give up on a clean stop and die of the signal right away.
      ::signal(SIGINT, SIG_DFL);
      ::raise(SIGINT);
    }
    return;
  }
  g_stop_signal.store(sig);
}

}  // namespace

void InstallStopHandlers() {
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  // Restart interrupted system calls: the signal may land on any thread (a transport's network
  // thread included), and a stop request must not turn into an I/O error there.
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGUSR1}) sigaction(sig, &sa, nullptr);
}

const std::atomic<bool>* StopFlag() { return &g_stop; }

int StopSignal() { return g_stop_signal.load(); }

}  // namespace cohort::launch
