// libFuzzer target for the coordinator's frame decoder (coordinator/wire.h): arbitrary bytes,
// delivered in arbitrary pieces, must never crash, hang, read out of bounds or allocate beyond the
// limits; and every envelope the decoder accepts must encode back to a frame that decodes to the
// same envelope. Built and run by tests/fuzz/run_frame_fuzzer.sh (clang, -fsanitize=fuzzer,address,
// undefined). With -DCOHORT_FUZZ_WRITE_SEEDS it is instead a program writing a seed corpus of
// valid frames to the directory given as its argument.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "coordinator/wire.h"

namespace {

using cohort::coordinator::AppendFrame;
using cohort::coordinator::FrameDecoder;
using cohort::coordinator::WireLimits;
using cohort::coordinator::proto::Envelope;

// Small limits, so the fuzzer reaches them with small inputs.
WireLimits Limits() {
  WireLimits l;
  l.max_frame_bytes = 4096;
  l.max_repeated = 8;
  l.max_string_bytes = 256;
  return l;
}

}  // namespace

#ifndef COHORT_FUZZ_WRITE_SEEDS
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks the piece size the stream is fed in (1..256 bytes).
  const size_t piece = static_cast<size_t>(data[0]) + 1;
  ++data;
  --size;
  FrameDecoder d(Limits());
  Envelope e;
  for (size_t at = 0; at < size; at += piece) {
    const size_t n = size - at < piece ? size - at : piece;
    if (!d.Feed(data + at, n).ok()) return 0;
    for (;;) {
      cohort::Result<bool> r = d.Next(&e);
      if (!r.ok()) return 0;
      if (!*r) break;
      // Accepted: it must survive a round trip through the encoder and a fresh decoder.
      std::string frame;
      if (!AppendFrame(e, Limits(), &frame).ok()) std::abort();
      FrameDecoder again(Limits());
      Envelope back;
      if (!again.Feed(frame.data(), frame.size()).ok()) std::abort();
      cohort::Result<bool> r2 = again.Next(&back);
      if (!r2.ok() || !*r2 || again.buffered() != 0) std::abort();
      if (back.SerializeAsString() != e.SerializeAsString()) std::abort();
    }
  }
  return 0;
}
#else
int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::vector<Envelope> seeds(6);
  seeds[0].mutable_hello()->set_protocol_version(1);
  seeds[0].mutable_hello()->set_role(cohort::coordinator::proto::ROLE_USER);
  seeds[0].mutable_hello()->set_token("secret");
  seeds[1].set_request_id(7);
  seeds[1].mutable_submit()->set_spec_yaml("name: quickstart\n");
  auto* hb = seeds[2].mutable_heartbeat();
  for (int r = 0; r < 3; ++r) hb->add_running()->set_rank(r);
  (*seeds[3].mutable_launch()->mutable_env())["RANK"] = "0";
  seeds[3].mutable_launch()->add_argv("cohort");
  seeds[4].mutable_job_status_reply()->add_attempts()->add_placements()->set_worker("node1");
  seeds[5].mutable_rank_exited()->set_log_tail("boom");
  for (size_t i = 0; i < seeds.size(); ++i) {
    std::string frame(1, static_cast<char>(i * 13));  // the piece-size byte
    if (!AppendFrame(seeds[i], Limits(), &frame).ok()) return 1;
    const std::string path = std::string(argv[1]) + "/seed" + std::to_string(i);
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr || std::fwrite(frame.data(), 1, frame.size(), f) != frame.size() || std::fclose(f) != 0) return 1;
  }
  return 0;
}
#endif
