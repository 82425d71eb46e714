#include "collectives/gloo.h"

#include <netdb.h>
#include <pthread.h>
#include <sys/socket.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <gloo/allgather.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/common/logging.h>
#include <gloo/context.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/attr.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "collectives/kv_store.h"

namespace cohort::collectives {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using Buffer = gloo::transport::UnboundBuffer;

// Slots of our point-to-point messages: a prefix byte Gloo's own algorithms never use (theirs are
// 0x01..0x08, in the top byte too), then a per-call sequence number, then the phase.
constexpr uint64_t kSlotPrefix = uint64_t{0xC0} << 56;

// Reduction pipeline: each peer's contribution to this rank's slice arrives in segments of at
// most kMaxSegmentElems floats, kDepth segments in flight per peer. The receive scratch,
// (size-1) * kDepth segments, is held by the communicator and reused across calls (a fresh page
// costs ~10 us to touch); segments shrink for large groups to keep it within kScratchBudgetElems.
// Every message costs a few thread wake-ups in Gloo's TCP transport (its network thread, then the
// waiting caller): 1-4 MiB segments measured about the same for 16-256 MiB on a 2-core VM, and
// better than smaller ones.
constexpr size_t kMaxSegmentElems = size_t{512} << 10;  // 2 MiB of floats
constexpr size_t kMinSegmentElems = size_t{16} << 10;
constexpr size_t kDepth = 2;
constexpr size_t kScratchBudgetElems = size_t{8} << 20;  // 32 MiB

// Small all-reduces take one exchange instead of two: every rank sends its whole buffer to every
// peer and sums all of them itself, in the same rank order, so the results are still identical
// everywhere. Used while the bytes each rank sends, (size-1) * buffer, stay below this.
constexpr size_t kOneShotBytes = size_t{64} << 10;

// Milliseconds left before `deadline`, at least 1 (Gloo treats 0 as "no wait").
milliseconds Left(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now());
  return std::max(left, milliseconds(1));
}

// Carries a cohort Status through Gloo's code (our store adaptor is called from inside Gloo's
// connectFullMesh, which only knows exceptions), and out of our own collective code.
struct StatusError : std::exception {
  explicit StatusError(Status s) : status(std::move(s)) {}
  const char* what() const noexcept override { return status.message().c_str(); }
  Status status;
};

// Maps whatever a Gloo call threw to a Status. Gloo reports its own deadlines ("Timed out
// waiting ...", "Connect timeout", and "Application timeout caused pair closure" on the other
// buffers of a context whose wait timed out) only through the message text.
Status FromException(std::exception_ptr e, const std::string& context) {
  auto code_for = [](const std::string& msg) {
    std::string lower(msg);
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
    const bool timeout = lower.find("timed out") != std::string::npos ||
                         lower.find("timeout") != std::string::npos;
    return timeout ? Code::kDeadlineExceeded : Code::kUnavailable;
  };
  try {
    std::rethrow_exception(std::move(e));
  } catch (const StatusError& s) {
    return s.status.WithContext(context);
  } catch (const std::exception& x) {
    // gloo::IoException (I/O errors, timeouts), gloo::EnforceNotMet (a failed internal check,
    // usually a consequence of a broken connection), gloo::Exception, std::system_error...
    return Status(code_for(x.what()), context + ": " + x.what());
  } catch (...) {
    return Status(Code::kInternal, context + ": unknown exception from Gloo");
  }
}

