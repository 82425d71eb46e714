// One rank of the Gloo backend's multi-process tests; tests/mp/gloo_test.sh starts N of them
// (label mp). Modes:
//   conformance  the shared Communicator conformance suite (1 element .. 64 MiB), plus checks
//                that results are bit-identical on every rank and to the in-process backend's
//                rank-order sum, on random (inexact) floats
//   kill         after one all-reduce, rank 1 SIGKILLs itself; the others' next all-reduce must
//                fail (UNAVAILABLE or DEADLINE_EXCEEDED) well within the timeout
//   kill-mid     rank 1 SIGKILLs itself from another thread while all ranks are inside a stream
//                of 64 MiB all-reduces
//   stall        rank 1 stops calling collectives; the others must get DEADLINE_EXCEEDED naming it
//   bootstrap    single process: bad options and unreachable stores give clear errors
//   free-port    prints a free TCP port (for the driver)
// Exit status: 0 when every check of this rank passed; 3 when a failure mode saw the expected
// error; other values for failures. Errors are printed on stderr prefixed with "rank R:".
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "collectives/gloo.h"
#include "tests/unit/collectives_conformance.h"

namespace {

using cohort::Code;
using cohort::Status;
using namespace cohort::collectives;
using Clock = std::chrono::steady_clock;

std::map<std::string, std::string> ParseArgs(int argc, char** argv) {
  std::map<std::string, std::string> a;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k.rfind("--", 0) == 0) a[k.substr(2)] = argv[i + 1];
  }
  return a;
}

GlooOptions Options(std::map<std::string, std::string>& a) {
  GlooOptions o;
  o.rank = std::atoi(a["rank"].c_str());
  o.size = std::atoi(a["size"].c_str());
  o.store = a["store"];
  if (!a["prefix"].empty()) o.prefix = a["prefix"];
  o.hostname = "127.0.0.1";
  o.timeout = std::chrono::milliseconds(std::atoi(a.count("timeout-ms") ? a["timeout-ms"].c_str() : "60000"));
  return o;
}

Status BitIdentical(Communicator& c, size_t count) {
  const int n = c.size();
  RETURN_IF_ERROR(conformance::AllReduceInRankOrder(c, count));
  // Reduce-scatter of the same data: this rank's shard of the rank-order sum.
  const size_t shard = count / static_cast<size_t>(n);
  if (shard > 0) {
    std::vector<float> in = conformance::RandomInput(c.rank(), shard * static_cast<size_t>(n)), out(shard);
    RETURN_IF_ERROR(c.ReduceScatter(in.data(), out.data(), shard, DataType::kFloat32, ReduceOp::kAvg));
    const std::vector<float> full = conformance::RankOrderSum(n, shard * static_cast<size_t>(n));
    for (size_t i = 0; i < shard; ++i) {
      float w = full[static_cast<size_t>(c.rank()) * shard + i];
      cohort::collectives::FinishReduce(&w, 1, ReduceOp::kAvg, n);
      if (std::memcmp(&out[i], &w, sizeof(float)) != 0) return conformance::Mismatch(c, "bit-identical reduce-scatter avg", i, out[i], w);
    }
  }
  return Status::Ok();
}

int Conformance(const GlooOptions& o) {
  auto comm = CreateGlooCommunicator(o);
  if (!comm.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", o.rank, comm.status().ToString().c_str());
    return 1;
  }
  Communicator& c = **comm;
  conformance::Tally t;
  const auto start = Clock::now();
  conformance::RunSuite(c, t, /*large=*/true);
  for (size_t count : {size_t{1}, size_t{2}, size_t{3}, size_t{1000}, size_t{262147}, (size_t{3} << 20) + 1}) {
    t.Check(c, "bit-identical", count, BitIdentical(c, count));
  }
  t.Check(c, "barrier", 0, c.Barrier());
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("rank %d: gloo conformance on %d ranks via %s: %d passed, %d failed (%.1f s)\n", c.rank(), c.size(),
              o.store.substr(0, 6).c_str(), t.passes, t.failures, secs);
  return t.failures == 0 ? 0 : 1;
}

// The failure modes. Rank 1 misbehaves; every other rank reports what its collective returned
// and how long it took, and exits 3 when it got the error it should.
int PeerFailure(const GlooOptions& o, const std::string& mode) {
  auto comm = CreateGlooCommunicator(o);
  if (!comm.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", o.rank, comm.status().ToString().c_str());
    return 1;
  }
  Communicator& c = **comm;
  float x = 1;
  if (Status s = c.AllReduce(&x, 1, DataType::kFloat32, ReduceOp::kSum); !s.ok()) {
    std::fprintf(stderr, "rank %d: first all-reduce: %s\n", c.rank(), s.ToString().c_str());
    return 1;
  }
  const size_t big = size_t{16} << 20;
  std::vector<float> buf(big, 1.0f);
  if (c.rank() == 1) {
    if (mode == "stall") {
      // Longer than the peers' 5 s timeout; a real launcher would kill this rank.
      std::fprintf(stderr, "rank 1: stalling (not joining the next collective)\n");
      std::this_thread::sleep_for(std::chrono::seconds(12));
      return 0;
    }
    if (mode == "kill") {
      std::fprintf(stderr, "rank 1: killing myself with SIGKILL\n");
      ::kill(::getpid(), SIGKILL);
    }
    // kill-mid: die from another thread while this one is inside an all-reduce.
    std::thread([] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      std::fprintf(stderr, "rank 1: killing myself with SIGKILL in the middle of an all-reduce\n");
      ::kill(::getpid(), SIGKILL);
    }).detach();
  }
  const auto start = Clock::now();
  Status s;
  int calls = 0;
  // kill-mid: a stream of big all-reduces, so the kill lands inside one.
  const int rounds = mode == "kill-mid" ? 1000 : 1;
  for (int i = 0; i < rounds && s.ok(); ++i, ++calls) {
    s = mode == "kill-mid" ? c.AllReduce(buf.data(), big, DataType::kFloat32, ReduceOp::kSum)
                           : c.AllReduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
  }
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  std::fprintf(stderr, "rank %d: all-reduce #%d after peer failure (%s) returned after %.2f s: %s\n", c.rank(), calls,
               mode.c_str(), secs, s.ToString().c_str());
  if (s.ok()) return 0;
  // The communicator must stay failed, without hanging.
  Status again = c.Barrier();
  if (again.ok() || again.code() != Code::kUnavailable) {
    std::fprintf(stderr, "rank %d: call after failure: %s\n", c.rank(), again.ToString().c_str());
    return 1;
  }
  return 3;
}

