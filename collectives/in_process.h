// In-process backend: N ranks as threads of one process sharing an InProcessGroup. Used by unit
// tests of everything above the transport (gradient reducer, ZeRO, trainer) and as the reference
// the other backends' conformance tests are written against.
//
// Each collective is two or three rendezvous on the group's barrier: ranks publish their buffer
// pointers, each rank reduces its own slice of the result reading the peers' buffers directly (in
// rank order 0..N-1, so results are identical on every rank and for any thread timing), then all
// ranks copy. Abort() wakes every waiter with Unavailable, as a dead peer would.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

#include "collectives/communicator.h"

namespace cohort::collectives {

class InProcessGroup {
 public:
  // A group of `size` ranks whose collectives give up after `timeout`.
  InProcessGroup(int size, std::chrono::milliseconds timeout);

  // The communicator of rank r (0 <= r < size). Each must be used from one thread at a time and
  // must not outlive the group.
  std::unique_ptr<Communicator> Connect(int rank);

  // Makes every pending and future collective of the group fail with Unavailable (`why`).
  void Abort(const std::string& why);

  int size() const { return size_; }

 private:
  friend class InProcessCommunicator;

  // Waits until all ranks have arrived at this barrier generation. DeadlineExceeded names the
  // ranks that had not arrived; Unavailable after Abort.
  Status Arrive(int rank);

  const int size_;
  const std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t generation_ = 0;
  std::vector<bool> arrived_;
  int waiting_ = 0;
  bool aborted_ = false;
  std::string abort_reason_;
  // Published per collective: each rank's input and output pointers.
  std::vector<const void*> in_;
  std::vector<void*> out_;
};

}  // namespace cohort::collectives