// Blocks SIGPIPE on the calling thread for its lifetime and discards a SIGPIPE raised meanwhile
// (by a write to a peer that is gone), unless one was already pending before: a dead peer then
// shows up as EPIPE/ECONNRESET inside Gloo, never as a killed process. Threads created meanwhile
// (Gloo's network thread) inherit the blocked mask for good.
class SigpipeBlock {
 public:
  SigpipeBlock() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~SigpipeBlock() {
    if (!was_pending_) {
      sigset_t pending;
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        struct timespec zero = {0, 0};
        sigtimedwait(&pipe_, nullptr, &zero);
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

 private:
  sigset_t pipe_;
  sigset_t old_;
  bool was_pending_ = false;
};

// Gloo's view of our KvStore: keys under `prefix`, every wait bounded by the bootstrap deadline
// (Gloo passes its own, shorter per-call timeouts, which we ignore so slow-starting peers get the
// whole bootstrap budget). Errors are thrown as StatusError; Gloo lets them propagate out of
// connectFullMesh.
class RendezvousStore final : public gloo::rendezvous::Store {
 public:
  RendezvousStore(KvStore* store, std::string prefix, Clock::time_point deadline)
      : store_(store), prefix_(std::move(prefix)), deadline_(deadline) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    Throw(store_->Set(Key(key), std::string(data.begin(), data.end())));
    own_keys_.push_back(Key(key));
  }

  // Gloo's stores block in get() until the key exists, and connectFullMesh relies on that (it
  // reads the peers' "rank_<r>" keys without waiting for them first).
  std::vector<char> get(const std::string& key) override {
    wait({key});
    Result<std::string> v = store_->Get(Key(key));
    if (!v.ok()) Throw(v.status());
    return std::vector<char>(v->begin(), v->end());
  }

  void wait(const std::vector<std::string>& keys) override { wait(keys, milliseconds(0)); }

  void wait(const std::vector<std::string>& keys, const milliseconds& /*gloo_timeout*/) override {
    std::vector<std::string> full;
    for (const auto& k : keys) full.push_back(Key(k));
    const auto budget = std::chrono::ceil<milliseconds>(deadline_ - Clock::now());
    Status s = store_->Wait(full, std::max(budget, milliseconds(0)));
    if (s.code() == Code::kDeadlineExceeded) {
      // Gloo names its keys after ranks ("<r>", "rank_<r>"): say which ranks never published.
      std::string ranks;
      for (const auto& k : keys) {
        if (s.message().find(Key(k)) == std::string::npos) continue;
        ranks += (ranks.empty() ? "" : ", ") + (k.rfind("rank_", 0) == 0 ? k.substr(5) : k);
      }
      s = Status(Code::kDeadlineExceeded,
                 "rank(s) " + ranks + " did not publish their address in time (" + s.message() + ")");
    }
    Throw(s);
  }

  // Best effort: the keys this rank wrote, once every peer has read them.
  void DeleteOwnKeys() {
    for (const auto& k : own_keys_) store_->Delete(k).IgnoreError();
    own_keys_.clear();
  }

 private:
  std::string Key(const std::string& k) const { return prefix_ + "/" + k; }
  static void Throw(const Status& s) {
    if (!s.ok()) throw StatusError(s);
  }

  KvStore* store_;
  const std::string prefix_;
  const Clock::time_point deadline_;
  std::vector<std::string> own_keys_;
};

// Rank r's slice of a buffer split in `n` contiguous parts (the in-process backend's split).
struct Span {
  size_t off = 0;
  size_t len = 0;
};
Span SliceOf(size_t count, int r, int n) {
  const size_t lo = count * static_cast<size_t>(r) / static_cast<size_t>(n);
  const size_t hi = count * static_cast<size_t>(r + 1) / static_cast<size_t>(n);
  return {lo, hi - lo};
}

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(int rank, int size, milliseconds timeout,
                   std::shared_ptr<gloo::transport::Device> device,
                   std::shared_ptr<gloo::rendezvous::Context> context)
      : rank_(rank),
        size_(size),
        timeout_(timeout),
        device_(std::move(device)),
        context_(std::move(context)) {
    const size_t peers = static_cast<size_t>(size_ > 1 ? size_ - 1 : 1);
    segment_elems_ = std::clamp(kScratchBudgetElems / (peers * kDepth), kMinSegmentElems, kMaxSegmentElems);
  }