// A TCP port on 127.0.0.1 that was free a moment ago; 0 on failure.
int PickFreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = 0;
  if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  if (fd >= 0) ::close(fd);
  return port;
}

int FreePort() {
  const int port = PickFreePort();
  if (port == 0) return 1;
  std::printf("%d\n", port);
  return 0;
}

// Single-process bootstrap failures: each must be a prompt error with a clear message.
int Bootstrap(const std::string& tmp) {
  int failures = 0;
  auto expect = [&](const char* name, const GlooOptions& o, Code code, const std::string& needle, double max_s) {
    const auto start = Clock::now();
    auto r = CreateGlooCommunicator(o);
    const double secs = std::chrono::duration<double>(Clock::now() - start).count();
    const std::string got = r.ok() ? "OK" : r.status().ToString();
    const bool pass = !r.ok() && r.status().code() == code && got.find(needle) != std::string::npos && secs <= max_s;
    std::printf("%s %s (%.2f s): %s\n", pass ? "ok:  " : "FAIL:", name, secs, got.c_str());
    failures += pass ? 0 : 1;
  };
  GlooOptions o;
  o.hostname = "127.0.0.1";
  o.timeout = std::chrono::milliseconds(1500);

  o.size = 2;
  o.rank = 0;
  o.store = "http://x";
  expect("unknown store scheme", o, Code::kInvalidArgument, "expected file:///dir, tcp://HOST:PORT or store://HOST:PORT", 1);
  // store://: someone else serves the store, so rank 0 only connects; with nobody serving it, rank
  // 0 too fails to reach it (a tcp:// store would have been served by rank 0 itself).
  {
    const int free_port = PickFreePort();
    o.store = "store://127.0.0.1:" + std::to_string(free_port);
    expect("store:// is not served by rank 0", o, Code::kUnavailable,
           "127.0.0.1:" + std::to_string(free_port) + ": could not connect", 3);
  }
  o.store = "file://relative/dir";
  expect("relative file store", o, Code::kInvalidArgument, "absolute path", 1);
  o.store = "tcp://127.0.0.1:99999";
  expect("bad port", o, Code::kInvalidArgument, "port must be 1..65535", 1);
  o.store = "file://" + tmp + "/store";
  o.rank = 2;
  expect("rank out of range", o, Code::kInvalidArgument, "rank 2 of size 2", 1);
  o.rank = 0;
  o.prefix = "../escape";
  expect("bad prefix", o, Code::kInvalidArgument, "prefix", 1);
  o.prefix = "missing-peer";
  // Rank 1 never starts: rank 0 must give up at the timeout, naming rank 1.
  expect("missing peer (file store)", o, Code::kDeadlineExceeded, "rank(s) 1 did not publish", 4);

  // A port that is already taken: rank 0 cannot serve the store there.
  int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_any;
  socklen_t len = sizeof(a);
  int zero = 0;
  ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 1) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::printf("FAIL: cannot hold a port for the port-in-use check\n");
    return 1;
  }
  const int taken = ntohs(a.sin6_port);
  o.prefix = "cohort";
  o.store = "tcp://127.0.0.1:" + std::to_string(taken);
  expect("store port in use (rank 0)", o, Code::kUnavailable,
         "cannot listen on port " + std::to_string(taken) + ": bind: Address already in use", 1);
  ::close(fd);  // now nobody listens there
  o.rank = 1;
  expect("store unreachable (rank 1)", o, Code::kUnavailable,
         "tcp://127.0.0.1:" + std::to_string(taken) + ": could not connect within 1500 ms", 4);
  // A host name that does not resolve, for the transport.
  o.rank = 0;
  o.size = 1;
  o.store = "file://" + tmp + "/store";
  o.hostname = "no-such-host.invalid";
  expect("unresolvable transport host", o, Code::kUnavailable, "no-such-host.invalid", 10);
  // And a group of one works without peers.
  o.hostname = "127.0.0.1";
  o.prefix = "single";
  auto one = CreateGlooCommunicator(o);
  float x = 2;
  const bool single_ok = one.ok() && (*one)->AllReduce(&x, 1, DataType::kFloat32, ReduceOp::kAvg).ok() && x == 2 &&
                         (*one)->Barrier().ok();
  std::printf("%s group of one\n", single_ok ? "ok:  " : "FAIL:");
  failures += single_ok ? 0 : 1;
  std::printf("bootstrap: %d failed\n", failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  auto args = ParseArgs(argc, argv);
  const std::string mode = args["mode"];
  if (mode == "free-port") return FreePort();
  if (mode == "bootstrap") return Bootstrap(args["tmp"]);
  GlooOptions o = Options(args);
  if (mode == "conformance") return Conformance(o);
  if (mode == "kill" || mode == "kill-mid" || mode == "stall") return PeerFailure(o, mode);
  std::fprintf(stderr, "unknown --mode '%s'\n", mode.c_str());
  return 2;
}
