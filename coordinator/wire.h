// The coordinator's wire format (proto/coordinator.proto, docs/protocol.md): frames, their limits,
// and the handshake checks. Pure functions and a plain decoder: no sockets here, so the server,
// the clients, the tests and the fuzz target (tests/fuzz/) all share exactly this code.
//
// A frame is [u32 little-endian payload length][payload], the payload a serialized Envelope.
// Limits (WireLimits) are checked before anything is allocated or interpreted: a length over
// max_frame_bytes is refused as soon as its 4 header bytes arrive; a payload that does not parse,
// holds no message this version knows, or has a repeated field or a string over the limits is
// refused whole. Every refusal is InvalidArgument naming the limit; the caller closes the
// connection.
//
// Thread safety: the functions are pure; a FrameDecoder is for one thread (one connection).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"
#include "proto/coordinator.pb.h"

namespace cohort::coordinator {

inline constexpr uint32_t kProtocolVersion = proto::VERSION_CURRENT;

struct WireLimits {
  size_t max_frame_bytes = size_t{4} << 20;   // one payload
  size_t max_repeated = 16384;                // entries of any repeated or map field
  size_t max_string_bytes = size_t{2} << 20;  // any string or bytes field
};

// Appends msg's frame to *out. InvalidArgument if msg breaks the limits (the peer would refuse it).
Status AppendFrame(const proto::Envelope& msg, const WireLimits& limits, std::string* out);

// Checks a parsed envelope against the limits and that it carries a known message.
Status ValidateEnvelope(const proto::Envelope& msg, const WireLimits& limits);

// Cuts a byte stream into envelopes. Feed() what the connection delivered, then call Next() until
// it returns false. Memory held: at most one frame plus the bytes of the last Feed. The first
// error is sticky: the stream cannot be resynchronized after a bad frame.
class FrameDecoder {
 public:
  explicit FrameDecoder(WireLimits limits = WireLimits()) : limits_(limits) {}

  // Appends bytes. InvalidArgument as soon as a frame header announces more than the limit.
  Status Feed(const void* data, size_t n);

  // The next whole envelope: true and *out set, false when more bytes are needed, or the error.
  Result<bool> Next(proto::Envelope* out);

  // Bytes of an incomplete frame held (0 at a frame boundary): a peer that closes the
  // connection with this > 0 sent a truncated frame.
  size_t buffered() const { return buffer_.size() - consumed_; }

 private:
  Status CheckHeader();

  WireLimits limits_;
  std::string buffer_;
  size_t consumed_ = 0;  // bytes of buffer_ already returned as frames
  Status error_;
};

// Compares a presented secret with the expected one in time that depends only on the presented
// one's length, not on where they differ (no early exit). False for an empty expected secret.
bool SecretsEqual(std::string_view presented, std::string_view expected);

// The coordinator's check of a client's first frame. Tokens by role; an empty token disables that
// role. InvalidArgument for a first frame that is not a Hello, another protocol version, an
// unknown role, or a wrong or missing token (the message never says how the token differed). On
// success returns the role.
Result<proto::Role> CheckHello(const proto::Envelope& first, std::string_view user_token,
                               std::string_view worker_token);

// Names of the envelope's message for logs and errors, e.g. "submit" or "heartbeat".
std::string_view BodyName(const proto::Envelope& msg);

}  // namespace cohort::coordinator