  ~GlooCommunicator() override {
    // Buffers of a failed call are gone already; closing first makes the destruction of the
    // context independent of what the peers still do.
    if (broken_) CloseQuietly();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend() const override { return "gloo"; }
  milliseconds timeout() const override { return timeout_; }

  Status AllReduce(void* buf, size_t count, DataType type, ReduceOp op) override {
    if (type != DataType::kFloat32) return AllReduceWidened(*this, buf, count, type, op);
    (void)type;
    auto* x = static_cast<float*>(buf);
    return Run("all-reduce", count, [&](Clock::time_point deadline) {
      if (size_ == 1) {
        FinishReduce(x, count, op, 1);
        return;
      }
      if (count * sizeof(float) * static_cast<size_t>(size_ - 1) <= kOneShotBytes) {
        OneShotAllReduce(x, count, op, deadline);
        return;
      }
      ReduceSlices(
          x, count, [&](int r) { return SliceOf(count, r, size_); }, x + SliceOf(count, rank_, size_).off,
          /*gather=*/x, op, deadline);
    });
  }

  Status ReduceScatter(const void* in, void* out, size_t count, DataType type, ReduceOp op) override {
    if (type != DataType::kFloat32) return ReduceScatterWidened(*this, in, out, count, type, op);
    (void)type;
    const auto* src = static_cast<const float*>(in);
    auto* dst = static_cast<float*>(out);
    return Run("reduce-scatter", count, [&](Clock::time_point deadline) {
      if (size_ == 1) {
        std::memcpy(dst, src, count * sizeof(float));
        FinishReduce(dst, count, op, 1);
        return;
      }
      ReduceSlices(
          src, count * static_cast<size_t>(size_),
          [&](int r) { return Span{count * static_cast<size_t>(r), count}; }, dst,
          /*gather=*/nullptr, op, deadline);
    });
  }

  Status AllGather(const void* in, void* out, size_t count, DataType type) override {
    if (type != DataType::kFloat32) return AllGatherWidened(*this, in, out, count, type);
    (void)type;
    return Run("all-gather", count, [&](Clock::time_point deadline) {
      if (size_ == 1) {
        std::memcpy(out, in, count * sizeof(float));
        return;
      }
      gloo::AllgatherOptions opts(context_);
      opts.setInput(const_cast<float*>(static_cast<const float*>(in)), count);
      opts.setOutput(static_cast<float*>(out), count * static_cast<size_t>(size_));
      opts.setTimeout(Left(deadline));
      gloo::allgather(opts);
    });
  }

  Status Broadcast(void* buf, size_t bytes, int root) override {
    COHORT_CHECK(root >= 0 && root < size_) << "broadcast root " << root;
    return Run("broadcast", bytes, [&](Clock::time_point deadline) {
      if (size_ == 1) return;
      gloo::BroadcastOptions opts(context_);
      opts.setOutput(static_cast<uint8_t*>(buf), bytes);
      opts.setRoot(root);
      opts.setTimeout(Left(deadline));
      gloo::broadcast(opts);
    });
  }

  Status Barrier() override {
    return Run("barrier", 1, [&](Clock::time_point deadline) {
      if (size_ == 1) return;
      gloo::BarrierOptions opts(context_);
      opts.setTimeout(Left(deadline));
      gloo::barrier(opts);
    });
  }

  void Abort(std::string_view why, int /*exit_code*/) override {
    if (!broken_) {
      broken_ = true;
      first_error_ = "aborted: " + std::string(why);
    }
    CloseQuietly();  // peers blocked on this rank see their connections reset and fail now
  }

 private:
  // Runs one collective: the deadline, SIGPIPE blocking, and every exception mapped to a Status.
  // After a failure all connections are closed so the peers fail fast instead of timing out.
  template <typename Body>
  Status Run(const char* what, size_t count, Body&& body) {
    if (broken_) {
      return Status(Code::kUnavailable, "rank " + std::to_string(rank_) + ": gloo " + what +
                                            ": communicator unusable after an earlier error (" + first_error_ + ")");
    }
    if (count == 0) return Status::Ok();
    ++seq_;
    peer_ = -1;
    SigpipeBlock no_sigpipe;
    try {
      body(Clock::now() + timeout_);
      return Status::Ok();
    } catch (...) {
      std::string context = "rank " + std::to_string(rank_) + ": gloo " + what + " of " + std::to_string(count) +
                            (std::string_view(what) == "broadcast" ? " bytes" : " elements");
      if (peer_ >= 0) context += std::string(", ") + peer_action_ + " rank " + std::to_string(peer_);
      Status s = FromException(std::current_exception(), context);
      broken_ = true;
      first_error_ = s.ToString();
      CloseQuietly();
      return s;
    }
  }

  void CloseQuietly() noexcept {
    try {
      context_->closeConnections();
    } catch (...) {
      // Already closed or never connected: nothing left to release.
    }
  }

  // Point-to-point steps, each recording which peer it involves for the error message.
  void Send(Buffer& b, int peer, uint64_t slot, size_t offset, size_t bytes) {
    Peer(peer, "sending to");
    b.send(peer, slot, offset, bytes);
  }
  void Recv(Buffer& b, int peer, uint64_t slot, size_t offset, size_t bytes) {
    Peer(peer, "receiving from");
    b.recv(peer, slot, offset, bytes);
  }
  void WaitRecv(Buffer& b, int peer, Clock::time_point deadline) {
    Peer(peer, "waiting for");
    if (!b.waitRecv(nullptr, Left(deadline))) throw StatusError(Status(Code::kUnavailable, "receive aborted"));
  }
  void WaitSend(Buffer& b, int peer, Clock::time_point deadline) {
    Peer(peer, "waiting for");
    if (!b.waitSend(nullptr, Left(deadline))) throw StatusError(Status(Code::kUnavailable, "send aborted"));
  }
  void Peer(int peer, const char* action) {
    peer_ = peer;
    peer_action_ = action;
  }

  // The reduction engine behind AllReduce and ReduceScatter.
  //   src:    this rank's contribution; slice r of it is src[slice(r).off, + slice(r).len)
  //           (src_count elements in all)
  //   dst:    receives the reduction of every rank's slice `rank_` (may alias src's own slice)
  //   gather: if not null, every peer p's reduced slice is received at gather + slice(p).off
  //           (AllReduce: gather == src; each region is overwritten only after this rank's
  //           contribution from it has reached its owner, see below)
  //
  // Messages (per peer pair, in order, matched by slot): phase 0 carries raw segments of the
  // receiver's slice, phase 1 reduced segments of the sender's slice. Receives are posted before
  // the matching sends wherever possible because Gloo's TCP transport moves a message only once
  // the receiver has posted its buffer.
  template <typename SliceFn>
  void ReduceSlices(const float* src, size_t src_count, SliceFn slice, float* dst, float* gather,
                    ReduceOp op, Clock::time_point deadline) {
    const int n = size_;
    const uint64_t raw_slot = kSlotPrefix | (seq_ << 8);
    const uint64_t red_slot = raw_slot | 1;
    const Span own = slice(rank_);
    const size_t seg = segment_elems_;
    auto nseg = [&](const Span& s) { return (s.len + seg - 1) / seg; };
    auto seg_len = [&](const Span& s, size_t k) { return std::min(seg, s.len - k * seg); };
    const size_t own_segs = nseg(own);
    const size_t depth = std::min(kDepth, std::max<size_t>(own_segs, 1));
    const size_t scratch_seg = std::min(seg, std::max<size_t>(own.len, 1));
    // Peers in the order rank+1, rank+2, ...: spreads the first messages over all owners.
    std::vector<int> peers;
    for (int i = 1; i < n; ++i) peers.push_back((rank_ + i) % n);

    const size_t scratch_need = static_cast<size_t>(n) * depth * scratch_seg;
    if (scratch_.size() < scratch_need) scratch_.resize(scratch_need);
    auto scratch_at = [&](int p, size_t k) {
      return scratch_.data() + (static_cast<size_t>(p) * depth + k % depth) * scratch_seg;
    };

    std::vector<std::unique_ptr<Buffer>> send_raw(n), recv_raw(static_cast<size_t>(n) * depth), send_red(n), recv_red(n);
    std::vector<size_t> raw_sends(n, 0), red_sends(n, 0), red_recvs(n, 0);
    float* src_mut = const_cast<float*>(src);  // Gloo only reads from send buffers
    for (int p : peers) {
      send_raw[p] = context_->createUnboundBuffer(src_mut, src_count * sizeof(float));
      for (size_t j = 0; j < depth; ++j) {
        recv_raw[p * depth + j] = context_->createUnboundBuffer(scratch_at(p, j), scratch_seg * sizeof(float));
      }
      if (gather != nullptr) {
        if (own.len > 0) send_red[p] = context_->createUnboundBuffer(dst, own.len * sizeof(float));
        recv_red[p] = context_->createUnboundBuffer(gather, src_count * sizeof(float));
      }
    }
    auto post_raw_recv = [&](size_t k) {
      for (int p : peers) Recv(*recv_raw[p * depth + k % depth], p, raw_slot, 0, seg_len(own, k) * sizeof(float));
    };

    // 1. Receives first: our slice's first segments from every peer, and (all-reduce) every
    //    peer's reduced slice straight into place.
    for (size_t k = 0; k < depth && k < own_segs; ++k) post_raw_recv(k);
    if (gather != nullptr) {
      for (int p : peers) {
        const Span s = slice(p);
        for (size_t k = 0; k < nseg(s); ++k) {
          Recv(*recv_red[p], p, red_slot, (s.off + k * seg) * sizeof(float), seg_len(s, k) * sizeof(float));
          ++red_recvs[p];
        }
      }
    }
    // 2. Our contribution to every peer's slice, segment by segment (interleaved over peers).
    size_t max_segs = 0;
    for (int p : peers) max_segs = std::max(max_segs, nseg(slice(p)));
    for (size_t k = 0; k < max_segs; ++k) {
      for (int p : peers) {
        const Span s = slice(p);
        if (k >= nseg(s)) continue;
        Send(*send_raw[p], p, raw_slot, (s.off + k * seg) * sizeof(float), seg_len(s, k) * sizeof(float));
        ++raw_sends[p];
      }
    }
    // 3. Reduce our slice as segments arrive, in rank order, and pass each finished segment on.
    std::vector<const float*> inputs(n);
    for (size_t k = 0; k < own_segs; ++k) {
      for (int p : peers) WaitRecv(*recv_raw[p * depth + k % depth], p, deadline);
      const size_t len = seg_len(own, k);
      for (int r = 0; r < n; ++r) inputs[r] = r == rank_ ? src + own.off + k * seg : scratch_at(r, k);
      SumInRankOrder(inputs.data(), n, dst + k * seg, len, op, n);
      if (gather != nullptr) {
        for (int p : peers) {
          Send(*send_red[p], p, red_slot, k * seg * sizeof(float), len * sizeof(float));
          ++red_sends[p];
        }
      }
      if (k + depth < own_segs) post_raw_recv(k + depth);
    }
    // 4. Everything else in flight. A peer's reduced segment can only arrive after it received
    //    our raw segment for that region, so receiving into `gather` (== src for all-reduce)
    //    never overwrites data we still have to send.
    for (int p : peers) {
      for (size_t i = 0; i < red_recvs[p]; ++i) WaitRecv(*recv_red[p], p, deadline);
    }
    for (int p : peers) {
      for (size_t i = 0; i < raw_sends[p]; ++i) WaitSend(*send_raw[p], p, deadline);
      for (size_t i = 0; i < red_sends[p]; ++i) WaitSend(*send_red[p], p, deadline);
    }
    peer_ = -1;
  }

  // All-reduce in one exchange (small buffers): x goes to every peer, every peer's x comes into
  // the scratch, and each rank computes the same rank-order sum of the same inputs.
  void OneShotAllReduce(float* x, size_t count, ReduceOp op, Clock::time_point deadline) {
    const int n = size_;
    const uint64_t slot = kSlotPrefix | (seq_ << 8) | 2;
    if (scratch_.size() < static_cast<size_t>(n) * count) scratch_.resize(static_cast<size_t>(n) * count);
    std::vector<int> peers;
    for (int i = 1; i < n; ++i) peers.push_back((rank_ + i) % n);
    std::vector<std::unique_ptr<Buffer>> recv(n), send(n);
    for (int p : peers) {
      recv[p] = context_->createUnboundBuffer(scratch_.data() + static_cast<size_t>(p) * count, count * sizeof(float));
      send[p] = context_->createUnboundBuffer(x, count * sizeof(float));
      Recv(*recv[p], p, slot, 0, count * sizeof(float));
    }
    for (int p : peers) Send(*send[p], p, slot, 0, count * sizeof(float));
    for (int p : peers) WaitRecv(*recv[p], p, deadline);
    // x is overwritten below: every send from it must be complete first.
    for (int p : peers) WaitSend(*send[p], p, deadline);
    peer_ = -1;
    std::vector<const float*> inputs(n);
    for (int r = 0; r < n; ++r) inputs[r] = r == rank_ ? x : scratch_.data() + static_cast<size_t>(r) * count;
    SumInRankOrder(inputs.data(), n, x, count, op, n);
  }

  const int rank_;
  const int size_;
  const milliseconds timeout_;
  // Destruction order matters: the context (pairs) goes before the device (network thread).
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::rendezvous::Context> context_;
  size_t segment_elems_ = kMaxSegmentElems;
  std::vector<float> scratch_;
  uint64_t seq_ = 0;
  int peer_ = -1;  // the peer of the current point-to-point step, for error messages
  const char* peer_action_ = "";
  bool broken_ = false;
  std::string first_error_;
};

// "file:///abs/dir" -> dir; "tcp://host:port" or "store://host:port" -> host, port.
struct StoreUri {
  bool tcp = false;
  bool served = false;  // store://: someone else (the coordinator) serves it; rank 0 does not
  std::string path;
  std::string host;
  int port = 0;
};

Result<StoreUri> ParseStoreUri(const std::string& uri) {
  StoreUri u;
  if (uri.rfind("file://", 0) == 0) {
    u.path = uri.substr(7);
    if (u.path.empty() || u.path[0] != '/') {
      return InvalidArgument("gloo store '" + uri + "': a file store needs an absolute path (file:///dir)");
    }
    return u;
  }
  const bool served = uri.rfind("store://", 0) == 0;
  if (uri.rfind("tcp://", 0) == 0 || served) {
    u.tcp = true;
    u.served = served;
    const std::string scheme = served ? "store" : "tcp";
    std::string rest = uri.substr(scheme.size() + 3);
    while (!rest.empty() && rest.back() == '/') rest.pop_back();
    const size_t colon = rest.rfind(':');
    if (colon == std::string::npos || colon == 0) {
      return InvalidArgument("gloo store '" + uri + "': expected " + scheme + "://HOST:PORT");
    }
    u.host = rest.substr(0, colon);
    if (u.host.size() >= 2 && u.host.front() == '[' && u.host.back() == ']') u.host = u.host.substr(1, u.host.size() - 2);
    const std::string port = rest.substr(colon + 1);
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
        std::stoi(port) < 1 || std::stoi(port) > 65535) {
      return InvalidArgument("gloo store '" + uri + "': port must be 1..65535");
    }
    u.port = std::stoi(port);
    if (u.host.empty()) return InvalidArgument("gloo store '" + uri + "': empty host");
    return u;
  }
  return InvalidArgument("gloo store '" + uri + "': expected file:///dir, tcp://HOST:PORT or store://HOST:PORT");
}

