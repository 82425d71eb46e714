// Gloo backend (CPU buffers over Gloo's TCP transport). This header only exposes a factory and
// never includes Gloo's headers, so no other module needs them.
//
// Bootstrap: every rank creates a TCP "device" bound to `hostname`, publishes its listening
// addresses in a rendezvous store under `prefix` and connects to every peer (a full mesh), then
// all ranks pass a barrier, after which the store is no longer needed (rank 0 stops serving the
// tcp:// store, each rank removes its keys from a file:// store).
//
// Collectives:
//  - AllReduce is a pipelined reduce-scatter + all-gather written on Gloo's point-to-point
//    buffers: each rank owns one contiguous slice, receives the peers' contributions to it
//    segment by segment, sums them in rank order 0..N-1 (starting from +0.0f, exactly as the
//    in-process backend does) and sends every finished segment to all peers. Each element is
//    therefore reduced once, by its owner, in a fixed order: results are bit-identical on every
//    rank, from run to run, and to the in-process backend. (Gloo's own ring all-reduce also
//    gives identical results across ranks, but its summation order depends on the segment's
//    position in the ring, so it would not match the other backends bit for bit.)
//    Small buffers ((size-1) * bytes <= 64 KiB) take a single exchange instead: every rank sends
//    its buffer to every peer and computes the same rank-order sum itself (half the latency;
//    still bit-identical everywhere).
//  - ReduceScatter is the first half of the pipelined algorithm; AllGather, Broadcast and
//    Barrier use Gloo's own algorithms.
//  - kAvg is applied by the owner of each slice through FinishReduce before it is sent.
//
// Failures: every call is bounded by `timeout` (end-to-end per collective). A peer that died
// (its sockets reset or closed) gives Unavailable as soon as the transport notices; a peer that
// stopped answering gives DeadlineExceeded. Messages name the operation and, where known, the
// rank being waited for. After any failure this rank closes all its connections, so every peer
// blocked on it fails promptly too, and the communicator is unusable (later calls return
// Unavailable): the caller tears the job down, as the Communicator contract says.
//
// SIGPIPE: Gloo writes to sockets with writev(2), which raises SIGPIPE when a peer is gone. The
// backend blocks SIGPIPE on Gloo's network thread and, for the duration of each call, on the
// calling thread (discarding a SIGPIPE raised by the call), so a dead peer never kills this
// process; the process-wide disposition is left alone.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "collectives/communicator.h"

namespace cohort::collectives {

struct GlooOptions {
  int rank = 0;
  int size = 1;
  // Rendezvous store: "file:///abs/dir" (a directory on a filesystem all ranks share) or
  // "tcp://HOST:PORT" (rank 0 serves the store on PORT, torchrun/MASTER_ADDR style; the others
  // connect to HOST:PORT, retrying until the timeout), or "store://HOST:PORT" (a store served by
  // someone else, e.g. the Cohort coordinator: every rank only connects). HOST may be a name, an
  // IPv4 address or a bracketed IPv6 address.
  std::string store;
  // Namespace inside the store (job id / attempt), so re-runs never read stale keys. Characters
  // [A-Za-z0-9._-/]; '/' makes nested directories in a file store.
  std::string prefix = "cohort";
  // Address this rank's transport binds and advertises: a name or an IP address of this host;
  // "" = the host's name resolved. Tests use 127.0.0.1.
  std::string hostname;
  // Bounds the bootstrap (store connection and rendezvous; connecting to each peer waits at most
  // about this long too) and each collective, end to end.
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
};

// Connects this rank to the group; returns after every rank has connected. Errors:
// InvalidArgument for bad options or store URI; Unavailable naming the store address or path
// when the store cannot be served, reached or written (e.g. the port is in use on rank 0), or
// naming the hostname when the transport cannot bind; DeadlineExceeded naming the ranks that did
// not publish their address within the timeout. Thread safety of the result: one thread at a
// time (Communicator contract).
Result<std::unique_ptr<Communicator>> CreateGlooCommunicator(const GlooOptions& options);

}  // namespace cohort::collectives
