#include "coordinator/wire.h"

#include <endian.h>

#include <cstring>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/reflection.h>

namespace cohort::coordinator {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

std::string Bytes(size_t n) { return std::to_string(n) + " bytes"; }

// Walks every set field (the schema has no recursion, so the depth is bounded by it).
Status CheckMessage(const Message& m, const WireLimits& limits, const std::string& path) {
  const auto* refl = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  refl->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    const std::string where = path.empty() ? f->name() : path + "." + f->name();
    if (f->is_repeated()) {
      const size_t n = static_cast<size_t>(refl->FieldSize(m, f));
      if (n > limits.max_repeated) {
        return InvalidArgument("frame: " + where + " has " + std::to_string(n) + " entries (limit " +
                               std::to_string(limits.max_repeated) + ")");
      }
      for (size_t i = 0; i < n; ++i) {
        const int k = static_cast<int>(i);
        if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
          RETURN_IF_ERROR(CheckMessage(refl->GetRepeatedMessage(m, f, k), limits, where));
        } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_STRING) {
          std::string scratch;
          const size_t len = refl->GetRepeatedStringReference(m, f, k, &scratch).size();
          if (len > limits.max_string_bytes) {
            return InvalidArgument("frame: " + where + " holds " + Bytes(len) + " (limit " +
                                   Bytes(limits.max_string_bytes) + ")");
          }
        }
      }
    } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      RETURN_IF_ERROR(CheckMessage(refl->GetMessage(m, f), limits, where));
    } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_STRING) {
      std::string scratch;
      const size_t len = refl->GetStringReference(m, f, &scratch).size();
      if (len > limits.max_string_bytes) {
        return InvalidArgument("frame: " + where + " holds " + Bytes(len) + " (limit " +
                               Bytes(limits.max_string_bytes) + ")");
      }
    }
  }
  return Status::Ok();
}

}  // namespace

Status ValidateEnvelope(const proto::Envelope& msg, const WireLimits& limits) {
  if (msg.body_case() == proto::Envelope::BODY_NOT_SET) {
    // Also what a message from a newer protocol looks like: its field is unknown here.
    return InvalidArgument("frame: the envelope holds no message this coordinator knows (protocol version " +
                           std::to_string(kProtocolVersion) + ")");
  }
  return CheckMessage(msg, limits, "");
}

Status AppendFrame(const proto::Envelope& msg, const WireLimits& limits, std::string* out) {
  RETURN_IF_ERROR(ValidateEnvelope(msg, limits));
  const size_t n = msg.ByteSizeLong();
  if (n > limits.max_frame_bytes) {
    return InvalidArgument("frame: a " + std::string(BodyName(msg)) + " message of " + Bytes(n) +
                           " is over the frame limit of " + Bytes(limits.max_frame_bytes));
  }
  const uint32_t le = htole32(static_cast<uint32_t>(n));
  const size_t at = out->size();
  out->resize(at + 4 + n);
  std::memcpy(out->data() + at, &le, 4);
  if (!msg.SerializeToArray(out->data() + at + 4, static_cast<int>(n))) {
    out->resize(at);
    return Internal("frame: cannot serialize a " + std::string(BodyName(msg)) + " message");
  }
  return Status::Ok();
}

Status FrameDecoder::CheckHeader() {
  if (buffered() < 4) return Status::Ok();
  uint32_t le;
  std::memcpy(&le, buffer_.data() + consumed_, 4);
  const size_t n = le32toh(le);
  if (n > limits_.max_frame_bytes) {
    return InvalidArgument("frame: the peer announced a frame of " + Bytes(n) + " (limit " +
                           Bytes(limits_.max_frame_bytes) + ")");
  }
  return Status::Ok();
}

Status FrameDecoder::Feed(const void* data, size_t n) {
  if (!error_.ok()) return error_;
  // Drop what was returned already, so the buffer holds one frame at most (plus this feed).
  if (consumed_ > 0) {
    buffer_.erase(0, consumed_);
    consumed_ = 0;
  }
  buffer_.append(static_cast<const char*>(data), n);
  error_ = CheckHeader();
  return error_;
}

Result<bool> FrameDecoder::Next(proto::Envelope* out) {
  if (!error_.ok()) return error_;
  if (buffered() < 4) return false;
  uint32_t le;
  std::memcpy(&le, buffer_.data() + consumed_, 4);
  const size_t n = le32toh(le);  // within the limit: CheckHeader saw this header
  if (buffered() < 4 + n) return false;
  out->Clear();
  if (!out->ParseFromArray(buffer_.data() + consumed_ + 4, static_cast<int>(n))) {
    error_ = InvalidArgument("frame: a payload of " + Bytes(n) + " is not a valid envelope");
    return error_;
  }
  consumed_ += 4 + n;
  if (Status st = ValidateEnvelope(*out, limits_); !st.ok()) {
    error_ = st;
    return error_;
  }
  // The next frame's header may be here already: an oversized one is refused now (this frame is
  // whole and valid; the error comes with the next call), not after its bytes arrived.
  error_ = CheckHeader();
  return true;
}

bool SecretsEqual(std::string_view presented, std::string_view expected) {
  if (expected.empty()) return false;
  // Every byte of the presented secret is compared (against the expected one repeated), so the
  // time depends on the presented length only. Different lengths never compare equal.
  unsigned diff = presented.size() == expected.size() ? 0u : 1u;
  for (size_t i = 0; i < presented.size(); ++i) {
    diff |= static_cast<unsigned char>(presented[i]) ^ static_cast<unsigned char>(expected[i % expected.size()]);
  }
  // Keeps the compiler from turning the loop into an early exit.
  volatile unsigned sink = diff;
  return sink == 0 && !presented.empty();
}

Result<proto::Role> CheckHello(const proto::Envelope& first, std::string_view user_token,
                               std::string_view worker_token) {
  if (first.body_case() != proto::Envelope::kHello) {
    return InvalidArgument("handshake: the first message must be hello, not " + std::string(BodyName(first)));
  }
  const proto::Hello& h = first.hello();
  if (h.protocol_version() != kProtocolVersion) {
    return InvalidArgument("handshake: the client speaks protocol version " + std::to_string(h.protocol_version()) +
                           ", this coordinator version " + std::to_string(kProtocolVersion));
  }
  std::string_view expected;
  switch (h.role()) {
    case proto::ROLE_USER: expected = user_token; break;
    case proto::ROLE_WORKER: expected = worker_token; break;
    default:
      return InvalidArgument("handshake: unknown role " + std::to_string(static_cast<int>(h.role())));
  }
  if (!SecretsEqual(h.token(), expected)) {
    return InvalidArgument(std::string("handshake: authentication failed for the ") +
                           (h.role() == proto::ROLE_USER ? "user" : "worker") + " role (wrong or missing token)");
  }
  return h.role();
}

std::string_view BodyName(const proto::Envelope& msg) {
  if (msg.body_case() == proto::Envelope::BODY_NOT_SET) return "empty";
  const auto* f = proto::Envelope::descriptor()->FindFieldByNumber(static_cast<int>(msg.body_case()));
  return f != nullptr ? std::string_view(f->name()) : std::string_view("unknown");
}

}  // namespace cohort::coordinator