std::string ThisHostName() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "";
  return name;
}

// The numeric address Gloo's transport should bind: the first address of `host` that a socket
// can bind to (Gloo's own rule). Resolved here because this Gloo's resolver walks an
// uninitialized result list when getaddrinfo(3) fails (a crash, not an exception), and so that a
// name is resolved once, by us, with an error that names it.
Result<std::string> BindableAddress(const std::string& host) {
  struct addrinfo hints {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  struct addrinfo* res = nullptr;
  const int gai = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (gai != 0) {
    return Status(Code::kUnavailable, "cannot resolve '" + host + "': " + ::gai_strerror(gai));
  }
  std::string found, last_error = "no address";
  for (const struct addrinfo* ai = res; ai != nullptr && found.empty(); ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      char text[NI_MAXHOST];
      if (::getnameinfo(ai->ai_addr, ai->ai_addrlen, text, sizeof(text), nullptr, 0, NI_NUMERICHOST) == 0) found = text;
    } else {
      last_error = std::strerror(errno);
    }
    ::close(fd);
  }
  ::freeaddrinfo(res);
  if (found.empty()) return Status(Code::kUnavailable, "no address of '" + host + "' can be bound: " + last_error);
  return found;
}

}  // namespace

Result<std::unique_ptr<Communicator>> CreateGlooCommunicator(const GlooOptions& o) {
  if (o.size < 1 || o.rank < 0 || o.rank >= o.size) {
    return InvalidArgument("gloo: rank " + std::to_string(o.rank) + " of size " + std::to_string(o.size));
  }
  if (o.timeout <= milliseconds(0)) return InvalidArgument("gloo: timeout must be positive");
  ASSIGN_OR_RETURN(StoreUri uri, ParseStoreUri(o.store));
  if (!ValidateKvKey(o.prefix).ok()) {
    return InvalidArgument("gloo: store prefix '" + o.prefix + "' must be non-empty [A-Za-z0-9._-/] without '..'");
  }
  const std::string me = "gloo rank " + std::to_string(o.rank) + " of " + std::to_string(o.size);
  const auto start = Clock::now();
  const auto deadline = start + o.timeout;

  // 1. The rendezvous store.
  std::unique_ptr<KvStoreServer> server;
  std::unique_ptr<KvStore> kv;
  if (uri.tcp) {
    if (o.rank == 0 && !uri.served) {
      auto started = KvStoreServer::Start(uri.port);
      if (!started.ok()) return started.status().WithContext(me + ": serving " + o.store);
      server = std::move(started).value();
    }
    auto connected = ConnectTcpKvStore(uri.host, uri.port, Left(deadline));
    if (!connected.ok()) return connected.status().WithContext(me);
    kv = std::move(connected).value();
  } else {
    auto opened = OpenFileKvStore(uri.path);
    if (!opened.ok()) return opened.status().WithContext(me);
    kv = std::move(opened).value();
  }
  RendezvousStore store(kv.get(), o.prefix, deadline);
  const std::string where = kv->Describe() + " prefix '" + o.prefix + "'";

  // Gloo's network thread is created with the device and inherits this thread's signal mask.
  SigpipeBlock no_sigpipe;

  // 2. The TCP transport, bound to `hostname` (or this host's name).
  const std::string host = o.hostname.empty() ? ThisHostName() : o.hostname;
  auto address = BindableAddress(host);
  if (!address.ok()) return address.status().WithContext(me + ": TCP transport");
  std::shared_ptr<gloo::transport::Device> device;
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = *address;
    device = gloo::transport::tcp::CreateDevice(attr);
  } catch (...) {
    Status s = FromException(std::current_exception(), me + ": cannot bind the TCP transport to " + *address +
                                                           " ('" + host + "')");
    return Status(Code::kUnavailable, s.message());
  }

  // 3. Rendezvous and full mesh. Gloo waits up to 5x the context timeout for each peer's
  //    connection; a fifth of what is left keeps that within the bootstrap budget.
  auto context = std::make_shared<gloo::rendezvous::Context>(o.rank, o.size);
  context->setTimeout(std::max(Left(deadline) / 5, milliseconds(1)));
  try {
    context->connectFullMesh(store, device);
  } catch (...) {
    return FromException(std::current_exception(), me + ": rendezvous via " + where);
  }
  context->setTimeout(o.timeout);

  // 4. Everyone is connected once everyone passed this barrier: nobody reads the store anymore.
  try {
    gloo::BarrierOptions opts(context);
    opts.setTimeout(std::max(Left(deadline), milliseconds(1000)));
    gloo::barrier(opts);
  } catch (...) {
    Status s = FromException(std::current_exception(), me + ": first barrier after connecting");
    try {
      context->closeConnections();
    } catch (...) {
      // Best effort: the error above is what matters.
    }
    return s;
  }
  if (!uri.tcp) store.DeleteOwnKeys();
  server.reset();  // rank 0: the tcp:// store has served its purpose
  return std::unique_ptr<Communicator>(
      std::make_unique<GlooCommunicator>(o.rank, o.size, o.timeout, std::move(device), std::move(context)));
}

}  // namespace cohort::collectives
