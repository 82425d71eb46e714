// Stop requests from signals: SIGINT (Ctrl-C), SIGTERM (scheduler stop, mpirun/srun forwarding)
// and SIGUSR1 (Slurm's --signal=USR1@T warning before the time limit) set a flag the trainer
// polls; the training loop then finishes its step and returns. A second SIGINT restores the
// default action and re-raises it, so a stuck process can still be killed from the keyboard.
#pragma once

#include <atomic>

namespace cohort::launch {

// Installs the handlers (idempotent). Call from main's thread before training starts.
void InstallStopHandlers();

// The flag the handlers set; never null, valid for the process lifetime.
const std::atomic<bool>* StopFlag();

// The first signal that requested a stop, 0 if none.
int StopSignal();

}  // namespace cohort::launch
